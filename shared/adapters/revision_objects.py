"""Revisioned records as immutable objects in an object store, CAS by create-if-absent alone.

Shared by the S3 and Swift StateStores; each gives it the four object operations it needs
(`RevisionObjects`: list names, read, create-if-absent, delete) and keeps its own layout above.

Layout under a namespace (`records/` or `leases/` beneath the store's prefix)::

    <namespace><key>/@r/000000042.json     one immutable object per revision (the last K kept)

Key segments cannot contain '@', so the revisions of `a` never mix with those of `a/r/r`.
Each object is an envelope {data, key, revision, sha256} (shared/adapters/revision_envelope.py);
a read checks all four and raises CorruptDataError when they disagree or do not parse.

Compare-and-swap (DESIGN §4). `write(key, data, N)` creates revision N+1 with a conditional
create (`If-None-Match: *`): of several writers racing for N+1 exactly one gets it, the others
get 412 and raise ConflictError. Creating N+1 alone proves nothing about N, so the writer then
lists the record and keeps its revision only if N is there (N = 0: nothing to check) and N+1 is
within K of the latest; otherwise it deletes N+1 again and raises ConflictError. That check
catches a write over a future revision, a write meant for a deleted record, and a stale writer
re-creating a revision that compaction removed (which it could only do once the record had
moved more than K revisions past it).

Where a conditional create is not atomic (Swift: two creates racing for one name can both
succeed, the later overwriting the earlier), the writer finally asks `confirm` whether the
revision still holds its bytes, and raises ConflictError (without rolling back) if not.

Reading lists the record and reads the highest revision. A revision N+1 whose N is missing is
a write being checked (it will be rolled back) or a record being deleted, and reads as no
record; that way nobody builds on a revision that is about to vanish.

Compaction: the writer of revision L deletes revision L-K-1, so the last K stay (K = 20 by
default). Revisions are deleted oldest first, so a deleted N+1 implies a deleted N.

Delete removes every revision, oldest first, and lists again until nothing is left, so a write
that raced it either lands before it (and is removed with it) or fails its check.

All of this assumes listings that show every object created before the listing began (true of
S3 since 2020, and of a one-replica Swift; see the Swift adapter for replicated clusters).

Residual hazards, all needing a writer paused for a long time between two of its requests:
a writer paused for more than K later writes between creating its revision and checking it is
told ConflictError although its revision landed (it is buried under K newer ones); and a stale
writer whose record was deleted and re-created up to exactly its expected revision writes into
the new life (ABA: revisions carry no life id); and a stale writer that dies between creating
a revision and rolling it back leaves an orphan that makes the record read as missing (or stop
at the revision below the orphan) until the record is deleted, which removes it. The local
store's moving token has none of these.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Protocol

from shared.adapters.local.store_keys import key_segments
from shared.adapters.revision_envelope import canonical_json, decode_revision, encode_revision
from shared.errors import ConflictError, CorruptDataError
from shared.observability import get_logger
from shared.ports import JSON, Record

REVISIONS_MARK = "@r"
_REVISION_NAME_RE = re.compile(r"^(\d{9})\.json$")
# A revision object vanishing between a listing and its read means a newer write or a delete.
_READ_ATTEMPTS = 50

log = get_logger("revision_objects")


class RevisionObjects(Protocol):
    """The object operations the revision protocol needs, on one bucket or container."""

    def names(self, prefix: str, *, recursive: bool) -> Iterable[str]:
        """Full names of the objects starting with `prefix`, in any order. Without
        `recursive`, only those with no '/' after the prefix."""
        ...

    def read(self, name: str) -> bytes | None:
        """The object's bytes, or None if it does not exist."""
        ...

    def create(self, name: str, body: bytes) -> str | None:
        """Store `body` as `name` only if no such object exists (`If-None-Match: *`).

        Returns a claim for `confirm`, or None if the object exists."""
        ...

    def confirm(self, name: str, claim: str) -> bool:
        """Whether `name` still holds what the create that returned `claim` stored. Always
        true where conditional creates are atomic (S3); on Swift, two creates racing for one
        name can both succeed and the later overwrites the earlier (see the Swift store)."""
        ...

    def delete(self, name: str) -> None:
        """Remove the object; a missing one is not an error."""
        ...


def revision_name(revision: int) -> str:
    return f"{revision:09d}.json"


def live_revision(revisions: list[int]) -> int | None:
    """The latest committed revision among `revisions` (sorted), or None (see module doc)."""
    if not revisions:
        return None
    top = revisions[-1]
    if top > 1 and (len(revisions) < 2 or revisions[-2] != top - 1):
        return None
    return top


class RevisionObjectLog:
    """Revisioned records under one namespace prefix (records or leases) of an object store."""

    def __init__(self, objects: RevisionObjects, namespace: str, kept: int) -> None:
        self._objects = objects
        self._namespace = namespace  # ends with '/'
        self._kept = kept

    def revisions_prefix(self, key: str) -> str:
        key_segments(key)
        return f"{self._namespace}{key}/{REVISIONS_MARK}/"

    def object_name(self, key: str, revision: int) -> str:
        return self.revisions_prefix(key) + revision_name(revision)

    def _revisions(self, prefix: str) -> list[int]:
        """Revision numbers stored under `prefix`, ascending."""
        found: list[int] = []
        for name in self._objects.names(prefix, recursive=False):
            match = _REVISION_NAME_RE.fullmatch(name[len(prefix) :])
            if match:
                found.append(int(match.group(1)))
        found.sort()
        return found

    def latest_revision(self, key: str) -> int | None:
        return live_revision(self._revisions(self.revisions_prefix(key)))

    def read(self, key: str) -> Record | None:
        prefix = self.revisions_prefix(key)
        for _ in range(_READ_ATTEMPTS):
            latest = live_revision(self._revisions(prefix))
            if latest is None:
                return None
            raw = self._objects.read(prefix + revision_name(latest))
            if raw is None:
                continue  # compacted or deleted since we listed: look again
            return decode_revision(key, latest, raw)
        raise CorruptDataError(key, "its latest revision keeps vanishing before it can be read")

    def write(self, key: str, data: JSON, expected_revision: int) -> Record:
        if isinstance(expected_revision, bool) or not isinstance(expected_revision, int):
            raise TypeError(f"expected_revision must be an int, got {expected_revision!r}")
        if expected_revision < 0:
            raise ValueError(f"expected_revision must be >= 0, got {expected_revision}")
        prefix = self.revisions_prefix(key)
        body = canonical_json(data)
        new = expected_revision + 1
        new_name = prefix + revision_name(new)
        claim = self._objects.create(new_name, encode_revision(key, new, body))
        if claim is None:
            raise ConflictError(key, expected_revision, self.latest_revision(key))
        revisions = self._revisions(prefix)
        present = set(revisions)
        latest = revisions[-1] if revisions else new
        lost = new not in present  # removed by a delete racing this write
        if (
            lost
            or (expected_revision and expected_revision not in present)
            or latest - new > self._kept
        ):
            self._objects.delete(new_name)
            raise ConflictError(key, expected_revision, live_revision(revisions))
        if not self._objects.confirm(new_name, claim):
            # A racing create overwrote ours: the revision is the other writer's, not ours to
            # roll back.
            raise ConflictError(key, expected_revision, new)
        self._compact(prefix, new)
        stored: JSON = json.loads(body)  # what a get returns; the caller's dict stays theirs
        return Record(key, new, stored)

    def _compact(self, prefix: str, latest: int) -> None:
        doomed = latest - self._kept - 1
        if doomed < 1:
            return
        try:
            self._objects.delete(prefix + revision_name(doomed))
        except Exception as exc:  # best effort: a later delete() sweeps what is left
            log.warning("compaction failed", extra={"key": prefix, "error": str(exc)})

    def remove(self, key: str) -> None:
        prefix = self.revisions_prefix(key)
        while True:
            revisions = self._revisions(prefix)
            if not revisions:
                return
            for revision in revisions:  # oldest first: see the module docstring
                self._objects.delete(prefix + revision_name(revision))

    def keys(self, prefix: str) -> list[str]:
        """Live keys starting with `prefix` (a record being deleted may still show)."""
        marker = f"/{REVISIONS_MARK}/"
        found: set[str] = set()
        for full_name in self._objects.names(self._namespace + prefix, recursive=True):
            name = full_name[len(self._namespace) :]
            key, mark, rest = name.rpartition(marker)
            if mark and key.startswith(prefix) and _REVISION_NAME_RE.fullmatch(rest):
                found.add(key)
        return sorted(found)
