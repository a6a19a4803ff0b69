"""The engine-steps function: runs the state machines' pending steps where no Step Functions
exists (OpenStack, Qinling). Each invocation drains the engine's queue for a bounded time
(`DurableDriver.drain`): it claims the messages itself, so each step is handled once under the
queue's visibility rules, however many copies run at once.

Two triggers, one behaviour:

- a Zaqar webhook subscription on the engine queue, a doorbell: the pushed notification says
  that a step was posted, not what to do (its body is never trusted or used). Zaqar may push
  before it has stored the message, and pushes a delayed message (a timer, a retry back-off)
  when it is posted, so a push waits up to `PUSH_SETTLE_SECONDS`, plus the announced delay
  when it fits the budget, for something to claim;
- a periodic trigger (a Qinling job every minute): the backstop for a push that was lost, or
  a delay too long to wait for. It only drains what is visible.

The budget: `budget_seconds` in the input (e.g. the job's function input), else
`DEFAULT_BUDGET_SECONDS`, in either case cut to the time a Lambda-style context says is left
less `STEP_MARGIN_SECONDS`. The function's timeout must exceed the budget by the time one step
may take (its inline task chain: the driver's `inline_seconds`, plus one task).
"""

from __future__ import annotations

import math
from typing import Any

from functions.runtime import Runtime, get_runtime
from shared.engine.durable import DurableDriver
from shared.engine.service import ExecutionService
from shared.observability import get_logger

log = get_logger("engine-steps-fn")

DEFAULT_BUDGET_SECONDS = 60.0  # with Qinling's `--timeout 120`: 60 s left for a started step
MAX_BUDGET_SECONDS = 840.0  # under Lambda's largest timeout (900 s), the margin kept
STEP_MARGIN_SECONDS = 30.0  # kept free of the context's remaining time for the step in flight
PUSH_SETTLE_SECONDS = 1.0  # Zaqar pushes from a thread that may run before the message is stored
NOTIFICATION = "Notification"  # Zaqar's Message_Type of a pushed message


class EngineUnavailableError(RuntimeError):
    """This runtime's workflows do not run on the durable engine (AWS: Step Functions)."""


def engine_driver(runtime: Runtime) -> DurableDriver:
    """The durable driver behind the runtime's workflows."""
    service = getattr(runtime.workflows, "service", None)
    if isinstance(service, ExecutionService):
        return service.driver
    raise EngineUnavailableError(
        f"{type(runtime.workflows).__name__} does not run on the durable engine: nothing to drain"
    )


def is_push(event: dict[str, Any]) -> bool:
    """Whether the input is a Zaqar webhook notification (rather than a job's input)."""
    return "queue_name" in event or "Message_Type" in event


def budget_seconds(event: dict[str, Any], context: Any) -> float:
    """The drain's time budget for this invocation (see the module docstring)."""
    budget = DEFAULT_BUDGET_SECONDS
    given = event.get("budget_seconds")
    if given is not None:
        if isinstance(given, bool) or not isinstance(given, int | float) or not given > 0:
            raise ValueError(f"budget_seconds: must be a positive number, got {given!r}")
        budget = min(float(given), MAX_BUDGET_SECONDS)
    remaining_ms = getattr(context, "get_remaining_time_in_millis", None)
    if callable(remaining_ms):
        left = float(remaining_ms()) / 1000.0 - STEP_MARGIN_SECONDS
        budget = min(budget, max(left, 1.0))
    return budget


def push_wait_seconds(event: dict[str, Any], budget: float) -> float:
    """How long a push waits for a message to claim: the settling time, plus the delay the
    notification announces when the budget allows waiting that long. The delay is a hint
    only: a wrong one costs idle waiting within the budget, nothing else."""
    delay = event.get("delay")
    if isinstance(delay, int | float) and not isinstance(delay, bool) and math.isfinite(delay):
        lingering = PUSH_SETTLE_SECONDS + max(0.0, float(delay))
        if lingering < budget:
            return lingering
    return min(PUSH_SETTLE_SECONDS, budget)


def drain_steps(event: dict[str, Any] | None, context: Any) -> dict[str, Any]:
    """The function's entry (event, context): drain the engine queue within the budget and
    answer what was done (counts). Not named `handler`: AWS deploys every `handler` as a
    Lambda, and there Step Functions runs the state machines."""
    event = event if isinstance(event, dict) else {}
    driver = engine_driver(get_runtime())
    trigger = "timer"
    wait = 0.0
    budget = budget_seconds(event, context)
    if is_push(event):
        trigger = "push"
        queue_name = event.get("queue_name")
        if event.get("Message_Type", NOTIFICATION) != NOTIFICATION:
            # (Un)subscription confirmations: deployments troveless makes do not ask for them.
            return {"trigger": trigger, "ignored": f"Message_Type {event['Message_Type']!r}"}
        if queue_name != driver.queue_name:
            log.warning("push from another queue ignored", extra={"queue": str(queue_name)})
            return {"trigger": trigger, "ignored": f"queue_name: not {driver.queue_name}"}
        wait = push_wait_seconds(event, budget)
    report = driver.drain(budget, wait_seconds=wait)
    if report.received:
        log.info("engine steps drained", extra={"trigger": trigger, **report.to_json()})
    return {"trigger": trigger, "budget_seconds": budget, **report.to_json()}
