"""The StateStore every object-store adapter is: records and leases as revision logs.

S3StateStore and SwiftStateStore differ only in how they reach their objects (a
`RevisionObjects` of their own) and in how they set up their bucket or container; the port's
methods are the same delegations, kept here once.
"""

from __future__ import annotations

from collections.abc import Iterator

from shared.adapters.local.store_keys import key_segments
from shared.adapters.revision_leases import RevisionLeases
from shared.adapters.revision_objects import RevisionObjectLog, RevisionObjects
from shared.clock import SystemClock
from shared.ports import JSON, Clock, Lease, Record


class RevisionObjectStateStore:
    """StateStore over `objects`: records under `<prefix>records/`, leases under
    `<prefix>leases/`, the last `revisions_kept` revisions of each kept."""

    def __init__(
        self,
        objects: RevisionObjects,
        prefix: str,
        clock: Clock | None = None,
        revisions_kept: int = 20,
    ) -> None:
        if revisions_kept < 1:
            raise ValueError(f"revisions_kept must be >= 1, got {revisions_kept}")
        self.prefix = prefix
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.revisions_kept = revisions_kept
        self._records = RevisionObjectLog(objects, prefix + "records/", revisions_kept)
        self._leases = RevisionObjectLog(objects, prefix + "leases/", revisions_kept)
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
        """The object holding `key`'s latest revision (for operators and fault injection)."""
        latest = self._records.latest_revision(key)
        return None if latest is None else self._records.object_name(key, latest)

    # ------------------------------------------------------------------ leases
    def acquire_lease(self, name: str, owner: str, ttl_seconds: float) -> Lease:
        return self._lease_book.acquire(name, owner, ttl_seconds)

    def renew_lease(self, lease: Lease, ttl_seconds: float) -> Lease:
        """Extend `lease`. One that expired but that nobody took since is renewed as well."""
        return self._lease_book.renew(lease, ttl_seconds)

    def release_lease(self, lease: Lease) -> None:
        self._lease_book.release(lease)
