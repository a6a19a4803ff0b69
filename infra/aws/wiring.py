"""The aws profile's composition root: the functions' Runtime on S3, SQS, Step Functions and EC2.

`infra.wiring.build_runtime` calls `build_aws` on a Lambda cold start. Everything comes from
`Settings.aws` (TROVELESS_AWS_*, which the SAM template sets; see shared/aws_settings.py):

- records and blobs: one S3 bucket (`bucket`), under `state_prefix` and `blob_prefix`; the stack
  made the bucket, so the stores do not try to (functions may not create buckets);
- queues: SQS under `queue_prefix`;
- workflows: Step Functions state machines `<state_machine_arn_prefix><definition>`;
- compute: EC2 + EBS, AMIs from `images`, instance types per flavor name from `instance_types`,
  the zones of `Settings.availability_zones`, guests launched with `guest_instance_profile`;
  each guest's user-data gets an `aws` section (`guest_backends`: region, queue prefix,
  bucket, blob prefix, endpoint) so its agent reaches the same SQS queues and S3 keys. No
  keys: the guest's credentials come from its instance profile;
- the master key: the Secrets Manager secret `master_key_secret_arn` when set (the template
  sets it), else TROVELESS_MASTER_KEY.

`region` (else AWS_REGION, which Lambda sets) and `endpoint_url` (moto, S3-compatible stores)
apply to every client; credentials follow boto3's usual chain (the function's role on Lambda).
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from functions.runtime import Runtime
from infra.wiring import WiringError, cloud_flavors_by_spec, master_key
from shared.adapters.aws.ec2_compute import Ec2Compute
from shared.adapters.aws.s3_blob_store import S3BlobStore
from shared.adapters.aws.s3_client import make_s3_client
from shared.adapters.aws.s3_state_store import S3StateStore
from shared.adapters.aws.sqs_queue import SqsQueue
from shared.adapters.aws.step_functions_workflows import StepFunctionsWorkflows
from shared.aws_settings import AwsSettings
from shared.clock import SystemClock
from shared.observability import get_logger
from shared.ports import JSON, Compute, FlavorSpec
from shared.settings import Settings

log = get_logger("aws-wiring")

MASTER_KEY_BYTES = 32
REQUIRED = "TROVELESS_AWS_BUCKET and TROVELESS_AWS_STATE_MACHINE_ARN_PREFIX"


def _client(service: str, aws: AwsSettings, region: str) -> Any:
    return boto3.client(
        service,
        endpoint_url=aws.endpoint_url,
        config=Config(region_name=region, retries={"mode": "standard", "max_attempts": 5}),
    )


def aws_settings(settings: Settings) -> AwsSettings:
    if settings.aws is None:
        raise WiringError(f"the aws profile needs its settings: set at least {REQUIRED}")
    return settings.aws


def region_of(aws: AwsSettings) -> str:
    # Lambda sets AWS_REGION (and AWS_DEFAULT_REGION, which boto3's own lookup reads).
    region = aws.region or os.environ.get("AWS_REGION") or boto3.session.Session().region_name
    if not region:
        raise WiringError("no AWS region: set TROVELESS_AWS_REGION or AWS_REGION")
    return str(region)


def secret_master_key(client: Any, secret_arn: str) -> bytes:
    """The master key held (base64) in a Secrets Manager secret; the value is never logged."""
    try:
        answer = client.get_secret_value(SecretId=secret_arn)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        raise WiringError(f"master key secret {secret_arn}: cannot read it ({code})") from None
    except BotoCoreError as exc:
        raise WiringError(f"master key secret {secret_arn}: cannot read it ({exc})") from None
    text = answer.get("SecretString")
    if not isinstance(text, str):
        raise WiringError(f"master key secret {secret_arn}: holds no text (SecretString)")
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise WiringError(f"master key secret {secret_arn}: not base64") from None
    if len(key) != MASTER_KEY_BYTES:
        raise WiringError(
            f"master key secret {secret_arn}: must decode to {MASTER_KEY_BYTES} bytes"
        )
    return key


def instance_types_by_flavor(settings: Settings, aws: AwsSettings) -> dict[FlavorSpec, str]:
    """TROVELESS_AWS_INSTANCE_TYPES names flavors; EC2 compute looks types up by resources."""
    return cloud_flavors_by_spec(
        settings, aws.instance_types, "TROVELESS_AWS_INSTANCE_TYPES", "instance types"
    )


def guest_backends(aws: AwsSettings, region: str) -> JSON:
    """The user-data section (guest_agent/user_data.py `AwsBackends`) that lets a guest reach
    the control plane's SQS queues and backups in S3: names only, never a credential (the
    guest's come from its instance profile)."""
    section: JSON = {
        "region": region,
        "queue_prefix": aws.queue_prefix,
        "bucket": aws.bucket,
        "blob_prefix": aws.blob_prefix,
    }
    if aws.endpoint_url is not None:
        section["endpoint_url"] = aws.endpoint_url
    return section


def ec2_compute(settings: Settings, aws: AwsSettings, client: Any, region: str) -> Compute:
    images: Mapping[str, str] = aws.images
    try:
        return Ec2Compute(
            client,
            guest_sections={"aws": guest_backends(aws, region)},
            images=images,
            instance_types=instance_types_by_flavor(settings, aws),
            zones=settings.availability_zones,
            subnets=aws.subnets,
            security_group_ids=aws.security_group_ids,
            key_name=aws.key_name,
            instance_profile=aws.guest_instance_profile,
        )
    except ValueError as exc:
        raise WiringError(f"EC2 compute: {exc}") from None


def build_aws(settings: Settings) -> Runtime:
    """The Runtime of a function deployed by the SAM template (see the module docstring)."""
    aws = aws_settings(settings)
    region = region_of(aws)
    clock = SystemClock()
    s3 = make_s3_client(aws.endpoint_url, region=region)
    store = S3StateStore(
        s3,
        aws.bucket,
        aws.state_prefix,
        clock,
        revisions_kept=settings.state_revisions_kept,
        create_bucket=False,
        # AWS S3's conditional writes are atomic; an S3-compatible endpoint may not be.
        atomic_conditional_put=aws.endpoint_url is None,
    )
    blobs = S3BlobStore(s3, aws.bucket, aws.blob_prefix, create_bucket=False)
    queue = SqsQueue(_client("sqs", aws, region), aws.queue_prefix)
    workflows = StepFunctionsWorkflows(
        _client("stepfunctions", aws, region), aws.state_machine_arn_prefix
    )
    compute = ec2_compute(settings, aws, _client("ec2", aws, region), region)
    if aws.master_key_secret_arn is not None:
        key = secret_master_key(_client("secretsmanager", aws, region), aws.master_key_secret_arn)
    else:
        key = master_key(settings)
    log.info(
        "aws runtime built",
        extra={"bucket": aws.bucket, "region": region, "queue_prefix": aws.queue_prefix},
    )
    return Runtime(
        settings=settings,
        clock=clock,
        store=store,
        blobs=blobs,
        queue=queue,
        compute=compute,
        workflows=workflows,
        master_key=key,
    )
