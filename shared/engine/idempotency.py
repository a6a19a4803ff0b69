"""Run a task attempt at most once per idempotency key, with its outcome kept in the StateStore.

Why not powertools' idempotency utility: it derives the key by hashing the payload (ours is
given: execution/state/entry/attempt) and bounds an in-progress claim with the Lambda context's
remaining time, which in-process workers do not have; without it a claim left by a killed worker
blocks the key until the whole record expires (an hour by default). The two rules we need are
small enough to state and test directly on our StateStore, using only create-if-absent and
revision compare-and-swap:

1. Before calling, *claim* the key: create `{IN_PROGRESS, expires_at}` (revision 1), or replace
   an expired claim by compare-and-swap. Losing either race means someone else holds or finished
   the key: use their outcome, or report `TaskInProgressError` so the caller tries again later.
2. After calling, record `{COMPLETED, outcome}` by compare-and-swap over our own claim. From then
   on every caller with this key gets the recorded outcome and the function is not called again.

A worker killed *while the function runs* leaves its claim; once the claim expires (the task's
TimeoutSeconds, else `lease_seconds`) another worker calls the function again with the same key.
That window is irreducible for any at-least-once system: a function whose side effect must
happen once keys that effect on `TaskContext.idempotency_key` itself (e.g. creates a server
named after it, with create-if-absent semantics).

Records live under `idempotency/<execution digest>/<key digest>` and are deleted when the
execution ends (`forget_execution`). They guard against *process* crashes, which need no fsync
(the page cache survives them), so a deployment may keep them in a store that does not fsync;
after a power loss a lost or unreadable claim only means the attempt may run again.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from typing import Any

from shared.errors import ConflictError, CorruptDataError
from shared.ports import Clock, StateStore

PREFIX = "idempotency"
IN_PROGRESS = "IN_PROGRESS"
COMPLETED = "COMPLETED"

Outcome = dict[str, Any]  # {"ok": true, "output": ...} | {"ok": false, "error": ..., "cause": ...}


class StaleAttemptError(Exception):
    """A later attempt of the same slot has been claimed: this one is over."""


class TaskInProgressError(Exception):
    """Another worker holds the claim on this key until `expires_at`."""

    def __init__(self, key: str, expires_at: float) -> None:
        self.key = key
        self.expires_at = expires_at
        super().__init__(f"task {key!r} is being run elsewhere (claim expires at {expires_at:.3f})")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:40]


class TaskIdempotency:
    """At-most-once-per-key execution of task attempts (see the module docstring)."""

    def __init__(self, store: StateStore, clock: Clock, *, lease_seconds: float = 300.0) -> None:
        self.store = store
        self.clock = clock
        self.lease_seconds = lease_seconds

    def record_key(self, execution_arn: str, key: str, slot: str | None = None) -> str:
        return f"{PREFIX}/{_digest(execution_arn)}/{slot or _digest(key)}"

    def run(
        self,
        execution_arn: str,
        key: str,
        call: Callable[[], Outcome],
        *,
        slot: str | None = None,
        sequence: int = 0,
        lease_seconds: float | None = None,
        check_outcome: Callable[[Outcome], Outcome] | None = None,
    ) -> Outcome:
        """The recorded outcome for `key`, calling `call` only if nobody has completed it.

        `slot` lets successive attempts share one record (one per run of an execution: a run
        waits on one task at a time), which an update costs less to write than a new record;
        `sequence` orders the attempts of a slot (the wait id), so that a late duplicate of an
        earlier attempt is recognised (StaleAttemptError) instead of running it again.
        `check_outcome` may replace a fresh outcome before it is recorded (e.g. turn a result
        that must not be stored into a failure). Raises TaskInProgressError."""
        record_key = self.record_key(execution_arn, key, slot)
        lease = lease_seconds if lease_seconds is not None else self.lease_seconds
        try:
            record = self.store.get(record_key)
        except CorruptDataError:
            # A store without fsync may lose a claim in a power loss; the attempt runs again.
            self.store.delete(record_key)
            record = None
        now = self.clock.time()
        if record is not None and record.data.get("key") != key:
            if int(record.data.get("sequence", 0)) > sequence:
                raise StaleAttemptError(key)
        elif record is not None:
            data = record.data
            if data.get("status") == COMPLETED:
                return dict(data["outcome"])
            if float(data.get("expires_at", 0)) > now:
                raise TaskInProgressError(key, float(data["expires_at"]))
        claim_data = {
            "status": IN_PROGRESS,
            "key": key,
            "sequence": sequence,
            "owner": uuid.uuid4().hex,
            "expires_at": now + lease,
        }
        try:
            claim = self.store.put(record_key, claim_data, record.revision if record else 0)
        except ConflictError:
            current = self.store.get(record_key)
            if current is not None and current.data.get("key") != key:
                if int(current.data.get("sequence", 0)) > sequence:
                    raise StaleAttemptError(key) from None
                raise TaskInProgressError(key, now) from None  # an earlier attempt: look again
            if current is not None and current.data.get("status") == COMPLETED:
                return dict(current.data["outcome"])
            expires = float(current.data.get("expires_at", now)) if current is not None else now
            raise TaskInProgressError(key, expires) from None
        outcome = call()
        if check_outcome is not None:
            outcome = check_outcome(outcome)
        done = {
            "status": COMPLETED,
            "key": key,
            "sequence": sequence,
            "outcome": outcome,
            "completed_at": self.clock.time(),
        }
        try:
            self.store.put(record_key, done, claim.revision)
        except ConflictError:
            # Our claim expired and another worker took the key over; if it finished, its
            # outcome is the one the execution must see.
            current = self.store.get(record_key)
            if (
                current is not None
                and current.data.get("key") == key
                and current.data.get("status") == COMPLETED
            ):
                return dict(current.data["outcome"])
        return outcome

    def forget_execution(self, execution_arn: str) -> int:
        """Delete every record of one execution (once it has ended). Returns how many."""
        prefix = f"{PREFIX}/{_digest(execution_arn)}/"
        keys = list(self.store.list(prefix))
        for record_key in keys:
            self.store.delete(record_key)
        return len(keys)
