"""The Qinling side of a function package: what each package's generated `main.main` calls.

Qinling's Python runtime imports the package's entry (`main.main` by default) and calls it as
`main(**input)`: the execution's JSON input keys become keyword arguments, and the runtime adds
its own `context` argument (`{"os_session": ...}`), overwriting any `context` key of the input.
So nothing of ours travels under `context`; each kind of function takes its event from the
other keyword arguments and hands it to the same handler Lambda and the embedded cloud call:

- `http` (the API): the input is an API Gateway REST proxy event (what the embedded server
  builds with `infra.local.server.proxy_event`); the answer is the proxy response.
- `queue` (guest events): an SQS-shaped batch `{"Records": [{"messageId", "body"}]}`, or one
  Zaqar webhook notification `{"body": {...}, "queue_name": ...}`; the answer lists the
  failed message ids (`batchItemFailures`).
- `timer` (backup scheduler, heartbeat watchdog): any input; a Qinling job calls it on cron.
- `engine` (the engine's step worker, `functions.engine_steps.drain_steps`): a Zaqar webhook
  notification from the engine queue's subscription (a doorbell: its body is not used), or a
  job's input (`{}` or `{"budget_seconds": n}`); the answer counts what the drain did.
- `tasks` (a task module of the state machines): `{"payload": ..., "task": {...}}` where `task`
  is the task envelope's context (shared/engine/task_envelope.py: resource, idempotency_key,
  task_token, execution_arn, state_name, attempt); `task.resource` picks the function, which
  must belong to the package's module. Qinling reports a raised exception only as a string, so
  the outcome is explicit: `{"result": ...}` or `{"error": name, "cause": ...}`, the same
  error names the definitions' Retry/Catch branch on in the embedded engine.
"""

from __future__ import annotations

import importlib
import json
import re
import uuid
from typing import Any

from shared.engine.definition import CALLBACK_SUFFIX
from shared.engine.invoker import describe_exception
from shared.engine.task_envelope import CONTEXT, PAYLOAD, TaskEnvelopeError, unwrap
from shared.observability import get_logger

log = get_logger("qinling-entry")

QINLING_CONTEXT = "context"  # the keyword argument Qinling's runtime adds to every call
TASK = "task"  # where a task call's envelope context travels instead
KINDS = ("http", "queue", "timer", "tasks", "engine")
# The function a kind's module is entered by, when not `handler` (see functions/engine_steps.py).
ENTRY_POINTS = {"engine": "drain_steps"}
_MODULE = re.compile(r"^[a-z_][a-z0-9_]*$")
_RESOURCE = re.compile(r"^fn:([a-z_][a-z0-9_]*)\.([a-z_][a-z0-9_]*)$")


class EntryError(ValueError):
    """The input does not fit the function it was sent to."""


def serve(kind: str, module: str, kwargs: dict[str, Any]) -> Any:
    """Run function `module` (a module of the `functions` package) of `kind` for one Qinling
    execution whose input arrived as `kwargs`."""
    if kind not in KINDS or not _MODULE.match(module):
        raise EntryError(f"no {kind!r} function named {module!r}")
    event = {k: v for k, v in kwargs.items() if k != QINLING_CONTEXT}
    if kind == "tasks":
        return run_task(module, event)
    handler = getattr(
        importlib.import_module(f"functions.{module}"), ENTRY_POINTS.get(kind, "handler")
    )
    if kind == "queue":
        return handler(queue_event(event), None)
    return handler(event, None)


def queue_event(event: dict[str, Any]) -> dict[str, Any]:
    """An SQS-shaped batch from either a batch or one Zaqar webhook notification."""
    if "Records" in event:
        return event
    if "body" not in event:
        raise EntryError("a queue function takes {'Records': [...]} or a Zaqar notification")
    body = event["body"]
    message_id = str(event.get("message_id") or event.get("id") or uuid.uuid4())
    return {
        "Records": [
            {
                "messageId": message_id,
                "body": body if isinstance(body, str) else json.dumps(body),
                "eventSource": "openstack:zaqar",
                "attributes": {"queue_name": str(event.get("queue_name") or "")},
            }
        ]
    }


def run_task(module: str, event: dict[str, Any]) -> dict[str, Any]:
    """Call the task function named by `event["task"]["resource"]`; outcome document."""
    fields = event.get(TASK) or {}
    resource = str(fields.get("resource") or "") if isinstance(fields, dict) else ""
    resource = resource.removesuffix(CALLBACK_SUFFIX)
    found = _RESOURCE.match(resource)
    if found is None or found.group(1) != module:
        cause = f"this package runs fn:{module}.*, not {resource or 'an unnamed resource'!r}"
        return {"error": "UnknownResource", "cause": cause}
    if isinstance(fields, dict):
        fields = {**fields, "resource": resource}
    try:
        payload, context = unwrap({PAYLOAD: event.get(PAYLOAD), CONTEXT: fields}, resource=resource)
    except TaskEnvelopeError as exc:
        return {"error": "InvalidTaskInput", "cause": str(exc)}
    from infra.wiring import FunctionsInvoker  # resolves fn:module.func as the engine does

    try:
        return {"result": FunctionsInvoker().invoke_task(resource, payload, context)}
    except Exception as exc:
        error, cause = describe_exception(exc)
        log.info("task failed", extra={"resource": resource, "error": error})
        return {"error": error, "cause": cause}
