"""The aws profile's user-data section (`AwsBackends`) and the backends the agent builds from
it: names of queues, bucket and prefixes only; credentials of any kind and non-http(s)
endpoints are refused with a message naming the field and never showing the value."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from guest_agent.user_data import AwsBackends, UserDataError, parse_user_data, resolve_config
from guest_agent.wiring import build_backends, close_backends
from shared.adapters.aws.s3_blob_store import S3BlobStore
from shared.adapters.aws.sqs_queue import SqsQueue
from shared.clock import ManualClock
from shared.crypto import encode_secret
from shared.settings import Profile
from tests.unit.guest_agent.conftest import INSTANCE_ID

SECRET = bytes(range(1, 33))
SECTION: dict[str, Any] = {
    "region": "eu-west-1",
    "queue_prefix": "tl-",
    "bucket": "tl-state",
    "blob_prefix": "backups/",
    "endpoint_url": "http://127.0.0.1:5000",
}


def aws_user_data(**section_changes: Any) -> dict[str, Any]:
    return {
        "instance_id": INSTANCE_ID,
        "datastore_type": "redis",
        "datastore_version": "7.0",
        "command_queue": "guest-cmd-x",
        "events_queue": "guest-events",
        "secret": encode_secret(SECRET),
        "profile": "aws",
        "aws": {**SECTION, **section_changes},
    }


def test_an_aws_section_parses_with_its_defaults() -> None:
    parsed = parse_user_data(aws_user_data())
    assert parsed.profile is Profile.AWS
    assert parsed.aws == AwsBackends(**SECTION)
    minimal = {k: SECTION[k] for k in ("region", "queue_prefix", "bucket")}
    section = parse_user_data({**aws_user_data(), "aws": minimal}).aws
    assert section is not None
    assert (section.blob_prefix, section.endpoint_url) == ("backups/", None)
    # An empty queue prefix is the SqsQueue default: the names are the bare queue names.
    assert parse_user_data(aws_user_data(queue_prefix="")).aws is not None


def test_the_aws_profile_needs_its_section() -> None:
    data = aws_user_data()
    del data["aws"]
    with pytest.raises(UserDataError, match="aws: the aws profile needs its SQS and S3 section"):
        parse_user_data(data)


@pytest.mark.parametrize(
    "field",
    [
        "aws_access_key_id",
        "aws_secret_access_key",
        "aws_session_token",
        "access_key",
        "secret_key",
        "credentials",
        "profile",
    ],
)
def test_no_credential_field_is_accepted(field: str) -> None:
    value = "wJalrXUtnFEMI-never-shown"
    with pytest.raises(UserDataError) as refused:
        parse_user_data(aws_user_data(**{field: value}))
    message = str(refused.value)
    assert f"aws.{field}: Extra inputs are not permitted" in message
    assert value not in message


@pytest.mark.parametrize(
    ("endpoint", "problem"),
    [
        ("ftp://127.0.0.1:21", "must be an http:// or https:// URL"),
        ("file:///etc/passwd", "must be an http:// or https:// URL"),
        ("127.0.0.1:5000", "must be an http:// or https:// URL"),
        ("http://", "must name a host"),
        ("http://AKIAEXAMPLE:hunter2-secret@127.0.0.1:5000", "must not hold credentials"),
        ("http://127.0.0.1:5000/?X-Amz-Credential=hunter2-secret", "no query or fragment"),
        ("http://127.0.0.1:99999", "not a URL"),
    ],
)
def test_bad_endpoints_are_refused_without_showing_them(endpoint: str, problem: str) -> None:
    with pytest.raises(UserDataError, match=r"aws\.endpoint_url") as refused:
        parse_user_data(aws_user_data(endpoint_url=endpoint))
    assert problem in str(refused.value)
    assert "hunter2" not in str(refused.value)


def test_https_endpoints_with_a_path_are_accepted() -> None:
    section = parse_user_data(aws_user_data(endpoint_url="https://s3.example.net:8443/s3")).aws
    assert section is not None and section.endpoint_url == "https://s3.example.net:8443/s3"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("region", ""),
        ("region", "us east 1"),
        ("queue_prefix", "a-prefix-longer-than-sixteen"),
        ("queue_prefix", "bad.prefix"),
        ("bucket", "ab"),
        ("bucket", "a/b/c"),
        ("bucket", "-leading-dash"),
        ("blob_prefix", "/absolute/"),
        ("blob_prefix", "back\\ups/"),
        ("blob_prefix", "line\nbreak/"),
    ],
)
def test_bad_names_are_refused_naming_the_field(field: str, value: str) -> None:
    with pytest.raises(UserDataError, match=rf"aws\.{field}"):
        parse_user_data(aws_user_data(**{field: value}))


def test_the_agent_builds_sqs_and_s3_as_the_control_plane_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Nothing in the environment either: credentials are looked up on first use (the
    # instance profile on EC2), so building needs none and makes no call.
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    data = {**aws_user_data(), "address": "127.0.0.1", "ram_mb": 64, "volume_path": str(tmp_path)}
    backends = build_backends(resolve_config(parse_user_data(data), None), ManualClock())
    try:
        assert isinstance(backends.queue, SqsQueue)
        assert isinstance(backends.blobs, S3BlobStore)
        # The control plane's layout: <blob_prefix>blobs/<key> in the stack's bucket.
        assert backends.blobs.bucket == "tl-state"
        assert backends.blobs.object_key("backups/p/i/b.rdb") == "backups/blobs/backups/p/i/b.rdb"
        s3 = backends.blobs.client
        assert (s3.meta.region_name, s3.meta.endpoint_url) == ("eu-west-1", SECTION["endpoint_url"])
    finally:
        close_backends(backends)


def test_without_an_endpoint_the_agent_uses_the_regions_aws_endpoints(tmp_path: Path) -> None:
    data = {
        **aws_user_data(endpoint_url=None),
        "address": "127.0.0.1",
        "ram_mb": 64,
        "volume_path": str(tmp_path),
    }
    backends = build_backends(resolve_config(parse_user_data(data), None), ManualClock())
    try:
        assert isinstance(backends.blobs, S3BlobStore)
        assert backends.blobs.client.meta.endpoint_url == "https://s3.eu-west-1.amazonaws.com"
    finally:
        close_backends(backends)
