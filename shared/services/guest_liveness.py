"""When each instance's guest agent last sent a verified heartbeat: one small record per
instance, `guest-liveness/<instance_id>`, that the guest-events consumer writes and the
heartbeat watchdog (shared/services/heartbeat_watchdog.py) reads.

Cost. A record per heartbeat would be one StateStore write per instance per second. Instead a
consumer refreshes the record at most once per `refresh_seconds` (a third of the heartbeat
expiry by default: `liveness_refresh_seconds`), remembering in memory when it last did, so
steady heartbeats cost one write per instance per refresh period, whatever the number of
consumers (each writes at most that often; a lost race is simply skipped). The price is
staleness: the record can be up to `refresh_seconds + heartbeat_interval` old while the agent
is healthy, which stays well inside the expiry the watchdog applies.

Times are the control plane's clock at receipt (`Clock.time()`), so the watchdog compares
them with its own clock, never with the guest's.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass

from shared.errors import ConflictError
from shared.ports import Clock, StateStore

LIVENESS_PREFIX = "guest-liveness/"


def liveness_key(instance_id: str) -> str:
    return f"{LIVENESS_PREFIX}{instance_id}"


def liveness_refresh_seconds(heartbeat_expiry: float, heartbeat_interval: float) -> float:
    """How often a liveness record is rewritten: a third of the expiry, and never so rarely
    that refresh + two heartbeat intervals exceed the expiry (0 = every heartbeat)."""
    return max(0.0, min(heartbeat_expiry / 3, heartbeat_expiry - 2 * heartbeat_interval))


@dataclass(frozen=True)
class Liveness:
    """The last verified heartbeat the control plane recorded for an instance."""

    instance_id: str
    last_heartbeat: float  # POSIX seconds, control-plane clock at receipt
    revision: int


class GuestLiveness:
    """Reads and (rate-limited) writes of the liveness records."""

    def __init__(self, store: StateStore, clock: Clock, *, refresh_seconds: float) -> None:
        self._store = store
        self._clock = clock
        self.refresh_seconds = refresh_seconds
        self._lock = threading.Lock()
        self._written: dict[str, float] = {}  # instance id -> when this process last wrote
        self.writes = 0

    def beat(self, instance_id: str) -> bool:
        """Record a verified heartbeat received now; returns whether the store was written."""
        now = self._clock.time()
        with self._lock:
            last = self._written.get(instance_id)
        if last is not None and now - last < self.refresh_seconds:
            return False  # the common case: no store access at all
        current = self.find(instance_id)
        if current is not None and now - current.last_heartbeat < self.refresh_seconds:
            self._remember(instance_id, current.last_heartbeat)  # another consumer wrote it
            return False
        try:
            self._store.put(
                liveness_key(instance_id),
                {"instance_id": instance_id, "last_heartbeat": now},
                current.revision if current is not None else 0,
            )
        except ConflictError:
            self._remember(instance_id, now)  # another consumer refreshed it meanwhile
            return False
        self._remember(instance_id, now)
        self.writes += 1
        return True

    def _remember(self, instance_id: str, when: float) -> None:
        with self._lock:
            self._written[instance_id] = when

    def find(self, instance_id: str) -> Liveness | None:
        record = self._store.get(liveness_key(instance_id))
        if record is None:
            return None
        try:
            when = float(record.data["last_heartbeat"])
        except (KeyError, TypeError, ValueError):
            when = 0.0  # unreadable: as old as can be, the next heartbeat rewrites it
        return Liveness(instance_id, when, record.revision)

    def all(self) -> Iterator[Liveness]:
        """Every instance that has sent at least one verified heartbeat (and is not forgotten)."""
        for key in list(self._store.list(LIVENESS_PREFIX)):
            found = self.find(key[len(LIVENESS_PREFIX) :])
            if found is not None:
                yield found

    def forget(self, instance_id: str) -> None:
        self._store.delete(liveness_key(instance_id))
        with self._lock:
            self._written.pop(instance_id, None)
