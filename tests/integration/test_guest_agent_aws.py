"""A guest of the aws profile reaches SQS and S3: a real guest agent process and a real Redis,
a real moto server for SQS, S3, EC2 and IAM, and the control plane's real adapters.

The control plane's EC2 compute (`Ec2Compute` with the `aws` guest section, as
infra/aws/wiring.py makes it) launches the server on moto with the stack's instance profile;
the user-data the agent boots with is the one EC2 was given, read back from the instance (moto
runs no VM). The agent's AWS credentials are in its environment only, where an instance profile
would put them (boto3's default chain); its region and endpoint come from the user-data. The
control plane's SqsQueue receives and verifies its heartbeats on the events queue; a signed
`prepare` then `backup` go through the command queue, and the control plane's S3BlobStore
reads back the object the agent wrote.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest

from guest_agent.datastores.base import DatastoreError, find_binary, kill_process_group
from infra.aws.wiring import guest_backends
from shared.adapters.aws.ec2_compute import Ec2Compute, make_ec2_client
from shared.adapters.aws.s3_blob_store import S3BlobStore
from shared.adapters.aws.s3_client import make_s3_client
from shared.adapters.aws.sqs_queue import SqsQueue
from shared.adapters.guest_cloud_config import user_data_from_cloud_config
from shared.adapters.local.state_store import DirectoryStateStore
from shared.adapters.local.system_user import DEFAULT_GUEST_USER, ensure_system_user
from shared.aws_settings import AwsSettings
from shared.clock import SystemClock
from shared.crypto import encode_secret, new_instance_secret
from shared.models import ServiceStatus
from shared.ports import FlavorSpec
from shared.services.backup_records import data_key_text, new_data_key
from shared.services.backups import object_location
from shared.services.guest_channel import (
    EVENTS_QUEUE,
    GuestClient,
    GuestEventVerifier,
    command_queue_name,
)
from shared.settings import REPO_ROOT
from tests.contract import moto_server
from tests.integration.guest_control_plane import ControlPlane

pytestmark = [pytest.mark.slow, pytest.mark.datastore]

REGION = "eu-west-1"  # not moto's default: the agent must take it from its user-data
INTERVAL = 0.5
BOOT_TIMEOUT = 30.0
FLAVOR = FlavorSpec(ram_mb=512, vcpus=1)
ZONE = f"{REGION}a"
# The control plane signs its calls with these; the guest's "instance profile" with others.
CONTROL_KEY_ID = "AKIATROVELESSCTRL042"
CONTROL_SECRET = "control-plane-secret-never-for-guests"
GUEST_KEY_ID = "ASIATROVELESSGUEST42"
GUEST_SECRET = "guest-instance-profile-secret"
AWS_KEY_PATTERNS = (
    re.compile(r"\b(AKIA|ASIA)[A-Z0-9]{16}\b"),
    re.compile(r"aws_(access_key_id|secret_access_key|session_token)", re.IGNORECASE),
    re.compile(r"(AccessKeyId|SecretAccessKey|SessionToken)"),
)


def _control_client(service: str, endpoint: str) -> Any:
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=CONTROL_KEY_ID,
        aws_secret_access_key=CONTROL_SECRET,
    )


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    """One moto server for this module; everything made on it goes when it stops."""
    server = moto_server.start_moto_server()
    try:
        yield server.endpoint
    finally:
        server.stop()


@pytest.fixture
def redis_server() -> None:
    try:
        find_binary("redis-server")
    except DatastoreError:
        pytest.skip("redis-server is not installed")


@dataclass
class Guest:
    """The guest's files and processes; `cleanup` removes them, even after a failure."""

    root: Path
    volume: Path
    agents: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def log_path(self) -> Path:
        return self.root / "agent.log"

    def start_agent(self, user_data_path: Path) -> subprocess.Popen[bytes]:
        env = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG": "C.UTF-8",
            "TROVELESS_LOG_LEVEL": "INFO",
            # What an instance profile gives the default chain; no region, no endpoint.
            "AWS_ACCESS_KEY_ID": GUEST_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": GUEST_SECRET,
            "AWS_CONFIG_FILE": str(self.root / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(self.root / "no-aws-credentials"),
            "AWS_EC2_METADATA_DISABLED": "true",
        }
        with self.log_path.open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "guest_agent", "--user-data", str(user_data_path)],
                cwd=REPO_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.agents.append(proc)
        return proc

    def agent_log(self) -> str:
        with contextlib.suppress(FileNotFoundError):
            return self.log_path.read_text()
        return ""

    def cleanup(self) -> None:
        for proc in self.agents:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        with contextlib.suppress(FileNotFoundError, ValueError):
            kill_process_group(int((self.volume / "run" / "server.pid").read_text().split()[0]))
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def guest() -> Iterator[Guest]:
    # Under /tmp, not pytest's 0700 tmp_path: the datastore's user must traverse to its volume.
    root = Path(tempfile.mkdtemp(prefix="tl-aws-agent-", dir="/tmp"))
    os.chmod(root, 0o755)
    volume = root / "volume"
    volume.mkdir(mode=0o755)
    made = Guest(root, volume)
    try:
        yield made
    finally:
        made.cleanup()


@pytest.fixture
def instance_profile(moto_endpoint: str) -> str:
    """The stack's guest instance profile (a role EC2 may assume), on moto."""
    iam = _control_client("iam", moto_endpoint)
    name = f"guest-{uuid.uuid4().hex[:8]}"
    iam.create_role(RoleName=name, AssumeRolePolicyDocument="{}")
    profile = iam.create_instance_profile(InstanceProfileName=name)["InstanceProfile"]
    iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=name)
    return str(profile["Arn"])


def _write_private(path: Path, data: Any) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)


def test_an_aws_guest_heartbeats_over_sqs_and_backs_up_to_s3(
    moto_endpoint: str, redis_server: None, guest: Guest, instance_profile: str
) -> None:
    started = time.monotonic()
    tag = uuid.uuid4().hex[:8]
    aws = AwsSettings(
        bucket=f"tl-state-{tag}",
        queue_prefix=f"t{tag}-",
        state_machine_arn_prefix="arn:aws:states:eu-west-1:123456789012:stateMachine:tl-",
        endpoint_url=moto_endpoint,
        guest_instance_profile=instance_profile,
    )
    # ---- the stack's bucket and events queue; the control plane's adapters on them
    _control_client("s3", moto_endpoint).create_bucket(
        Bucket=aws.bucket, CreateBucketConfiguration={"LocationConstraint": REGION}
    )
    clock = SystemClock()
    queue = SqsQueue(_control_client("sqs", moto_endpoint), aws.queue_prefix)
    queue.ensure_queue(EVENTS_QUEUE)
    s3 = make_s3_client(
        moto_endpoint, region=REGION, access_key=CONTROL_KEY_ID, secret_key=CONTROL_SECRET
    )
    blobs = S3BlobStore(s3, aws.bucket, aws.blob_prefix, create_bucket=False)

    # ---- provisioning: the command queue, then the server with the guest's user-data
    instance_id = str(uuid.uuid4())
    secret = new_instance_secret()
    commands = command_queue_name(instance_id)
    queue.ensure_queue(commands)
    given = {
        "instance_id": instance_id,
        "datastore_type": "redis",
        "datastore_version": "7.0",
        "command_queue": commands,
        "events_queue": EVENTS_QUEUE,
        "secret": encode_secret(secret),
        "profile": "aws",
        "heartbeat_interval": INTERVAL,
    }
    compute = Ec2Compute(
        make_ec2_client(
            moto_endpoint, region=REGION, access_key=CONTROL_KEY_ID, secret_key=CONTROL_SECRET
        ),
        guest_sections={"aws": guest_backends(aws, REGION)},
        images={"redis": "ami-0a1b2c3d4e5f60003"},
        instance_types={FLAVOR: "t3.micro"},
        zones=[ZONE],
        instance_profile=aws.guest_instance_profile,
        poll_interval=0.05,
        timeout=30,
    )
    server = compute.create_server(instance_id, FLAVOR, 1, None, given)
    ec2 = _control_client("ec2", moto_endpoint)
    [launched] = ec2.describe_instances(InstanceIds=[server.server_id])["Reservations"][0][
        "Instances"
    ]
    assert launched["IamInstanceProfile"]["Arn"] == instance_profile
    raw = ec2.describe_instance_attribute(InstanceId=server.server_id, Attribute="userData")
    cloud_config = base64.b64decode(raw["UserData"]["Value"]).decode()
    user_data = user_data_from_cloud_config(cloud_config)
    assert isinstance(user_data, dict)
    assert user_data == {
        **given,
        "aws": {
            "region": REGION,
            "queue_prefix": aws.queue_prefix,
            "bucket": aws.bucket,
            "blob_prefix": "backups/",
            "endpoint_url": moto_endpoint,
        },
    }
    for text in (CONTROL_KEY_ID, CONTROL_SECRET, GUEST_KEY_ID, GUEST_SECRET):
        assert text not in cloud_config
    for pattern in AWS_KEY_PATTERNS:
        assert pattern.search(cloud_config) is None, pattern.pattern

    # ---- the guest boots with that user-data; meta-data says what the server knows
    run_as = ensure_system_user(DEFAULT_GUEST_USER).name if os.geteuid() == 0 else None
    user_data_path = guest.root / "user-data.json"
    _write_private(user_data_path, {**user_data, "run_as": run_as})  # datastore's OS user
    _write_private(
        guest.root / "meta-data.json",
        {
            "instance_id": instance_id,
            "address": "127.0.0.1",
            "flavor": {"ram_mb": 128},
            "volume": {"mount_point": str(guest.volume)},
        },
    )
    plane = ControlPlane(
        queue,
        GuestClient(queue, clock, instance_id, secret),
        GuestEventVerifier(
            DirectoryStateStore(guest.root / "control-state"), clock, {instance_id: secret}.get
        ),
        poll_seconds=1.0,  # SQS's long-poll unit; the loop's deadline bounds the wait
    )
    agent = guest.start_agent(user_data_path)
    try:
        plane.wait_until(lambda: bool(plane.heartbeats), BOOT_TIMEOUT, "the first heartbeat")
        first_heartbeat = time.monotonic() - started
        assert plane.heartbeats[0].datastore_status is ServiceStatus.NEW

        prepared = plane.call("prepare", {"databases": [], "users": []})
        assert prepared.ok, prepared.error

        # ---- a backup: the command over SQS, the object into the stack's bucket
        backup_id = str(uuid.uuid4())
        location = object_location("project-1", instance_id, backup_id, "redis")
        data_key = new_data_key()
        backed_up = plane.call(
            "backup",
            {
                "backup_id": backup_id,
                "location": location,
                "encrypted_data_key": plane.client.seal_password(data_key_text(data_key)),
            },
        )
        assert backed_up.ok, backed_up.error
        result = backed_up.result
        assert isinstance(result, dict) and result["location"] == location
        info = blobs.head(location)
        assert (info.size, info.sha256) == (result["size_bytes"], result["sha256"])
        body = b"".join(blobs.get(location))  # the store re-checks size and sha256
        assert hashlib.sha256(body).hexdigest() == result["sha256"] and len(body) > 0
        keys = [
            o["Key"]
            for o in _control_client("s3", moto_endpoint).list_objects_v2(Bucket=aws.bucket)[
                "Contents"
            ]
        ]
        assert keys == [f"backups/blobs/{location}"]  # under the guests' prefix, nothing staged

        # ---- an orderly stop: the last heartbeat says so
        os.kill(agent.pid, signal.SIGTERM)
        assert agent.wait(timeout=30) == 0
        plane.wait_until(
            lambda: plane.heartbeats[-1].datastore_status is ServiceStatus.SHUTDOWN,
            10,
            "the SHUTDOWN heartbeat",
        )
        assert plane.rejected == [], "every event of the genuine agent must verify"
    except BaseException:
        print(guest.agent_log()[-6000:])
        raise
    finally:
        compute.delete_server(instance_id)
    log = guest.agent_log()
    assert "command done" in log
    for text in (GUEST_KEY_ID, GUEST_SECRET, encode_secret(secret)):
        assert text not in log
    print(f"first heartbeat {first_heartbeat:.2f} s after the test began")
