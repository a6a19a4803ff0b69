"""The Swift all-in-one fixture, and the Swift-specific parts of the Swift adapters that the
port contracts cannot see (segments left behind, the claim check that catches a racing create)."""

from __future__ import annotations

import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.adapters.aws.s3_client import make_s3_client
from shared.adapters.openstack.swift_blob_store import SwiftBlobStore
from shared.adapters.openstack.swift_client import SwiftContainer, tempauth_connection
from shared.adapters.openstack.swift_state_store import SwiftRevisionObjects
from tests.servers import swift as swift_server
from tests.servers.swift import SwiftEndpoint


@pytest.fixture
def container(swift_endpoint: SwiftEndpoint) -> Iterator[SwiftContainer]:
    connection = tempauth_connection(
        swift_endpoint.auth_url, swift_endpoint.user, swift_endpoint.key
    )
    client = SwiftContainer(connection.object_store, f"smoke-{uuid.uuid4().hex[:12]}")
    client.ensure()
    try:
        yield client
    finally:
        client.delete_container()


def test_the_all_in_one_answers_tempauth_and_s3(swift_endpoint: SwiftEndpoint) -> None:
    with urllib.request.urlopen(f"{swift_endpoint.proxy_url}/healthcheck", timeout=5) as reply:
        assert reply.read() == b"OK"
    connection = tempauth_connection(
        swift_endpoint.auth_url, swift_endpoint.user, swift_endpoint.key
    )
    assert connection.object_store.get_endpoint() == swift_endpoint.storage_url
    s3 = make_s3_client(
        swift_endpoint.proxy_url,
        access_key=swift_endpoint.s3_access_key,
        secret_key=swift_endpoint.s3_secret_key,
    )
    bucket = f"smoke-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    try:
        s3.put_object(Bucket=bucket, Key="k", Body=b"through s3api")
        assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"through s3api"
    finally:
        s3.delete_object(Bucket=bucket, Key="k")
        s3.delete_bucket(Bucket=bucket)


def test_a_missing_swift_venv_says_to_run_make_deps(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(swift_server, "SWIFT_VENV", tmp_path / "no-venv")
    with pytest.raises(RuntimeError, match="make deps"):
        swift_server.start_swift_all_in_one()


def test_a_create_overwritten_by_a_racing_create_is_not_confirmed(
    container: SwiftContainer,
) -> None:
    # Swift checks If-None-Match when a PUT arrives, not when it commits: two overlapping
    # creates can both succeed. Here the second one is simply unconditional.
    objects = SwiftRevisionObjects(container)
    claim = objects.create("r/000000001.json", b"{}")
    assert claim is not None
    assert objects.confirm("r/000000001.json", claim)
    assert objects.create("r/000000001.json", b"{}") is None
    container.request("PUT", "r/000000001.json", expect=(201,), data=b"{}")
    assert not objects.confirm("r/000000001.json", claim)


def _segments(container: SwiftContainer) -> list[str]:
    return [entry["name"] for entry in container.listing("store/segments/")]


def test_large_objects_leave_no_segments_behind(container: SwiftContainer) -> None:
    store = SwiftBlobStore(
        container.object_store, container.container, "store/", segment_bytes=256 * 1024
    )
    store.put("big", [b"a" * 700_000, b"b" * 700_000])
    assert len(_segments(container)) == 6  # 1.4 MB in 256 KiB segments
    store.put("big", [b"c" * 600_000])  # replaced by another large object
    assert len(_segments(container)) == 3
    assert b"".join(store.get("big", chunk_size=65536)) == b"c" * 600_000

    def broken() -> Iterator[bytes]:
        yield b"d" * 900_000
        yield b"e" * 900_000
        raise OSError("the source broke")

    with pytest.raises(OSError, match="the source broke"):
        store.put("other", broken())
    assert len(_segments(container)) == 3
    store.delete("big")
    assert _segments(container) == []
