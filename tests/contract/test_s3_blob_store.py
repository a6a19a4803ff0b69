"""S3BlobStore's multipart path against a real moto server: what the port's contract suite
(tests/contract/test_blob_store.py) does not reach with its small objects.

Parts are sent by threads while the next is gathered (shared/adapters/aws/s3_blob_store.py):
these tests check that a reused source buffer is not sent after it changed, that parts come
back in order whatever number of them is in flight, and that a source failing after parts
went up leaves no object, no staged copy and no open multipart upload.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from shared.adapters.aws.s3_blob_store import PART_BYTES, S3BlobStore, part_bytes
from shared.errors import NotFoundError
from tests.contract.conftest import S3Location

MIB = 1024 * 1024


class SourceBrokeError(Exception):
    pass


@pytest.fixture
def location(moto_endpoint: str) -> Iterator[S3Location]:
    place = S3Location(moto_endpoint, f"s3blob-{uuid.uuid4().hex[:12]}")
    place.client().create_bucket(Bucket=place.bucket)
    try:
        yield place
    finally:
        place.remove_bucket()


def _everything_in(location: S3Location) -> tuple[list[str], list[Any]]:
    client = location.client()
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=location.bucket).get("Contents", [])]
    uploads = client.list_multipart_uploads(Bucket=location.bucket).get("Uploads", [])
    return keys, uploads


@pytest.mark.parametrize("in_flight", [1, 3])
def test_a_reused_source_buffer_is_stored_as_it_was_when_given(
    location: S3Location, in_flight: int
) -> None:
    """A source may hand out one bytearray over and over (as a read loop does): each chunk
    must be stored as it was when it was handed over, though parts go up later."""
    store = S3BlobStore(location.client(), location.bucket, "b/", parts_in_flight=in_flight)
    total_chunks = 3 * PART_BYTES // MIB + 1  # three parts and a short last one
    expected = hashlib.sha256()

    def reused_buffer() -> Iterator[bytearray]:
        buffer = bytearray(MIB)
        for n in range(total_chunks):
            buffer[:] = bytes([n % 251]) * MIB
            expected.update(buffer)
            yield buffer

    info = store.put("big", reused_buffer())  # type: ignore[arg-type]
    assert (info.size, info.sha256) == (total_chunks * MIB, expected.hexdigest())
    got = hashlib.sha256()
    for chunk in store.get("big"):
        got.update(chunk)
    assert got.hexdigest() == expected.hexdigest()
    assert store.head("big").sha256 == expected.hexdigest()
    keys, uploads = _everything_in(location)
    assert keys == ["b/blobs/big"] and uploads == []  # the staged copy went


def test_a_source_failing_after_parts_went_up_leaves_nothing(location: S3Location) -> None:
    store = S3BlobStore(location.client(), location.bucket, "b/", parts_in_flight=2)
    sent: list[int] = []

    def breaking() -> Iterator[bytes]:
        for n in range(3 * PART_BYTES // MIB + 2):
            sent.append(n)
            yield bytes([n]) * MIB
        raise SourceBrokeError

    with pytest.raises(SourceBrokeError):
        store.put("broken", breaking())
    assert len(sent) * MIB > 3 * PART_BYTES  # parts were sent before it broke
    with pytest.raises(NotFoundError):
        store.head("broken")
    assert _everything_in(location) == ([], [])


def test_part_sizes_grow_so_large_objects_fit_in_s3s_10000_parts() -> None:
    assert part_bytes(1) == part_bytes(1000) == PART_BYTES
    assert part_bytes(1001) == 2 * PART_BYTES
    sizes = [part_bytes(n) for n in range(1, 10_001)]
    assert sum(sizes) > 400 * 1024**3
    assert max(sizes) <= 5 * 1024**3  # S3's largest part
    assert min(sizes) >= 5 * MIB  # S3's smallest part but the last
