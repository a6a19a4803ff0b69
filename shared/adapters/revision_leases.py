"""Leases built on a revisioned record log: the same create-if-absent compare-and-swap as
records (DESIGN §4), with an expiry and a fencing token that grows with each new holder.

Every StateStore adapter keeps its lease records in a log with `read(name)` and
`write(name, data, expected_revision)` (raising ConflictError when it lost) and delegates the
lease verbs here, so the rules are the same on every backend.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from shared.errors import ConflictError, CorruptDataError, LeaseHeldError, LeaseLostError
from shared.ports import JSON, Clock, Lease, Record

# A lease write loses only to another lease write; this bounds a pathological livelock.
LEASE_ATTEMPTS = 1000


class RevisionLog(Protocol):
    def read(self, key: str) -> Record | None: ...

    def write(self, key: str, data: JSON, expected_revision: int) -> Record: ...


class RevisionLeases:
    """acquire / renew / release over a RevisionLog, with expiry from `clock`."""

    def __init__(
        self, log: RevisionLog, clock: Clock, validate_name: Callable[[str], object]
    ) -> None:
        self._log = log
        self._clock = clock
        self._validate_name = validate_name

    def _state(self, name: str) -> tuple[int, str | None, float, int]:
        """(revision, owner, expires_at, token) of the lease record; revision 0 if none."""
        record = self._log.read(name)
        if record is None:
            return 0, None, 0.0, 0
        data: dict[str, Any] = record.data
        owner, expires_at, token = data.get("owner"), data.get("expires_at"), data.get("token")
        if (
            not (owner is None or isinstance(owner, str))
            or not isinstance(expires_at, int | float)
            or not isinstance(token, int)
        ):
            raise CorruptDataError(name, f"lease record {record.revision} is malformed")
        return record.revision, owner, float(expires_at), token

    def _write(
        self, name: str, revision: int, owner: str | None, expires_at: float, token: int
    ) -> None:
        self._log.write(name, {"owner": owner, "expires_at": expires_at, "token": token}, revision)

    def acquire(self, name: str, owner: str, ttl_seconds: float) -> Lease:
        self._validate_name(name)
        if ttl_seconds <= 0:
            raise ValueError(f"ttl_seconds must be > 0, got {ttl_seconds}")
        for _ in range(LEASE_ATTEMPTS):
            revision, holder, expires_at, token = self._state(name)
            now = self._clock.time()
            held = holder is not None and expires_at > now
            if held and holder != owner:
                raise LeaseHeldError(name, str(holder), expires_at)
            new_token = token if held else token + 1
            new_expiry = now + ttl_seconds
            try:
                self._write(name, revision, owner, new_expiry, new_token)
            except ConflictError:
                continue  # someone else moved it; look again
            return Lease(name, owner, new_expiry, new_token)
        _, holder, expires_at, _ = self._state(name)
        raise LeaseHeldError(name, str(holder), expires_at)

    def renew(self, lease: Lease, ttl_seconds: float) -> Lease:
        """Extend `lease`. One that expired but that nobody took since is renewed as well."""
        if ttl_seconds <= 0:
            raise ValueError(f"ttl_seconds must be > 0, got {ttl_seconds}")
        for _ in range(LEASE_ATTEMPTS):
            revision, holder, _, token = self._state(lease.name)
            if holder != lease.owner or token != lease.token:
                raise LeaseLostError(lease.name, lease.owner)
            new_expiry = self._clock.time() + ttl_seconds
            try:
                self._write(lease.name, revision, lease.owner, new_expiry, token)
            except ConflictError:
                continue
            return Lease(lease.name, lease.owner, new_expiry, token)
        raise LeaseLostError(lease.name, lease.owner)

    def release(self, lease: Lease) -> None:
        for _ in range(LEASE_ATTEMPTS):
            revision, holder, _, token = self._state(lease.name)
            if holder != lease.owner or token != lease.token:
                return  # someone else holds it now (or nobody): not ours to release
            try:
                # Keep the token so the next holder's is larger.
                self._write(lease.name, revision, None, 0.0, token)
            except ConflictError:
                continue
            return
