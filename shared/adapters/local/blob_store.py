"""The local BlobStore: large objects streamed into a directory tree, never held in memory.

Layout under `root`::

    blobs/<key>/@meta                 the object's sidecar: version, size, sha256, metadata, time
    blobs/<key>/@<version>.data       the bytes of the version `@meta` names
    blobs/<key>/@<version>.part       a version still being written (or left by a dead writer)
    trash/                            sidecars of objects being deleted (a delete that dies
                                      half-way is finished when a store is next opened)

`put` streams the chunks into a `.part` file (hashing as it writes), fsyncs it, renames it to
`.data`, writes the sidecar to a temporary file and renames it over `@meta`. That last rename is
the moment the new version becomes visible, whole; before it, readers see the previous version
(or nothing), and if anything fails before it the files written so far are removed. A reader
opens the `.data` file `@meta` names and keeps it open, so replacing or deleting the object
does not cut a stream short. `get` re-hashes what it streams and raises CorruptDataError at the
end when the bytes do not match the sidecar.

Versions replaced by a concurrent writer (two puts on one key) and files of writers that died
are removed by later puts on the same key once they are old enough not to be in use.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import time
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from hashlib import sha256
from pathlib import Path
from typing import Any

from shared.adapters.local.state_store import fsync_directory
from shared.adapters.local.store_keys import key_directory, keys_with_entry
from shared.clock import SystemClock
from shared.errors import CorruptDataError, InvalidKeyError, NotFoundError
from shared.ports import BlobInfo, Clock

META_NAME = "@meta"
# A .part file is appended to while its put runs; one untouched this long has no writer left.
STALE_PART_SECONDS = 3600.0
# A .data file no sidecar names is either about to be named (its put is between two renames)
# or was replaced by a concurrent put; after this long it is the latter.
STALE_DATA_SECONDS = 600.0
# A sidecar in trash this old belongs to a delete whose process died before removing the bytes.
STALE_GRAVE_SECONDS = 600.0
# Portable across S3 (x-amz-meta-*) and Swift (X-Object-Meta-*): lowercase header-safe names,
# printable ASCII values, 2 KB in all (S3's limit).
METADATA_NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,127}$"
METADATA_TOTAL_BYTES = 2048
_METADATA_NAME_RE = re.compile(METADATA_NAME_PATTERN)
_PRINTABLE_ASCII_RE = re.compile(r"^[\x20-\x7e]*$")


def validate_metadata(metadata: dict[str, str] | None) -> dict[str, str]:
    """A copy of `metadata`, or InvalidKeyError naming the entry that breaks the rules."""
    if metadata is None:
        return {}
    clean: dict[str, str] = {}
    total = 0
    for name, value in metadata.items():
        if not isinstance(name, str) or not _METADATA_NAME_RE.fullmatch(name):
            raise InvalidKeyError(repr(name), f"metadata names must match {METADATA_NAME_PATTERN}")
        if not isinstance(value, str) or not _PRINTABLE_ASCII_RE.fullmatch(value):
            raise InvalidKeyError(name, "metadata values must be printable ASCII strings")
        total += len(name) + len(value)
        clean[name] = value
    if total > METADATA_TOTAL_BYTES:
        raise InvalidKeyError(
            ",".join(sorted(clean)), f"metadata over {METADATA_TOTAL_BYTES} bytes in all"
        )
    return clean


class _BlobStream(Iterator[bytes]):
    """Chunks of one open version; checks size and sha256 against the sidecar at the end."""

    def __init__(self, file: Any, info: BlobInfo, chunk_size: int) -> None:
        self._file = file
        self._info = info
        self._chunk_size = chunk_size
        self._digest = sha256()
        self._size = 0

    def __next__(self) -> bytes:
        if self._file is None:
            raise StopIteration
        chunk: bytes = self._file.read(self._chunk_size)
        if chunk:
            self._digest.update(chunk)
            self._size += len(chunk)
            return chunk
        self.close()
        if self._size != self._info.size:
            raise CorruptDataError(
                self._info.key, f"read {self._size} bytes, the sidecar says {self._info.size}"
            )
        if self._digest.hexdigest() != self._info.sha256:
            raise CorruptDataError(self._info.key, "the bytes do not match their sha256")
        raise StopIteration

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __del__(self) -> None:
        self.close()


class DirectoryBlobStore:
    """BlobStore on a local directory; any number of processes may share one `root`.

    With `fsync` (the default) an object whose put returned survives a power loss; without it,
    only process crashes (a put is still all-or-nothing either way).
    """

    def __init__(self, root: Path, *, fsync: bool = True, clock: Clock | None = None) -> None:
        self.root = Path(root)
        self._blobs = self.root / "blobs"
        self._trash = self.root / "trash"
        self._fsync = fsync
        self.clock: Clock = clock if clock is not None else SystemClock()
        self._blobs.mkdir(parents=True, exist_ok=True)
        self._trash.mkdir(parents=True, exist_ok=True)
        self._finish_interrupted_deletes()

    def _finish_interrupted_deletes(self) -> None:
        """Remove the bytes of objects whose delete was cut short after its sidecar moved."""
        cutoff = time.time() - STALE_GRAVE_SECONDS
        for grave in self._trash.glob("*.meta"):
            try:
                if grave.stat().st_ctime > cutoff:  # ctime: when it was moved here
                    continue  # a delete may be running right now
                doc = json.loads(grave.read_bytes())
                data = key_directory(self._blobs, doc["key"]) / f"@{doc['version']}.data"
            except FileNotFoundError:
                continue
            except (ValueError, KeyError, TypeError, OSError):
                data = None  # unreadable: drop the sidecar; the next put sweeps the bytes
            if data is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(data)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(grave)

    # ------------------------------------------------------------------ writing
    def put(
        self, key: str, chunks: Iterable[bytes], metadata: dict[str, str] | None = None
    ) -> BlobInfo:
        directory = key_directory(self._blobs, key)
        user_metadata = validate_metadata(metadata)
        version = secrets.token_hex(16)
        part = directory / f"@{version}.part"
        data = directory / f"@{version}.data"
        sidecar_tmp = directory / f"{META_NAME}.{version}.tmp"
        sidecar = directory / META_NAME
        fd = self._create_in(directory, part)
        try:
            digest = sha256()
            size = 0
            try:
                for chunk in chunks:
                    view = memoryview(chunk).cast("B")
                    digest.update(view)
                    size += view.nbytes
                    while view:
                        view = view[os.write(fd, view) :]
                if self._fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(part, data)
            info = BlobInfo(key, size, digest.hexdigest(), user_metadata, self.clock.now())
            self._write_sidecar(sidecar_tmp, info, version)
            previous = self._version_quietly(sidecar)
            os.replace(sidecar_tmp, sidecar)  # the commit: from here on the object is visible
        except BaseException:
            for leftover in (part, data, sidecar_tmp):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(leftover)
            self._prune_empty_parents(directory)
            raise
        if self._fsync:
            fsync_directory(directory)
        if previous is not None and previous != version:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(directory / f"@{previous}.data")
        self._sweep(directory, keep=version)
        return info

    def _create_in(self, directory: Path, path: Path) -> int:
        """Open a new file in `directory`, making it (again, if a delete pruned it) as needed."""
        while True:
            directory.mkdir(parents=True, exist_ok=True)
            try:
                return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            except FileNotFoundError:
                continue  # an emptied directory was pruned by a concurrent delete

    def _write_sidecar(self, path: Path, info: BlobInfo, version: str) -> None:
        document = {
            "key": info.key,
            "version": version,
            "size": info.size,
            "sha256": info.sha256,
            "metadata": info.metadata,
            "modified": info.modified.isoformat() if info.modified else None,
        }
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, json.dumps(document, sort_keys=True).encode())
            if self._fsync:
                os.fsync(fd)
        finally:
            os.close(fd)

    # ------------------------------------------------------------------ reading
    def _read_sidecar(self, key: str, sidecar: Path) -> tuple[BlobInfo, str]:
        try:
            raw = sidecar.read_bytes()
        except FileNotFoundError:
            raise NotFoundError(key, "blob") from None
        try:
            doc = json.loads(raw)
            metadata = doc["metadata"]
            info = BlobInfo(
                key=doc["key"],
                size=doc["size"],
                sha256=doc["sha256"],
                metadata=dict(metadata),
                modified=datetime.fromisoformat(doc["modified"]) if doc["modified"] else None,
            )
            version = doc["version"]
            valid = (
                info.key == key
                and isinstance(info.size, int)
                and isinstance(info.sha256, str)
                and isinstance(version, str)
                and all(isinstance(v, str) for v in metadata.values())
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            valid = False
        if not valid:
            raise CorruptDataError(key, f"unreadable sidecar {sidecar}")
        return info, version

    def _version_quietly(self, sidecar: Path) -> str | None:
        try:
            version = json.loads(sidecar.read_bytes()).get("version")
        except (OSError, ValueError, AttributeError):
            return None
        return version if isinstance(version, str) else None

    def get(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        directory = key_directory(self._blobs, key)
        missed: str | None = None
        while True:
            info, version = self._read_sidecar(key, directory / META_NAME)
            try:
                file = open(directory / f"@{version}.data", "rb", buffering=0)  # noqa: SIM115
            except FileNotFoundError:
                # Replaced or deleted since we read the sidecar, unless it still names it.
                if version == missed:
                    raise CorruptDataError(key, f"version {version} has no data file") from None
                missed = version
                continue
            return _BlobStream(file, info, chunk_size)

    def data_path(self, key: str) -> Path:
        """The file holding `key`'s current bytes (for operators and fault-injection tests)."""
        directory = key_directory(self._blobs, key)
        version = self._read_sidecar(key, directory / META_NAME)[1]
        return directory / f"@{version}.data"

    def head(self, key: str) -> BlobInfo:
        return self._read_sidecar(key, key_directory(self._blobs, key) / META_NAME)[0]

    def list(self, prefix: str = "") -> Iterator[BlobInfo]:
        keys = keys_with_entry(self._blobs, META_NAME, prefix)
        return self._infos(keys)

    def _infos(self, keys: Sequence[str]) -> Iterator[BlobInfo]:
        for key in keys:
            try:
                yield self.head(key)
            except NotFoundError:
                continue  # deleted since the listing

    # ------------------------------------------------------------------ removing
    def delete(self, key: str) -> None:
        directory = key_directory(self._blobs, key)
        grave = self._trash / f"{secrets.token_hex(16)}.meta"
        try:
            os.rename(directory / META_NAME, grave)  # the moment of deletion
        except FileNotFoundError:
            return
        version = self._version_quietly(grave)
        if version is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(directory / f"@{version}.data")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(grave)
        if self._fsync:
            fsync_directory(directory)
        self._sweep(directory, keep=None)
        self._prune_empty_parents(directory)

    def _sweep(self, directory: Path, keep: str | None) -> None:
        """Remove files of dead writers and versions replaced by concurrent puts."""
        now = time.time()
        current = self._version_quietly(directory / META_NAME)
        try:
            entries = list(os.scandir(directory))
        except FileNotFoundError:
            return
        for entry in entries:
            name = entry.name
            if not name.startswith("@") or name == META_NAME:
                continue
            version = name[1:].split(".", 1)[0]
            if version in (keep, current):
                continue
            limit = STALE_DATA_SECONDS if name.endswith(".data") else STALE_PART_SECONDS
            try:
                if now - entry.stat(follow_symlinks=False).st_mtime > limit:
                    os.unlink(entry.path)
            except FileNotFoundError:
                continue

    def _prune_empty_parents(self, directory: Path) -> None:
        while directory != self._blobs and self._blobs in directory.parents:
            try:
                os.rmdir(directory)
            except OSError:
                return
            directory = directory.parent
