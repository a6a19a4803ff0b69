"""`DurableDriver.drain`, the engine-steps function's work: an empty queue, the time budget
(checked between executions' messages, the unstarted rest handed back at once), waiting for
a delayed step, failures left for redelivery, and several drains at once handling every
message exactly once. Over the in-memory fakes, with a ManualClock that tasks move to stand
for the time they take."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from shared.clock import ManualClock
from shared.engine.durable import QUEUE, DurableDriver, drain_units
from shared.engine.invoker import InProcessInvoker
from shared.engine.service import ExecutionService
from shared.ports import JSON, Lease, Message, Record
from tests.unit.engine.fakes import MemoryQueue, MemoryStateStore

ONE_TASK = {
    "StartAt": "Work",
    "States": {"Work": {"Type": "Task", "Resource": "fn:work", "End": True}},
}
NAP_THEN_TASK = {
    "StartAt": "Nap",
    "States": {
        "Nap": {"Type": "Wait", "Seconds": 2, "Next": "Work"},
        "Work": {"Type": "Task", "Resource": "fn:work", "End": True},
    },
}
FAN_OUT = {
    "StartAt": "Fan",
    "States": {
        "Fan": {
            "Type": "Map",
            "ItemsPath": "$.items",
            "ItemProcessor": {
                "StartAt": "Item",
                "States": {"Item": {"Type": "Task", "Resource": "fn:work", "End": True}},
            },
            "Next": "After",
        },
        "After": {"Type": "Task", "Resource": "fn:work", "End": True},
    },
}


class BlockingMemoryQueue(MemoryQueue):
    """A receive with `wait_seconds` blocks (moves the clock) until a message is visible or
    the wait is over, as a real long poll does."""

    def receive(
        self,
        queue: str,
        max_messages: int = 1,
        visibility_timeout: float = 30,
        wait_seconds: float = 0,
    ) -> list[Message]:
        found = super().receive(queue, max_messages, visibility_timeout)
        if found or wait_seconds <= 0:
            return found
        due = self.next_visible_at(queue)
        now = self.clock.time()
        if due is None or due > now + wait_seconds:
            self.clock.advance(wait_seconds)
            return []
        self.clock.advance(max(0.0, due - now))
        return super().receive(queue, max_messages, visibility_timeout)


class Engine:
    def __init__(self, task_seconds: float = 0.0) -> None:
        self.clock = ManualClock()
        self.store = MemoryStateStore(self.clock)
        self.queue = BlockingMemoryQueue(self.clock)
        self.calls: Counter[str] = Counter()

        def work(payload: Any, context: Any) -> Any:
            self.calls[context.idempotency_key] += 1
            self.clock.advance(task_seconds)  # the time the task takes
            return payload

        self.driver = self.new_driver(InProcessInvoker({"fn:work": work}))
        self.service = ExecutionService(self.driver)

    def new_driver(self, invoker: InProcessInvoker) -> DurableDriver:
        return DurableDriver(self.store, self.queue, invoker, self.clock, visibility_timeout=30.0)

    def start(self, definition: JSON, name: str, input_value: JSON | None = None) -> str:
        return self.service.start("drained", definition, input_value or {}, name=name).arn

    def status(self, arn: str) -> str:
        return str(self.service.describe(arn).status)


def test_an_empty_queue_is_a_quick_no_op() -> None:
    engine = Engine()
    started = engine.clock.monotonic()

    report = engine.driver.drain(60.0)

    assert report.to_json() == {
        "received": 0,
        "handled": 0,
        "failed": 0,
        "released": 0,
        "out_of_budget": False,
        "seconds": 0.0,
    }
    assert engine.clock.monotonic() == started  # no wait asked: no waiting


def test_a_drain_runs_executions_to_their_end() -> None:
    engine = Engine()
    arns = [engine.start(FAN_OUT, f"e{i}", {"items": [1, 2, 3]}) for i in range(3)]

    report = engine.driver.drain(60.0)

    assert [engine.status(arn) for arn in arns] == ["SUCCEEDED"] * 3
    assert report.received == report.handled == engine.queue.sent
    assert report.failed == report.released == 0 and not report.out_of_budget
    assert engine.queue.count(QUEUE) == 0
    assert len(engine.calls) == 3 * 4 and set(engine.calls.values()) == {1}


def test_the_budget_stops_the_drain_and_hands_back_unstarted_steps() -> None:
    engine = Engine(task_seconds=2.0)
    arns = [engine.start(ONE_TASK, f"e{i}") for i in range(5)]

    report = engine.driver.drain(3.0)

    # Each begin runs its task inline (2 s): two fit before the 3 s budget is spent.
    assert (report.received, report.handled, report.released) == (5, 2, 3)
    assert report.out_of_budget
    assert [engine.status(arn) for arn in arns].count("SUCCEEDED") == 2
    # Handed back at once: visible again without waiting for the 30 s claim to run out.
    assert len(engine.queue.receive(QUEUE, 10, visibility_timeout=0)) == 3

    again = engine.driver.drain(60.0)

    assert again.handled == 3 and not again.out_of_budget
    assert [engine.status(arn) for arn in arns] == ["SUCCEEDED"] * 5


def test_the_first_step_runs_even_when_it_alone_outlasts_the_budget() -> None:
    engine = Engine(task_seconds=10.0)
    arn = engine.start(ONE_TASK, "long")

    report = engine.driver.drain(1.0)

    assert report.handled == 1 and report.out_of_budget
    assert engine.status(arn) == "SUCCEEDED"


def test_waiting_picks_up_a_delayed_step_and_no_wait_leaves_it() -> None:
    engine = Engine()
    arn = engine.start(NAP_THEN_TASK, "nap")

    quick = engine.driver.drain(60.0)  # no wait: the Wait state's timer is 2 s away

    assert quick.handled == 1 and engine.status(arn) == "RUNNING"

    patient = engine.driver.drain(60.0, wait_seconds=3.0)

    assert patient.handled == 1 and engine.status(arn) == "SUCCEEDED"
    assert 1.9 <= patient.seconds <= 3.0


def test_a_wait_is_bounded_by_the_budget() -> None:
    engine = Engine()
    arn = engine.start(NAP_THEN_TASK, "nap")
    engine.driver.drain(60.0)

    report = engine.driver.drain(1.0, wait_seconds=30.0)

    assert report.received == 0 and report.seconds == pytest.approx(1.0)
    assert engine.status(arn) == "RUNNING"


@pytest.mark.parametrize(("budget", "wait"), [(0.0, 0.0), (-1.0, 0.0), (5.0, -1.0)])
def test_a_nonsensical_budget_or_wait_is_refused(budget: float, wait: float) -> None:
    with pytest.raises(ValueError, match="must be"):
        Engine().driver.drain(budget, wait_seconds=wait)


class FlakyStore(MemoryStateStore):
    """Fails the next `failures` writes, as an unreachable store would."""

    def __init__(self, clock: ManualClock) -> None:
        super().__init__(clock)
        self.failures = 0

    def put(self, key: str, data: JSON, expected_revision: int) -> Record:
        if self.failures:
            self.failures -= 1
            raise OSError("store unreachable")
        return super().put(key, data, expected_revision)


def test_a_failed_step_is_counted_and_redelivered_later() -> None:
    engine = Engine()
    engine.store = FlakyStore(engine.clock)
    engine.driver = engine.new_driver(InProcessInvoker({"fn:work": lambda payload: payload}))
    engine.service = ExecutionService(engine.driver)
    arn = engine.start(ONE_TASK, "flaky")
    assert isinstance(engine.store, FlakyStore)
    engine.store.failures = 1

    failed = engine.driver.drain(60.0)

    assert (failed.received, failed.handled, failed.failed) == (1, 0, 1)
    assert engine.status(arn) == "RUNNING" and engine.queue.count(QUEUE) == 1
    engine.clock.advance(31.0)  # the claim runs out: the step comes back

    assert engine.driver.drain(60.0).handled == 1
    assert engine.status(arn) == "SUCCEEDED"


# --------------------------------------------------------------------------- concurrency


class LockedQueue:
    """The fake queue, one call at a time: a server's atomic claims."""

    def __init__(self, queue: MemoryQueue) -> None:
        self.inner = queue
        self.lock = threading.Lock()

    def ensure_queue(
        self, name: str, *, max_receives: int | None = None, dead_letter_queue: str | None = None
    ) -> None:
        with self.lock:
            self.inner.ensure_queue(
                name, max_receives=max_receives, dead_letter_queue=dead_letter_queue
            )

    def send(self, queue: str, body: JSON, delay_seconds: float = 0) -> str:
        with self.lock:
            return self.inner.send(queue, body, delay_seconds)

    def send_batch(self, queue: str, bodies: Sequence[JSON], delay_seconds: float = 0) -> list[str]:
        with self.lock:
            return self.inner.send_batch(queue, bodies, delay_seconds)

    def receive(
        self,
        queue: str,
        max_messages: int = 1,
        visibility_timeout: float = 30,
        wait_seconds: float = 0,
    ) -> list[Message]:
        with self.lock:
            return self.inner.receive(queue, max_messages, visibility_timeout)

    def ack(self, queue: str, receipt: str) -> None:
        with self.lock:
            self.inner.ack(queue, receipt)

    def change_visibility(self, queue: str, receipt: str, visibility_timeout: float) -> None:
        with self.lock:
            self.inner.change_visibility(queue, receipt, visibility_timeout)

    def purge(self, queue: str) -> None:
        with self.lock:
            self.inner.purge(queue)

    def count(self, queue: str) -> int:
        with self.lock:
            return self.inner.count(queue)


class LockedStore(MemoryStateStore):
    def __init__(self, clock: ManualClock) -> None:
        super().__init__(clock)
        self.lock = threading.Lock()

    def get(self, key: str) -> Record | None:
        with self.lock:
            return super().get(key)

    def put(self, key: str, data: JSON, expected_revision: int) -> Record:
        with self.lock:
            return super().put(key, data, expected_revision)

    def list(self, prefix: str = "") -> Iterator[str]:
        with self.lock:
            return iter(list(super().list(prefix)))

    def delete(self, key: str) -> None:
        with self.lock:
            super().delete(key)

    def acquire_lease(self, name: str, owner: str, ttl_seconds: float) -> Lease:
        with self.lock:
            return super().acquire_lease(name, owner, ttl_seconds)


def test_concurrent_drains_handle_every_message_exactly_once() -> None:
    clock = ManualClock()
    store = LockedStore(clock)
    fake_queue = MemoryQueue(clock)
    queue = LockedQueue(fake_queue)
    calls: Counter[str] = Counter()
    calls_lock = threading.Lock()

    def work(payload: Any, context: Any) -> Any:
        with calls_lock:
            calls[context.idempotency_key] += 1
        return payload

    def copy() -> DurableDriver:  # one per function instance, as separate processes have
        return DurableDriver(store, queue, InProcessInvoker({"fn:work": work}), clock)

    service = ExecutionService(copy())
    arns = [
        service.start("drained", FAN_OUT, {"items": list(range(5))}, name=f"e{i}").arn
        for i in range(8)
    ]
    handled: list[int] = []
    errors: list[BaseException] = []
    go = threading.Barrier(4)

    def function_copy() -> None:
        driver = copy()
        try:
            go.wait()
            while True:
                report = driver.drain(60.0, batch=3)
                with calls_lock:
                    handled.append(report.handled)
                if report.received == 0 and queue.count(QUEUE) == 0:
                    return
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=function_copy) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []

    assert [str(service.describe(arn).status) for arn in arns] == ["SUCCEEDED"] * 8
    # Nothing expired (the clock stood still), so no message was delivered twice: each sent
    # message was handled by exactly one drain, and each task ran once.
    assert sum(handled) == fake_queue.sent
    assert len(calls) == 8 * 6 and set(calls.values()) == {1}


def test_units_keep_process_batch_grouping() -> None:
    def message(n: int, body: JSON) -> Message:
        return Message(f"m{n}", body, f"r{n}", 1, 0.0)

    batch = [
        message(1, {"kind": "invoke", "execution": "a", "run": "r", "wait": 1}),
        message(2, {"kind": "event", "execution": "a", "event": {"type": "begin"}}),
        message(3, {"kind": "invoke", "execution": "b", "run": "r", "wait": 1}),
        message(4, {"kind": "invoke", "execution": "a", "run": "r", "wait": 2}),
        message(5, {"malformed": True}),
    ]

    units = drain_units(batch)

    assert [[m.id for m in unit] for unit in units] == [["m2"], ["m5"], ["m1", "m4"], ["m3"]]
