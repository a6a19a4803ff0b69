"""What the control plane does with each message on the guest-events queue.

For every message: verify it (`GuestEventVerifier`: signature under the instance's key,
freshness, replay); a rejected one is counted and dropped. A verified result is stored at
`guests/<instance_id>/results/<command_id>` (so synchronous callers can wait for it) and, when
it carries a task token, answers the flow waiting on it (SendTaskSuccess with
`{"command_id", "command", "result"}`, or SendTaskFailure with the guest's error type and
message). A verified heartbeat updates the instance's `operating_status` only when it
changed: a steady instance costs no instance write per heartbeat. It also refreshes the
instance's liveness record (shared/services/guest_liveness.py) at most once per
`liveness_refresh` seconds, which the heartbeat watchdog reads to find guests gone silent.

An event verified just before its instance's record was deleted writes its seen state, result
or liveness after the delete flow may have forgotten the guest: so once written, the instance
is looked up again, and when it is gone what was written is deleted too (`_forget_late`).
Either the delete flow's forget comes after the write and removes it, or the look-up comes
after the record's deletion and does.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from dataclasses import dataclass, field

from shared.errors import ConflictError, CorruptDataError, TrovelessError
from shared.models.guest import GuestResult, Heartbeat
from shared.models.instance import Instance
from shared.observability import get_logger
from shared.ports import JSON, Clock, Message, StateStore, Workflows
from shared.services.guest_channel import GuestEventVerifier
from shared.services.guest_liveness import GuestLiveness
from shared.services.instance_secrets import guest_secret
from shared.services.instances import InstanceRecords, forget_guest_records

log = get_logger("guest-events")


def result_key(instance_id: str, command_id: str) -> str:
    return f"guests/{instance_id}/results/{command_id}"


@dataclass
class BatchOutcome:
    """What `process_batch` did: ids of messages to redeliver (not acknowledged) and
    counts of what was accepted and rejected."""

    failed: list[str] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)


class GuestEventService:
    """Verifies guest events and acts on them (see the module docstring)."""

    def __init__(
        self,
        store: StateStore,
        clock: Clock,
        workflows: Workflows,
        master_key: bytes,
        *,
        heartbeat_max_age: float = 30.0,
        liveness_refresh: float = 1.0,
    ) -> None:
        self._store = store
        self._clock = clock
        self._workflows = workflows
        self._master_key = master_key
        self.records = InstanceRecords(store)
        self.liveness = GuestLiveness(store, clock, refresh_seconds=liveness_refresh)
        self.verifier = GuestEventVerifier(
            store, clock, self._secret_for, heartbeat_max_age=heartbeat_max_age
        )

    def _secret_for(self, instance_id: str) -> bytes | None:
        try:
            instance = self.records.find(instance_id)
            if instance is None or instance.encrypted_guest_secret is None:
                return None
            return guest_secret(instance, self._master_key)
        except (CorruptDataError, ValueError):
            return None

    # ------------------------------------------------------------------ batches
    def process_batch(self, messages: list[Message]) -> BatchOutcome:
        """Handle each message; one that fails (the store is unreachable...) is reported in
        `failed` for redelivery, the others count as done (rejections included)."""
        outcome = BatchOutcome()
        for message in messages:
            try:
                outcome.counts[self.process(message.body)] += 1
            except Exception:
                log.exception(
                    "guest event failed; it will be redelivered", extra={"id": message.id}
                )
                outcome.failed.append(message.id)
        return outcome

    def process(self, body: JSON) -> str:
        """Handle one message body; returns "result", "heartbeat" or "rejected"."""
        verdict = self.verifier.verify(body)
        if isinstance(verdict.message, GuestResult):
            self._on_result(verdict.message)
            return "result"
        if isinstance(verdict.message, Heartbeat):
            self._on_heartbeat(verdict.message)
            return "heartbeat"
        return "rejected"

    # ------------------------------------------------------------------ results
    def _on_result(self, result: GuestResult) -> None:
        key = result_key(result.instance_id, result.command_id)
        # A conflict means it is stored already (a redelivery verified before).
        with contextlib.suppress(ConflictError):
            self._store.put(key, result.model_dump(mode="json", exclude={"task_token"}), 0)
        if self.records.find(result.instance_id) is None:
            self._forget_late(result.instance_id)
            return  # deleted: no flow of the instance waits any more
        if result.task_token is None:
            return
        try:
            if result.ok:
                self._workflows.send_task_success(
                    result.task_token,
                    {
                        "command_id": result.command_id,
                        "command": result.command.value,
                        "result": result.result,
                    },
                )
            else:
                assert result.error is not None
                self._workflows.send_task_failure(
                    result.task_token, result.error.type, result.error.message
                )
        except TrovelessError as exc:
            # The flow no longer waits (timed out, deleted, answered before): nothing to do.
            log.info(
                "guest result answers no waiting task",
                extra={"instance_id": result.instance_id, "why": str(exc)},
            )

    # ------------------------------------------------------------------ heartbeats
    def _on_heartbeat(self, beat: Heartbeat) -> None:
        status = beat.datastore_status
        self.liveness.beat(beat.instance_id)

        def change(current: Instance) -> Instance | None:
            if current.operating_status is status:
                return None
            return current.replace(operating_status=status, operating_status_updated=beat.timestamp)

        instance = self.records.find(beat.instance_id)
        if instance is None:
            self._forget_late(beat.instance_id)
            return
        if instance.operating_status is status:
            return  # the common case: nothing changed, nothing written
        # This also ends the SHUTDOWN the heartbeat watchdog set for a guest gone silent.
        self.records.update(beat.instance_id, change)
        log.info(
            "operating status changed",
            extra={
                "instance_id": beat.instance_id,
                "from": instance.operating_status.value,
                "to": status.value,
            },
        )

    def _forget_late(self, instance_id: str) -> None:
        """The instance was deleted while its event was handled: drop what the event wrote."""
        forget_guest_records(self._store, instance_id)
        self.liveness.forget(instance_id)
        log.info(
            "event of a deleted instance: its guest records removed",
            extra={"instance_id": instance_id},
        )


def stored_result(store: StateStore, instance_id: str, command_id: str) -> GuestResult | None:
    """A result the consumer stored, or None while it has not arrived."""
    record = store.get(result_key(instance_id, command_id))
    if record is None:
        return None
    return GuestResult.model_validate(record.data)
