"""Calling task functions: the in-process Invoker and the calling convention.

A Task's `Resource` names a function (`fn:provision.create_server`, or an ARN copied from a
real Step Functions definition). `InProcessInvoker` maps names to Python callables.

Calling convention — a task function is either

    def handler(payload): ...                  # or
    def handler(payload, context: TaskContext): ...

`payload` is the state's effective input (after InputPath and Parameters) and is never shared
with the engine (the function may modify it). `context` carries the idempotency key (the same on
every redelivery of one attempt: key side effects on it), the task token (for `.waitForTaskToken`
tasks, also available to the definition as `$$.Task.Token`) and where the call comes from. The
return value must be JSON (it becomes the task's result). To fail, raise `TaskError(error, cause)`
for an explicit error name; any other exception fails the task with the exception's class name
as the error and a Lambda-style JSON cause (`{"errorMessage": ..., "errorType": ...}`), which
`States.StringToJson($.Cause)` can take apart — as on AWS Lambda.

Name lookup: the exact resource name first; then, for `fn:x`, also `x` (and the other way
round); for a Lambda ARN (`arn:...:function:NAME[:alias]`), also `NAME`.
"""

from __future__ import annotations

import importlib
import inspect
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from shared.engine import errors
from shared.engine.errors import TaskError, UnknownResourceError


@dataclass(frozen=True)
class TaskContext:
    """What a task function may want to know about the call."""

    resource: str
    idempotency_key: str | None = None
    task_token: str | None = None
    execution_arn: str | None = None
    state_name: str | None = None
    attempt: int = 0


@runtime_checkable
class ContextInvoker(Protocol):
    """An Invoker that can also hand the task its TaskContext (the in-process one can)."""

    def invoke_task(self, resource: str, payload: Any, context: TaskContext) -> Any: ...


TaskFunction = Callable[..., Any]


def _wants_context(function: TaskFunction) -> bool:
    try:
        parameters = list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError):
        return False
    positional = [
        p
        for p in parameters
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    if any(p.kind == inspect.Parameter.VAR_POSITIONAL for p in parameters):
        return True
    return len(positional) >= 2 or any(p.name == "context" for p in parameters)


def lookup_names(resource: str) -> list[str]:
    """Names to try for a resource, most specific first."""
    names = [resource]
    if resource.startswith("fn:"):
        names.append(resource[3:])
    elif not resource.startswith("arn:"):
        names.append("fn:" + resource)
    if resource.startswith("arn:") and ":function:" in resource:
        name = resource.split(":function:", 1)[1].split(":", 1)[0]
        names.extend([name, "fn:" + name])
    return names


class InProcessInvoker:
    """Invoker for functions that run in this process (the local profile and `sfn run`)."""

    def __init__(self, functions: Mapping[str, TaskFunction] | None = None) -> None:
        self._functions: dict[str, tuple[TaskFunction, bool]] = {}
        for name, function in (functions or {}).items():
            self.register(name, function)

    def register(self, name: str, function: TaskFunction) -> None:
        if not callable(function):
            raise TypeError(f"the function for {name!r} is not callable")
        self._functions[name] = (function, _wants_context(function))

    def names(self) -> list[str]:
        return sorted(self._functions)

    def resolve(self, resource: str) -> tuple[TaskFunction, bool]:
        for name in lookup_names(resource):
            found = self._functions.get(name)
            if found is not None:
                return found
        raise UnknownResourceError(resource)

    def invoke(self, resource: str, payload: Any, *, idempotency_key: str | None = None) -> Any:
        """The Invoker port: call without a task token."""
        return self.invoke_task(
            resource, payload, TaskContext(resource=resource, idempotency_key=idempotency_key)
        )

    def invoke_task(self, resource: str, payload: Any, context: TaskContext) -> Any:
        function, wants_context = self.resolve(resource)
        if wants_context:
            return function(payload, context)
        return function(payload)


def describe_exception(exc: BaseException) -> tuple[str, str]:
    """(error, cause) for an exception raised by a task, the way Lambda reports them."""
    if isinstance(exc, TaskError):
        return exc.error, exc.cause
    if isinstance(exc, UnknownResourceError):
        return errors.TASK_FAILED, str(exc)
    name = type(exc).__name__
    cause = json.dumps({"errorMessage": str(exc), "errorType": name}, ensure_ascii=False)
    return name, cause


# --------------------------------------------------------------------------- --resource specs


class ResourceSpecError(ValueError):
    """A `NAME=module:callable` option that does not name an importable callable."""


def load_callable(target: str) -> TaskFunction:
    """Import `module:attr.attr` and return the callable it names."""
    module_name, sep, attribute = target.partition(":")
    if not sep or not module_name or not attribute:
        raise ResourceSpecError(f"{target!r} is not of the form module:callable")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ResourceSpecError(f"cannot import module {module_name!r}: {exc}") from None
    value: Any = module
    for part in attribute.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            raise ResourceSpecError(f"module {module_name!r} has no {attribute!r}") from None
    if not callable(value):
        raise ResourceSpecError(f"{target!r} is not callable")
    return value  # type: ignore[no-any-return]


def parse_resource_specs(specs: Iterable[str]) -> dict[str, TaskFunction]:
    """`["fn:x=pkg.mod:func", ...]` -> {"fn:x": func}. Raises ResourceSpecError."""
    out: dict[str, TaskFunction] = {}
    for spec in specs:
        name, sep, target = spec.partition("=")
        if not sep or not name.strip():
            raise ResourceSpecError(f"{spec!r} is not of the form NAME=module:callable")
        out[name.strip()] = load_callable(target.strip())
    return out
