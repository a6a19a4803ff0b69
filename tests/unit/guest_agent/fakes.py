"""In-memory stand-ins for the guest agent's unit tests: a Queue, a StateStore and a datastore
manager that records what it was asked and can be made to crash or fail."""

from __future__ import annotations

import copy
import itertools
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from guest_agent.datastores.base import (
    DatastoreHealth,
    DatastoreNotRunningError,
    DatastoreStatus,
    OverrideRuleError,
)
from shared.errors import ConflictError, NotFoundError
from shared.ports import JSON, Clock, Lease, Message, Record
from shared.rules.names import validate_prepare_request


@dataclass
class _Stored:
    id: str
    body: JSON
    sent_at: float
    visible_at: float
    receive_count: int = 0
    receipt: str | None = None


class InMemoryQueue:
    """The Queue port in memory: visibility timeouts on the injected clock, no dead letters.
    `fail_sends` makes `send` raise (a queue outage)."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._queues: dict[str, list[_Stored]] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self.fail_sends = False
        self.failed_sends = 0

    def ensure_queue(
        self, name: str, *, max_receives: int | None = None, dead_letter_queue: str | None = None
    ) -> None:
        with self._lock:
            self._queues.setdefault(name, [])

    def _require(self, name: str) -> list[_Stored]:
        if name not in self._queues:
            raise NotFoundError(name, "queue")
        return self._queues[name]

    def send(self, queue: str, body: JSON, delay_seconds: float = 0) -> str:
        if self.fail_sends:
            self.failed_sends += 1
            raise ConnectionError("queue unavailable")
        with self._lock:
            now = self._clock.time()
            message = _Stored(f"m{next(self._ids)}", copy.deepcopy(body), now, now + delay_seconds)
            self._require(queue).append(message)
            self._arrived.notify_all()
            return message.id

    def send_batch(self, queue: str, bodies: Sequence[JSON], delay_seconds: float = 0) -> list[str]:
        return [self.send(queue, body, delay_seconds) for body in bodies]

    def receive(
        self,
        queue: str,
        max_messages: int = 1,
        visibility_timeout: float = 30,
        wait_seconds: float = 0,
    ) -> list[Message]:
        # A long poll waits in real time for a send (the manual clock does not move by itself).
        deadline = time.monotonic() + wait_seconds
        with self._lock:
            while True:
                out = self._claim(queue, max_messages, visibility_timeout)
                remaining = deadline - time.monotonic()
                if out or remaining <= 0:
                    return out
                self._arrived.wait(remaining)

    def _claim(self, queue: str, max_messages: int, visibility_timeout: float) -> list[Message]:
        # Called with the lock held.
        now = self._clock.time()
        out = []
        for stored in self._require(queue):
            if len(out) == max_messages:
                break
            if stored.visible_at <= now:
                stored.receive_count += 1
                stored.receipt = f"{stored.id}/{stored.receive_count}"
                stored.visible_at = now + visibility_timeout
                out.append(
                    Message(
                        stored.id,
                        copy.deepcopy(stored.body),
                        stored.receipt,
                        stored.receive_count,
                        stored.sent_at,
                    )
                )
        return out

    def ack(self, queue: str, receipt: str) -> None:
        with self._lock:
            messages = self._require(queue)
            messages[:] = [m for m in messages if m.receipt != receipt]

    def change_visibility(self, queue: str, receipt: str, visibility_timeout: float) -> None:
        with self._lock:
            for stored in self._require(queue):
                if stored.receipt == receipt:
                    stored.visible_at = self._clock.time() + visibility_timeout
                    return
            raise NotFoundError(receipt, "receipt")

    def purge(self, queue: str) -> None:
        with self._lock:
            self._require(queue).clear()

    def count(self, queue: str) -> int:
        with self._lock:
            return len(self._require(queue))

    # test helpers
    def bodies(self, queue: str) -> list[JSON]:
        with self._lock:
            return [copy.deepcopy(m.body) for m in self._require(queue)]

    def drain(self, queue: str) -> list[JSON]:
        with self._lock:
            messages = self._require(queue)
            out = [copy.deepcopy(m.body) for m in messages]
            messages.clear()
            return out


class InMemoryStateStore:
    """Revisioned records with compare-and-swap; leases are not needed here.
    `conflicts_before_put` makes the next N puts lose as if another writer came first."""

    def __init__(self) -> None:
        self._records: dict[str, Record] = {}
        self._lock = threading.Lock()
        self.conflicts_before_put = 0
        self.puts = 0

    def get(self, key: str) -> Record | None:
        with self._lock:
            record = self._records.get(key)
            return (
                Record(record.key, record.revision, copy.deepcopy(record.data)) if record else None
            )

    def put(self, key: str, data: JSON, expected_revision: int) -> Record:
        with self._lock:
            current = self._records.get(key)
            actual = current.revision if current else 0
            if self.conflicts_before_put > 0:
                self.conflicts_before_put -= 1
                raise ConflictError(key, expected_revision, actual)
            if actual != expected_revision:
                raise ConflictError(key, expected_revision, actual)
            record = Record(key, expected_revision + 1, copy.deepcopy(data))
            self._records[key] = record
            self.puts += 1
            return record

    def list(self, prefix: str = "") -> Iterator[str]:
        with self._lock:
            return iter(sorted(k for k in self._records if k.startswith(prefix)))

    def delete(self, key: str) -> None:
        with self._lock:
            self._records.pop(key, None)

    def acquire_lease(self, name: str, owner: str, ttl_seconds: float) -> Lease:
        raise NotImplementedError

    def renew_lease(self, lease: Lease, ttl_seconds: float) -> Lease:
        raise NotImplementedError

    def release_lease(self, lease: Lease) -> None:
        raise NotImplementedError


@dataclass
class FakeManager:
    """A datastore manager with the real one's surface, keeping everything in memory.

    `crash()` makes the server vanish without being stopped (CRASHED); `fail_next` makes the
    next operation raise; `during_prepare` is called inside prepare (to look at the agent then).
    """

    data_dir: Path
    datastore: str = "mariadb"
    prepared: bool = False
    running: bool = False
    intent: str = "stopped"
    admin_password: str | None = None
    root_password: str = "Root-Pass-0123456789"
    restart_pending: bool = False
    databases: dict[str, dict[str, Any]] = field(default_factory=dict)
    users: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    root: bool = False
    overrides: dict[str, Any] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    fail_next: Exception | None = None
    during_prepare: Any = None

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if self.fail_next is not None:
            error, self.fail_next = self.fail_next, None
            raise error

    def set_admin_password(self, password: str) -> None:
        self.admin_password = password

    def is_prepared(self) -> bool:
        return self.prepared

    def is_running(self) -> bool:
        return self.running

    def probe(self, timeout: float = 2.0) -> DatastoreHealth:
        if not self.prepared and self.intent != "running":
            return DatastoreHealth(self.datastore, DatastoreStatus.SHUTDOWN, "not prepared")
        if not self.running:
            if self.intent == "running":
                return DatastoreHealth(self.datastore, DatastoreStatus.CRASHED, "process exited")
            return DatastoreHealth(self.datastore, DatastoreStatus.SHUTDOWN, "stopped")
        return DatastoreHealth(
            self.datastore,
            DatastoreStatus.RUNNING,
            "answered a query",
            pid=4242,
            restart_required=self.restart_pending,
        )

    def prepare(
        self,
        *,
        admin_password: str,
        databases: list[dict[str, Any]],
        users: list[dict[str, Any]],
        overrides: dict[str, Any],
    ) -> None:
        self._call("prepare")
        if self.during_prepare is not None:
            self.during_prepare()
        dbs, checked = validate_prepare_request(self.datastore, databases, users)
        self.admin_password = admin_password
        for db in dbs:
            self.databases[db["name"]] = db
        for user in checked:
            self.users[(user["name"], user["host"])] = user
        self.overrides = dict(overrides)
        self.prepared = self.running = True
        self.intent = "running"

    def start(self) -> None:
        self._call("start")
        self.running, self.intent = True, "running"

    def stop(self) -> None:
        self._call("stop")
        self.running, self.intent = False, "stopped"

    def restart(self) -> None:
        self._call("restart")
        self.running, self.intent, self.restart_pending = True, "running", False

    def crash(self) -> None:
        self.running = False  # intent stays "running"

    def _require_running(self) -> None:
        if not self.running:
            raise DatastoreNotRunningError(f"{self.datastore} is not running")

    def create_database(
        self, name: str, character_set: str | None = None, collate: str | None = None
    ) -> None:
        self._call("create_database")
        self._require_running()
        self.databases[name] = {"name": name, "character_set": character_set, "collate": collate}

    def delete_database(self, name: str) -> None:
        self._call("delete_database")
        self.databases.pop(name, None)

    def list_databases(self) -> list[dict[str, Any]]:
        return [{"name": n} for n in sorted(self.databases)]

    def create_user(
        self, name: str, password: str, host: str = "%", databases: list[str] | None = None
    ) -> None:
        self._call("create_user")
        self.users[(name, host)] = {
            "name": name,
            "host": host,
            "password": password,
            "databases": list(databases or []),
        }

    def delete_user(self, name: str, host: str = "%") -> None:
        self._call("delete_user")
        self.users.pop((name, host), None)

    def list_users(self) -> list[dict[str, Any]]:
        return [
            {"name": u["name"], "host": u["host"], "databases": u["databases"]}
            for u in self.users.values()
        ]

    def change_password(self, name: str, password: str, host: str = "%") -> None:
        self._call("change_password")
        self.users[(name, host)]["password"] = password

    def grant_access(self, user: str, databases: list[str], host: str = "%") -> None:
        self._call("grant_access")
        self.users[(user, host)]["databases"].extend(databases)

    def revoke_access(self, user: str, database: str, host: str = "%") -> None:
        self._call("revoke_access")
        self.users[(user, host)]["databases"].remove(database)

    def list_access(self, user: str, host: str = "%") -> list[str]:
        return list(self.users[(user, host)]["databases"])

    def enable_root(self) -> str:
        self._call("enable_root")
        self.root = True
        return self.root_password

    def root_enabled(self) -> bool:
        return self.root

    def update_overrides(self, overrides: dict[str, Any]) -> bool:
        self._call("update_overrides")
        for key in overrides:
            if key not in ("max_connections", "innodb_buffer_pool_size"):
                raise OverrideRuleError(key, "is not a configuration parameter we manage")
        self.overrides = dict(overrides)
        self.restart_pending = "innodb_buffer_pool_size" in overrides
        return self.restart_pending

    def volume_info(self) -> dict[str, Any]:
        return {"path": str(self.data_dir), "total_bytes": 100, "used_bytes": 10}
