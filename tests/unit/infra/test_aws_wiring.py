"""The aws profile's wiring: `build_runtime(load_settings())` with the environment the SAM
template gives every function, against a real moto server (S3, SQS, Step Functions with
execution on, Secrets Manager, EC2) standing in for the stack's resources.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

from functions.runtime import Runtime
from guest_agent.user_data import parse_user_data
from infra.aws.definitions import load_definitions, rewrite_for_step_functions, task_functions
from infra.aws.template import STATE_MACHINES_DIR, build_template
from infra.aws.wiring import build_aws, guest_backends
from infra.wiring import WiringError, build_runtime
from shared.adapters.aws.ec2_compute import Ec2Compute
from shared.adapters.aws.s3_blob_store import S3BlobStore
from shared.adapters.aws.s3_client import normalized_prefix
from shared.adapters.aws.s3_state_store import S3StateStore
from shared.adapters.aws.sqs_queue import SqsQueue
from shared.adapters.aws.step_functions_workflows import StepFunctionsWorkflows
from shared.adapters.guest_sections import with_guest_sections
from shared.aws_settings import ENV_PREFIX, AwsSettings, variable_for
from shared.settings import Settings, SettingsError, load_settings
from tests.integration.moto_sfn import (
    ACCOUNT_ID,
    ECHO_FUNCTION_ARN,
    REGION,
    ROLE_ARN,
    MotoStepFunctions,
    wait_for,
)

STACK = "tlwire"
QUEUE_PREFIX = "tlwire-"
MACHINE = "delete_instance"
ZONES = ["us-east-1a", "us-east-1b"]
TIMEOUT = 20.0


@dataclass(frozen=True)
class Stack:
    """What `sam deploy` would have made, on the moto server."""

    endpoint: str
    bucket: str
    secret_arn: str
    key: bytes
    guest_instance_profile_arn: str = f"arn:aws:iam::{ACCOUNT_ID}:instance-profile/{STACK}-guest"

    def template_environment(self) -> dict[str, str]:
        """The template's function environment, with the values CloudFormation would fill."""
        return {
            "TROVELESS_PROFILE": "aws",
            "TROVELESS_LOG_LEVEL": "INFO",
            "TROVELESS_AWS_BUCKET": self.bucket,
            "TROVELESS_AWS_QUEUE_PREFIX": QUEUE_PREFIX,
            "TROVELESS_AWS_STATE_MACHINE_ARN_PREFIX": (
                f"arn:aws:states:{REGION}:{ACCOUNT_ID}:stateMachine:{STACK}-"
            ),
            "TROVELESS_AWS_LAMBDA_PREFIX": f"{STACK}-",
            "TROVELESS_AWS_MASTER_KEY_SECRET_ARN": self.secret_arn,
            "TROVELESS_AVAILABILITY_ZONES": json.dumps(ZONES),
            "TROVELESS_AWS_GUEST_INSTANCE_PROFILE": self.guest_instance_profile_arn,
        }

    def client(self, service: str) -> Any:
        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with MotoStepFunctions.start() as server:
        probe = Stack(server.endpoint, f"{STACK}-state", "", b"")
        probe.client("s3").create_bucket(Bucket=probe.bucket)
        probe.client("sqs").create_queue(QueueName=f"{QUEUE_PREFIX}guest-events")
        key = secrets.token_bytes(32)
        secret = probe.client("secretsmanager").create_secret(
            Name=f"{STACK}-master-key", SecretString=base64.b64encode(key).decode()
        )
        # One rewritten definition, every task on moto's echo function (it runs no code).
        definition = rewrite_for_step_functions(
            load_definitions(STATE_MACHINES_DIR)[MACHINE], lambda _function: ECHO_FUNCTION_ARN
        )
        probe.client("stepfunctions").create_state_machine(
            name=f"{STACK}-{MACHINE}", definition=json.dumps(definition), roleArn=ROLE_ARN
        )
        iam = probe.client("iam")
        iam.create_role(RoleName=f"{STACK}-guest", AssumeRolePolicyDocument="{}")
        profile = iam.create_instance_profile(InstanceProfileName=f"{STACK}-guest")
        iam.add_role_to_instance_profile(
            InstanceProfileName=f"{STACK}-guest", RoleName=f"{STACK}-guest"
        )
        yield Stack(
            server.endpoint, probe.bucket, secret["ARN"], key, profile["InstanceProfile"]["Arn"]
        )


@pytest.fixture
def environment(stack: Stack, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    """A function's environment: the template's variables, moto's endpoint, test credentials."""
    monkeypatch.chdir(tmp_path)  # no troveless.toml
    for name in list(os.environ):
        if name.startswith("TROVELESS_") or name.startswith("AWS_"):
            monkeypatch.delenv(name)
    values = stack.template_environment()
    values.update(
        {
            # Lambda sets AWS_REGION; moto stands in for every service at one endpoint.
            "AWS_REGION": REGION,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "TROVELESS_AWS_ENDPOINT_URL": stack.endpoint,
        }
    )
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


def _template_variables() -> dict[str, Any]:
    variables: dict[str, Any] = build_template()["Globals"]["Function"]["Environment"]["Variables"]
    return variables


def test_the_test_sets_what_the_template_sets() -> None:
    probe = Stack("http://unused", "b", "arn:aws:secretsmanager:r:1:secret:x", b"")
    assert set(probe.template_environment()) == set(_template_variables())


def test_every_template_variable_is_a_setting() -> None:
    """A renamed field or variable would leave a deployed function without the value."""
    names = set(_template_variables())
    aws = {name for name in names if name.startswith(ENV_PREFIX)}
    assert aws <= {variable_for(field) for field in AwsSettings.model_fields}
    for name in names - aws:
        field = name.removeprefix("TROVELESS_").lower()
        assert field in Settings.model_fields, name


@pytest.mark.slow
def test_the_template_environment_builds_a_working_runtime(
    stack: Stack, environment: dict[str, str]
) -> None:
    settings = load_settings()
    assert settings.aws is not None
    assert settings.aws.master_key_secret_arn == stack.secret_arn
    runtime = build_runtime(settings)
    assert isinstance(runtime, Runtime)
    assert isinstance(runtime.store, S3StateStore)
    assert isinstance(runtime.blobs, S3BlobStore)
    assert isinstance(runtime.queue, SqsQueue)
    assert isinstance(runtime.workflows, StepFunctionsWorkflows)
    assert runtime.master_key == stack.key
    assert runtime.compute.zones() == ZONES
    # Guests are launched with the stack's instance profile (their only AWS credentials).
    assert isinstance(runtime.compute, Ec2Compute)
    assert runtime.compute.instance_profile == stack.guest_instance_profile_arn

    # Records and blobs land in the stack's bucket, under their prefixes.
    record = runtime.store.put("instances/i-1", {"name": "db1"}, 0)
    got = runtime.store.get("instances/i-1")
    assert got is not None and got.data == {"name": "db1"} and got.revision == record.revision
    runtime.blobs.put("backups/b-1", [b"chunk one ", b"chunk two"], {"kind": "full"})
    assert b"".join(runtime.blobs.get("backups/b-1")) == b"chunk one chunk two"
    s3_keys = [
        o["Key"] for o in stack.client("s3").list_objects_v2(Bucket=stack.bucket)["Contents"]
    ]
    assert any(k.startswith("state/records/instances/i-1") for k in s3_keys), s3_keys
    assert any(k.startswith("backups/blobs/backups/b-1") for k in s3_keys), s3_keys

    # The stack's queue, under the stack's queue prefix.
    sent = runtime.queue.send("guest-events", {"kind": "heartbeat", "n": 1})
    messages = runtime.queue.receive("guest-events", wait_seconds=2)
    assert [(m.id, m.body) for m in messages] == [(sent, {"kind": "heartbeat", "n": 1})]
    runtime.queue.ack("guest-events", messages[0].receipt)

    # One of our rewritten definitions, started by its name.
    name = f"delete-{uuid.uuid4().hex}"
    flow_input = {"instance_id": "i-1", "project_id": "p-1"}
    arn = runtime.workflows.start(MACHINE, flow_input, name=name)
    assert arn == f"arn:aws:states:{REGION}:{ACCOUNT_ID}:execution:{STACK}-{MACHINE}:{name}"
    assert runtime.workflows.start(MACHINE, flow_input, name=name) == arn
    described = runtime.workflows.describe(arn)
    assert isinstance(described, dict)
    assert described["state_machine_name"] == MACHINE
    assert described["input"] == flow_input

    # With every task on moto's echo function (results discarded: ResultPath null), the flow
    # runs to its end; each Lambda call carried our task envelope (functions/lambda_tasks.py).
    def ended() -> dict[str, Any] | None:
        now = runtime.workflows.describe(arn)
        assert isinstance(now, dict)
        return None if now["status"] == "RUNNING" else now

    final = wait_for(ended, timeout=TIMEOUT, what=f"{arn} to end")
    assert final["status"] == "SUCCEEDED", final
    assert final["output"] == flow_input
    history = stack.client("stepfunctions").get_execution_history(executionArn=arn)["events"]
    envelopes = [
        json.loads(e["lambdaFunctionScheduledEventDetails"]["input"])
        for e in history
        if e["type"] == "LambdaFunctionScheduled"
    ]
    definition = load_definitions(STATE_MACHINES_DIR)[MACHINE]
    # delete_instance is one chain of tasks, each run once.
    resources = [e["context"]["resource"] for e in envelopes]
    assert sorted(resources) == [f"fn:{function}" for function in task_functions(definition)]
    assert resources[0] == definition["States"][definition["StartAt"]]["Resource"]
    assert {e["context"]["execution_arn"] for e in envelopes} == {arn}
    assert envelopes[0]["payload"] == {"instance_id": "i-1"}


@pytest.mark.slow
def test_without_a_secret_the_master_key_comes_from_the_environment(
    environment: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    key = secrets.token_bytes(32)
    monkeypatch.delenv("TROVELESS_AWS_MASTER_KEY_SECRET_ARN")
    monkeypatch.setenv("TROVELESS_MASTER_KEY", base64.b64encode(key).decode())
    assert build_runtime(load_settings()).master_key == key
    monkeypatch.delenv("TROVELESS_MASTER_KEY")
    with pytest.raises(WiringError, match="TROVELESS_MASTER_KEY"):
        build_runtime(load_settings())


@pytest.mark.slow
def test_a_bad_master_key_secret_is_named_never_shown(
    stack: Stack, environment: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT_ID}:secret:{STACK}-nope-AbCdEf"
    monkeypatch.setenv("TROVELESS_AWS_MASTER_KEY_SECRET_ARN", missing)
    with pytest.raises(WiringError, match="cannot read it") as unreadable:
        build_runtime(load_settings())
    assert missing in str(unreadable.value)

    short = base64.b64encode(b"sixteen byte key").decode()
    created = stack.client("secretsmanager").create_secret(
        Name=f"{STACK}-short-{uuid.uuid4().hex}", SecretString=short
    )
    monkeypatch.setenv("TROVELESS_AWS_MASTER_KEY_SECRET_ARN", created["ARN"])
    with pytest.raises(WiringError, match="32 bytes") as too_short:
        build_runtime(load_settings())
    assert short not in str(too_short.value)


def test_the_aws_profile_without_its_settings_says_what_to_set(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("TROVELESS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("TROVELESS_PROFILE", "aws")
    settings = load_settings()
    assert settings.aws is None
    with pytest.raises(WiringError, match="TROVELESS_AWS_BUCKET"):
        build_runtime(settings)


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        (
            "TROVELESS_AWS_QUEUE_PREFIX",
            "a-prefix-longer-than-sixteen",
            "TROVELESS_AWS_QUEUE_PREFIX",
        ),
        ("TROVELESS_AWS_STATE_MACHINE_ARN_PREFIX", "troveless-", "STATE_MACHINE_ARN_PREFIX"),
        ("TROVELESS_AWS_IMAGES", "not json", "TROVELESS_AWS_IMAGES"),
        ("TROVELESS_AWS_BUCKET_NAME", "typo", "TROVELESS_AWS_BUCKET_NAME: unknown"),
        ("TROVELESS_AWS_MASTER_KEY_SECRET_ARN", "plain", "TROVELESS_AWS_MASTER_KEY_SECRET_ARN"),
    ],
)
def test_invalid_aws_settings_name_their_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, variable: str, value: str, named: str
) -> None:
    monkeypatch.chdir(tmp_path)
    probe = Stack("http://unused", "bucket", "arn:aws:secretsmanager:r:1:secret:x", b"")
    for name, good in probe.template_environment().items():
        monkeypatch.setenv(name, good)
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError, match=named):
        load_settings()


def test_settings_from_a_file_table_are_overridden_by_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("TROVELESS_"):
            monkeypatch.delenv(name)
    (tmp_path / "troveless.toml").write_text(
        '[aws]\nbucket = "from-file"\nqueue_prefix = "file-"\n'
        'state_machine_arn_prefix = "arn:aws:states:eu-west-1:1:stateMachine:f-"\n'
    )
    monkeypatch.setenv("TROVELESS_AWS_BUCKET", "from-env")
    aws = load_settings().aws
    assert aws is not None
    assert (aws.bucket, aws.queue_prefix) == ("from-env", "file-")


@pytest.mark.parametrize(
    ("instance_types", "problem"),
    [
        ({"tl.huge": "m5.large"}, "unknown flavors"),
        # tl.tiny and tl.small differ; two flavors alike in resources must share one type.
        ({"tl.small": "t3.small"}, None),
    ],
)
def test_instance_types_name_known_flavors(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    instance_types: dict[str, str],
    problem: str | None,
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("TROVELESS_") or name.startswith("AWS_"):
            monkeypatch.delenv(name)
    probe = Stack("http://127.0.0.1:9", "bucket", "", b"")
    for name, good in probe.template_environment().items():
        if name != "TROVELESS_AWS_MASTER_KEY_SECRET_ARN":
            monkeypatch.setenv(name, good)
    monkeypatch.setenv("TROVELESS_MASTER_KEY", base64.b64encode(bytes(32)).decode())
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("TROVELESS_AWS_REGION", REGION)
    monkeypatch.setenv("TROVELESS_AWS_INSTANCE_TYPES", json.dumps(instance_types))
    settings = load_settings()
    if problem is None:
        # Building makes no AWS call (the endpoint here answers nothing).
        assert build_aws(settings).compute.zones() == ZONES
    else:
        with pytest.raises(WiringError, match=problem):
            build_aws(settings)


# --------------------------------------------------------------------------- guests' user-data
GUEST_KEY_ID = "AKIATROVELESSWIRE001"
GUEST_SECRET = "control-plane-secret-not-for-guests"


def _offline_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Settings:
    """The template's settings on an endpoint that answers nothing (building calls no AWS)."""
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("TROVELESS_") or name.startswith("AWS_"):
            monkeypatch.delenv(name)
    probe = Stack("http://127.0.0.1:9", "tlwire-state", "", b"")
    for name, good in probe.template_environment().items():
        if name != "TROVELESS_AWS_MASTER_KEY_SECRET_ARN":
            monkeypatch.setenv(name, good)
    monkeypatch.setenv("TROVELESS_MASTER_KEY", base64.b64encode(bytes(32)).decode())
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", GUEST_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", GUEST_SECRET)
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    monkeypatch.setenv("TROVELESS_AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    return load_settings()


def _guest_user_data(section: Any) -> dict[str, Any]:
    return {
        "instance_id": str(uuid.uuid4()),
        "datastore_type": "redis",
        "datastore_version": "7.0",
        "command_queue": "guest-cmd-x",
        "events_queue": "guest-events",
        "secret": base64.b64encode(bytes(32)).decode(),
        "profile": "aws",
        "aws": section,
    }


def test_guests_are_told_the_runtimes_queues_and_bucket_and_no_keys(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    runtime = build_aws(_offline_settings(monkeypatch, tmp_path))
    assert isinstance(runtime.compute, Ec2Compute)
    assert set(runtime.compute.guest_sections) == {"aws"}
    section = runtime.compute.guest_sections["aws"]
    assert section == {
        "region": "eu-west-1",  # AWS_REGION, as Lambda sets it
        "queue_prefix": QUEUE_PREFIX,
        "bucket": "tlwire-state",
        "blob_prefix": "backups/",
        "endpoint_url": "http://127.0.0.1:9",
    }
    # What the guest agent reads back, and the runtime's own adapters agree on names.
    parsed = parse_user_data(_guest_user_data(section)).aws
    assert parsed is not None
    assert isinstance(runtime.blobs, S3BlobStore)
    assert (parsed.bucket, normalized_prefix(parsed.blob_prefix)) == (
        runtime.blobs.bucket,
        runtime.blobs.prefix,
    )
    text = json.dumps(section)
    assert GUEST_KEY_ID not in text and GUEST_SECRET not in text


def test_without_an_endpoint_guests_get_none(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings = _offline_settings(monkeypatch, tmp_path)
    assert settings.aws is not None
    aws = settings.aws.model_copy(update={"endpoint_url": None})
    assert "endpoint_url" not in guest_backends(aws, "eu-west-1")


def test_each_created_server_gets_the_section(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # What EC2 then receives is checked against moto in tests/integration/test_guest_agent_aws.py.
    settings = _offline_settings(monkeypatch, tmp_path)
    runtime = build_aws(settings)
    compute = runtime.compute
    assert isinstance(compute, Ec2Compute)
    assert settings.aws is not None
    region = guest_backends(settings.aws, "x")  # the region is the runtime's own
    assert set(compute.guest_sections) == {"aws"}
    section = compute.guest_sections["aws"]
    assert isinstance(section, dict)
    assert {k: v for k, v in section.items() if k != "region"} == {
        k: v for k, v in region.items() if k != "region"
    }
    given = _guest_user_data(None)
    del given["aws"]
    with_section = with_guest_sections(given, compute.guest_sections)
    assert "aws" not in given  # the caller's user-data is left as it was
    parse_user_data(with_section)


def test_a_non_http_endpoint_is_refused_naming_its_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _offline_settings(monkeypatch, tmp_path)
    monkeypatch.setenv("TROVELESS_AWS_ENDPOINT_URL", "file:///var/lib/moto")
    with pytest.raises(SettingsError, match=r"TROVELESS_AWS_ENDPOINT_URL.*http"):
        load_settings()
