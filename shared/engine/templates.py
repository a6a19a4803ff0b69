"""Payload templates: the values of `Parameters`, `ResultSelector` and `ItemSelector`.

A key ending in `.$` takes its value from a path (`$.x`, `$$.Execution.Id`) or an intrinsic
function; the `.$` is dropped from the output key. Objects nested in objects or arrays are
processed the same way. Templates are compiled once at load (so a bad path or intrinsic is a
definition problem) and evaluated on every run of the state.
"""

from __future__ import annotations

import json
from typing import Any

from shared.engine import errors
from shared.engine.intrinsics import (
    Call,
    IntrinsicEvaluationError,
    IntrinsicSyntaxError,
    PathArg,
    PathArgumentNotFoundError,
    is_intrinsic,
    parse_intrinsic,
)
from shared.engine.jsonpath import JsonPath, PathNotFoundError, PathSyntaxError, parse_path

# Node kinds of a compiled template.
_CONST = 0
_PATH = 1
_CALL = 2
_OBJECT = 3
_ARRAY = 4


def pointer_escape(segment: object) -> str:
    """One JSON-pointer segment (RFC 6901)."""
    return str(segment).replace("~", "~0").replace("/", "~1")


def json_text(value: Any) -> str:
    """Compact JSON text, as Step Functions prints inputs and outputs."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


class PayloadTemplate:
    """A compiled payload template; `evaluate(data, context)` builds the payload."""

    __slots__ = ("_node", "field", "uses_context")

    def __init__(self, node: tuple[int, Any], field: str) -> None:
        self._node = node
        self.field = field  # "Parameters", "ResultSelector", "ItemSelector"
        # Whether anything reads `$$`: if not, callers need not build the context object.
        self.uses_context = _uses_context(node)

    def evaluate(self, data: Any, context: Any) -> Any:
        """Raises StatesRuntimeError (States.Runtime / States.IntrinsicFailure) with a cause
        naming the field and the path."""
        return _evaluate(self._node, data, context)


def compile_template(
    template: Any, field: str, pointer: str, problems: list[tuple[str, str]]
) -> PayloadTemplate:
    """Compile `template`; problems (bad paths, bad intrinsics) are appended with pointers."""
    return PayloadTemplate(_compile(template, pointer, problems), field)


def _compile(value: Any, pointer: str, problems: list[tuple[str, str]]) -> tuple[int, Any]:
    if isinstance(value, dict):
        entries: list[tuple[str, str, tuple[int, Any]]] = []
        dynamic = False
        seen: dict[str, str] = {}
        for key, item in value.items():
            where = f"{pointer}/{pointer_escape(key)}"
            if key.endswith(".$") and len(key) > 2:
                out_key = key[:-2]
                node = _compile_dynamic(key, item, where, problems)
                dynamic = True
            else:
                out_key = key
                node = _compile(item, where, problems)
                dynamic = dynamic or node[0] != _CONST
            if out_key in seen:
                problems.append(
                    (where, f"{key!r} and {seen[out_key]!r} both produce the field {out_key!r}")
                )
            seen[out_key] = key
            entries.append((out_key, key, node))
        if not dynamic:
            return (_CONST, value)
        return (_OBJECT, tuple(entries))
    if isinstance(value, list):
        nodes = [_compile(item, f"{pointer}/{i}", problems) for i, item in enumerate(value)]
        if all(node[0] == _CONST for node in nodes):
            return (_CONST, value)
        return (_ARRAY, tuple(nodes))
    return (_CONST, value)


def _compile_dynamic(
    key: str, item: Any, where: str, problems: list[tuple[str, str]]
) -> tuple[int, Any]:
    if not isinstance(item, str):
        problems.append((where, f"the value of {key!r} must be a path or an intrinsic function"))
        return (_CONST, None)
    if is_intrinsic(item):
        try:
            return (_CALL, (key, parse_intrinsic(item.strip())))
        except IntrinsicSyntaxError as exc:
            problems.append((where, f"bad intrinsic function: {exc}"))
            return (_CONST, None)
    try:
        return (_PATH, (key, parse_path(item)))
    except PathSyntaxError as exc:
        problems.append((where, f"bad path: {exc}"))
        return (_CONST, None)


def _call_uses_context(call: Call) -> bool:
    for arg in call.args:
        if isinstance(arg, Call) and _call_uses_context(arg):
            return True
        if isinstance(arg, PathArg) and arg.path.context:
            return True
    return False


def _uses_context(node: tuple[int, Any]) -> bool:
    kind, arg = node
    if kind == _CONST:
        return False
    if kind == _OBJECT:
        return any(_uses_context(child) for _out, _key, child in arg)
    if kind == _ARRAY:
        return any(_uses_context(child) for child in arg)
    target = arg[1]
    if kind == _PATH:
        return bool(target.context)
    return _call_uses_context(target)


def _evaluate(node: tuple[int, Any], data: Any, context: Any) -> Any:
    kind, arg = node
    if kind == _CONST:
        return arg
    if kind == _OBJECT:
        out: dict[str, Any] = {}
        for out_key, _key, child in arg:
            out[out_key] = _evaluate(child, data, context)
        return out
    if kind == _ARRAY:
        return [_evaluate(child, data, context) for child in arg]
    key, target = arg
    if kind == _PATH:
        path: JsonPath = target
        base = context if path.context else data
        try:
            return path.find(base)
        except PathNotFoundError:
            raise errors.StatesRuntimeError(
                errors.RUNTIME,
                f"The JSONPath '{path.text}' specified for the field '{key}' could not be found "
                f"in the input '{json_text(base)}'",
            ) from None
    call: Call = target
    try:
        return call.evaluate(data, context)
    except PathArgumentNotFoundError as exc:
        raise errors.StatesRuntimeError(
            errors.RUNTIME,
            f"The JSONPath '{exc.path}' in the intrinsic function of the field '{key}' could not "
            f"be found in the input '{json_text(data)}'",
        ) from None
    except IntrinsicEvaluationError as exc:
        raise errors.StatesRuntimeError(
            errors.INTRINSIC_FAILURE,
            f"The evaluation of the intrinsic function {call.text} of the field '{key}' "
            f"failed: {exc}",
        ) from None
