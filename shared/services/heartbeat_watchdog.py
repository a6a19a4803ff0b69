"""The heartbeat watchdog: finds guest agents gone silent and acts for them.

A timer calls `HeartbeatWatchdog.tick` (functions/heartbeat_watchdog.py). For each instance
whose agent has sent at least one verified heartbeat (its liveness record,
shared/services/guest_liveness.py), the agent is *lost* when nothing was heard from it for
longer than `heartbeat_expiry`, counted from the later of its last heartbeat and the last
change of the instance record (so an action that just began, a restore, or a fresh start get a
full expiry before they are judged). For a lost agent the watchdog:

- fails the guest task a flow is waiting on (`instance-waits/<id>`: a backup, a prepare, a
  configuration change...) with the error `GuestHeartbeatLost` and a cause naming the silence,
  so the flow's Catch runs at once instead of at the command's deadline (a backup then ends
  FAILED with its partial object deleted);
- sets the instance's operating status to SHUTDOWN (Trove's word for a guest that stopped
  reporting); the first heartbeat after the agent returns sets it back (guest_events.py).

Left alone: instances before their first heartbeat (no liveness record: still building),
instances being deleted, and instances whose flow stops and starts the server itself
(RESIZING, HEALING): those flows own the guest's absence and have their own deadlines.
Liveness records of instances that no longer exist are removed.

Only one watchdog acts at a time: a tick runs under the StateStore lease `heartbeat-watchdog`;
a tick that cannot take it does nothing (another one is at work).

A silent consumer is not a silent agent. Liveness records are written by the guest-events
consumer, so a consumer that fell behind makes healthy agents look silent. When the events
queue holds at least half an expiry's worth of heartbeats from every watched instance, the
watchdog judges no one this tick (`consumer_behind`) and says so in the log.
"""

from __future__ import annotations

import contextlib
import uuid
from dataclasses import dataclass, field

from shared.errors import LeaseHeldError, TrovelessError
from shared.models.instance import Instance, InstanceTask, ServiceStatus
from shared.observability import get_logger
from shared.ports import Clock, Queue, StateStore, Workflows
from shared.services.guest_channel import EVENTS_QUEUE
from shared.services.guest_liveness import GuestLiveness, Liveness
from shared.services.instances import InstanceRecords, wait_key

log = get_logger("heartbeat-watchdog")

LEASE_NAME = "heartbeat-watchdog"
LOST_HEARTBEAT_ERROR = "GuestHeartbeatLost"
# Tasks whose flows stop and start the server (and so the agent) on purpose.
LEFT_ALONE_TASKS = frozenset({InstanceTask.DELETING, InstanceTask.RESIZING, InstanceTask.HEALING})


@dataclass
class WatchdogReport:
    """What one tick did: `skipped` when another watchdog held the lease; the instances
    found lost, the waits failed and the liveness records of vanished instances removed."""

    skipped: bool = False
    consumer_behind: bool = False
    lost: list[str] = field(default_factory=list)
    waits_failed: list[str] = field(default_factory=list)
    marked_shutdown: list[str] = field(default_factory=list)
    forgotten: list[str] = field(default_factory=list)


class HeartbeatWatchdog:
    """One tick of the heartbeat watchdog (see the module docstring)."""

    def __init__(
        self,
        store: StateStore,
        clock: Clock,
        workflows: Workflows,
        *,
        heartbeat_expiry: float,
        heartbeat_interval: float = 1.0,
        queue: Queue | None = None,
        lease_ttl: float = 60.0,
        owner: str | None = None,
    ) -> None:
        self._store = store
        self._queue = queue
        self.heartbeat_interval = heartbeat_interval
        self._clock = clock
        self._workflows = workflows
        self.heartbeat_expiry = heartbeat_expiry
        self.lease_ttl = lease_ttl
        self.owner = owner or f"watchdog-{uuid.uuid4().hex[:12]}"
        self.records = InstanceRecords(store)
        # Reads only: the refresh period is the consumer's business.
        self.liveness = GuestLiveness(store, clock, refresh_seconds=0.0)

    def tick(self) -> WatchdogReport:
        try:
            lease = self._store.acquire_lease(LEASE_NAME, self.owner, self.lease_ttl)
        except LeaseHeldError:
            return WatchdogReport(skipped=True)
        report = WatchdogReport()
        try:
            watched = list(self.liveness.all())
            if watched and self._consumer_behind(len(watched)):
                report.consumer_behind = True
                return report
            for seen in watched:
                try:
                    self._check(seen, report)
                except Exception:  # one bad record must not blind the watchdog to the rest
                    log.exception("heartbeat check failed", extra={"instance_id": seen.instance_id})
        finally:
            self._store.release_lease(lease)
        return report

    def _consumer_behind(self, watched: int) -> bool:
        """Whether the events queue holds half an expiry's heartbeats of every instance."""
        if self._queue is None:
            return False
        try:
            waiting = self._queue.count(EVENTS_QUEUE)
        except TrovelessError:
            return False  # no queue to look at: judge by the records
        threshold = max(1.0, self.heartbeat_expiry / 2 / self.heartbeat_interval) * watched
        if waiting < threshold:
            return False
        log.warning(
            "guest events are backed up: no agent is judged this tick",
            extra={"waiting": waiting, "threshold": int(threshold)},
        )
        return True

    def _check(self, seen: Liveness, report: WatchdogReport) -> None:
        instance = self.records.find(seen.instance_id)
        if instance is None:
            self.liveness.forget(seen.instance_id)
            report.forgotten.append(seen.instance_id)
            return
        if instance.task in LEFT_ALONE_TASKS:
            return
        silent_for = self._clock.time() - max(seen.last_heartbeat, instance.updated.timestamp())
        if silent_for <= self.heartbeat_expiry:
            return
        report.lost.append(instance.id)
        cause = (
            f"no heartbeat from the guest agent of instance {instance.id} for "
            f"{silent_for:.1f} s (heartbeat deadline {self.heartbeat_expiry:g} s): "
            "the agent is lost"
        )
        if self._fail_wait(instance.id, cause):
            report.waits_failed.append(instance.id)
        if self._mark_shutdown(instance.id):
            report.marked_shutdown.append(instance.id)
            log.warning(
                "guest agent lost",
                extra={"instance_id": instance.id, "silent_seconds": round(silent_for, 1)},
            )

    def _fail_wait(self, instance_id: str, cause: str) -> bool:
        """Fail the guest task a flow waits on for this instance; whether there was one."""
        key = wait_key(instance_id)
        record = self._store.get(key)
        if record is None:
            return False
        token = str(record.data.get("token") or "")
        answered = True
        try:
            self._workflows.send_task_failure(token, LOST_HEARTBEAT_ERROR, cause)
        except TrovelessError:
            answered = False  # the wait ended already (answered, timed out): nothing to fail
        # Remove the wait unless a new one replaced it meanwhile.
        current = self._store.get(key)
        if current is not None and current.data.get("token") == token:
            with contextlib.suppress(TrovelessError):
                self._store.delete(key)
        if answered:
            log.warning("guest wait failed: heartbeat lost", extra={"instance_id": instance_id})
        return answered

    def _mark_shutdown(self, instance_id: str) -> bool:
        now = self._clock.now()

        def change(current: Instance) -> Instance | None:
            if current.task in LEFT_ALONE_TASKS:
                return None
            if current.operating_status is ServiceStatus.SHUTDOWN:
                return None
            return current.replace(
                operating_status=ServiceStatus.SHUTDOWN, operating_status_updated=now
            )

        return self.records.update(instance_id, change) is not None
