"""The backup object format and pipelines (guest_agent.backup.stream), without datastores."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import struct
import threading
import tracemalloc
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from guest_agent.backup import stream
from guest_agent.backup.stream import (
    MAGIC,
    READ_CHUNK_BYTES,
    BackupChecksumError,
    BackupNotFoundError,
    BackupSourceError,
    StoredBackup,
    download_backup,
    new_data_key,
    upload_backup,
)
from shared.adapters.local.blob_store import DirectoryBlobStore
from shared.errors import NotFoundError
from shared.ports import BlobInfo

MIB = 1 << 20


class MemoryBlobStore:
    """A BlobStore holding objects in a dict, without checks of its own on reads (so the
    pipeline's checks are what a test sees). `corrupt()` rewrites an object in place."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    def put(
        self, key: str, chunks: Iterable[bytes], metadata: dict[str, str] | None = None
    ) -> BlobInfo:
        data = b"".join(chunks)  # an error while iterating stores nothing
        self.objects[key] = data
        return BlobInfo(key, len(data), hashlib.sha256(data).hexdigest(), dict(metadata or {}))

    def get(self, key: str, chunk_size: int = MIB) -> Iterator[bytes]:
        if key not in self.objects:
            raise NotFoundError(key, "blob")
        data = self.objects[key]
        return iter([data[i : i + chunk_size] for i in range(0, len(data), chunk_size)])

    def head(self, key: str) -> BlobInfo:
        data = self.objects[key]
        return BlobInfo(key, len(data), hashlib.sha256(data).hexdigest(), {})

    def list(self, prefix: str = "") -> Iterator[BlobInfo]:
        return iter([self.head(k) for k in sorted(self.objects) if k.startswith(prefix)])

    def delete(self, key: str) -> None:
        self.objects.pop(key, None)


class FailingAfter:
    """Wraps a BlobStore: the put's chunk stream raises after `limit` bytes (a dying upload)."""

    def __init__(self, inner: DirectoryBlobStore, limit: int) -> None:
        self.inner = inner
        self.limit = limit

    def put(
        self, key: str, chunks: Iterable[bytes], metadata: dict[str, str] | None = None
    ) -> BlobInfo:
        def cut() -> Iterator[bytes]:
            sent = 0
            for chunk in chunks:
                if sent + len(chunk) > self.limit:
                    raise ConnectionError(f"upload broke after {sent} bytes")
                sent += len(chunk)
                yield chunk

        return self.inner.put(key, cut(), metadata)

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


def payload(size: int) -> bytes:
    """Half random, half repetitive: exercises compression both ways."""
    half = size // 2
    return os.urandom(half) + (b"troveless backup " * (size // 17 + 1))[: size - half]


def upload(
    store: object, data: bytes, backup_id: str = "b-1", key: bytes | None = None
) -> tuple[StoredBackup, bytes]:
    data_key = key or new_data_key()
    stored = upload_backup(
        store,  # type: ignore[arg-type]
        io.BytesIO(data),
        backup_id=backup_id,
        location=f"backups/{backup_id}",
        data_key=data_key,
    )
    return stored, data_key


def download(store: object, stored: StoredBackup, data_key: bytes, backup_id: str = "b-1") -> bytes:
    sink = io.BytesIO()
    download_backup(
        store,  # type: ignore[arg-type]
        sink,
        backup_id=backup_id,
        location=stored.location,
        sha256=stored.sha256,
        size_bytes=stored.size_bytes,
        data_key=data_key,
    )
    return sink.getvalue()


def records(blob: bytes) -> list[bytes]:
    """The raw records of an object (length word included)."""
    out = []
    offset = len(MAGIC)
    while offset < len(blob):
        (word,) = struct.unpack_from(">I", blob, offset)
        length = word & 0x7FFF_FFFF
        out.append(blob[offset : offset + 4 + length])
        offset += 4 + length
    return out


def as_recorded(stored: StoredBackup, blob: bytes) -> StoredBackup:
    """What a control plane would have recorded had it been handed `blob` (a forger who can
    also rewrite the record): only the records' own authentication stands in the way."""
    return StoredBackup(
        stored.location, len(blob), hashlib.sha256(blob).hexdigest(), stored.data_size_bytes
    )


# --------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("size", [0, 1, 3 * MIB + 123])
def test_round_trip_returns_the_same_bytes(tmp_path: Path, size: int) -> None:
    store = DirectoryBlobStore(tmp_path, fsync=False)
    data = payload(size)
    stored, key = upload(store, data)
    assert stored.data_size_bytes == size
    info = store.head(stored.location)
    assert (info.size, info.sha256) == (stored.size_bytes, stored.sha256)
    assert download(store, stored, key) == data


def test_stored_bytes_are_compressed_and_encrypted() -> None:
    store = MemoryBlobStore()
    data = b"SECRET-ROW " * 500_000
    stored, _ = upload(store, data)
    blob = store.objects[stored.location]
    assert blob.startswith(MAGIC)
    assert stored.size_bytes < len(data) // 50  # zstd did its work
    assert b"SECRET-ROW" not in blob


def test_each_backup_gets_its_own_ciphertext_under_a_fresh_key() -> None:
    store = MemoryBlobStore()
    data = payload(100_000)
    first, key1 = upload(store, data, "b-1")
    second, key2 = upload(store, data, "b-2")
    assert key1 != key2 and first.sha256 != second.sha256


# --------------------------------------------------------------------------- tampering
def test_a_flipped_byte_is_a_checksum_error_naming_the_backup(tmp_path: Path) -> None:
    store = DirectoryBlobStore(tmp_path, fsync=False)
    stored, key = upload(store, payload(2 * MIB), "backup-flip")
    path = store.data_path(stored.location)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(BackupChecksumError, match="backup-flip"):
        download(store, stored, key, "backup-flip")


def test_a_flipped_byte_with_a_matching_checksum_still_fails_authentication() -> None:
    store = MemoryBlobStore()
    stored, key = upload(store, payload(2 * MIB), "b-auth")
    raw = bytearray(store.objects[stored.location])
    raw[len(raw) // 3] ^= 0x80
    store.objects[stored.location] = bytes(raw)
    with pytest.raises(BackupChecksumError, match=r"b-auth.*does not authenticate"):
        download(store, as_recorded(stored, bytes(raw)), key, "b-auth")


def test_a_wrong_recorded_checksum_fails_at_the_end() -> None:
    store = MemoryBlobStore()
    stored, key = upload(store, payload(100_000), "b-sum")
    wrong = StoredBackup(stored.location, stored.size_bytes, "0" * 64, stored.data_size_bytes)
    with pytest.raises(BackupChecksumError, match=r"b-sum.*sha256"):
        download(store, wrong, key, "b-sum")


def test_truncation_at_a_record_boundary_is_detected() -> None:
    store = MemoryBlobStore()
    stored, key = upload(store, payload(5 * MIB), "b-trunc")
    blob = store.objects[stored.location]
    parts = records(blob)
    assert len(parts) >= 3
    truncated = MAGIC + b"".join(parts[:-1])
    store.objects[stored.location] = truncated
    with pytest.raises(BackupChecksumError, match=r"b-trunc.*truncated"):
        download(store, as_recorded(stored, truncated), key, "b-trunc")


def test_a_short_object_is_refused_by_size_and_checksum() -> None:
    store = MemoryBlobStore()
    stored, key = upload(store, payload(3 * MIB), "b-short")
    store.objects[stored.location] = store.objects[stored.location][:-1000]
    with pytest.raises(BackupChecksumError, match="b-short"):
        download(store, stored, key, "b-short")


def test_reordered_records_are_detected() -> None:
    store = MemoryBlobStore()
    stored, key = upload(store, payload(5 * MIB), "b-order")
    parts = records(store.objects[stored.location])
    parts[0], parts[1] = parts[1], parts[0]
    swapped = MAGIC + b"".join(parts)
    store.objects[stored.location] = swapped
    with pytest.raises(BackupChecksumError, match=r"b-order.*record 0"):
        download(store, as_recorded(stored, swapped), key, "b-order")


def test_an_object_of_another_backup_does_not_open() -> None:
    store = MemoryBlobStore()
    stored, key = upload(store, payload(100_000), "b-one")
    with pytest.raises(BackupChecksumError, match="b-two"):
        download(store, stored, key, "b-two")


def test_the_wrong_key_does_not_open() -> None:
    store = MemoryBlobStore()
    stored, _ = upload(store, payload(100_000), "b-key")
    with pytest.raises(BackupChecksumError, match="b-key"):
        download(store, stored, new_data_key(), "b-key")


def test_a_missing_object_is_backup_not_found() -> None:
    stored = StoredBackup("backups/nothing", 10, "0" * 64, 10)
    with pytest.raises(BackupNotFoundError, match="b-gone"):
        download(MemoryBlobStore(), stored, new_data_key(), "b-gone")


# --------------------------------------------------------------------------- failing uploads
def test_an_upload_failing_mid_way_leaves_nothing(tmp_path: Path) -> None:
    store = DirectoryBlobStore(tmp_path, fsync=False)
    with pytest.raises(ConnectionError):
        upload(FailingAfter(store, 2 * MIB), payload(8 * MIB), "b-fail")
    assert list(store.list()) == []
    with pytest.raises(NotFoundError):
        store.head("backups/b-fail")
    leftovers = [p for p in (tmp_path / "blobs").rglob("*") if p.is_file()]
    assert leftovers == []


def test_a_failing_source_commits_nothing(tmp_path: Path) -> None:
    store = DirectoryBlobStore(tmp_path, fsync=False)

    def source_failed() -> None:
        raise BackupSourceError("mariadb-backup failed with exit code 1")

    with pytest.raises(BackupSourceError):
        upload_backup(
            store,
            io.BytesIO(payload(3 * MIB)),
            backup_id="b-src",
            location="backups/b-src",
            data_key=new_data_key(),
            on_end=source_failed,
        )
    assert list(store.list()) == []


def test_a_read_error_of_the_source_commits_nothing(tmp_path: Path) -> None:
    store = DirectoryBlobStore(tmp_path, fsync=False)

    class BrokenSource(io.RawIOBase):
        sent = 0

        def readable(self) -> bool:
            return True

        def read(self, size: int = -1) -> bytes:
            if self.sent > 2 * MIB:
                raise OSError("the pipe broke")
            self.sent += MIB
            return os.urandom(MIB)

    with pytest.raises(OSError, match="pipe broke"):
        upload_backup(
            store,
            BrokenSource(),  # type: ignore[arg-type]
            backup_id="b-pipe",
            location="backups/b-pipe",
            data_key=new_data_key(),
        )
    assert list(store.list()) == []


# --------------------------------------------------------------------------- memory
class CountingSource(io.RawIOBase):
    """`total` bytes of incompressible data, made chunk by chunk (never whole)."""

    def __init__(self, total: int) -> None:
        self.left = total

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        n = min(self.left, READ_CHUNK_BYTES if size < 0 else size)
        self.left -= n
        return os.urandom(n)


class DiscardingSink(io.RawIOBase):
    def __init__(self) -> None:
        self.written = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.written += len(data)
        return len(data)


@pytest.mark.slow
def test_memory_stays_bounded_for_a_large_stream(tmp_path: Path) -> None:
    total = 64 * MIB
    store = DirectoryBlobStore(tmp_path, fsync=False)
    key = new_data_key()
    tracemalloc.start()
    try:
        stored = upload_backup(
            store,
            CountingSource(total),  # type: ignore[arg-type]
            backup_id="b-big",
            location="backups/b-big",
            data_key=key,
        )
        _, upload_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        sink = DiscardingSink()
        download_backup(
            store,
            sink,  # type: ignore[arg-type]
            backup_id="b-big",
            location=stored.location,
            sha256=stored.sha256,
            size_bytes=stored.size_bytes,
            data_key=key,
        )
        _, download_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert stored.data_size_bytes == total and sink.written == total
    # A few MiB chunks in flight, never the stream: a quarter of it would be a leak.
    assert upload_peak < 16 * MIB, upload_peak
    assert download_peak < 16 * MIB, download_peak


# --------------------------------------------------------------------------- compressors
def test_a_pipe_source_is_spliced_into_zstd_and_counted(tmp_path: Path) -> None:
    if stream.zstd_binary() is None:
        pytest.skip("no zstd binary: the guest compresses in process")
    data = payload(5 * MIB + 123)
    read_end, write_end = os.pipe()

    def produce() -> None:
        with os.fdopen(write_end, "wb") as sink:
            sink.write(data)

    producer = threading.Thread(target=produce)
    producer.start()
    store = DirectoryBlobStore(tmp_path, fsync=False)
    key = new_data_key()
    try:
        with os.fdopen(read_end, "rb") as source:
            stored = upload_backup(
                store, source, backup_id="b-pipe", location="backups/b-pipe", data_key=key
            )
    finally:
        producer.join()
    assert stored.data_size_bytes == len(data)
    assert download(store, stored, key, "b-pipe") == data


def test_without_a_zstd_binary_the_guest_compresses_in_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stream, "COMPRESS_WITH_PROCESS", False)
    assert stream.zstd_binary() is None
    data = payload(3 * MIB)
    store = DirectoryBlobStore(tmp_path, fsync=False)
    stored, key = upload(store, data)
    assert stored.data_size_bytes == len(data)
    assert download(store, stored, key) == data
    # Both compressors write the same format: either restores the other's objects.
    monkeypatch.setattr(stream, "COMPRESS_WITH_PROCESS", True)
    assert download(store, stored, key) == data


def test_a_failing_zstd_process_commits_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stream, "zstd_binary", lambda: shutil.which("false") or "/bin/false")
    store = DirectoryBlobStore(tmp_path, fsync=False)
    with pytest.raises(BackupSourceError, match="zstd failed"):
        upload(store, payload(2 * MIB))
    assert list(store.list()) == []


def test_an_upload_failing_mid_way_stops_the_zstd_process(tmp_path: Path) -> None:
    if stream.zstd_binary() is None:
        pytest.skip("no zstd binary: the guest compresses in process")
    before = _zstd_children()
    store = FailingAfter(DirectoryBlobStore(tmp_path, fsync=False), 256 * 1024)
    with pytest.raises(ConnectionError):
        upload(store, os.urandom(4 * MIB), backup_id="b-fail")
    assert _zstd_children() == before


def _zstd_children() -> set[int]:
    """Pids of this process's zstd children still alive (zombies included)."""
    found = set()
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(
                line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line
            )
        except OSError:
            continue
        if fields.get("PPid", "").strip() == str(os.getpid()) and fields.get("Name") == "zstd":
            found.add(int(status.parent.name))
    return found
