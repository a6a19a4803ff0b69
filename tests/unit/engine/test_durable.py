"""The durable driver and the execution service, over in-memory fakes of the ports.

A simulated crash is an exception no handler catches (BaseException), raised at the driver's
crash points or inside a task: the message being processed is never acknowledged, so the fake
queue redelivers it after its visibility timeout, exactly as after a SIGKILL."""

import random
from collections import Counter

import pytest

from shared.clock import ManualClock
from shared.engine import TaskError
from shared.engine import durable as durable_module
from shared.engine.durable import QUEUE, DurableDriver
from shared.engine.errors import (
    ExecutionAlreadyExistsError,
    ExecutionDoesNotExistError,
    ExecutionNotRedrivableError,
    InvalidExecutionInputError,
    InvalidNameError,
    TaskDoesNotExistError,
    TaskTimedOutError,
)
from shared.engine.idempotency import StaleAttemptError, TaskIdempotency, TaskInProgressError
from shared.engine.invoker import InProcessInvoker
from shared.engine.service import ExecutionService
from tests.unit.engine.fakes import MemoryQueue, MemoryStateStore


class Crash(BaseException):
    """The worker process died here."""


class Harness:
    def __init__(self, functions=None, *, crash_probability=0.0, seed=0, points=None, lease=60.0):
        self.clock = ManualClock()
        self.store = MemoryStateStore(self.clock)
        self.queue = MemoryQueue(self.clock)
        self.invoker = InProcessInvoker(functions or {})
        self.rng = random.Random(seed)
        self.crash_probability = crash_probability
        self.points = points
        self.crashes = Counter()
        self.driver = DurableDriver(
            self.store,
            self.queue,
            self.invoker,
            self.clock,
            visibility_timeout=30.0,
            idempotency=TaskIdempotency(self.store, self.clock, lease_seconds=lease),
            crash_hook=self.hook,
        )
        self.service = ExecutionService(self.driver)

    def hook(self, point):
        if (
            self.points is None or point in self.points
        ) and self.rng.random() < self.crash_probability:
            self.crashes[point] += 1
            raise Crash(point)

    def maybe_crash(self, where):
        if (
            self.points is None or where in self.points
        ) and self.rng.random() < self.crash_probability:
            self.crashes[where] += 1
            raise Crash(where)

    def drain(self, limit=20000, *, batched=True):
        processed = 0
        while processed < limit:
            messages = self.driver.receive(10)
            if not messages:
                due = self.queue.next_visible_at(QUEUE)
                if due is None:
                    return processed
                self.clock.advance(max(0.0, due - self.clock.time()) + 0.001)
                continue
            processed += len(messages)
            try:
                if batched:
                    self.driver.process_batch(messages)
                else:
                    for message in messages:
                        self.driver.process(message)
            except Crash:
                pass  # the worker died: the rest of its batch stays claimed until expiry
        raise AssertionError("the queue never drained")


FLOW = {
    "StartAt": "Create",
    "States": {
        "Create": {
            "Type": "Task",
            "Resource": "fn:effect",
            "Parameters": {"step": "create"},
            "ResultPath": "$.created",
            "Next": "Nap",
        },
        "Nap": {"Type": "Wait", "Seconds": 5, "Next": "Big?"},
        "Big?": {
            "Type": "Choice",
            "Choices": [{"Variable": "$.size", "NumericGreaterThan": 1, "Next": "Fan"}],
            "Default": "Done",
        },
        "Fan": {
            "Type": "Map",
            "ItemsPath": "$.items",
            "MaxConcurrency": 3,
            "ItemSelector": {"step": "item", "i.$": "$$.Map.Item.Value"},
            "ItemProcessor": {
                "StartAt": "Item",
                "States": {"Item": {"Type": "Task", "Resource": "fn:effect", "End": True}},
            },
            "ResultPath": "$.mapped",
            "Next": "Both",
        },
        "Both": {
            "Type": "Parallel",
            "Branches": [
                {
                    "StartAt": "L",
                    "States": {
                        "L": {
                            "Type": "Task",
                            "Resource": "fn:effect",
                            "Parameters": {"step": "left"},
                            "End": True,
                        }
                    },
                },
                {
                    "StartAt": "R",
                    "States": {
                        "R": {
                            "Type": "Task",
                            "Resource": "fn:flaky",
                            "Parameters": {"step": "right"},
                            "Retry": [{"ErrorEquals": ["Flaky"], "IntervalSeconds": 1}],
                            "End": True,
                        }
                    },
                },
            ],
            "ResultPath": "$.both",
            "Next": "Done",
        },
        "Done": {"Type": "Succeed"},
    },
}
EXPECTED = {
    "size": 2,
    "items": [1, 2, 3, 4],
    "created": {"step": "create"},
    "mapped": [{"step": "item", "i": i} for i in (1, 2, 3, 4)],
    "both": [{"step": "left"}, {"step": "right"}],
}


def effects_harness(**options):
    calls: Counter = Counter()
    ledger: Counter = Counter()
    flaky_failed: set = set()
    holder: dict = {}

    def effect(payload, context):
        calls[context.idempotency_key] += 1
        holder["h"].maybe_crash("task_before_effect")
        # The side effect is keyed on the idempotency key (what handlers are asked to do).
        if ledger[context.idempotency_key] == 0:
            ledger[context.idempotency_key] += 1
        holder["h"].maybe_crash("task_after_effect")
        return payload

    def flaky(payload, context):
        if context.attempt == 0 and context.idempotency_key not in flaky_failed:
            flaky_failed.add(context.idempotency_key)
            raise TaskError("Flaky", "first attempt fails")
        return effect(payload, context)

    harness = Harness({"fn:effect": effect, "fn:flaky": flaky}, **options)
    holder["h"] = harness
    return harness, calls, ledger


def test_runs_a_flow_to_the_end():
    harness, calls, _ledger = effects_harness()
    started = harness.service.start("flows", FLOW, {"size": 2, "items": [1, 2, 3, 4]}, name="e1")
    assert started.status == "RUNNING"
    harness.drain()
    described = harness.service.describe(started.arn)
    assert described.status == "SUCCEEDED", (described.error, described.cause)
    assert described.output == EXPECTED
    # create + 4 items + left + right (right's first attempt failed before its body ran)
    assert len(calls) == 7 and set(calls.values()) == {1}
    types = [e["type"] for e in harness.service.history(started.arn)]
    assert types[0] == "ExecutionStarted" and types[-1] == "ExecutionSucceeded"
    assert types.count("MapIterationSucceeded") == 4
    assert "WaitStateExited" in types
    ids = [e["id"] for e in harness.service.history(started.arn)]
    assert ids == list(range(1, len(ids) + 1))
    # Idempotency records are removed once the execution has ended.
    assert not list(harness.store.list("idempotency/"))


@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("seed", range(10))
def test_crashes_at_driver_points_never_repeat_a_task(seed, batched):
    harness, calls, ledger = effects_harness(
        crash_probability=0.15,
        seed=seed,
        points={"before_persist", "after_persist", "after_dispatch", "after_invoke", "before_ack"},
    )
    started = harness.service.start(
        "flows", FLOW, {"size": 2, "items": [1, 2, 3, 4]}, name=f"c{seed}"
    )
    harness.drain(batched=batched)
    described = harness.service.describe(started.arn)
    assert described.status == "SUCCEEDED", (described.error, described.cause)
    assert described.output == EXPECTED
    assert sum(harness.crashes.values()) > 0
    # Every task attempt ran its function exactly once, whatever the crashes.
    assert len(calls) == 7 and set(calls.values()) == {1}, calls
    assert set(ledger.values()) == {1}


@pytest.mark.parametrize("seed", range(8))
def test_crashes_inside_tasks_repeat_only_the_call_never_the_keyed_effect(seed):
    harness, calls, ledger = effects_harness(crash_probability=0.2, seed=seed, lease=10.0)
    started = harness.service.start(
        "flows", FLOW, {"size": 2, "items": [1, 2, 3, 4]}, name=f"t{seed}"
    )
    harness.drain()
    described = harness.service.describe(started.arn)
    assert described.status == "SUCCEEDED", (described.error, described.cause)
    assert described.output == EXPECTED
    assert len(ledger) == 7 and set(ledger.values()) == {1}
    in_task = harness.crashes["task_before_effect"] + harness.crashes["task_after_effect"]
    assert sum(calls.values()) <= 7 + in_task


def test_history_is_paged_beyond_the_flush_size():
    states = {f"S{i}": {"Type": "Pass", "Next": f"S{i + 1}"} for i in range(149)}
    states["S149"] = {"Type": "Pass", "End": True}
    harness = Harness()
    started = harness.service.start("long", {"StartAt": "S0", "States": states}, {"x": 1})
    harness.drain()
    history = harness.service.history(started.arn)
    assert [e["id"] for e in history] == list(range(1, 303))
    assert list(harness.store.list("execution-history/"))
    assert harness.service.describe(started.arn).output == {"x": 1}


def test_start_is_idempotent_by_name():
    harness = Harness()
    definition = {"StartAt": "P", "States": {"P": {"Type": "Pass", "End": True}}}
    first = harness.service.start("sm", definition, {"a": 1}, name="same")
    again = harness.service.start("sm", definition, {"a": 1}, name="same")
    assert again.arn == first.arn
    with pytest.raises(ExecutionAlreadyExistsError, match="different input"):
        harness.service.start("sm", definition, {"a": 2}, name="same")
    other = {"StartAt": "Q", "States": {"Q": {"Type": "Pass", "End": True}}}
    with pytest.raises(ExecutionAlreadyExistsError, match="different definition"):
        harness.service.start("sm", other, {"a": 1}, name="same")
    harness.drain()
    assert harness.service.describe(first.arn).status == "SUCCEEDED"
    # The same name in another state machine is another execution.
    assert harness.service.start("sm2", definition, {"a": 2}, name="same").arn != first.arn


def test_a_start_whose_begin_message_was_lost_is_healed():
    harness = Harness()
    definition = {"StartAt": "P", "States": {"P": {"Type": "Pass", "End": True}}}
    started = harness.service.start("sm", definition, {}, name="lost")
    harness.queue.purge(QUEUE)  # the begin message never made it
    harness.drain()
    assert harness.service.describe(started.arn).status == "RUNNING"
    harness.service.start("sm", definition, {}, name="lost")  # the caller retries its start
    harness.drain()
    assert harness.service.describe(started.arn).status == "SUCCEEDED"
    second = harness.service.start("sm", definition, {}, name="lost2")
    harness.queue.purge(QUEUE)
    assert harness.driver.recover() == 1  # or a worker starting up finds it
    harness.drain()
    assert harness.service.describe(second.arn).status == "SUCCEEDED"


def test_recover_resends_lost_task_and_timer_messages():
    harness, calls, _ = effects_harness()
    started = harness.service.start("flows", FLOW, {"size": 0, "items": []}, name="r")
    # Process only the begin step, then lose every message (invoke of Create).
    [message] = harness.driver.receive(10)
    harness.driver.inline_seconds = 0  # do not run Create inline: send it as a message
    harness.driver.process(message)
    harness.queue.purge(QUEUE)
    assert harness.driver.recover() == 1
    harness.drain()
    assert harness.service.describe(started.arn).status == "SUCCEEDED"
    assert sum(calls.values()) == 1


def test_invalid_starts():
    harness = Harness()
    definition = {"StartAt": "P", "States": {"P": {"Type": "Pass", "End": True}}}
    with pytest.raises(InvalidNameError):
        harness.service.start("sm", definition, {}, name="has space")
    with pytest.raises(InvalidNameError):
        harness.service.start("bad:sm", definition, {})
    with pytest.raises(InvalidExecutionInputError, match="plaintext secret"):
        harness.service.start("sm", definition, {"db": {"password": "hunter2"}})
    with pytest.raises(InvalidExecutionInputError, match="not JSON"):
        harness.service.start("sm", definition, {"x": float("nan")})
    with pytest.raises(ExecutionDoesNotExistError):
        harness.service.describe("arn:troveless:states:local:000000000000:execution:sm:nope")
    with pytest.raises(ExecutionDoesNotExistError):
        harness.service.describe("not-an-arn")


def test_task_results_with_plaintext_secrets_are_not_stored():
    harness = Harness({"fn:leak": lambda p: {"root_password": "x"}})
    definition = {
        "StartAt": "T",
        "States": {"T": {"Type": "Task", "Resource": "fn:leak", "End": True}},
    }
    started = harness.service.start("sm", definition, {})
    harness.drain()
    described = harness.service.describe(started.arn)
    assert (described.status, described.error) == ("FAILED", "Troveless.PlaintextSecret")
    assert "hunter" not in str(harness.store.records)


CALLBACK = {
    "StartAt": "Ask",
    "States": {
        "Ask": {
            "Type": "Task",
            "Resource": "fn:guest.waitForTaskToken",
            "Parameters": {"token.$": "$$.Task.Token"},
            "TimeoutSeconds": 600,
            "HeartbeatSeconds": 60,
            "End": True,
        }
    },
}


def callback_harness():
    tokens = []
    harness = Harness({"fn:guest": lambda p: tokens.append(p["token"])})
    return harness, tokens


def test_callback_success_and_stale_token():
    harness, tokens = callback_harness()
    started = harness.service.start("cb", CALLBACK, {}, name="ok")
    while not tokens:
        harness.driver.process(harness.driver.receive(1)[0])
    harness.service.send_task_heartbeat(tokens[0])
    harness.service.send_task_success(tokens[0], {"answer": 42})
    harness.drain()
    assert harness.service.describe(started.arn).output == {"answer": 42}
    with pytest.raises(TaskTimedOutError):
        harness.service.send_task_success(tokens[0], {"answer": 43})
    with pytest.raises(TaskDoesNotExistError):
        harness.service.send_task_success("nonsense", {})
    types = [e["type"] for e in harness.service.history(started.arn)]
    assert types[-4:] == ["TaskSubmitted", "TaskSucceeded", "TaskStateExited", "ExecutionSucceeded"]


def test_callback_failure_and_heartbeat_timeout():
    harness, tokens = callback_harness()
    failed = harness.service.start("cb", CALLBACK, {}, name="fails")
    while not tokens:
        harness.driver.process(harness.driver.receive(1)[0])
    harness.service.send_task_failure(tokens[0], "Guest.Error", "disk full")
    harness.drain()
    described = harness.service.describe(failed.arn)
    assert (described.status, described.error, described.cause) == (
        "FAILED",
        "Guest.Error",
        "disk full",
    )
    silent = harness.service.start("cb", CALLBACK, {}, name="silent")
    harness.drain()  # nobody answers: the heartbeat deadline (a delayed message) fires
    described = harness.service.describe(silent.arn)
    assert (described.status, described.error) == ("FAILED", "States.HeartbeatTimeout")


def test_heartbeats_keep_a_callback_alive():
    harness, tokens = callback_harness()
    started = harness.service.start("cb", CALLBACK, {}, name="alive")
    while not tokens:
        harness.driver.process(harness.driver.receive(1)[0])
    for _ in range(5):
        harness.clock.advance(45)
        harness.service.send_task_heartbeat(tokens[0])
        for message in harness.driver.receive(10):
            harness.driver.process(message)
    assert harness.service.describe(started.arn).status == "RUNNING"
    harness.service.send_task_success(tokens[0], "fine")
    harness.drain()
    assert harness.service.describe(started.arn).output == "fine"


def test_stop_and_redrive():
    attempts = Counter()

    def sometimes(payload, context):
        attempts[context.idempotency_key] += 1
        if len(attempts) == 1:
            raise TaskError("Broken", "first time")
        return "fixed"

    harness = Harness({"fn:s": sometimes})
    definition = {
        "StartAt": "Wait",
        "States": {
            "Wait": {"Type": "Wait", "Seconds": 100, "Next": "Work"},
            "Work": {"Type": "Task", "Resource": "fn:s", "End": True},
        },
    }
    stopped = harness.service.start("sm", definition, {}, name="stopped")
    harness.driver.process(harness.driver.receive(1)[0])  # begin: now waiting
    described = harness.service.stop(stopped.arn, "Operator", "not needed")
    assert (described.status, described.error) == ("ABORTED", "Operator")
    assert harness.service.stop(stopped.arn).status == "ABORTED"  # again: no change
    harness.drain()  # the Wait's timer message arrives and is stale
    assert harness.service.describe(stopped.arn).status == "ABORTED"

    failing = harness.service.start("sm", definition, {}, name="failing")
    harness.drain()
    assert harness.service.describe(failing.arn).error == "Broken"
    done = harness.service.start(
        "sm", {"StartAt": "P", "States": {"P": {"Type": "Pass", "End": True}}}, {}, name="done"
    )
    harness.drain()
    with pytest.raises(ExecutionNotRedrivableError, match="SUCCEEDED"):
        harness.service.redrive(done.arn)
    redriven = harness.service.redrive(failing.arn)
    assert redriven.status == "RUNNING" and redriven.redrive_count == 1
    harness.drain()
    described = harness.service.describe(failing.arn)
    assert (described.status, described.output) == ("SUCCEEDED", "fixed")
    history = [e["type"] for e in harness.service.history(failing.arn)]
    assert history.count("WaitStateEntered") == 1  # the redrive started at Work, not at Wait
    assert "ExecutionRedriven" in history


def test_list_executions_by_state_machine_and_status():
    harness = Harness()
    ok = {"StartAt": "P", "States": {"P": {"Type": "Pass", "End": True}}}
    bad = {"StartAt": "F", "States": {"F": {"Type": "Fail", "Error": "E"}}}
    for i in range(3):
        harness.service.start("alpha", ok, {}, name=f"a{i}")
        harness.clock.advance(1)
    harness.service.start("beta", bad, {}, name="b0")
    harness.drain()
    harness.service.start("alpha", ok, {}, name="a-running")
    assert {e.name for e in harness.service.list_executions("alpha")} == {
        "a0",
        "a1",
        "a2",
        "a-running",
    }
    assert [e.name for e in harness.service.list_executions("alpha", "SUCCEEDED")] == [
        "a2",
        "a1",
        "a0",
    ]
    assert [e.name for e in harness.service.list_executions(status="FAILED")] == ["b0"]
    assert [e.name for e in harness.service.list_executions(status="RUNNING")] == ["a-running"]


def test_names_with_characters_keys_do_not_allow():
    harness = Harness()
    definition = {"StartAt": "P", "States": {"P": {"Type": "Pass", "End": True}}}
    started = harness.service.start("sm", definition, {}, name="weird+name=(1)")
    harness.drain()
    assert harness.service.describe(started.arn).name == "weird+name=(1)"


def test_concurrent_writers_conflict_and_reapply():
    """Two workers finish Map items at the same moment: one compare-and-swap loses and the
    event is applied again to the newer record."""
    harness = Harness({"fn:id": lambda p: p})
    definition = {
        "StartAt": "M",
        "States": {
            "M": {
                "Type": "Map",
                "ItemProcessor": {
                    "StartAt": "T",
                    "States": {"T": {"Type": "Task", "Resource": "fn:id", "End": True}},
                },
                "End": True,
            }
        },
    }
    harness.driver.inline_seconds = 0
    started = harness.service.start("sm", definition, [1, 2, 3])
    harness.driver.process(harness.driver.receive(1)[0])  # begin: three invoke messages
    messages = harness.driver.receive(10)
    assert len(messages) == 3
    real_put = harness.store.put
    interfered = {"done": False}

    def put_with_interference(key, data, expected_revision):
        if key.startswith("executions/") and not interfered["done"]:
            interfered["done"] = True
            harness.driver.process(messages[1])  # another worker wins the race meanwhile
        return real_put(key, data, expected_revision)

    harness.store.put = put_with_interference  # type: ignore[method-assign]
    harness.driver.process(messages[0])
    harness.store.put = real_put  # type: ignore[method-assign]
    harness.driver.process(messages[2])
    harness.drain()
    assert harness.service.describe(started.arn).output == [1, 2, 3]


def test_engine_errors_fail_the_execution_instead_of_looping(monkeypatch):
    harness = Harness()
    definition = {"StartAt": "P", "States": {"P": {"Type": "Pass", "End": True}}}
    started = harness.service.start("sm", definition, {})
    original = durable_module.Interpreter.apply
    calls = {"n": 0}

    def broken(self, state, event, now):
        calls["n"] += 1
        if calls["n"] == 1:
            raise ZeroDivisionError("bug")
        return original(self, state, event, now)

    monkeypatch.setattr(durable_module.Interpreter, "apply", broken)
    harness.drain()
    described = harness.service.describe(started.arn)
    assert (described.status, described.error) == ("FAILED", "States.Runtime")
    assert "ZeroDivisionError" in described.cause


def test_idempotency_guard():
    clock = ManualClock()
    store = MemoryStateStore(clock)
    guard = TaskIdempotency(store, clock, lease_seconds=10)
    calls = []
    outcome = guard.run("arn:x", "k1", lambda: calls.append(1) or {"ok": True, "output": 1})
    assert outcome == {"ok": True, "output": 1}
    assert guard.run("arn:x", "k1", lambda: calls.append(2) or {"ok": True, "output": 2}) == outcome
    assert calls == [1]

    def dies():
        raise Crash("inside")

    with pytest.raises(Crash):
        guard.run("arn:x", "k2", dies)
    with pytest.raises(TaskInProgressError):
        guard.run("arn:x", "k2", lambda: {"ok": True, "output": "early"})
    clock.advance(11)  # the dead worker's claim expires
    assert guard.run("arn:x", "k2", lambda: {"ok": True, "output": "late"})["output"] == "late"
    assert guard.forget_execution("arn:x") == 2
    assert not list(store.list("idempotency/"))


def test_idempotency_slots_share_a_record_and_refuse_stale_attempts():
    clock = ManualClock()
    store = MemoryStateStore(clock)
    guard = TaskIdempotency(store, clock, lease_seconds=10)
    first = guard.run("arn:x", "a1", lambda: {"ok": True, "output": 1}, slot="r1", sequence=5)
    assert first["output"] == 1
    # The same attempt again (a redelivery): its recorded outcome, no call.
    again = guard.run("arn:x", "a1", lambda: {"ok": True, "output": 9}, slot="r1", sequence=5)
    assert again["output"] == 1
    # The run's next task takes the slot over.
    second = guard.run("arn:x", "a2", lambda: {"ok": True, "output": 2}, slot="r1", sequence=8)
    assert second["output"] == 2
    assert len(list(store.list("idempotency/"))) == 1
    # A late duplicate of the first attempt is over: it must not run again.
    with pytest.raises(StaleAttemptError):
        guard.run("arn:x", "a1", lambda: {"ok": True, "output": 7}, slot="r1", sequence=5)


def test_driver_requires_no_real_time():
    # Wait states are delayed messages: with a manual clock nothing sleeps.
    harness = Harness()
    definition = {"StartAt": "W", "States": {"W": {"Type": "Wait", "Seconds": 86400, "End": True}}}
    started = harness.service.start("sm", definition, {})
    harness.drain()
    assert harness.service.describe(started.arn).status == "SUCCEEDED"
    assert harness.clock.time() - started.start_date.timestamp() >= 86400


def test_unknown_messages_are_dropped():
    harness = Harness()
    harness.queue.send(QUEUE, {"kind": "event"})
    harness.queue.send(
        QUEUE, {"kind": "event", "execution": "executions/none/none", "event": {"type": "begin"}}
    )
    assert harness.drain() == 2
    assert harness.queue.count(QUEUE) == 0


def test_driver_type_is_exported():
    assert DurableDriver is durable_module.DurableDriver
