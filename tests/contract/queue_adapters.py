"""The Queue adapters the contract suite runs against, and the child-process workers it uses.

To put another adapter (Zaqar, SQS) under the suite, write a factory: a generator that takes the
pytest request (so it can ask for a server fixture), yields a `QueueUnderTest` and cleans up
after. Add it to `IN_PROCESS_BACKENDS`, and to `CROSS_PROCESS_BACKENDS` when it runs on the
backend's own time (child processes open the adapter themselves, so they cannot share a
ManualClock). The backend object crosses into child processes by pickling, so keep it a small
frozen dataclass of addresses and paths.
"""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from shared.adapters.local.sqlite_queue import SqliteQueue
from shared.clock import ManualClock
from shared.ports import JSON, Clock, Queue

if TYPE_CHECKING:
    import pytest

# Children start from a clean interpreter: no inherited locks, connections or threads.
SPAWN = multiprocessing.get_context("spawn")


class QueueBackend(Protocol):
    """A picklable description of one queue service."""

    def open(self, clock: Clock | None = None) -> Queue:
        """A new adapter on the service; `clock` only for adapters that take an injected one."""
        ...


@dataclass(frozen=True)
class SqliteQueueBackend:
    path: Path

    def open(self, clock: Clock | None = None) -> Queue:
        return SqliteQueue(self.path, clock)


@dataclass
class QueueUnderTest:
    """What a contract test works with: the backend, and a manual clock when it takes one."""

    backend: QueueBackend
    clock: ManualClock | None = None
    _opened: list[Queue] = field(default_factory=list)

    def open(self) -> Queue:
        queue = self.backend.open(self.clock)
        self._opened.append(queue)
        return queue

    def let_time_pass(self, seconds: float) -> None:
        """Move a manual clock on. On real time this does nothing: the test's long poll waits."""
        if self.clock is not None:
            self.clock.advance(seconds)

    def close(self) -> None:
        for queue in self._opened:
            close = getattr(queue, "close", None)
            if close is not None:
                close()


BackendFactory = Callable[["pytest.FixtureRequest"], Iterator[QueueUnderTest]]


def sqlite_on_system_clock(request: pytest.FixtureRequest) -> Iterator[QueueUnderTest]:
    tmp_path: Path = request.getfixturevalue("tmp_path")
    under_test = QueueUnderTest(SqliteQueueBackend(tmp_path / "queues.db"))
    try:
        yield under_test
    finally:
        under_test.close()


def sqlite_on_manual_clock(request: pytest.FixtureRequest) -> Iterator[QueueUnderTest]:
    tmp_path: Path = request.getfixturevalue("tmp_path")
    under_test = QueueUnderTest(SqliteQueueBackend(tmp_path / "queues.db"), ManualClock())
    try:
        yield under_test
    finally:
        under_test.close()


IN_PROCESS_BACKENDS: dict[str, BackendFactory] = {
    "sqlite": sqlite_on_system_clock,
    "sqlite-manual-clock": sqlite_on_manual_clock,
}
CROSS_PROCESS_BACKENDS: dict[str, BackendFactory] = {
    "sqlite": sqlite_on_system_clock,
}


# --------------------------------------------------------------------------- child workers
# Module-level functions so that spawned children can import them.


def send_then_exit(backend: QueueBackend, queue: str, bodies: Sequence[JSON]) -> None:
    """Send `bodies` in a fresh process, then exit normally."""
    adapter = backend.open()
    adapter.send_batch(queue, bodies)


def receive_then_hang(
    backend: QueueBackend, queue: str, visibility_timeout: float, report: Connection
) -> None:
    """Receive one message, report (id, receive_count), then 'work' until killed."""
    adapter = backend.open()
    messages = adapter.receive(queue, max_messages=1, visibility_timeout=visibility_timeout)
    report.send([(m.id, m.receive_count) for m in messages])
    threading.Event().wait()  # never set: the parent kills this process mid-message


def drain(backend: QueueBackend, queue: str, start: EventType, report: Connection) -> None:
    """Receive and ack until the queue looks empty; report every (id, receive_count, body).

    Waits for `start` first, so that all consumers compete from the same moment.
    """
    adapter = backend.open()
    adapter.count(queue)  # connect before the start line
    start.wait()
    seen: list[tuple[str, int, Any]] = []
    while True:
        messages = adapter.receive(queue, max_messages=10, visibility_timeout=120, wait_seconds=0.3)
        if not messages:
            break
        for message in messages:
            seen.append((message.id, message.receive_count, message.body))
            adapter.ack(queue, message.receipt)
    report.send(seen)


def open_fresh_sqlite_and_send(path: Path, start: EventType) -> None:
    """Open (and so maybe create) the SQLite queue file at the same moment as other processes."""
    start.wait()
    adapter = SqliteQueue(path)
    adapter.ensure_queue("race")
    adapter.send("race", {"from": "child"})
    adapter.close()
