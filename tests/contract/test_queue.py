"""Contract of the Queue port (shared/ports.py), run against every adapter in queue_adapters.py.

Decisions every adapter must honour (the SQLite adapter's docstring explains why):
- a queue must be created with ensure_queue first: other calls on an unknown queue raise
  NotFoundError;
- ensure_queue is declarative: a second call keeps the messages and its redrive settings win;
- max_receives and dead_letter_queue go together; the receive that would exceed max_receives
  moves the message to the dead-letter queue (same id and body) instead of delivering it;
- ack with a stale receipt is ignored; change_visibility with one raises NotFoundError;
- bodies are JSON objects (dict), anything else raises TypeError;
- order of delivery is not part of the contract.

Tests never sleep to synchronise: time-dependent checks either move a manual clock or long-poll
with `wait_seconds` as the deadline, so they run unchanged on backends with real time only.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.adapters.local.sqlite_queue import SqliteQueue
from shared.errors import InvalidKeyError, NotFoundError
from shared.ports import Message, Queue
from tests.contract.queue_adapters import (
    CROSS_PROCESS_BACKENDS,
    IN_PROCESS_BACKENDS,
    SPAWN,
    QueueUnderTest,
    drain,
    open_fresh_sqlite_and_send,
    receive_then_hang,
    send_then_exit,
)

# Long polls in these tests wait at most this long; passing tests return far sooner.
DEADLINE = 10.0


@pytest.fixture(params=sorted(IN_PROCESS_BACKENDS))
def backend(request: pytest.FixtureRequest) -> Iterator[QueueUnderTest]:
    yield from IN_PROCESS_BACKENDS[request.param](request)


@pytest.fixture(params=sorted(CROSS_PROCESS_BACKENDS))
def process_backend(request: pytest.FixtureRequest) -> Iterator[QueueUnderTest]:
    yield from CROSS_PROCESS_BACKENDS[request.param](request)


@pytest.fixture
def queue(backend: QueueUnderTest) -> Queue:
    return backend.open()


@pytest.fixture
def name(queue: Queue) -> str:
    """A fresh, ensured queue; unique so that backends shared between tests do not collide."""
    queue_name = f"t-{uuid.uuid4().hex[:12]}"
    queue.ensure_queue(queue_name)
    return queue_name


@pytest.fixture
def children() -> Iterator[Callable[..., Any]]:
    """Starts spawned child processes; any still alive at the end is killed and reaped."""
    started: list[Any] = []

    def start(target: Callable[..., None], *args: Any) -> Any:
        process = SPAWN.Process(target=target, args=args, daemon=True)
        process.start()
        started.append(process)
        return process

    try:
        yield start
    finally:
        for process in started:
            if process.is_alive():
                process.kill()
            process.join(timeout=DEADLINE)


def receive_one(queue: Queue, name: str, visibility_timeout: float = 30) -> Message:
    """The next message, long-polling up to DEADLINE; fails the test if none comes."""
    messages = queue.receive(
        name, max_messages=1, visibility_timeout=visibility_timeout, wait_seconds=DEADLINE
    )
    assert len(messages) == 1, f"no message arrived within {DEADLINE} s"
    return messages[0]


def receive_all(queue: Queue, name: str, expected: int) -> list[Message]:
    """Receive (claiming for 60 s) until `expected` messages arrived; fails on a shortfall."""
    got: list[Message] = []
    deadline = time.monotonic() + DEADLINE
    while len(got) < expected and time.monotonic() < deadline:
        got += queue.receive(name, max_messages=10, visibility_timeout=60, wait_seconds=1)
    assert len(got) == expected
    return got


# --------------------------------------------------------------------------- basics


def test_send_receive_ack(backend: QueueUnderTest, queue: Queue, name: str) -> None:
    before = backend.clock.time() if backend.clock else time.time()
    message_id = queue.send(name, {"op": "provision", "n": 1})

    message = receive_one(queue, name)
    assert message.id == message_id
    assert message.body == {"op": "provision", "n": 1}
    assert message.receive_count == 1
    assert before - 5 <= message.sent_at <= before + 60
    assert queue.count(name) == 1  # received but not acked: still there

    queue.ack(name, message.receipt)
    assert queue.count(name) == 0
    assert queue.receive(name) == []


def test_receive_on_empty_queue_returns_at_once(queue: Queue, name: str) -> None:
    started = time.monotonic()
    assert queue.receive(name, max_messages=10) == []
    assert time.monotonic() - started < 1.0


def test_bodies_round_trip_as_json(queue: Queue, name: str) -> None:
    body = {
        "text": 'naïve ☃ "quoted" \n newline',
        "int": 2**53,
        "float": 0.1,
        "neg": -3,
        "none": None,
        "flags": [True, False],
        "nested": {"list": [1, {"a": []}], "empty": {}},
    }
    queue.send(name, body)
    assert receive_one(queue, name).body == body


def test_bodies_must_be_json_objects(queue: Queue, name: str) -> None:
    for bad in ([1, 2], "text", 3, None):
        with pytest.raises(TypeError):
            queue.send(name, bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        queue.send_batch(name, [{"ok": 1}, ["not", "a", "dict"]])  # type: ignore[list-item]
    assert queue.count(name) == 0  # a rejected batch sends nothing


def test_batch_send_and_receive(queue: Queue, name: str) -> None:
    bodies = [{"i": i} for i in range(25)]
    ids = queue.send_batch(name, bodies)
    assert len(ids) == 25
    assert len(set(ids)) == 25
    assert queue.count(name) == 25

    batch = queue.receive(name, max_messages=10, visibility_timeout=60)
    assert 1 <= len(batch) <= 10  # some backends return fewer than asked; never more
    got = batch + receive_all(queue, name, 25 - len(batch))
    assert sorted(m.id for m in got) == sorted(ids)
    assert sorted(m.body["i"] for m in got) == list(range(25))
    assert len({m.receipt for m in got}) == 25

    for message in got:
        queue.ack(name, message.receipt)
    assert queue.count(name) == 0


def test_send_batch_of_nothing_sends_nothing(queue: Queue, name: str) -> None:
    assert queue.send_batch(name, []) == []
    assert queue.count(name) == 0


def test_receive_never_returns_more_than_asked(queue: Queue, name: str) -> None:
    queue.send_batch(name, [{"i": i} for i in range(5)])
    assert len(queue.receive(name, max_messages=1, visibility_timeout=60)) == 1
    assert len(queue.receive(name, max_messages=3, visibility_timeout=60)) <= 3


# --------------------------------------------------------------------------- time


def test_visibility_timeout_hides_then_redelivers(
    backend: QueueUnderTest, queue: Queue, name: str
) -> None:
    if backend.shortest_claim_seconds > 1:
        pytest.skip(f"claims last at least {backend.shortest_claim_seconds} s on this backend")
    queue.send(name, {"step": 1})
    first = receive_one(queue, name, visibility_timeout=1)
    assert queue.receive(name) == []  # hidden while the claim lasts

    backend.let_time_pass(1.5)
    again = receive_one(queue, name, visibility_timeout=30)
    assert again.id == first.id
    assert again.body == first.body
    assert again.receive_count == 2
    assert again.receipt != first.receipt


def test_delay_hides_a_new_message(backend: QueueUnderTest, queue: Queue, name: str) -> None:
    message_id = queue.send(name, {"later": True}, delay_seconds=1)
    assert queue.count(name) == 1
    assert queue.receive(name) == []

    backend.let_time_pass(1.5)
    message = receive_one(queue, name)
    assert message.id == message_id
    assert message.receive_count == 1


def test_long_poll_returns_as_soon_as_a_message_arrives(queue: Queue, name: str) -> None:
    late_sender = threading.Timer(0.3, queue.send, args=(name, {"late": True}))
    started = time.monotonic()
    late_sender.start()
    try:
        messages = queue.receive(name, wait_seconds=DEADLINE)
    finally:
        late_sender.join()
    waited = time.monotonic() - started
    assert [m.body for m in messages] == [{"late": True}]
    assert 0.2 <= waited < DEADLINE / 2


def test_long_poll_on_an_empty_queue_waits_then_returns_nothing(queue: Queue, name: str) -> None:
    started = time.monotonic()
    assert queue.receive(name, wait_seconds=0.5) == []
    assert 0.45 <= time.monotonic() - started < 3.0


def test_long_poll_picks_up_a_delayed_message_when_it_is_due(
    backend: QueueUnderTest, queue: Queue, name: str
) -> None:
    queue.send(name, {"due": "soon"}, delay_seconds=1)
    # On a manual clock, time moves while the poll waits; on real time it just passes.
    clock_mover = threading.Timer(0.2, backend.let_time_pass, args=(1.5,))
    clock_mover.start()
    try:
        message = receive_one(queue, name)
    finally:
        clock_mover.join()
    assert message.body == {"due": "soon"}


def test_change_visibility_extends_a_claim(
    backend: QueueUnderTest, queue: Queue, name: str
) -> None:
    queue.send(name, {"long": "job"})
    message = receive_one(queue, name, visibility_timeout=1)
    queue.change_visibility(name, message.receipt, 60)
    backend.let_time_pass(2)
    # Still claimed past the first timeout (on real time, the poll outlasts it).
    assert queue.receive(name, wait_seconds=0 if backend.clock else 1.5) == []
    queue.ack(name, message.receipt)  # the receipt stays valid after an extension
    assert queue.count(name) == 0


def test_change_visibility_to_zero_releases_at_once(queue: Queue, name: str) -> None:
    queue.send(name, {"give": "back"})
    first = receive_one(queue, name, visibility_timeout=60)
    queue.change_visibility(name, first.receipt, 0)
    again = receive_one(queue, name)
    assert again.id == first.id
    assert again.receive_count == 2


def test_change_visibility_with_a_stale_receipt_raises(
    backend: QueueUnderTest, queue: Queue, name: str
) -> None:
    queue.send(name, {"x": 1})
    first = receive_one(queue, name, visibility_timeout=60)
    queue.change_visibility(name, first.receipt, 0)
    second = receive_one(queue, name, visibility_timeout=60)
    if backend.detects_stale_receipts:  # SQS accepts any receipt a message ever had
        with pytest.raises(NotFoundError):
            queue.change_visibility(name, first.receipt, 60)
    queue.ack(name, second.receipt)
    with pytest.raises(NotFoundError):
        queue.change_visibility(name, second.receipt, 60)  # acked: the claim is gone


# --------------------------------------------------------------------------- receipts


def test_stale_receipt_ack_is_ignored(backend: QueueUnderTest, queue: Queue, name: str) -> None:
    if not backend.detects_stale_receipts:
        pytest.skip("this backend cannot tell a stale receipt from the current one (SQS)")
    queue.send(name, {"x": 1})
    first = receive_one(queue, name, visibility_timeout=60)
    queue.change_visibility(name, first.receipt, 0)  # as if the claim had timed out
    second = receive_one(queue, name, visibility_timeout=60)
    assert second.receipt != first.receipt

    queue.ack(name, first.receipt)  # the slow first worker finishes late: no error, no effect
    assert queue.count(name) == 1
    queue.ack(name, second.receipt)
    assert queue.count(name) == 0


def test_ack_twice_is_ignored(queue: Queue, name: str) -> None:
    queue.send(name, {"x": 1})
    message = receive_one(queue, name)
    queue.ack(name, message.receipt)
    queue.ack(name, message.receipt)
    assert queue.count(name) == 0


def test_a_receipt_only_acks_in_its_own_queue(queue: Queue, name: str) -> None:
    other = f"{name}-other"
    queue.ensure_queue(other)
    queue.send(name, {"x": 1})
    message = receive_one(queue, name)
    queue.ack(other, message.receipt)
    assert queue.count(name) == 1


# --------------------------------------------------------------------------- dead letters


def test_dead_letter_after_max_receives(queue: Queue) -> None:
    name, dlq = f"t-{uuid.uuid4().hex[:12]}", f"t-{uuid.uuid4().hex[:12]}-dlq"
    queue.ensure_queue(name, max_receives=2, dead_letter_queue=dlq)
    assert queue.count(dlq) == 0  # created along with its source queue
    message_id = queue.send(name, {"poison": True})

    for attempt in (1, 2):  # each consumer fails and gives the message straight back
        message = receive_one(queue, name, visibility_timeout=0)
        assert (message.id, message.receive_count) == (message_id, attempt)

    assert queue.receive(name, wait_seconds=0.5) == []  # a third delivery would exceed 2
    assert queue.count(name) == 0
    dead = receive_one(queue, dlq)
    assert dead.id == message_id
    assert dead.body == {"poison": True}
    queue.ack(dlq, dead.receipt)
    assert queue.count(dlq) == 0


def test_healthy_messages_are_delivered_past_a_poisoned_one(queue: Queue) -> None:
    name, dlq = f"t-{uuid.uuid4().hex[:12]}", f"t-{uuid.uuid4().hex[:12]}-dlq"
    queue.ensure_queue(name, max_receives=1, dead_letter_queue=dlq)
    poison = queue.send(name, {"poison": True})
    assert receive_one(queue, name, visibility_timeout=0).id == poison
    healthy = queue.send(name, {"healthy": True})

    message = receive_one(queue, name)
    assert message.id == healthy
    assert message.receive_count == 1
    assert [m.id for m in queue.receive(dlq, max_messages=10, wait_seconds=DEADLINE)] == [poison]


def test_no_message_over_the_limit_is_ever_delivered(queue: Queue) -> None:
    name, dlq = f"t-{uuid.uuid4().hex[:12]}", f"t-{uuid.uuid4().hex[:12]}-dlq"
    queue.ensure_queue(name, max_receives=1, dead_letter_queue=dlq)
    queue.send_batch(name, [{"i": i} for i in range(3)])
    first_round = receive_all(queue, name, 3)
    for message in first_round:
        queue.change_visibility(name, message.receipt, 0)

    # Small receives, so that more poisoned messages wait than one receive looks at.
    assert queue.receive(name, max_messages=1) == []
    assert queue.receive(name, max_messages=1, wait_seconds=0.5) == []
    assert queue.count(name) == 0
    assert queue.count(dlq) == 3


def test_ensure_queue_again_keeps_messages_and_applies_new_settings(
    queue: Queue, name: str
) -> None:
    queue.send(name, {"kept": True})
    queue.ensure_queue(name)
    assert queue.count(name) == 1

    dlq = f"{name}-dlq"
    queue.ensure_queue(name, max_receives=1, dead_letter_queue=dlq)
    receive_one(queue, name, visibility_timeout=0)
    assert queue.receive(name, wait_seconds=0.5) == []
    assert queue.count(dlq) == 1

    queue.ensure_queue(name)  # redrive off again: messages are redelivered without limit
    queue.send(name, {"again": True})
    for attempt in (1, 2, 3):
        assert receive_one(queue, name, visibility_timeout=0).receive_count == attempt


@pytest.mark.parametrize(
    ("max_receives", "dead_letter_queue"),
    [(3, None), (None, "dlq"), (0, "dlq"), (-1, "dlq"), (3, "bad/name")],
)
def test_ensure_queue_rejects_bad_redrive_settings(
    queue: Queue, max_receives: int | None, dead_letter_queue: str | None
) -> None:
    with pytest.raises(ValueError):
        queue.ensure_queue(
            "redrive", max_receives=max_receives, dead_letter_queue=dead_letter_queue
        )


def test_a_queue_cannot_be_its_own_dead_letter_queue(queue: Queue) -> None:
    with pytest.raises(ValueError):
        queue.ensure_queue("loop", max_receives=2, dead_letter_queue="loop")


# --------------------------------------------------------------------------- purge, count, names


def test_count_includes_claimed_and_delayed_and_purge_empties(queue: Queue, name: str) -> None:
    queue.send_batch(name, [{"i": i} for i in range(3)])
    queue.send(name, {"later": True}, delay_seconds=600)
    receive_one(queue, name, visibility_timeout=600)
    assert queue.count(name) == 4

    queue.purge(name)
    assert queue.count(name) == 0
    assert queue.receive(name) == []
    queue.send(name, {"after": "purge"})  # the queue itself stays
    assert receive_one(queue, name).body == {"after": "purge"}


def test_purge_leaves_other_queues_alone(queue: Queue, name: str) -> None:
    other = f"{name}-other"
    queue.ensure_queue(other)
    queue.send(name, {"x": 1})
    queue.send(other, {"y": 2})
    queue.purge(name)
    assert (queue.count(name), queue.count(other)) == (0, 1)


BAD_NAMES = ["", "a/b", "a.b", "has space", "x" * 65, "ünïcode", "new\nline", "tail\n"]


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_invalid_queue_names_are_refused(queue: Queue, bad: str) -> None:
    calls: list[Callable[[], object]] = [
        lambda: queue.ensure_queue(bad),
        lambda: queue.send(bad, {}),
        lambda: queue.send_batch(bad, [{}]),
        lambda: queue.receive(bad),
        lambda: queue.purge(bad),
        lambda: queue.count(bad),
    ]
    for call in calls:
        with pytest.raises(InvalidKeyError):
            call()


def test_longest_valid_name_is_accepted(queue: Queue) -> None:
    longest = "Q_-9" * 16
    queue.ensure_queue(longest)
    queue.send(longest, {"ok": True})
    assert queue.count(longest) == 1


def test_queues_must_be_ensured_before_use(queue: Queue) -> None:
    missing = f"t-{uuid.uuid4().hex[:12]}-never-made"
    calls: list[Callable[[], object]] = [
        lambda: queue.send(missing, {"lost": True}),
        lambda: queue.send_batch(missing, [{"lost": True}]),
        lambda: queue.receive(missing),
        lambda: queue.purge(missing),
        lambda: queue.count(missing),
    ]
    for call in calls:
        with pytest.raises(NotFoundError):
            call()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_messages": 0},
        {"visibility_timeout": -1},
        {"wait_seconds": -1},
        {"visibility_timeout": float("nan")},
    ],
)
def test_receive_rejects_nonsense_arguments(
    queue: Queue, name: str, kwargs: dict[str, Any]
) -> None:
    with pytest.raises(ValueError):
        queue.receive(name, **kwargs)


def test_send_rejects_a_negative_delay(queue: Queue, name: str) -> None:
    with pytest.raises(ValueError):
        queue.send(name, {"x": 1}, delay_seconds=-1)


# --------------------------------------------------------------------------- concurrency


def test_threads_sharing_one_adapter_each_get_distinct_messages(
    backend: QueueUnderTest, queue: Queue, name: str
) -> None:
    ids = set(queue.send_batch(name, [{"i": i} for i in range(400)]))
    delivered: list[str] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def consume() -> None:
        try:
            while batch := queue.receive(name, max_messages=10, visibility_timeout=120):
                for message in batch:
                    queue.ack(name, message.receipt)
                with lock:
                    delivered.extend(m.id for m in batch)
        except BaseException as exc:  # reported below: a thread's exception is otherwise lost
            errors.append(exc)

    threads = [threading.Thread(target=consume) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    if backend.delivers_once_under_competition:
        assert sorted(delivered) == sorted(ids)
        assert queue.count(name) == 0
    else:  # at-least-once only (SQS standard queues): nothing lost, a duplicate is allowed
        assert set(delivered) == ids
        # A message handed out twice can be left counted (in flight under the receipt that
        # lost the race, as moto's threaded SQS shows); anything else left over is a loss.
        assert queue.count(name) <= len(delivered) - len(ids)


def test_consumer_killed_mid_message_gets_it_redelivered(
    process_backend: QueueUnderTest, children: Callable[..., Any]
) -> None:
    if process_backend.shortest_claim_seconds > 1:
        pytest.skip(f"claims last at least {process_backend.shortest_claim_seconds} s here")
    queue = process_backend.open()
    name = f"t-{uuid.uuid4().hex[:12]}"
    queue.ensure_queue(name)
    message_id = queue.send(name, {"job": "resize"})

    reader, writer = SPAWN.Pipe(duplex=False)
    worker = children(receive_then_hang, process_backend.backend, name, 1.0, writer)
    assert reader.poll(DEADLINE), "the worker never reported its message"
    assert reader.recv() == [(message_id, 1)]
    assert queue.receive(name) == []  # the worker holds the claim

    os.kill(worker.pid, signal.SIGKILL)
    worker.join(timeout=DEADLINE)
    assert worker.exitcode == -signal.SIGKILL

    message = receive_one(queue, name)  # reappears once the 1 s claim runs out
    assert message.id == message_id
    assert message.body == {"job": "resize"}
    assert message.receive_count == 2
    queue.ack(name, message.receipt)
    assert queue.count(name) == 0


def test_messages_survive_a_process_restart(
    process_backend: QueueUnderTest, children: Callable[..., Any]
) -> None:
    setup = process_backend.open()
    name = f"t-{uuid.uuid4().hex[:12]}"
    setup.ensure_queue(name)
    bodies = [{"i": i, "text": f"message {i}"} for i in range(3)]

    sender = children(send_then_exit, process_backend.backend, name, bodies)
    sender.join(timeout=DEADLINE)
    assert sender.exitcode == 0

    fresh = process_backend.open()  # a new adapter object, as after a restart
    assert fresh.count(name) == 3
    got = receive_all(fresh, name, 3)
    assert sorted((m.body["i"], m.body["text"]) for m in got) == [
        (b["i"], b["text"]) for b in bodies
    ]


def test_concurrent_consumer_processes_get_each_message_exactly_once(
    process_backend: QueueUnderTest, children: Callable[..., Any]
) -> None:
    queue = process_backend.open()
    name = f"t-{uuid.uuid4().hex[:12]}"
    queue.ensure_queue(name)
    total = process_backend.bulk_messages
    sent = queue.send_batch(name, [{"i": i} for i in range(total)])

    start = SPAWN.Event()
    readers = []
    for _ in range(4):
        reader, writer = SPAWN.Pipe(duplex=False)
        children(drain, process_backend.backend, name, start, writer)
        readers.append(reader)
    start.set()

    delivered: list[tuple[str, int, Any]] = []
    per_consumer: list[int] = []
    for reader in readers:
        assert reader.poll(60), "a consumer did not finish within 60 s"
        seen = reader.recv()
        delivered += seen
        per_consumer.append(len(seen))

    ids = [message_id for message_id, _, _ in delivered]
    if process_backend.delivers_once_under_competition:
        assert len(ids) == len(set(ids)), "a message was delivered twice"
        assert sorted(ids) == sorted(sent), "a message was lost"
        assert all(count == 1 for _, count, _ in delivered)
        assert sorted(body["i"] for _, _, body in delivered) == list(range(total))
    else:  # at-least-once only (SQS standard queues): nothing lost, a duplicate is allowed
        assert set(ids) == set(sent), "a message was lost"
        assert {body["i"] for _, _, body in delivered} == set(range(total))
    assert queue.count(name) == 0  # every one acked
    assert sum(1 for n in per_consumer if n > 0) >= 2, f"no real competition: {per_consumer}"


# --------------------------------------------------------------------------- SQLite adapter only


def test_sqlite_processes_creating_the_file_at_once_all_succeed(
    tmp_path: Path, children: Callable[..., Any]
) -> None:
    path = tmp_path / "fresh.db"
    start = SPAWN.Event()
    racers = [children(open_fresh_sqlite_and_send, path, start) for _ in range(4)]
    start.set()
    for racer in racers:
        racer.join(timeout=DEADLINE)
    assert [racer.exitcode for racer in racers] == [0, 0, 0, 0]
    with SqliteQueue(path) as queue:
        assert queue.count("race") == 4


def test_sqlite_adapter_used_across_fork_opens_its_own_connection(tmp_path: Path) -> None:
    queue = SqliteQueue(tmp_path / "forked.db")
    queue.ensure_queue("jobs")
    parent_connection = queue._conn()  # opened before the fork

    def child() -> None:
        # SQLite forbids carrying a connection across fork (its file locks stay with the parent).
        if queue._conn() is parent_connection:
            raise AssertionError("the forked child reused its parent's connection")
        queue.send("jobs", {"from": "forked child"})

    forked = multiprocessing.get_context("fork").Process(target=child)
    forked.start()
    try:
        forked.join(timeout=DEADLINE)
        assert forked.exitcode == 0
        assert [m.body for m in queue.receive("jobs", wait_seconds=DEADLINE)] == [
            {"from": "forked child"}
        ]
    finally:
        if forked.is_alive():
            forked.kill()
            forked.join()
        queue.close()
