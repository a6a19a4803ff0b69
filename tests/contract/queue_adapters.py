"""The Queue adapters the contract suite runs against, and the child-process workers it uses.

To put another adapter (Zaqar, SQS) under the suite, write a factory: a generator that takes the
pytest request (so it can ask for a server fixture), yields a `QueueUnderTest` and cleans up
after. Add it to `IN_PROCESS_BACKENDS`, and to `CROSS_PROCESS_BACKENDS` when it runs on the
backend's own time (child processes open the adapter themselves, so they cannot share a
ManualClock). The backend object crosses into child processes by pickling, so keep it a small
frozen dataclass of addresses and paths.

Capabilities: `QueueUnderTest.detects_stale_receipts` is False for backends that cannot tell a
stale receipt from the current one (SQS accepts every receipt a message ever had); the tests of
stale-receipt behaviour skip those backends. `bulk_messages` is how many messages the
competing-consumers test pushes through: moto's SQS does O(queue length) work per call (sending
2000 messages alone takes about 50 s), so the SQS backend runs that test with fewer.
`delivers_once_under_competition` is False where consumers competing for one queue may,
rarely, both get the same message: SQS standard queues promise at-least-once only (and moto's
threaded server shows it), so there the competing-consumer tests require that nothing is
lost, not that nothing is duplicated.
`shortest_claim_seconds` is how long the backend holds a claim at the least, whatever was asked
(Zaqar refuses claims under 60 s); tests that wait for a shorter claim to run out skip backends
where it exceeds what they asked.
"""

from __future__ import annotations

import multiprocessing
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import boto3
from zaqarclient.queues.v2 import client as zaqar_client

from shared.adapters.aws.sqs_queue import SqsQueue
from shared.adapters.local.sqlite_queue import SqliteQueue
from shared.adapters.openstack.zaqar_queue import ZaqarQueue
from shared.clock import ManualClock
from shared.ports import JSON, Clock, Queue
from tests.contract import moto_server

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
    detects_stale_receipts: bool = True
    bulk_messages: int = 2000
    delivers_once_under_competition: bool = True
    shortest_claim_seconds: float = 0.0
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


@dataclass(frozen=True)
class SqsQueueBackend:
    """SQS on a moto server; every queue name gets `prefix`, so tests never share queues."""

    endpoint: str
    prefix: str

    def client(self) -> Any:
        return boto3.client(
            "sqs",
            endpoint_url=self.endpoint,
            region_name=moto_server.REGION,
            aws_access_key_id=moto_server.ACCESS_KEY,
            aws_secret_access_key=moto_server.SECRET_KEY,
        )

    def open(self, clock: Clock | None = None) -> Queue:
        return SqsQueue(self.client(), prefix=self.prefix)

    def delete_queues(self) -> None:
        """Delete every queue under the prefix: moto's SQS slows down as it fills up."""
        client = self.client()
        try:
            urls = client.list_queues(QueueNamePrefix=self.prefix).get("QueueUrls", [])
            for url in urls:
                client.delete_queue(QueueUrl=url)
        finally:
            client.close()


def sqs_on_moto(request: pytest.FixtureRequest) -> Iterator[QueueUnderTest]:
    endpoint = str(request.getfixturevalue("moto_endpoint"))  # tests/contract/conftest.py
    backend = SqsQueueBackend(endpoint, prefix=f"q{uuid.uuid4().hex[:8]}-")
    under_test = QueueUnderTest(
        backend,
        detects_stale_receipts=False,
        bulk_messages=200,
        delivers_once_under_competition=False,
    )
    try:
        yield under_test
    finally:
        under_test.close()
        backend.delete_queues()


@dataclass(frozen=True)
class ZaqarQueueBackend:
    """Zaqar on a real server (tests/servers/zaqar.py); each test has a project of its own."""

    endpoint: str
    project: str

    def client(self) -> Any:
        return zaqar_client.Client(
            self.endpoint,
            version=2,
            conf={"auth_opts": {"backend": "noauth", "options": {"os_project_id": self.project}}},
        )

    def open(self, clock: Clock | None = None) -> Queue:
        return ZaqarQueue(self.client())

    def delete_queues(self) -> None:
        """Delete the project's queues (and their messages) so the server does not fill up."""
        client = self.client()
        listing, _count = client.queues()  # the iterator follows Zaqar's pages
        for queue in list(listing):
            queue.delete()


def zaqar_on_server(request: pytest.FixtureRequest) -> Iterator[QueueUnderTest]:
    endpoint = str(request.getfixturevalue("zaqar_endpoint"))  # tests/servers/zaqar.py
    backend = ZaqarQueueBackend(endpoint, project=f"troveless-{uuid.uuid4().hex[:12]}")
    under_test = QueueUnderTest(
        backend,
        # Zaqar deletes a message only with its current claim id, so an old receipt is refused.
        detects_stale_receipts=True,
        # A claim is one Lua script inside Redis, and the adapter claims one message at a
        # time (Zaqar's several-message claims can take claimed messages), so two live claims
        # never hold the same message.
        delivers_once_under_competition=True,
        # Each message costs a claim and a delete, several ms each on Zaqar's one-request-at-a-
        # time server: 300 messages take about 10 s.
        bulk_messages=300,
        # Zaqar refuses claims under 60 s (MIN_CLAIM_TTL, not configurable).
        shortest_claim_seconds=60.0,
    )
    try:
        yield under_test
    finally:
        under_test.close()
        backend.delete_queues()


IN_PROCESS_BACKENDS: dict[str, BackendFactory] = {
    "sqlite": sqlite_on_system_clock,
    "sqlite-manual-clock": sqlite_on_manual_clock,
    "sqs-moto": sqs_on_moto,
    "zaqar": zaqar_on_server,
}
CROSS_PROCESS_BACKENDS: dict[str, BackendFactory] = {
    "sqlite": sqlite_on_system_clock,
    "sqs-moto": sqs_on_moto,
    "zaqar": zaqar_on_server,
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
