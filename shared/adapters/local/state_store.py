"""The local StateStore: revisioned JSON records in a directory tree, safe across processes.

Layout under `root`::

    records/<key>/@r/000000042.<write-id>.json   immutable revision files (the last K kept)
    records/<key>/@r/@000000042.<write-id>       the head token: an empty file whose name says
                                                 which revision is the latest
    leases/<name>/@r/...                         leases: records of {owner, expires_at, token}
    staging/  trash/                             records being created / being deleted

Compare-and-swap. Writing revision N+1 over N: write the new revision file under a name no other
writer can choose (`<N+1>.<random write-id>.json`), then `rename(@N.<id>, @<N+1>.<new-id>)`.
`rename` needs its source to exist, and of several writers renaming the same token exactly one
succeeds; the others get ENOENT and raise ConflictError. A reader lists the directory, finds the
token and reads the file it names, so no reader ever sees a half-written revision. Creating a
record (revision 1) is `rename(staging/<dir>, records/<key>/@r)`, which fails when the record
directory already exists.

Why a moving token rather than create-if-absent of `<N+1>.json` (DESIGN §4, which object stores
need): compaction deletes old revision files, and a deleted name can be created again. A writer
that checked "N exists" and was then paused while others wrote K more revisions and compacted N
and N+1 would succeed in creating N+1 again and report success for a lost update. Here the
compare-and-swap never depends on a name that compaction removes, and because tokens carry a
random write-id, a record deleted and created again can never accept a write meant for its
previous life (no ABA).

Compaction: after writing revision N, the writer removes revision files <= N - K it saw in its
listing (usually exactly one), so the last K revisions stay as an audit trail; the latest is never
removed. A file left by a writer that crashed is removed once it falls out of the window.

Delete: `rename(records/<key>/@r, trash/<id>)`, then remove the tree. The rename is the moment of
deletion: afterwards `get` returns None until `put(key, ..., expected_revision=0)` creates the
record again. A put racing a delete either lands before it (and is deleted with the record) or
raises ConflictError; a put with revision 0 after the rename creates a new record.

Leases are records in their own namespace: acquiring, renewing and releasing are each one
compare-and-swap on the lease's record, with expiry judged by the injected clock. The fencing
token grows by one whenever the lease passes to a new holder (or to the same owner after it
expired or was released); renewing keeps it.

Durability (see `Durability`). Process crashes never need an fsync: the page cache is shared by
all processes and every step is one atomic rename, so every mode is crash-safe. fsync is about
power loss. The default, DATA, fsyncs each revision file before the token moves, so after a power
loss a surviving token never names an unwritten file: each record comes back at a complete
revision, at worst a few seconds older than its last acknowledged write (ext4 commits its
journal every 5 s). FULL also fsyncs the directory after the move, so nothing acknowledged is
lost, at the price of a second journal commit per write (0.6 to 0.8 of DATA's write rate here;
bench/store.py measures both). The local profile is one machine whose engine steps are
redelivered and idempotent, so DATA is the default; FULL is there for whoever wires the store
and wants it. DATA does not reach 2000 writes/s on this machine's disk (see bench/store.py).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from shared.adapters.local.store_keys import key_segments, keys_with_entry
from shared.adapters.revision_envelope import canonical_json, decode_revision, encode_revision
from shared.adapters.revision_leases import RevisionLeases
from shared.clock import SystemClock
from shared.errors import (
    ConflictError,
    CorruptDataError,
)
from shared.observability import get_logger
from shared.ports import JSON, Clock, Lease, Record

REVISIONS_DIR = "@r"
TOKEN_PREFIX = "@"
DATA_SUFFIX = ".json"
# A staging directory older than this belongs to a creator that died; younger ones may be in use.
STALE_STAGING_SECONDS = 3600.0
# Listing a directory while a token is renamed may, rarely, show neither name; look again.
_LISTING_ATTEMPTS = 100

log = get_logger("state_store")


class Durability(StrEnum):
    """What an acknowledged write survives. Every mode survives process crashes."""

    FULL = "full"
    """fsync the revision file before committing and the directory after: survives power loss."""
    DATA = "data"
    """fsync the revision file only: a power loss may roll a record back a few seconds (to a
    complete earlier revision), never to a revision whose bytes were not written."""
    NONE = "none"
    """no fsync: a power loss may leave a record whose latest revision is unreadable
    (reported as CorruptDataError, never returned as garbage)."""


@dataclass(frozen=True)
class _Head:
    revision: int
    write_id: str

    @property
    def token_name(self) -> str:
        return f"{TOKEN_PREFIX}{self.revision:09d}.{self.write_id}"

    @property
    def data_name(self) -> str:
        return f"{self.revision:09d}.{self.write_id}{DATA_SUFFIX}"


@dataclass(frozen=True)
class _Listing:
    head: _Head | None
    data_files: list[tuple[int, str]]

    @classmethod
    def parse(cls, names: list[str]) -> _Listing:
        head: _Head | None = None
        data_files: list[tuple[int, str]] = []
        for name in names:
            if name.startswith(TOKEN_PREFIX):
                revision, _, write_id = name[len(TOKEN_PREFIX) :].partition(".")
                if revision.isdigit() and write_id:
                    candidate = _Head(int(revision), write_id)
                    # Two tokens are only seen while one is being renamed: the newer one won.
                    if head is None or candidate.revision > head.revision:
                        head = candidate
            elif name.endswith(DATA_SUFFIX):
                revision = name.partition(".")[0]
                if revision.isdigit():
                    data_files.append((int(revision), name))
        return cls(head, data_files)


def _write_id() -> str:
    return secrets.token_hex(8)


def _write_new_file(path: str, payload: bytes) -> int:
    """Create `path` (it must not exist) holding `payload`; returns the open descriptor."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        view = memoryview(payload)
        while view:
            view = view[os.write(fd, view) :]
    except BaseException:
        os.close(fd)
        raise
    return fd


def fsync_directory(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_quietly(path: str | Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


class _RevisionLog:
    """Revisioned records under one namespace directory (records or leases)."""

    def __init__(
        self, namespace: Path, staging: Path, trash: Path, kept: int, durability: Durability
    ) -> None:
        self.namespace = namespace
        self._namespace = str(namespace)
        self._staging = staging
        self._trash = trash
        self._kept = kept
        self._sync_data = durability in (Durability.FULL, Durability.DATA)
        self._sync_dir = durability is Durability.FULL

    def revisions_dir(self, key: str) -> str:
        # Plain strings on the hot path: pathlib costs as much as the syscalls here.
        return os.path.join(self._namespace, *key_segments(key), REVISIONS_DIR)

    def _scan(self, key: str, revisions: str) -> _Listing | None:
        """The record's directory listing, or None when the record does not exist."""
        for _ in range(_LISTING_ATTEMPTS):
            try:
                listing = _Listing.parse(os.listdir(revisions))
            except FileNotFoundError:
                return None
            if listing.head is not None:
                return listing
        raise CorruptDataError(key, f"{revisions} has no head token")

    def head(self, key: str) -> _Head | None:
        listing = self._scan(key, self.revisions_dir(key))
        return None if listing is None else listing.head

    def latest_revision(self, key: str) -> int | None:
        head = self.head(key)
        return None if head is None else head.revision

    def read(self, key: str) -> Record | None:
        revisions = self.revisions_dir(key)
        missed: _Head | None = None
        while True:
            listing = self._scan(key, revisions)
            if listing is None or listing.head is None:
                return None
            head = listing.head
            try:
                with open(f"{revisions}/{head.data_name}", "rb") as f:
                    raw = f.read()
            except FileNotFoundError:
                # Compacted or deleted since we listed (the token has moved on), unless the
                # same token still names it: then the file is lost.
                if head == missed:
                    raise CorruptDataError(
                        key, f"revision {head.revision} has no data file"
                    ) from None
                missed = head
                continue
            return decode_revision(key, head.revision, raw)

    def write(self, key: str, data: JSON, expected_revision: int) -> Record:
        if isinstance(expected_revision, bool) or not isinstance(expected_revision, int):
            raise TypeError(f"expected_revision must be an int, got {expected_revision!r}")
        if expected_revision < 0:
            raise ValueError(f"expected_revision must be >= 0, got {expected_revision}")
        revisions = self.revisions_dir(key)
        body = canonical_json(data)
        payload = encode_revision(key, expected_revision + 1, body)
        if expected_revision == 0:
            self._create(key, revisions, payload)
        else:
            self._advance(key, revisions, payload, expected_revision)
        stored: JSON = json.loads(body)  # what a get returns; the caller's dict stays theirs
        return Record(key, expected_revision + 1, stored)

    def _create(self, key: str, revisions: str, payload: bytes) -> None:
        head = _Head(1, _write_id())
        stage = f"{self._staging}/{head.write_id}"
        os.mkdir(stage)
        try:
            fd = _write_new_file(f"{stage}/{head.data_name}", payload)
            try:
                if self._sync_data:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.close(os.open(f"{stage}/{head.token_name}", os.O_WRONLY | os.O_CREAT | os.O_EXCL))
            if self._sync_dir:
                fsync_directory(stage)
            parent = os.path.dirname(revisions)
            while True:
                try:
                    os.makedirs(parent, exist_ok=True)
                except FileExistsError:
                    continue  # it existed, then a delete pruned it before makedirs looked again
                try:
                    os.rename(stage, revisions)
                    break
                except FileNotFoundError:
                    if not os.path.isdir(stage):
                        raise  # swept as abandoned (this process was stopped for an hour)
                    continue  # an emptied parent was pruned by a delete; make it again
                except OSError as exc:
                    if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                        raise ConflictError(key, 0, self.latest_revision(key)) from None
                    raise
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
        if self._sync_dir:
            fsync_directory(parent)

    def _advance(self, key: str, revisions: str, payload: bytes, expected: int) -> None:
        listing = self._scan(key, revisions)
        if listing is None or listing.head is None:
            raise ConflictError(key, expected, None)
        current = listing.head
        if current.revision != expected:
            raise ConflictError(key, expected, current.revision)
        new = _Head(expected + 1, _write_id())
        data_path = f"{revisions}/{new.data_name}"
        current_token = f"{revisions}/{current.token_name}"
        try:
            fd = _write_new_file(data_path, payload)
        except FileNotFoundError:  # the record was deleted since we listed it
            raise ConflictError(key, expected, self.latest_revision(key)) from None
        try:
            try:
                # Skip the costly fsync when we have already lost the race.
                if self._sync_data and os.path.exists(current_token):
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(current_token, f"{revisions}/{new.token_name}")
        except FileNotFoundError:
            _unlink_quietly(data_path)
            raise ConflictError(key, expected, self.latest_revision(key)) from None
        except BaseException:
            _unlink_quietly(data_path)
            raise
        if self._sync_dir:
            fsync_directory(revisions)
        self._compact(revisions, listing, new.revision)

    def _compact(self, revisions: str, listing: _Listing, latest: int) -> None:
        cutoff = latest - self._kept
        for revision, name in listing.data_files:
            if revision <= cutoff:
                try:
                    _unlink_quietly(f"{revisions}/{name}")
                except OSError as exc:  # best effort: the next write tries again
                    log.warning(
                        "compaction failed",
                        extra={"path": f"{revisions}/{name}", "error": str(exc)},
                    )

    def remove(self, key: str) -> None:
        revisions = Path(self.revisions_dir(key))
        grave = self._trash / _write_id()
        try:
            os.rename(revisions, grave)
        except FileNotFoundError:
            return
        if self._sync_dir:
            fsync_directory(revisions.parent)
        shutil.rmtree(grave, ignore_errors=True)
        self._prune_empty_parents(revisions.parent)

    def _prune_empty_parents(self, directory: Path) -> None:
        while directory != self.namespace and self.namespace in directory.parents:
            try:
                os.rmdir(directory)
            except OSError:
                return  # not empty (another key lives below) or already gone
            directory = directory.parent

    def keys(self, prefix: str) -> list[str]:
        return keys_with_entry(self.namespace, REVISIONS_DIR, prefix)


class DirectoryStateStore:
    """StateStore on a local directory; any number of processes may share one `root`."""

    def __init__(
        self,
        root: Path,
        clock: Clock | None = None,
        revisions_kept: int = 20,
        durability: Durability | str = Durability.DATA,
    ) -> None:
        if revisions_kept < 1:
            raise ValueError(f"revisions_kept must be >= 1, got {revisions_kept}")
        self.root = Path(root)
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.revisions_kept = revisions_kept
        self.durability = Durability(durability)
        staging = self.root / "staging"
        trash = self.root / "trash"
        for directory in (self.root / "records", self.root / "leases", staging, trash):
            directory.mkdir(parents=True, exist_ok=True)
        self._records = _RevisionLog(
            self.root / "records", staging, trash, revisions_kept, self.durability
        )
        self._leases = _RevisionLog(
            self.root / "leases", staging, trash, revisions_kept, self.durability
        )
        self._lease_book = RevisionLeases(self._leases, self.clock, key_segments)
        self._sweep_leftovers(staging, trash)

    @staticmethod
    def _sweep_leftovers(staging: Path, trash: Path) -> None:
        """Remove what processes that died mid-create or mid-delete left behind."""
        for grave in trash.iterdir():
            shutil.rmtree(grave, ignore_errors=True)  # renamed there by a finished delete
        cutoff = time.time() - STALE_STAGING_SECONDS
        for stage in staging.iterdir():
            try:
                if stage.stat().st_mtime < cutoff:
                    shutil.rmtree(stage, ignore_errors=True)
            except FileNotFoundError:
                pass

    # ------------------------------------------------------------------ records
    def get(self, key: str) -> Record | None:
        return self._records.read(key)

    def put(self, key: str, data: JSON, expected_revision: int) -> Record:
        return self._records.write(key, data, expected_revision)

    def list(self, prefix: str = "") -> Iterator[str]:
        return iter(self._records.keys(prefix))

    def delete(self, key: str) -> None:
        self._records.remove(key)

    def latest_revision_path(self, key: str) -> Path | None:
        """The file holding `key`'s latest revision (for operators and fault-injection tests)."""
        revisions = self._records.revisions_dir(key)
        head = self._records.head(key)
        return None if head is None else Path(revisions, head.data_name)

    # ------------------------------------------------------------------ leases
    def acquire_lease(self, name: str, owner: str, ttl_seconds: float) -> Lease:
        return self._lease_book.acquire(name, owner, ttl_seconds)

    def renew_lease(self, lease: Lease, ttl_seconds: float) -> Lease:
        """Extend `lease`. One that expired but that nobody took since is renewed as well."""
        return self._lease_book.renew(lease, ttl_seconds)

    def release_lease(self, lease: Lease) -> None:
        self._lease_book.release(lease)
