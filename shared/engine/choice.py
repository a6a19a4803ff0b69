"""Choice rules: comparisons (and their `...Path` variants), `Is*` tests, `And`/`Or`/`Not`.

Semantics (AWS Step Functions):

- A comparison whose operand has the wrong type is simply false (`NumericEquals` on a string,
  `BooleanEquals` on 1, a timestamp comparison on a string that is not a timestamp).
- A `Variable` (or `...Path` operand) that matches nothing is a `States.Runtime` error, except
  for `IsPresent`, which exists to test exactly that.
- `StringMatches`: `*` matches any run of characters, `\\*` a literal star, `\\\\` a backslash.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shared.engine import errors
from shared.engine.jsonpath import JsonPath, PathNotFoundError, PathSyntaxError, parse_path
from shared.engine.templates import pointer_escape
from shared.engine.timestamps import parse_timestamp

Test = Callable[[Any, Any], bool]  # (state data, context) -> matched


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _num_eq(a: Any, b: Any) -> bool:
    return _is_number(a) and _is_number(b) and a == b


def _num_lt(a: Any, b: Any) -> bool:
    return _is_number(a) and _is_number(b) and a < b


def _num_gt(a: Any, b: Any) -> bool:
    return _is_number(a) and _is_number(b) and a > b


def _num_le(a: Any, b: Any) -> bool:
    return _is_number(a) and _is_number(b) and a <= b


def _num_ge(a: Any, b: Any) -> bool:
    return _is_number(a) and _is_number(b) and a >= b


def _str_order(a: Any, b: Any) -> tuple[Any, Any] | None:
    """Both strings as keys that order like Java's String.compareTo (UTF-16 code units, which
    AWS documents), or None if either is not a string. Code points order the same way unless a
    character lies beyond U+FFFF, so ASCII text is compared as is."""
    if not isinstance(a, str) or not isinstance(b, str):
        return None
    if a.isascii() and b.isascii():
        return a, b
    return a.encode("utf-16-be"), b.encode("utf-16-be")


def _str_eq(a: Any, b: Any) -> bool:
    return isinstance(a, str) and isinstance(b, str) and a == b


def _str_lt(a: Any, b: Any) -> bool:
    keys = _str_order(a, b)
    return keys is not None and keys[0] < keys[1]


def _str_gt(a: Any, b: Any) -> bool:
    keys = _str_order(a, b)
    return keys is not None and keys[0] > keys[1]


def _str_le(a: Any, b: Any) -> bool:
    keys = _str_order(a, b)
    return keys is not None and keys[0] <= keys[1]


def _str_ge(a: Any, b: Any) -> bool:
    keys = _str_order(a, b)
    return keys is not None and keys[0] >= keys[1]


def _bool_eq(a: Any, b: Any) -> bool:
    return isinstance(a, bool) and isinstance(b, bool) and a == b


def _ts(compare: Callable[[float, float], bool]) -> Callable[[Any, Any], bool]:
    def test(a: Any, b: Any) -> bool:
        ta, tb = parse_timestamp(a), parse_timestamp(b)
        return ta is not None and tb is not None and compare(ta, tb)

    return test


# name -> (kind of the literal operand, comparison)
_COMPARISONS: dict[str, tuple[str, Callable[[Any, Any], bool]]] = {
    "StringEquals": ("string", _str_eq),
    "StringLessThan": ("string", _str_lt),
    "StringGreaterThan": ("string", _str_gt),
    "StringLessThanEquals": ("string", _str_le),
    "StringGreaterThanEquals": ("string", _str_ge),
    "NumericEquals": ("number", _num_eq),
    "NumericLessThan": ("number", _num_lt),
    "NumericGreaterThan": ("number", _num_gt),
    "NumericLessThanEquals": ("number", _num_le),
    "NumericGreaterThanEquals": ("number", _num_ge),
    "BooleanEquals": ("boolean", _bool_eq),
    "TimestampEquals": ("timestamp", _ts(lambda a, b: a == b)),
    "TimestampLessThan": ("timestamp", _ts(lambda a, b: a < b)),
    "TimestampGreaterThan": ("timestamp", _ts(lambda a, b: a > b)),
    "TimestampLessThanEquals": ("timestamp", _ts(lambda a, b: a <= b)),
    "TimestampGreaterThanEquals": ("timestamp", _ts(lambda a, b: a >= b)),
}
_TYPE_TESTS: dict[str, Callable[[Any], bool]] = {
    "IsNull": lambda v: v is None,
    "IsNumeric": _is_number,
    "IsString": lambda v: isinstance(v, str),
    "IsBoolean": lambda v: isinstance(v, bool),
    "IsTimestamp": lambda v: parse_timestamp(v) is not None,
}
OPERATORS = frozenset(
    set(_COMPARISONS)
    | {name + "Path" for name in _COMPARISONS}
    | set(_TYPE_TESTS)
    | {"IsPresent", "StringMatches"}
)


def string_matches_regex(pattern: str) -> re.Pattern[str]:
    """The regular expression for a StringMatches pattern."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern) and pattern[i + 1] in "*\\":
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        out.append(".*" if ch == "*" else re.escape(ch))
        i += 1
    return re.compile("".join(out), re.DOTALL)


@dataclass(frozen=True)
class ChoiceRule:
    """A top-level rule: its test and the state it leads to."""

    test: Test
    next: str
    pointer: str


def _invalid_path(path: JsonPath) -> errors.StatesRuntimeError:
    return errors.StatesRuntimeError(
        errors.RUNTIME,
        f"Invalid path '{path.text}': The choice state's condition path references an "
        "invalid value.",
    )


def _value(path: JsonPath, data: Any, context: Any) -> Any:
    try:
        return path.find(context if path.context else data)
    except PathNotFoundError:
        raise _invalid_path(path) from None


def compile_rules(choices: Any, pointer: str, problems: list[tuple[str, str]]) -> list[ChoiceRule]:
    """Compile a Choice state's `Choices` array (pointer is that of the array)."""
    rules: list[ChoiceRule] = []
    if not isinstance(choices, list) or not choices:
        problems.append((pointer, "Choices must be a non-empty array of rules"))
        return rules
    for i, rule in enumerate(choices):
        where = f"{pointer}/{i}"
        test = _compile_rule(rule, where, problems, top_level=True)
        nxt = rule.get("Next") if isinstance(rule, dict) else None
        if test is not None and isinstance(nxt, str):
            rules.append(ChoiceRule(test, nxt, where))
    return rules


_RULE_FIELDS = frozenset({"Variable", "Comment", "And", "Or", "Not", "Next"})


def _compile_rule(
    rule: Any, pointer: str, problems: list[tuple[str, str]], *, top_level: bool
) -> Test | None:
    if not isinstance(rule, dict):
        problems.append((pointer, "a choice rule must be an object"))
        return None
    count_before = len(problems)
    if top_level:
        if "Next" not in rule:
            problems.append((pointer, "a top-level choice rule must have Next"))
        elif not isinstance(rule["Next"], str):
            problems.append((f"{pointer}/Next", "Next must be a state name"))
    elif "Next" in rule:
        problems.append((f"{pointer}/Next", "only top-level choice rules may have Next"))
    if "Condition" in rule:
        problems.append(
            (f"{pointer}/Condition", "Condition is JSONata, which this engine does not support")
        )
    operators = [k for k in rule if k in OPERATORS]
    combinators = [k for k in rule if k in ("And", "Or", "Not")]
    for key in rule:
        if key not in OPERATORS and key not in _RULE_FIELDS and key != "Condition":
            problems.append((f"{pointer}/{pointer_escape(key)}", f"unknown field {key!r}"))
    if len(operators) + len(combinators) != 1:
        problems.append(
            (
                pointer,
                "a choice rule needs exactly one comparison operator, And, Or or Not"
                + (
                    f" (found {', '.join(operators + combinators)})"
                    if operators or combinators
                    else ""
                ),
            )
        )
        return None
    if combinators:
        if "Variable" in rule:
            problems.append((f"{pointer}/Variable", "And/Or/Not rules take no Variable"))
        name = combinators[0]
        body = rule[name]
        if name == "Not":
            inner = _compile_rule(body, f"{pointer}/Not", problems, top_level=False)
            if inner is None:
                return None
            return lambda data, ctx: not inner(data, ctx)
        if not isinstance(body, list) or not body:
            problems.append((f"{pointer}/{name}", f"{name} must be a non-empty array of rules"))
            return None
        tests = [
            _compile_rule(item, f"{pointer}/{name}/{i}", problems, top_level=False)
            for i, item in enumerate(body)
        ]
        if any(t is None for t in tests):
            return None
        clean = [t for t in tests if t is not None]
        if name == "And":
            return lambda data, ctx: all(t(data, ctx) for t in clean)
        return lambda data, ctx: any(t(data, ctx) for t in clean)
    operator = operators[0]
    if "Variable" not in rule:
        problems.append((pointer, f"a rule with {operator} needs a Variable"))
        return None
    try:
        variable = parse_path(rule["Variable"]) if isinstance(rule["Variable"], str) else None
    except PathSyntaxError as exc:
        problems.append((f"{pointer}/Variable", f"bad path: {exc}"))
        return None
    if variable is None:
        problems.append((f"{pointer}/Variable", "Variable must be a path string"))
        return None
    test = _compile_operator(operator, rule[operator], variable, f"{pointer}/{operator}", problems)
    if len(problems) != count_before:
        return None
    return test


def _compile_operator(
    operator: str, operand: Any, variable: JsonPath, where: str, problems: list[tuple[str, str]]
) -> Test | None:
    if operator == "IsPresent":
        if not isinstance(operand, bool):
            problems.append((where, "IsPresent takes true or false"))
            return None
        expected = operand
        return lambda data, ctx: variable.exists(ctx if variable.context else data) == expected
    if operator in _TYPE_TESTS:
        if not isinstance(operand, bool):
            problems.append((where, f"{operator} takes true or false"))
            return None
        type_test = _TYPE_TESTS[operator]
        wanted = operand
        return lambda data, ctx: type_test(_value(variable, data, ctx)) == wanted
    if operator == "StringMatches":
        if not isinstance(operand, str):
            problems.append((where, "StringMatches takes a string pattern"))
            return None
        regex = string_matches_regex(operand)

        def matches(data: Any, ctx: Any) -> bool:
            value = _value(variable, data, ctx)
            return isinstance(value, str) and regex.fullmatch(value) is not None

        return matches
    if operator.endswith("Path"):
        base = operator[: -len("Path")]
        _kind, compare = _COMPARISONS[base]
        if not isinstance(operand, str):
            problems.append((where, f"{operator} takes a path"))
            return None
        try:
            other = parse_path(operand)
        except PathSyntaxError as exc:
            problems.append((where, f"bad path: {exc}"))
            return None
        return lambda data, ctx: compare(_value(variable, data, ctx), _value(other, data, ctx))
    kind, compare = _COMPARISONS[operator]
    ok = {
        "string": isinstance(operand, str),
        "number": _is_number(operand),
        "boolean": isinstance(operand, bool),
        "timestamp": parse_timestamp(operand) is not None,
    }[kind]
    if not ok:
        problems.append(
            (
                where,
                f"{operator} takes a {kind}"
                + (" in RFC 3339 form, e.g. 2016-03-14T01:59:00Z" if kind == "timestamp" else ""),
            )
        )
        return None
    literal = operand
    return lambda data, ctx: compare(_value(variable, data, ctx), literal)
