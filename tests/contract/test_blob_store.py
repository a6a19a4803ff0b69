"""BlobStore contract: every adapter in conftest.BLOB_STORE_BACKENDS must pass all of this."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from hashlib import sha256

import pytest

from shared.errors import CorruptDataError, InvalidKeyError, NotFoundError
from shared.ports import BlobStore
from tests.contract.conftest import (
    INVALID_KEYS,
    SPAWN,
    BlobStoreBackend,
    join_all,
    put_and_get_measuring_memory,
    put_blobs,
    spawned,
)


class MidStreamError(Exception):
    """What the failing chunk source raises."""


def failing_chunks(good_chunks: int) -> Iterator[bytes]:
    for n in range(good_chunks):
        yield bytes([n % 256]) * 65536
    raise MidStreamError("the source broke")


def read_all(store: BlobStore, key: str, chunk_size: int = 1 << 20) -> bytes:
    return b"".join(store.get(key, chunk_size))


def test_put_then_get_and_head(blob_store: BlobStore) -> None:
    # Any bytes-like chunk will do, as the Iterable[bytes] of the port allows at run time.
    parts: list[bytes] = [b"hello ", b"", b"!" * 100_000]
    parts[1:1] = [bytearray(b"wide "), memoryview(b"world")]  # type: ignore[list-item]
    expected = b"".join(bytes(p) for p in parts)
    before = datetime.now(UTC) - timedelta(seconds=5)
    info = blob_store.put("backups/b1", parts, {"datastore": "mariadb", "engine-version": "10.11"})
    assert info.key == "backups/b1"
    assert info.size == len(expected)
    assert info.sha256 == sha256(expected).hexdigest()
    assert info.metadata == {"datastore": "mariadb", "engine-version": "10.11"}
    assert read_all(blob_store, "backups/b1") == expected

    head = blob_store.head("backups/b1")
    assert (head.key, head.size, head.sha256, head.metadata) == (
        info.key,
        info.size,
        info.sha256,
        info.metadata,
    )
    assert head.modified is not None
    assert before <= head.modified <= datetime.now(UTC) + timedelta(seconds=5)


def test_empty_object(blob_store: BlobStore) -> None:
    info = blob_store.put("empty", iter([]))
    assert (info.size, info.sha256) == (0, sha256(b"").hexdigest())
    assert info.metadata == {}
    assert read_all(blob_store, "empty") == b""


def test_get_streams_in_chunks_no_larger_than_asked(blob_store: BlobStore) -> None:
    data = bytes(range(256)) * 1000
    blob_store.put("k", [data])
    chunks = list(blob_store.get("k", chunk_size=4096))
    assert len(chunks) >= len(data) // 4096
    assert all(0 < len(c) <= 4096 for c in chunks)
    assert b"".join(chunks) == data


def test_put_replaces_bytes_and_metadata(blob_store: BlobStore) -> None:
    blob_store.put("k", [b"first"], {"v": "1"})
    info = blob_store.put("k", [b"second version"], {"w": "2"})
    assert read_all(blob_store, "k") == b"second version"
    head = blob_store.head("k")
    assert (head.size, head.sha256, head.metadata) == (info.size, info.sha256, {"w": "2"})
    assert info.sha256 == sha256(b"second version").hexdigest()
    assert [i.key for i in blob_store.list()] == ["k"]


def test_a_stream_begun_before_a_replace_reads_the_old_bytes(blob_store: BlobStore) -> None:
    old = b"o" * 300_000
    blob_store.put("k", [old])
    stream = blob_store.get("k", chunk_size=100_000)
    first = next(stream)
    blob_store.put("k", [b"n" * 300_000])
    assert first + b"".join(stream) == old
    assert read_all(blob_store, "k") == b"n" * 300_000


def test_missing_objects_raise_not_found(blob_store: BlobStore) -> None:
    with pytest.raises(NotFoundError) as caught:
        blob_store.head("backups/none")
    assert caught.value.key == "backups/none"
    with pytest.raises(NotFoundError):
        read_all(blob_store, "backups/none")


def test_a_put_whose_source_fails_leaves_nothing(blob_store: BlobStore) -> None:
    with pytest.raises(MidStreamError):
        blob_store.put("backups/new", failing_chunks(20), {"v": "1"})
    with pytest.raises(NotFoundError):
        blob_store.head("backups/new")
    with pytest.raises(NotFoundError):
        read_all(blob_store, "backups/new")
    assert list(blob_store.list()) == []


def test_a_failed_replace_keeps_the_previous_object(blob_store: BlobStore) -> None:
    info = blob_store.put("k", [b"keep me"], {"v": "1"})
    with pytest.raises(MidStreamError):
        blob_store.put("k", failing_chunks(20), {"v": "2"})
    assert blob_store.head("k").sha256 == info.sha256
    assert blob_store.head("k").metadata == {"v": "1"}
    assert read_all(blob_store, "k") == b"keep me"


def test_chunks_that_are_not_bytes_fail_the_put_and_leave_nothing(blob_store: BlobStore) -> None:
    with pytest.raises(TypeError):
        blob_store.put("k", [b"ok", "text is not bytes"])  # type: ignore[list-item]
    with pytest.raises(NotFoundError):
        blob_store.head("k")


def test_list_by_prefix_in_lexical_order(blob_store: BlobStore) -> None:
    keys = ["b/x", "a/b/c", "a-b", "a", "a/b", "ab", "a/c"]
    for key in keys:
        blob_store.put(key, [key.encode()], {"k": key.replace("/", "-")})
    infos = list(blob_store.list())
    assert [i.key for i in infos] == sorted(keys)
    for info in infos:
        assert info.size == len(info.key)
        assert info.sha256 == sha256(info.key.encode()).hexdigest()
        assert info.metadata == {"k": info.key.replace("/", "-")}
    assert [i.key for i in blob_store.list("a/")] == ["a/b", "a/b/c", "a/c"]
    assert [i.key for i in blob_store.list("a/b")] == ["a/b", "a/b/c"]
    assert [i.key for i in blob_store.list("zzz")] == []


def test_delete_removes_the_object_and_only_it(blob_store: BlobStore) -> None:
    for key in ("a", "a/b", "ab"):
        blob_store.put(key, [key.encode()])
    blob_store.delete("a")
    with pytest.raises(NotFoundError):
        blob_store.head("a")
    assert [i.key for i in blob_store.list()] == ["a/b", "ab"]
    assert read_all(blob_store, "a/b") == b"a/b"
    blob_store.delete("a")  # missing: not an error
    blob_store.delete("never/there")
    blob_store.put("a", [b"again"])
    assert read_all(blob_store, "a") == b"again"


@pytest.mark.parametrize("key", INVALID_KEYS, ids=repr)
def test_invalid_keys_are_refused(blob_store: BlobStore, key: str) -> None:
    with pytest.raises(InvalidKeyError):
        blob_store.put(key, [b"x"])
    with pytest.raises(InvalidKeyError):
        blob_store.head(key)
    with pytest.raises(InvalidKeyError):
        read_all(blob_store, key)
    with pytest.raises(InvalidKeyError):
        blob_store.delete(key)


@pytest.mark.parametrize(
    "metadata",
    [{"Upper": "x"}, {"with space": "x"}, {"k": "caf\u00e9"}, {"k": "line\nbreak"}, {"k": 1}],
    ids=repr,
)
def test_metadata_that_would_not_survive_every_backend_is_refused(
    blob_store: BlobStore, metadata: dict[str, str]
) -> None:
    with pytest.raises(InvalidKeyError):
        blob_store.put("k", [b"x"], metadata)
    with pytest.raises(NotFoundError):
        blob_store.head("k")


def test_damaged_bytes_are_reported_not_returned(
    blob_backend: BlobStoreBackend, blob_store: BlobStore
) -> None:
    blob_store.put("backups/b1", [b"precious" * 10_000])
    blob_backend.damage_object("backups/b1")
    with pytest.raises(CorruptDataError) as caught:
        read_all(blob_store, "backups/b1")
    assert caught.value.key == "backups/b1"


def test_objects_survive_a_restart(blob_backend: BlobStoreBackend) -> None:
    blobs = {"backups/a": b"A" * 70_000, "logs/b": b"line\n" * 1000}
    with spawned(put_blobs, [(blob_backend, blobs)]) as children:
        join_all(children, timeout=60)
    fresh = blob_backend.open()
    for key, data in blobs.items():
        assert read_all(fresh, key) == data
        assert fresh.head(key).metadata == {"origin": "child"}
    assert [i.key for i in fresh.list()] == sorted(blobs)


@pytest.mark.slow
def test_200_mb_streams_in_and_out_in_bounded_memory(blob_backend: BlobStoreBackend) -> None:
    total, chunk = 200 * 1024 * 1024, 1024 * 1024
    receive, send = SPAWN.Pipe(duplex=False)
    args = [(blob_backend, "backups/big", total, chunk, send)]
    with spawned(put_and_get_measuring_memory, args) as children:
        join_all(children, timeout=240)
        assert receive.poll(5), "the child reported nothing"
        report = receive.recv()
    print(f"peak RSS growth: {report['growth_bytes'] / 2**20:.1f} MiB")
    assert report["stored_size"] == report["received_size"] == total
    assert report["sent_sha256"] == report["stored_sha256"] == report["received_sha256"]
    assert report["growth_bytes"] < 64 * 1024 * 1024
    head = blob_backend.open().head("backups/big")
    assert (head.size, head.sha256) == (total, report["sent_sha256"])
