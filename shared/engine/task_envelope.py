"""The task envelope: how a task call crosses a process boundary (to AWS Lambda and back).

In process, a task function gets `(payload, TaskContext)` (shared/engine/invoker.py). A function
running elsewhere gets one JSON event instead, the envelope:

    {"payload": <the state's effective input>,
     "context": {"resource": "fn:module.func",
                 "idempotency_key": "...",            # when the caller has one
                 "task_token": "...",                 # .waitForTaskToken tasks
                 "execution_arn": "...", "state_name": "...",
                 "entered_time": "...", "attempt": 0}}

Two callers build it: the Lambda Invoker (shared/adapters/aws/lambda_invoker.py) passes the
engine's idempotency key; Step Functions fills the context from its context object (`$$`), see
`step_functions_context` and infra/aws/definitions.py. Step Functions has no idempotency key of
its own, so `unwrap` derives one from execution, state, entry time and retry count: the same for
a redelivery of one attempt, different for each retry, like the engine's
`{execution}/{state}/{entered event}/{retries}`.
"""

from __future__ import annotations

from typing import Any

from shared.engine.invoker import TaskContext
from shared.ports import JSON

PAYLOAD = "payload"
CONTEXT = "context"


class TaskEnvelopeError(ValueError):
    """An event that is not a task envelope (or whose context fields have the wrong types)."""


def wrap(payload: Any, context: TaskContext) -> JSON:
    """The envelope for calling `context.resource` with `payload` (None fields left out)."""
    fields: JSON = {"resource": context.resource, "attempt": context.attempt}
    optional = {
        "idempotency_key": context.idempotency_key,
        "task_token": context.task_token,
        "execution_arn": context.execution_arn,
        "state_name": context.state_name,
    }
    fields.update({name: value for name, value in optional.items() if value is not None})
    return {PAYLOAD: payload, CONTEXT: fields}


def step_functions_context(resource: str, *, callback: bool) -> JSON:
    """The envelope's context as a Step Functions Parameters template (read from `$$`)."""
    template: JSON = {
        "resource": resource,
        "execution_arn.$": "$$.Execution.Id",
        "state_name.$": "$$.State.Name",
        "entered_time.$": "$$.State.EnteredTime",
        "attempt.$": "$$.State.RetryCount",
    }
    if callback:
        template["task_token.$"] = "$$.Task.Token"
    return template


def _optional_str(fields: dict[str, Any], name: str) -> str | None:
    value = fields.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise TaskEnvelopeError(f"context.{name} must be a non-empty string")
    return value


def unwrap(event: Any, *, resource: str) -> tuple[Any, TaskContext]:
    """(payload, TaskContext) from an envelope addressed to `resource`.

    Raises TaskEnvelopeError when `event` is not an envelope or names another resource (a
    function deployed under one name must not run another's payload by mistake).
    """
    if not isinstance(event, dict) or PAYLOAD not in event:
        raise TaskEnvelopeError("a task event is an object with 'payload' and 'context'")
    fields = event.get(CONTEXT)
    if fields is None:
        fields = {}
    if not isinstance(fields, dict):
        raise TaskEnvelopeError("context must be an object")
    named = _optional_str(fields, "resource")
    if named is not None and named != resource:
        raise TaskEnvelopeError(f"the event is for {named!r}, this function is {resource!r}")
    attempt = fields.get("attempt", 0)
    if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 0:
        raise TaskEnvelopeError("context.attempt must be a non-negative integer")
    execution_arn = _optional_str(fields, "execution_arn")
    state_name = _optional_str(fields, "state_name")
    entered_time = _optional_str(fields, "entered_time")
    key = _optional_str(fields, "idempotency_key")
    if key is None and execution_arn and state_name and entered_time:
        key = f"{execution_arn}/{state_name}/{entered_time}/{attempt}"
    context = TaskContext(
        resource=resource,
        idempotency_key=key,
        task_token=_optional_str(fields, "task_token"),
        execution_arn=execution_arn,
        state_name=state_name,
        attempt=attempt,
    )
    return event[PAYLOAD], context
