"""The backup object format and the streaming pipelines that write and read it.

Backup: a physical stream (a process's stdout) -> zstd (multi-threaded: a `zstd -3 -T2` process
fed by splicing the tool's pipe, or python-zstandard when there is no zstd binary) ->
AES-256-GCM records -> BlobStore.put, hashing (sha256) the stored bytes and counting the
logical ones on the way.
Restore: BlobStore.get -> sha256 -> records opened -> zstd -> a sink (an extractor's stdin).
Every stage works on chunks of at most about a MiB: nothing is staged whole, on disk or in memory.

Object layout::

    header   b"TLBK" | version 0x01 | 3 zero bytes                     (8 bytes)
    record*  length (4 bytes, big-endian; top bit = final record) | sealed chunk
             (every record holds at most 1 MiB of zstd output; the final record is empty)

Each sealed chunk is AESGCM(data_key).encrypt(nonce = index as 12 big-endian bytes, compressed
bytes, aad = "troveless/backup/v1" NUL backup_id NUL index (8 bytes) final (1 byte)). The data
key is random per backup, so an index-derived nonce is never reused under one key; the
associated data binds every chunk to its backup, its place and whether it ends the stream, so
reordered, spliced, truncated or extended objects fail to open. A reader also checks, at the end,
the sha256 and size the control plane recorded for the stored bytes.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import os
import queue
import shutil
import struct
import subprocess
import threading
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, cast

import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from shared.errors import CorruptDataError, NotFoundError, TrovelessError
from shared.ports import BlobStore

MAGIC = b"TLBK\x01\x00\x00\x00"
DATA_KEY_BYTES = 32
RECORD_PLAINTEXT_BYTES = 1 << 20
TAG_BYTES = 16
_FINAL_FLAG = 0x8000_0000
_LENGTH = struct.Struct(">I")
_AAD_PREFIX = b"troveless/backup/v1\x00"
READ_CHUNK_BYTES = 1 << 20
# Chunks read ahead of the compressor: the source keeps writing while we compress and upload.
READ_AHEAD_CHUNKS = 4
COMPRESSED_AHEAD_CHUNKS = 8
ZSTD_LEVEL = 3
ZSTD_THREADS = 2
# Compress with a zstd process when the binary is there (`compressed_by_process`): measured
# 0.9-1.0x the raw `tool | zstd` pipe on a loaded 2-core machine, python-zstandard in the
# agent's process 0.5-0.8x (docs/BENCHMARKS.md).
COMPRESS_WITH_PROCESS = True
PIPE_BYTES = 1 << 20
_F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ (Linux), named here for Pythons that lack it


def zstd_binary() -> str | None:
    """The zstd command line to compress with, or None to compress in this process."""
    return shutil.which("zstd") if COMPRESS_WITH_PROCESS else None


class BackupChecksumError(TrovelessError):
    """A backup object does not match what was stored: corrupted, truncated or tampered with."""

    def __init__(self, backup_id: str, reason: str) -> None:
        self.backup_id = backup_id
        super().__init__(f"backup {backup_id}: checksum error: {reason}")


class BackupNotFoundError(TrovelessError):
    """The object of a backup is missing from the blob store."""

    def __init__(self, backup_id: str, location: str) -> None:
        self.backup_id = backup_id
        super().__init__(f"backup {backup_id}: object {location!r} not found")


class BackupSourceError(TrovelessError):
    """The process producing (or consuming) a backup stream failed."""


@dataclass(frozen=True)
class StoredBackup:
    """What an upload stored: the object's key, stored bytes and their sha256, logical bytes."""

    location: str
    size_bytes: int
    sha256: str
    data_size_bytes: int


def new_data_key() -> bytes:
    return AESGCM.generate_key(bit_length=DATA_KEY_BYTES * 8)


def _nonce(index: int) -> bytes:
    return index.to_bytes(12, "big")


def _aad(backup_id: str, index: int, final: bool) -> bytes:
    return (
        _AAD_PREFIX
        + backup_id.encode()
        + b"\x00"
        + index.to_bytes(8, "big")
        + (b"\x01" if final else b"\x00")
    )


def _check_key(data_key: bytes) -> AESGCM:
    if len(data_key) != DATA_KEY_BYTES:
        raise ValueError(f"data key: must be {DATA_KEY_BYTES} bytes, got {len(data_key)}")
    return AESGCM(data_key)


# --------------------------------------------------------------------------- writing
def read_ahead(
    source: BinaryIO, chunk_bytes: int = READ_CHUNK_BYTES, depth: int = READ_AHEAD_CHUNKS
) -> Generator[bytes, None, None]:
    """The bytes of `source` in chunks, read by a thread at most READ_AHEAD_CHUNKS ahead.

    The source process never waits for the compressor or the upload unless we are that far
    behind. Closing the iterator early tells the thread to stop; it ends after its current
    read returns (at the latest when the source process is killed and its pipe closes).
    """
    chunks: queue.Queue[bytes | BaseException | None] = queue.Queue(depth)
    stop = threading.Event()

    def pump() -> None:
        try:
            while not stop.is_set():
                chunk = source.read(chunk_bytes)
                if not chunk:
                    break
                chunks.put(chunk)
            chunks.put(None)
        except BaseException as exc:  # handed to the consumer
            chunks.put(exc)

    thread = threading.Thread(target=pump, name="backup-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            item = chunks.get()
            if item is None:
                thread.join()
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        # Room for the pump's pending put, after which it sees `stop`; never wait for it here:
        # its read may block until the caller kills the source.
        with contextlib.suppress(queue.Empty):
            for _ in range(depth + 1):
                chunks.get_nowait()


class _Sealer:
    """Seals records in order: every piece of compressed bytes, then an empty final record."""

    def __init__(self, backup_id: str, data_key: bytes) -> None:
        self._aead = _check_key(data_key)
        self._backup_id = backup_id
        self._index = 0

    def seal(self, plaintext: bytes, *, final: bool = False) -> bytes:
        sealed = self._aead.encrypt(
            _nonce(self._index), plaintext, _aad(self._backup_id, self._index, final)
        )
        self._index += 1
        return _LENGTH.pack(len(sealed) | (_FINAL_FLAG if final else 0)) + sealed


def compressed_in_process(
    chunks: Iterable[bytes], counter: list[int] | None = None
) -> Generator[bytes, None, None]:
    """zstd output for `chunks`, in pieces of at most RECORD_PLAINTEXT_BYTES (python-zstandard);
    `counter[0]` accumulates the logical bytes."""
    # A chunker hands out compressed bytes as the worker threads produce them, in pieces of
    # exactly RECORD_PLAINTEXT_BYTES (compressobj would hold them back until flush()).
    compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, threads=ZSTD_THREADS).chunker(
        chunk_size=RECORD_PLAINTEXT_BYTES
    )
    for chunk in chunks:
        if counter is not None:
            counter[0] += len(chunk)
        yield from compressor.compress(chunk)
    yield from compressor.finish()  # type: ignore[no-untyped-call]


def _widen_pipe(fd: int) -> None:
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, _F_SETPIPE_SZ, PIPE_BYTES)


def _pump(source: BinaryIO, sink_fd: int, counter: list[int]) -> None:
    """Copy `source` into `sink_fd` until its end, counting the bytes. A pipe source (a tool's
    stdout nobody has read from) is spliced, never copied through this process's memory."""
    try:
        source_fd = source.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation):
        source_fd = None
    if source_fd is not None:
        try:
            while moved := os.splice(source_fd, sink_fd, READ_CHUNK_BYTES):
                counter[0] += moved
            return
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.ENOSYS) or counter[0]:
                raise
            # Not a pipe (a regular file...): copy instead.
    while chunk := source.read(READ_CHUNK_BYTES):
        counter[0] += len(chunk)
        view = memoryview(chunk)
        while view:
            view = view[os.write(sink_fd, view) :]


def compressed_by_process(
    source: BinaryIO, zstd: str, counter: list[int] | None = None
) -> Generator[bytes, None, None]:
    """zstd output for `source`, in pieces of at most RECORD_PLAINTEXT_BYTES, from a `zstd`
    process that a thread feeds (spliced from a tool's stdout); `counter[0]` accumulates the
    logical bytes. The frames are those the library makes; the compression runs outside this
    process, in parallel with it, and competes for no lock of ours."""
    proc = subprocess.Popen(
        [zstd, f"-{ZSTD_LEVEL}", f"-T{ZSTD_THREADS}", "-q", "-c"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        close_fds=True,
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    for pipe in (proc.stdin, proc.stdout):
        _widen_pipe(pipe.fileno())
    fed = counter if counter is not None else [0]
    failure: list[BaseException] = []

    def feed() -> None:
        assert proc.stdin is not None
        try:
            _pump(source, proc.stdin.fileno(), fed)
        except BaseException as exc:  # handed to the consumer
            failure.append(exc)
        finally:
            with contextlib.suppress(OSError):
                proc.stdin.close()

    feeder = threading.Thread(target=feed, name="backup-zstd-feed", daemon=True)
    feeder.start()
    # zstd's output is drained by a thread up to COMPRESSED_AHEAD_CHUNKS ahead: sealing and
    # storing a record must not stall zstd (and through it the tool) on a busy machine.
    output = read_ahead(
        cast(BinaryIO, proc.stdout), RECORD_PLAINTEXT_BYTES, COMPRESSED_AHEAD_CHUNKS
    )
    try:
        yield from output
        # zstd's own failure first: the feeder's broken pipe would only be its consequence.
        if proc.wait() != 0:
            detail = proc.stderr.read().decode(errors="replace")[-500:]
            raise BackupSourceError(f"zstd failed with exit code {proc.returncode}: {detail}")
        feeder.join()
        if failure:
            raise failure[0]
    finally:
        output.close()
        if proc.poll() is None:
            # Ended early (the upload failed): zstd dies, so its stdin closes and the feeder's
            # write fails; the feeder ends at the latest when the source's writer is killed.
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def sealed_stream(
    pieces: Generator[bytes, None, None],
    *,
    backup_id: str,
    data_key: bytes,
    on_end: Callable[[], None] = lambda: None,
) -> Generator[bytes, None, None]:
    """The stored form of compressed `pieces`: header, then sealed records.

    `on_end` runs once the pieces are exhausted and before the final record: it may raise (the
    source process failed), and then the stream never ends well, so no put commits it.
    """
    sealer = _Sealer(backup_id, data_key)
    yield MAGIC
    try:
        for piece in pieces:
            yield sealer.seal(piece)
    finally:
        pieces.close()  # an early end stops the compressor (and its process) at once
    on_end()
    yield sealer.seal(b"", final=True)


def encrypted_stream(
    chunks: Iterable[bytes],
    *,
    backup_id: str,
    data_key: bytes,
    on_end: Callable[[], None] = lambda: None,
    counter: list[int] | None = None,
) -> Generator[bytes, None, None]:
    """The stored form of the logical stream `chunks`, compressed in this process (see
    `sealed_stream`); `counter[0]` accumulates the logical bytes read."""
    return sealed_stream(
        compressed_in_process(chunks, counter),
        backup_id=backup_id,
        data_key=data_key,
        on_end=on_end,
    )


def upload_backup(
    blobs: BlobStore,
    source: BinaryIO,
    *,
    backup_id: str,
    location: str,
    data_key: bytes,
    on_end: Callable[[], None] = lambda: None,
    metadata: dict[str, str] | None = None,
) -> StoredBackup:
    """Stream `source` (compressed, encrypted) into `location`. `on_end` runs at the source's
    end before the object commits (see `sealed_stream`); on any error the BlobStore leaves
    nothing behind. A pipe `source` must not have been read from (it is spliced by fd)."""
    counter = [0]
    digest = hashlib.sha256()
    stored = 0

    def hashed(stream: Iterable[bytes]) -> Iterator[bytes]:
        nonlocal stored
        for piece in stream:
            digest.update(piece)
            stored += len(piece)
            yield piece

    zstd = zstd_binary()
    source_chunks = None
    if zstd is not None:
        pieces = compressed_by_process(source, zstd, counter)
    else:
        source_chunks = read_ahead(source)
        pieces = compressed_in_process(source_chunks, counter)
    stream = sealed_stream(pieces, backup_id=backup_id, data_key=data_key, on_end=on_end)
    try:
        info = blobs.put(location, hashed(stream), metadata)
    finally:
        stream.close()
        pieces.close()
        if source_chunks is not None:
            source_chunks.close()  # stops the read-ahead thread when the put ended early
    if info.sha256 != digest.hexdigest() or info.size != stored:
        # The store saw other bytes than we sent: never report a backup we cannot vouch for.
        blobs.delete(location)
        raise BackupChecksumError(backup_id, "the blob store stored other bytes than were sent")
    return StoredBackup(location, stored, digest.hexdigest(), counter[0])


# --------------------------------------------------------------------------- reading
class _Opener:
    """Parses records out of stored bytes and opens them in order; checks the stream ends with
    a final record and nothing after it."""

    def __init__(self, backup_id: str, data_key: bytes) -> None:
        self._aead = _check_key(data_key)
        self._backup_id = backup_id
        self._buffer = bytearray()
        self._index = 0
        self._header_seen = False
        self.finished = False

    def feed(self, data: bytes) -> Iterator[bytes]:
        self._buffer += data
        if not self._header_seen:
            if len(self._buffer) < len(MAGIC):
                return
            if bytes(self._buffer[: len(MAGIC)]) != MAGIC:
                raise BackupChecksumError(self._backup_id, "not a troveless backup object")
            del self._buffer[: len(MAGIC)]
            self._header_seen = True
        while len(self._buffer) >= _LENGTH.size:
            if self.finished:
                raise BackupChecksumError(self._backup_id, "bytes after the final record")
            (word,) = _LENGTH.unpack_from(self._buffer)
            final = bool(word & _FINAL_FLAG)
            length = word & ~_FINAL_FLAG
            if not TAG_BYTES <= length <= RECORD_PLAINTEXT_BYTES + TAG_BYTES:
                raise BackupChecksumError(self._backup_id, f"record {self._index} is malformed")
            if len(self._buffer) < _LENGTH.size + length:
                return
            sealed = bytes(self._buffer[_LENGTH.size : _LENGTH.size + length])
            del self._buffer[: _LENGTH.size + length]
            try:
                plaintext = self._aead.decrypt(
                    _nonce(self._index), sealed, _aad(self._backup_id, self._index, final)
                )
            except InvalidTag:
                raise BackupChecksumError(
                    self._backup_id,
                    f"record {self._index} does not authenticate (tampered with, reordered, "
                    "or not encrypted with this backup's key)",
                ) from None
            self._index += 1
            self.finished = final
            if plaintext:
                yield plaintext

    def close(self) -> None:
        if not self.finished or self._buffer:
            raise BackupChecksumError(self._backup_id, "the object is truncated")


class _IteratorReader(io.RawIOBase):
    """A readable file over an iterator of byte chunks (what zstd's stream_reader takes)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._current = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        while not self._current:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._current = chunk
        size = min(len(buffer), len(self._current))
        buffer[:size] = self._current[:size]
        self._current = self._current[size:]
        return size


def _stored_chunks(
    blobs: BlobStore, backup_id: str, location: str, sha256: str, size_bytes: int
) -> Iterator[bytes]:
    """The object's bytes; at the end, BackupChecksumError unless they hash to `sha256`."""
    digest = hashlib.sha256()
    seen = 0
    try:
        for chunk in blobs.get(location):
            digest.update(chunk)
            seen += len(chunk)
            if seen > size_bytes:
                raise BackupChecksumError(backup_id, f"the object is over {size_bytes} bytes")
            yield chunk
    except NotFoundError:
        raise BackupNotFoundError(backup_id, location) from None
    except CorruptDataError as exc:
        raise BackupChecksumError(backup_id, f"the blob store says: {exc.reason}") from None
    if seen != size_bytes:
        raise BackupChecksumError(
            backup_id, f"the object holds {seen} bytes, the backup recorded {size_bytes}"
        )
    if digest.hexdigest() != sha256.lower():
        raise BackupChecksumError(backup_id, "the object's sha256 differs from the recorded one")


def decrypted_stream(
    blobs: BlobStore,
    *,
    backup_id: str,
    location: str,
    sha256: str,
    size_bytes: int,
    data_key: bytes,
) -> Iterator[bytes]:
    """The logical stream of a stored backup, in chunks of at most READ_CHUNK_BYTES.

    Everything is verified as it streams; the last check (sha256 and size of the whole object,
    the final record) happens when the stream ends, so a consumer must treat what it wrote as
    unverified until this iterator is exhausted without raising.
    """
    opener = _Opener(backup_id, data_key)

    def compressed() -> Iterator[bytes]:
        for chunk in _stored_chunks(blobs, backup_id, location, sha256, size_bytes):
            yield from opener.feed(chunk)
        opener.close()

    reader = zstandard.ZstdDecompressor().stream_reader(
        io.BufferedReader(_IteratorReader(compressed()), READ_CHUNK_BYTES),
        read_size=READ_CHUNK_BYTES,
        read_across_frames=True,
    )
    try:
        while True:
            try:
                data = reader.read(READ_CHUNK_BYTES)
            except zstandard.ZstdError as exc:
                raise BackupChecksumError(
                    backup_id, f"the stream does not decompress: {exc}"
                ) from None
            if not data:
                break
            yield data
    finally:
        reader.close()  # type: ignore[no-untyped-call]


def download_backup(
    blobs: BlobStore,
    sink: BinaryIO,
    *,
    backup_id: str,
    location: str,
    sha256: str,
    size_bytes: int,
    data_key: bytes,
) -> int:
    """Write the logical stream of a backup into `sink`; returns its bytes. Raises at the end
    when the object does not verify: what `sink` got must then be thrown away."""
    written = 0
    for data in decrypted_stream(
        blobs,
        backup_id=backup_id,
        location=location,
        sha256=sha256,
        size_bytes=size_bytes,
        data_key=data_key,
    ):
        sink.write(data)
        written += len(data)
    return written
