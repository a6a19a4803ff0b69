"""functions/engine_steps.py: the budget and the push wait it derives from its input and
context, doorbells it ignores, and a run over in-memory fakes of the ports (a push drives an
execution to its end; an invocation with nothing queued answers zero counts)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from functions import engine_steps
from functions.runtime import Runtime, set_runtime
from shared.adapters.local.workflows import EngineWorkflows
from shared.clock import ManualClock
from shared.engine.durable import QUEUE, DurableDriver
from shared.engine.invoker import InProcessInvoker
from shared.engine.service import ExecutionService
from shared.settings import load_settings
from tests.unit.engine.fakes import MemoryQueue, MemoryStateStore

FLOW = {
    "StartAt": "Double",
    "States": {
        "Double": {
            "Type": "Task",
            "Resource": "fn:double",
            "Parameters": {"n.$": "States.MathAdd($.n, $.n)"},
            "End": True,
        }
    },
}


class LambdaContext:
    def __init__(self, remaining_ms: int) -> None:
        self.remaining_ms = remaining_ms

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


def test_budget_from_the_input_capped_by_the_context_and_by_the_maximum() -> None:
    assert engine_steps.budget_seconds({}, None) == engine_steps.DEFAULT_BUDGET_SECONDS
    assert engine_steps.budget_seconds({"budget_seconds": 20}, None) == 20.0
    assert engine_steps.budget_seconds({"budget_seconds": 10**6}, None) == (
        engine_steps.MAX_BUDGET_SECONDS
    )
    # 80 s left, less the margin kept for the step in flight
    left = 80.0 - engine_steps.STEP_MARGIN_SECONDS
    assert left < engine_steps.DEFAULT_BUDGET_SECONDS
    assert engine_steps.budget_seconds({}, LambdaContext(80_000)) == left
    assert engine_steps.budget_seconds({}, LambdaContext(1_000)) == 1.0  # never zero


@pytest.mark.parametrize("bad", [0, -5, "30", True, [], {"s": 1}])
def test_a_bad_budget_is_refused_naming_the_key(bad: Any) -> None:
    with pytest.raises(ValueError, match="budget_seconds"):
        engine_steps.budget_seconds({"budget_seconds": bad}, None)


def test_a_push_waits_to_settle_plus_the_announced_delay_when_it_fits() -> None:
    settle = engine_steps.PUSH_SETTLE_SECONDS
    assert engine_steps.push_wait_seconds({}, 60.0) == settle
    assert engine_steps.push_wait_seconds({"delay": 0}, 60.0) == settle
    assert engine_steps.push_wait_seconds({"delay": 5}, 60.0) == settle + 5
    # Too long to wait within the budget: the every-minute job takes that step.
    assert engine_steps.push_wait_seconds({"delay": 600}, 60.0) == settle
    assert engine_steps.push_wait_seconds({"delay": "5"}, 60.0) == settle
    assert engine_steps.push_wait_seconds({"delay": float("inf")}, 60.0) == settle
    assert engine_steps.push_wait_seconds({}, 0.5) == 0.5


class Engine:
    """A Runtime whose workflows run on a durable driver over the in-memory fakes."""

    def __init__(self, tmp_path: Path) -> None:
        self.clock = ManualClock()
        self.store = MemoryStateStore(self.clock)
        self.queue = MemoryQueue(self.clock)
        invoker = InProcessInvoker({"fn:double": lambda payload: {"n": payload["n"]}})
        self.driver = DurableDriver(self.store, self.queue, invoker, self.clock)
        self.service = ExecutionService(self.driver)
        self.runtime = Runtime(
            settings=load_settings(data_dir=tmp_path),
            clock=self.clock,
            store=self.store,
            blobs=None,  # type: ignore[arg-type]  # not used by this function
            queue=self.queue,
            compute=None,  # type: ignore[arg-type]
            workflows=EngineWorkflows(self.service, tmp_path),
            master_key=b"k" * 32,
        )


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    built = Engine(tmp_path)
    set_runtime(built.runtime)
    try:
        yield built
    finally:
        set_runtime(None)


def notification(queue_name: str = QUEUE) -> dict[str, Any]:
    """What Zaqar 23's webhook notifier posts (a Qinling webhook makes it the input)."""
    return {"body": {"forged": "ignored"}, "queue_name": queue_name, "Message_Type": "Notification"}


def test_a_push_drives_the_queued_steps_and_ignores_the_pushed_body(engine: Engine) -> None:
    arn = engine.service.start("double", FLOW, {"n": 21}, name="e1").arn

    answer = engine_steps.drain_steps({**notification(), "ttl": 3600, "delay": 0}, None)

    assert answer["trigger"] == "push"
    assert answer["received"] == answer["handled"] == engine.queue.sent
    assert answer["failed"] == answer["released"] == 0
    described = engine.service.describe(arn)
    assert str(described.status) == "SUCCEEDED"
    assert described.output == {"n": 42}
    assert engine.queue.count(QUEUE) == 0


def test_an_invocation_with_nothing_queued_answers_zero_counts(engine: Engine) -> None:
    answer = engine_steps.drain_steps({}, None)

    assert answer["trigger"] == "timer"
    assert (answer["received"], answer["handled"], answer["out_of_budget"]) == (0, 0, False)


def test_a_timer_input_sets_the_budget(engine: Engine) -> None:
    answer = engine_steps.drain_steps({"budget_seconds": 5}, None)

    assert answer["budget_seconds"] == 5.0


def test_pushes_from_another_queue_and_confirmations_are_ignored(engine: Engine) -> None:
    engine.service.start("double", FLOW, {"n": 1}, name="e1")

    other = engine_steps.drain_steps(notification("guest-events"), None)
    confirmation = engine_steps.drain_steps(
        {**notification(), "Message_Type": "SubscriptionConfirmation"}, None
    )

    assert "queue_name" in other["ignored"] and "Message_Type" in confirmation["ignored"]
    assert engine.queue.count(QUEUE) == 1  # nothing was claimed


def test_a_runtime_without_the_durable_engine_is_refused(tmp_path: Path) -> None:
    runtime = Engine(tmp_path).runtime
    runtime.workflows = object()  # type: ignore[assignment]  # e.g. Step Functions

    with pytest.raises(engine_steps.EngineUnavailableError, match="durable engine"):
        engine_steps.engine_driver(runtime)
