"""AWS Lambda entry point of the task functions the state machines call (`fn:module.func`).

One handler serves them all: each Lambda function of the SAM template (infra/aws/template.yaml)
runs `functions.lambda_tasks.handler` with `TROVELESS_TASK_FUNCTION=module.func` in its
environment, so a deployed function only ever runs the one task it was made for. The event is a
task envelope (shared/engine/task_envelope.py) built by Step Functions or the Lambda Invoker; the
task function gets the same `(payload[, TaskContext])` call as in process.

Errors: Lambda names a failure after the exception's class (`errorType`), and Step Functions
matches Retry/Catch `ErrorEquals` against that name. A `TaskError("ComputeError", cause)` is
therefore re-raised as an exception whose class is named `ComputeError` (message: the cause), so
the definitions branch on the same names on Lambda as in the embedded engine. (There the cause is
the bare text; on Lambda Step Functions wraps it in Lambda's JSON error object.)
"""

from __future__ import annotations

import os
import re
import threading
from typing import Any

from shared.engine.errors import TaskError
from shared.engine.invoker import InProcessInvoker, load_callable
from shared.engine.task_envelope import unwrap

TASK_FUNCTION_ENV = "TROVELESS_TASK_FUNCTION"
FUNCTIONS_PACKAGE = "functions"
# `module.func` inside the functions package: one module level, plain identifiers.
TASK_FUNCTION_PATTERN = re.compile(r"^[a-z_][a-z0-9_]*\.[a-z_][a-z0-9_]*$")


class TaskFunctionNameError(ValueError):
    """TROVELESS_TASK_FUNCTION is missing or does not name a task function of this package."""


class NamedTaskError(TaskError):
    """Base of the per-name exception classes Lambda reports as `errorType`."""

    def __str__(self) -> str:
        return self.cause or self.error


_error_classes: dict[str, type[NamedTaskError]] = {}
_invoker = InProcessInvoker()
_lock = threading.Lock()


def named_error(error: TaskError) -> NamedTaskError:
    """An exception of a class named `error.error`, carrying the same error and cause."""
    with _lock:
        cls = _error_classes.get(error.error)
        if cls is None:
            cls = type(error.error, (NamedTaskError,), {"__module__": __name__})
            _error_classes[error.error] = cls
    return cls(error.error, error.cause)


def resource_of(function_name: str) -> str:
    """`instance_tasks.create_server` -> `fn:instance_tasks.create_server`, checked."""
    if not TASK_FUNCTION_PATTERN.match(function_name):
        raise TaskFunctionNameError(f"{function_name!r} is not of the form module.function")
    return f"fn:{function_name}"


def _register(resource: str, function_name: str) -> None:
    with _lock:
        if resource in _invoker.names():
            return
        module, _, attribute = function_name.partition(".")
        _invoker.register(resource, load_callable(f"{FUNCTIONS_PACKAGE}.{module}:{attribute}"))


def run_task(function_name: str, event: Any) -> Any:
    """Call task function `function_name` (`module.func`) with a task envelope."""
    resource = resource_of(function_name)
    _register(resource, function_name)
    payload, context = unwrap(event, resource=resource)
    try:
        return _invoker.invoke_task(resource, payload, context)
    except NamedTaskError:
        raise
    except TaskError as exc:
        raise named_error(exc) from exc


def handler(event: Any, context: object | None) -> Any:
    """The Lambda handler: runs the task function named by TROVELESS_TASK_FUNCTION."""
    function_name = os.environ.get(TASK_FUNCTION_ENV, "")
    if not function_name:
        raise TaskFunctionNameError(f"{TASK_FUNCTION_ENV} is not set")
    return run_task(function_name, event)
