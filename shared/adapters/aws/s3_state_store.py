"""The S3 StateStore: revisioned JSON records as immutable objects, CAS by create-if-absent.

Layout under the bucket and `prefix`::

    records/<key>/@r/000000042.json     one immutable object per revision (the last K kept)
    leases/<name>/@r/000000007.json     leases: records of {owner, expires_at, token}

Key segments cannot contain '@', so the revisions of `a` never mix with those of `a/r/r`.
Each object is an envelope {data, key, revision, sha256}; a read checks all four and raises
CorruptDataError when they disagree or do not parse.

Compare-and-swap (DESIGN §4). `put(key, data, N)` creates revision N+1 with
`PutObject(IfNoneMatch='*')`: of several writers racing for N+1 exactly one gets it, the others
get 412 and raise ConflictError. Creating N+1 alone proves nothing about N, so the writer then
lists the record and keeps its revision only if N is there (N = 0: nothing to check) and N+1 is
within K of the latest; otherwise it deletes N+1 again and raises ConflictError. That check
catches a write over a future revision, a write meant for a deleted record, and a stale writer
re-creating a revision that compaction removed (which it could only do once the record had
moved more than K revisions past it).

Reading lists the record and reads the highest revision. A revision N+1 whose N is missing is
a write being checked (it will be rolled back) or a record being deleted, and reads as no
record; that way nobody builds on a revision that is about to vanish.

Compaction: the writer of revision L deletes revision L-K-1, so the last K stay (K = 20 by
default). Revisions are deleted oldest first, so a deleted N+1 implies a deleted N.

Delete removes every revision, oldest first, and lists again until nothing is left, so a write
that raced it either lands before it (and is removed with it) or fails its check.

Residual hazards, all needing a writer paused for a long time between two of its requests:
a writer paused for more than K later writes between creating its revision and checking it is
told ConflictError although its revision landed (it is buried under K newer ones); and a stale
writer whose record was deleted and re-created up to exactly its expected revision writes into
the new life (ABA: revisions carry no life id); and a stale writer that dies between creating
a revision and rolling it back leaves an orphan that makes the record read as missing (or stop
at the revision below the orphan) until the record is deleted, which removes it. The local
store's moving token has none of these.

Leases are records in their own namespace, exactly as in the local store: each acquire, renew
and release is one compare-and-swap, expiry judged by the injected clock, and the fencing token
grows whenever the lease passes to a new holder.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from botocore.exceptions import ClientError

from shared.adapters.aws.s3_client import (
    ensure_bucket,
    error_code,
    http_status,
    is_not_found,
    normalized_prefix,
)
from shared.adapters.local.store_keys import key_segments
from shared.adapters.revision_envelope import canonical_json, decode_revision, encode_revision
from shared.adapters.revision_leases import RevisionLeases
from shared.clock import SystemClock
from shared.errors import ConflictError, CorruptDataError
from shared.observability import get_logger
from shared.ports import JSON, Clock, Lease, Record

REVISIONS_MARK = "@r"
_REVISION_NAME_RE = re.compile(r"^(\d{9})\.json$")
# A revision object vanishing between a listing and its read means a newer write or a delete.
_READ_ATTEMPTS = 50

log = get_logger("s3_state_store")


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


class _RevisionLog:
    """Revisioned records under one namespace prefix (records or leases)."""

    def __init__(self, client: Any, bucket: str, namespace: str, kept: int) -> None:
        self._client = client
        self._bucket = bucket
        self._namespace = namespace  # ends with '/'
        self._kept = kept

    def revisions_prefix(self, key: str) -> str:
        key_segments(key)
        return f"{self._namespace}{key}/{REVISIONS_MARK}/"

    def object_key(self, key: str, revision: int) -> str:
        return self.revisions_prefix(key) + revision_name(revision)

    def _revisions(self, prefix: str) -> list[int]:
        """Revision numbers stored under `prefix`, ascending."""
        found: list[int] = []
        paginator_args = {"Bucket": self._bucket, "Prefix": prefix, "Delimiter": "/"}
        token: str | None = None
        while True:
            args = dict(paginator_args)
            if token:
                args["ContinuationToken"] = token
            page = self._client.list_objects_v2(**args)
            for item in page.get("Contents", []):
                match = _REVISION_NAME_RE.fullmatch(item["Key"][len(prefix) :])
                if match:
                    found.append(int(match.group(1)))
            if not page.get("IsTruncated"):
                break
            token = page.get("NextContinuationToken")
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
            try:
                response = self._client.get_object(
                    Bucket=self._bucket, Key=prefix + revision_name(latest)
                )
                raw = response["Body"].read()
            except ClientError as exc:
                if is_not_found(exc):
                    continue  # compacted or deleted since we listed: look again
                raise
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
        new_key = prefix + revision_name(new)
        try:
            self._client.put_object(
                Bucket=self._bucket,
                Key=new_key,
                Body=encode_revision(key, new, body),
                ContentType="application/json",
                IfNoneMatch="*",
            )
        except ClientError as exc:
            if http_status(exc) == 412 or error_code(exc) == "PreconditionFailed":
                raise ConflictError(key, expected_revision, self.latest_revision(key)) from None
            raise
        revisions = self._revisions(prefix)
        present = set(revisions)
        latest = revisions[-1] if revisions else new
        lost = new not in present  # removed by a delete racing this write
        if (
            lost
            or (expected_revision and expected_revision not in present)
            or latest - new > self._kept
        ):
            self._delete_object(new_key)
            raise ConflictError(key, expected_revision, live_revision(revisions))
        self._compact(prefix, new)
        stored: JSON = json.loads(body)  # what a get returns; the caller's dict stays theirs
        return Record(key, new, stored)

    def _compact(self, prefix: str, latest: int) -> None:
        doomed = latest - self._kept - 1
        if doomed < 1:
            return
        try:
            self._client.delete_object(Bucket=self._bucket, Key=prefix + revision_name(doomed))
        except ClientError as exc:  # best effort: delete() sweeps what is left
            log.warning("compaction failed", extra={"key": prefix, "error": str(exc)})

    def _delete_object(self, object_key: str) -> None:
        self._client.delete_object(Bucket=self._bucket, Key=object_key)

    def remove(self, key: str) -> None:
        prefix = self.revisions_prefix(key)
        while True:
            revisions = self._revisions(prefix)
            if not revisions:
                return
            for revision in revisions:  # oldest first: see the module docstring
                self._delete_object(prefix + revision_name(revision))

    def keys(self, prefix: str) -> list[str]:
        """Live keys starting with `prefix` (a record being deleted may still show)."""
        marker = f"/{REVISIONS_MARK}/"
        found: set[str] = set()
        token: str | None = None
        while True:
            args: dict[str, Any] = {"Bucket": self._bucket, "Prefix": self._namespace + prefix}
            if token:
                args["ContinuationToken"] = token
            page = self._client.list_objects_v2(**args)
            for item in page.get("Contents", []):
                name = item["Key"][len(self._namespace) :]
                key, mark, rest = name.rpartition(marker)
                if mark and key.startswith(prefix) and _REVISION_NAME_RE.fullmatch(rest):
                    found.add(key)
            if not page.get("IsTruncated"):
                break
            token = page.get("NextContinuationToken")
        return sorted(found)


class S3StateStore:
    """StateStore on an S3 bucket (or anything speaking S3 with conditional writes)."""

    def __init__(
        self,
        client: Any,
        bucket: str,
        prefix: str = "",
        clock: Clock | None = None,
        revisions_kept: int = 20,
        *,
        create_bucket: bool = True,
    ) -> None:
        if revisions_kept < 1:
            raise ValueError(f"revisions_kept must be >= 1, got {revisions_kept}")
        self.client = client
        self.bucket = bucket
        self.prefix = normalized_prefix(prefix)
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.revisions_kept = revisions_kept
        if create_bucket:
            ensure_bucket(client, bucket)
        self._records = _RevisionLog(client, bucket, self.prefix + "records/", revisions_kept)
        self._leases = _RevisionLog(client, bucket, self.prefix + "leases/", revisions_kept)
        self._lease_book = RevisionLeases(self._leases, self.clock, key_segments)

    # ------------------------------------------------------------------ records
    def get(self, key: str) -> Record | None:
        return self._records.read(key)

    def put(self, key: str, data: JSON, expected_revision: int) -> Record:
        return self._records.write(key, data, expected_revision)

    def list(self, prefix: str = "") -> Iterator[str]:
        return iter(self._records.keys(prefix))

    def delete(self, key: str) -> None:
        self._records.remove(key)

    def latest_revision_object(self, key: str) -> str | None:
        """The S3 key holding `key`'s latest revision (for operators and fault injection)."""
        latest = self._records.latest_revision(key)
        return None if latest is None else self._records.object_key(key, latest)

    # ------------------------------------------------------------------ leases
    def acquire_lease(self, name: str, owner: str, ttl_seconds: float) -> Lease:
        return self._lease_book.acquire(name, owner, ttl_seconds)

    def renew_lease(self, lease: Lease, ttl_seconds: float) -> Lease:
        """Extend `lease`. One that expired but that nobody took since is renewed as well."""
        return self._lease_book.renew(lease, ttl_seconds)

    def release_lease(self, lease: Lease) -> None:
        self._lease_book.release(lease)
