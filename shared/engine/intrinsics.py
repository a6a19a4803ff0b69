"""Intrinsic functions (`States.Format(...)` and friends) for JSONPath states.

A tokenizer and a recursive-descent parser turn the text into a call tree at load time, so a
definition with a bad invocation is rejected before it runs; evaluation then only walks the
tree. Grammar:

    call     := NAME '(' [ argument (',' argument)* ] ')'
    argument := call | 'string' | number | true | false | null | path
    path     := '$' ... | '$$' ...          (a JSONPath, ended by ',' or ')' at depth 0)

String literals use single quotes; inside them `\\'`, `\\{`, `\\}` and `\\\\` stand for `'`, `{`,
`}` and `\\`. An escaped brace stays literal in `States.Format` templates. Any other backslash
is an error, as AWS documents.

Behaviour follows AWS Step Functions' documentation; where it is silent, what AWS returns is
followed (e.g. `States.Format` renders an object argument as `{a=1, b=[2]}`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import random
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shared.engine import errors
from shared.engine.jsonpath import JsonPath, PathNotFoundError, PathSyntaxError, parse_path_prefix

MAX_NESTING = 10
MAX_ENCODE_CHARS = 10_000
MAX_ARRAY_RANGE = 1000

_NAME = re.compile(r"States\.[A-Za-z0-9]+")
_NUMBER = re.compile(r"-?\d+(\.\d+)?([eE][+-]?\d+)?")


class IntrinsicSyntaxError(ValueError):
    """An intrinsic invocation that does not parse or calls an unknown function."""


class IntrinsicEvaluationError(Exception):
    """An intrinsic failed at run time (wrong argument type, out of range...)."""


class PathArgumentNotFoundError(LookupError):
    """A path argument matched nothing in the input or context."""

    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(path)


# --------------------------------------------------------------------------- tree


@dataclass(frozen=True, slots=True)
class Literal:
    value: Any
    # For string literals: the text with escapes still marked, so States.Format can tell an
    # escaped `\{` from a placeholder `{}`.
    raw: str | None = None


@dataclass(frozen=True, slots=True)
class PathArg:
    path: JsonPath


@dataclass(frozen=True, slots=True)
class Call:
    name: str
    args: tuple[Literal | PathArg | Call, ...]
    text: str

    def evaluate(self, data: Any, context: Any) -> Any:
        """Evaluate against the state's data (`$`) and the context object (`$$`).

        Raises IntrinsicEvaluationError or PathArgumentNotFoundError.
        """
        spec = _FUNCTIONS[self.name]
        values = [_argument_value(arg, data, context) for arg in self.args]
        if self.name == "States.Format":
            first = self.args[0]
            template = first.raw if isinstance(first, Literal) and first.raw is not None else None
            return _format(values, template)
        return spec.impl(values)


def _argument_value(arg: Literal | PathArg | Call, data: Any, context: Any) -> Any:
    if isinstance(arg, Literal):
        return arg.value
    if isinstance(arg, PathArg):
        base = context if arg.path.context else data
        try:
            return arg.path.find(base)
        except PathNotFoundError:
            raise PathArgumentNotFoundError(arg.path.text) from None
    return arg.evaluate(data, context)


# --------------------------------------------------------------------------- parser


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def error(self, message: str) -> IntrinsicSyntaxError:
        return IntrinsicSyntaxError(f"{message} at position {self.pos} of {self.text!r}")

    def skip_spaces(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def parse_call(self, depth: int) -> Call:
        if depth > MAX_NESTING:
            raise self.error(f"intrinsic functions nest at most {MAX_NESTING} deep")
        start = self.pos
        match = _NAME.match(self.text, self.pos)
        if not match:
            raise self.error("expected an intrinsic function name like States.Format")
        name = match.group()
        if name not in _FUNCTIONS:
            raise self.error(f"unknown intrinsic function {name}")
        self.pos = match.end()
        self.skip_spaces()
        if self.text[self.pos : self.pos + 1] != "(":
            raise self.error(f"expected '(' after {name}")
        self.pos += 1
        args: list[Literal | PathArg | Call] = []
        self.skip_spaces()
        if self.text[self.pos : self.pos + 1] == ")":
            self.pos += 1
        else:
            while True:
                args.append(self.parse_argument(depth))
                self.skip_spaces()
                ch = self.text[self.pos : self.pos + 1]
                if ch == ",":
                    self.pos += 1
                    continue
                if ch == ")":
                    self.pos += 1
                    break
                raise self.error("expected ',' or ')'")
        spec = _FUNCTIONS[name]
        if not spec.min_args <= len(args) <= spec.max_args:
            expected = (
                str(spec.min_args)
                if spec.min_args == spec.max_args
                else f"{spec.min_args} to {spec.max_args}"
                if spec.max_args < 1000
                else f"at least {spec.min_args}"
            )
            raise IntrinsicSyntaxError(
                f"{name} takes {expected} argument{'s' if expected != '1' else ''}, "
                f"got {len(args)} in {self.text!r}"
            )
        if spec.check is not None:
            problem = spec.check(args)
            if problem:
                raise IntrinsicSyntaxError(f"{name}: {problem} in {self.text!r}")
        return Call(name, tuple(args), self.text[start : self.pos])

    def parse_argument(self, depth: int) -> Literal | PathArg | Call:
        self.skip_spaces()
        rest = self.text[self.pos :]
        if rest.startswith("'"):
            return self.parse_string()
        if rest.startswith("$"):
            try:
                path, end = parse_path_prefix(self.text, self.pos)
            except PathSyntaxError as exc:
                raise self.error(f"bad path argument ({exc})") from None
            self.pos = end
            return PathArg(path)
        if rest.startswith("States."):
            return self.parse_call(depth + 1)
        for word, value in (("true", True), ("false", False), ("null", None)):
            if rest.startswith(word) and not rest[len(word) : len(word) + 1].isalnum():
                self.pos += len(word)
                return Literal(value)
        match = _NUMBER.match(self.text, self.pos)
        if match:
            self.pos = match.end()
            text = match.group()
            number: int | float = float(text) if match.group(1) or match.group(2) else int(text)
            return Literal(number)
        raise self.error("expected a string, a number, true, false, null, a path or a function")

    def parse_string(self) -> Literal:
        self.pos += 1  # opening quote
        value: list[str] = []
        raw: list[str] = []
        while True:
            if self.pos >= len(self.text):
                raise self.error("unterminated string literal")
            ch = self.text[self.pos]
            if ch == "\\":
                nxt = self.text[self.pos + 1 : self.pos + 2]
                if nxt not in ("'", "{", "}", "\\"):
                    raise self.error(
                        "a backslash in a string literal must escape ', {, } or \\ "
                        f"(found \\{nxt})"
                    )
                value.append(nxt)
                raw.append("\\" + nxt)
                self.pos += 2
                continue
            self.pos += 1
            if ch == "'":
                return Literal("".join(value), "".join(raw))
            value.append(ch)
            raw.append(ch)


_parse_cache: dict[str, Call] = {}


def is_intrinsic(text: Any) -> bool:
    """Whether a `.$` value is an intrinsic invocation rather than a path."""
    return isinstance(text, str) and text.lstrip().startswith("States.")


def parse_intrinsic(text: str) -> Call:
    """Parse an intrinsic invocation. Raises IntrinsicSyntaxError naming the problem."""
    cached = _parse_cache.get(text)
    if cached is not None:
        return cached
    parser = _Parser(text)
    parser.skip_spaces()
    call = parser.parse_call(1)
    parser.skip_spaces()
    if parser.pos != len(text):
        raise parser.error("unexpected text after the function call")
    if len(_parse_cache) < 4096:
        _parse_cache[text] = call
    return call


# --------------------------------------------------------------------------- functions


@dataclass(frozen=True)
class _Spec:
    impl: Callable[[list[Any]], Any]
    min_args: int
    max_args: int
    check: Callable[[list[Literal | PathArg | Call]], str | None] | None = None


def _is_int(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, float) and math.isfinite(value) and value.is_integer()


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _rounded(value: Any, what: str) -> int:
    """An integer argument; AWS rounds a non-integer number to the nearest integer (halves up,
    like Java's Math.round) for MathAdd, MathRandom, ArrayRange and ArrayPartition."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise IntrinsicEvaluationError(
            f"{what} must be a number, got {_type_name(value)} {_short(value)}"
        )
    return int(value) if isinstance(value, int) else math.floor(value + 0.5)


def _want(value: Any, kind: str, what: str) -> Any:
    ok = {
        "array": isinstance(value, list),
        "string": isinstance(value, str),
        "object": isinstance(value, dict),
        "integer": _is_int(value),
        "boolean": isinstance(value, bool),
    }[kind]
    if not ok:
        raise IntrinsicEvaluationError(
            f"{what} must be {'an' if kind[0] in 'aio' else 'a'} {kind}, "
            f"got {_type_name(value)} {_short(value)}"
        )
    return int(value) if kind == "integer" else value


def _short(value: Any) -> str:
    text = json.dumps(value, separators=(",", ":"))
    return text if len(text) <= 60 else text[:57] + "..."


def _format_value(value: Any) -> str:
    """How AWS renders a non-string argument of States.Format (objects as `{k=v, ...}`)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "[" + ", ".join(_format_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}={_format_value(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)


_PLACEHOLDER = re.compile(r"\\[{}\\']|\{\}|[^\\{]+|[\\{]")


def _format(values: list[Any], raw_template: str | None) -> str:
    template = values[0]
    if not isinstance(template, str):
        raise IntrinsicEvaluationError(f"the template must be a string, got {_type_name(template)}")
    args = values[1:]
    pieces: list[str] = []
    used = 0
    source = raw_template if raw_template is not None else template
    for token in _PLACEHOLDER.findall(source):
        if token == "{}":
            if used >= len(args):
                raise IntrinsicEvaluationError(
                    f"the template has more {{}} placeholders than the {len(args)} "
                    "argument(s) given"
                )
            pieces.append(_format_value(args[used]))
            used += 1
        elif raw_template is not None and len(token) == 2 and token[0] == "\\":
            pieces.append(token[1])
        else:
            pieces.append(token)
    if used != len(args):
        raise IntrinsicEvaluationError(
            f"the template has {used} {{}} placeholder(s) but {len(args)} argument(s) were given"
        )
    return "".join(pieces)


def _string_to_json(values: list[Any]) -> Any:
    text = _want(values[0], "string", "the argument")
    if not text.strip():
        return None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise IntrinsicEvaluationError(f"the string is not valid JSON ({exc})") from None


def _json_to_string(values: list[Any]) -> str:
    return json.dumps(values[0], separators=(",", ":"), ensure_ascii=False)


def _array_partition(values: list[Any]) -> list[Any]:
    array = _want(values[0], "array", "the first argument")
    size = _rounded(values[1], "the chunk size")
    if size <= 0:
        raise IntrinsicEvaluationError(f"the chunk size must be a positive integer, got {size}")
    return [array[i : i + size] for i in range(0, len(array), size)]


def _array_contains(values: list[Any]) -> bool:
    array = _want(values[0], "array", "the first argument")
    needle = values[1]
    return any(_json_equal(item, needle) for item in array)


def _json_equal(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    return bool(a == b)


def _array_range(values: list[Any]) -> list[int]:
    start = _rounded(values[0], "the first argument")
    end = _rounded(values[1], "the second argument")
    step = _rounded(values[2], "the step")
    if step == 0:
        raise IntrinsicEvaluationError("the step must not be 0")
    result = list(range(start, end + (1 if step > 0 else -1), step))
    if len(result) > MAX_ARRAY_RANGE:
        raise IntrinsicEvaluationError(
            f"the range has {len(result)} items; at most {MAX_ARRAY_RANGE} are allowed"
        )
    return result


def _array_get_item(values: list[Any]) -> Any:
    array = _want(values[0], "array", "the first argument")
    index = _want(values[1], "integer", "the index")
    if not 0 <= index < len(array):
        raise IntrinsicEvaluationError(
            f"index {index} is out of range for an array of {len(array)}"
        )
    return array[index]


def _array_length(values: list[Any]) -> int:
    return len(_want(values[0], "array", "the argument"))


def _array_unique(values: list[Any]) -> list[Any]:
    array = _want(values[0], "array", "the argument")
    seen: list[Any] = []
    seen_keys: set[str] = set()
    for item in array:
        # Canonical JSON text as the identity: 1 and 1.0 are one value, true and 1 are two.
        key = json.dumps(item, sort_keys=True, separators=(",", ":"))
        if isinstance(item, float) and item.is_integer():
            key = json.dumps(int(item))
        if key not in seen_keys:
            seen_keys.add(key)
            seen.append(item)
    return seen


def _base64_encode(values: list[Any]) -> str:
    text = _want(values[0], "string", "the argument")
    if len(text) > MAX_ENCODE_CHARS:
        raise IntrinsicEvaluationError(f"the input has more than {MAX_ENCODE_CHARS} characters")
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def _base64_decode(values: list[Any]) -> str:
    text = _want(values[0], "string", "the argument")
    if len(text) > MAX_ENCODE_CHARS:
        raise IntrinsicEvaluationError(f"the input has more than {MAX_ENCODE_CHARS} characters")
    try:
        return base64.b64decode(text.encode("ascii"), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeError, ValueError) as exc:
        raise IntrinsicEvaluationError(f"the argument is not valid base64 text ({exc})") from None


_HASHES = {
    "MD5": "md5",
    "SHA-1": "sha1",
    "SHA-256": "sha256",
    "SHA-384": "sha384",
    "SHA-512": "sha512",
}


def _hash(values: list[Any]) -> str:
    data = _want(values[0], "string", "the data")
    algorithm = _want(values[1], "string", "the algorithm")
    if algorithm not in _HASHES:
        raise IntrinsicEvaluationError(
            f"unknown hash algorithm {algorithm!r}; use one of {', '.join(_HASHES)}"
        )
    if len(data) > MAX_ENCODE_CHARS:
        raise IntrinsicEvaluationError(f"the data has more than {MAX_ENCODE_CHARS} characters")
    return hashlib.new(_HASHES[algorithm], data.encode("utf-8")).hexdigest()


def _json_merge(values: list[Any]) -> dict[str, Any]:
    first = _want(values[0], "object", "the first argument")
    second = _want(values[1], "object", "the second argument")
    deep = _want(values[2], "boolean", "the isDeepMerge argument")
    if deep:
        raise IntrinsicEvaluationError(
            "only shallow merging is supported: isDeepMerge must be false"
        )
    merged = dict(first)
    merged.update(second)
    return merged


def _math_random(values: list[Any]) -> int:
    """A random integer from start (inclusive) to end (exclusive), as AWS documents."""
    start = _rounded(values[0], "the start")
    end = _rounded(values[1], "the end")
    if start >= end:
        raise IntrinsicEvaluationError(
            f"the start ({start}) must be less than the end ({end}), which is exclusive"
        )
    generator: random.Random | Any = random
    if len(values) == 3:
        generator = random.Random(_rounded(values[2], "the seed"))
    return int(generator.randrange(start, end))


def _math_add(values: list[Any]) -> int:
    return _rounded(values[0], "the first argument") + _rounded(values[1], "the second argument")


def _string_split(values: list[Any]) -> list[str]:
    text = _want(values[0], "string", "the first argument")
    delimiters = _want(values[1], "string", "the delimiter")
    if not delimiters:
        raise IntrinsicEvaluationError("the delimiter must not be empty")
    pattern = "[" + "".join(re.escape(c) for c in delimiters) + "]"
    return [part for part in re.split(pattern, text) if part]


def _uuid(values: list[Any]) -> str:
    return str(uuid.uuid4())


def _array(values: list[Any]) -> list[Any]:
    return list(values)


def _literal_check(position: int, kinds: tuple[type, ...], what: str) -> Any:
    """A load-time check: a literal argument at `position` must be of one of `kinds`."""

    def check(args: list[Literal | PathArg | Call]) -> str | None:
        if position < len(args):
            arg = args[position]
            if isinstance(arg, Literal) and (
                not isinstance(arg.value, kinds) or isinstance(arg.value, bool) != (bool in kinds)
            ):
                return f"argument {position + 1} must be {what}"
        return None

    return check


def _format_check(args: list[Literal | PathArg | Call]) -> str | None:
    first = args[0]
    if isinstance(first, Literal):
        if not isinstance(first.value, str):
            return "the first argument must be a string template"
        placeholders = sum(1 for token in _PLACEHOLDER.findall(first.raw or "") if token == "{}")
        if placeholders != len(args) - 1:
            return (
                f"the template has {placeholders} {{}} placeholder(s) but "
                f"{len(args) - 1} argument(s) follow it"
            )
    return None


_MANY = 10_000

_FUNCTIONS: dict[str, _Spec] = {
    "States.Format": _Spec(lambda v: v, 1, _MANY, _format_check),
    "States.StringToJson": _Spec(_string_to_json, 1, 1, _literal_check(0, (str,), "a string")),
    "States.JsonToString": _Spec(_json_to_string, 1, 1),
    "States.Array": _Spec(_array, 0, _MANY),
    "States.ArrayPartition": _Spec(
        _array_partition, 2, 2, _literal_check(1, (int, float), "a positive number")
    ),
    "States.ArrayContains": _Spec(_array_contains, 2, 2),
    "States.ArrayRange": _Spec(_array_range, 3, 3),
    "States.ArrayGetItem": _Spec(_array_get_item, 2, 2, _literal_check(1, (int,), "an integer")),
    "States.ArrayLength": _Spec(_array_length, 1, 1),
    "States.ArrayUnique": _Spec(_array_unique, 1, 1),
    "States.Base64Encode": _Spec(_base64_encode, 1, 1, _literal_check(0, (str,), "a string")),
    "States.Base64Decode": _Spec(_base64_decode, 1, 1, _literal_check(0, (str,), "a string")),
    "States.Hash": _Spec(_hash, 2, 2, _literal_check(1, (str,), "an algorithm name")),
    "States.JsonMerge": _Spec(_json_merge, 3, 3, _literal_check(2, (bool,), "false")),
    "States.MathRandom": _Spec(_math_random, 2, 3),
    "States.MathAdd": _Spec(_math_add, 2, 2),
    "States.StringSplit": _Spec(_string_split, 2, 2),
    "States.UUID": _Spec(_uuid, 0, 0),
}

FUNCTION_NAMES = frozenset(_FUNCTIONS)

# Error name an intrinsic failure reports (AWS lists it among the standard errors).
FAILURE_ERROR = errors.INTRINSIC_FAILURE
