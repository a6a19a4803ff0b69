"""JSONPath as the Amazon States Language uses it.

Two kinds of path appear in definitions:

- *Paths* (InputPath, OutputPath, ItemsPath, values of `.$` keys...): full JSONPath —
  `$.a.b`, `$['a']`, `$.a[0]`, `$.a[-1]`, `$.a[*]`, `$.a[1:3]`, `$.a[0,2]`, `$..a`,
  `$.a[?(@.x > 1 && @.y == 'z')]`, `$.a.length()`.
- *Reference paths* (ResultPath, Choice `Variable`, `SecondsPath`...): only fields and array
  indexes, so they name exactly one node.

A path that starts with `$$` reads the context object instead of the state's input.

A *definite* path (fields, indexes and `length()` only) yields one value or fails with
`PathNotFoundError`; an indefinite one (wildcards, slices, unions, filters, `..`) yields the list of
what it matched, possibly empty — which is how AWS (Jayway JsonPath underneath) behaves.

Definite paths are compiled to a flat list of steps and walked without building lists, because
the engine evaluates them on every transition.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

# Step kinds.
_FIELD: Final = 0
_INDEX: Final = 1
_WILDCARD: Final = 2
_SLICE: Final = 3
_NAMES: Final = 4  # union of quoted names
_INDEXES: Final = 5  # union of indexes
_DEEP: Final = 6  # `..` followed by a step
_FILTER: Final = 7
_LENGTH: Final = 8

_DEFINITE_KINDS = frozenset({_FIELD, _INDEX, _LENGTH})
# Characters a dot-notation field name may not contain (they end the name).
_NAME = re.compile(r"""[^\s.\[\]()'",=<>!&|]+""")
_INT = re.compile(r"-?\d+")
_NUMBER = re.compile(r"-?\d+(\.\d+)?([eE][+-]?\d+)?")


class PathSyntaxError(ValueError):
    """A path that does not parse; the message says where and why."""


class PathNotFoundError(LookupError):
    """A definite path matched nothing in the data it was applied to."""

    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(path)


class PathAssignError(ValueError):
    """A reference path (ResultPath) cannot be applied to the data (e.g. a field of a string)."""


_MISSING: Final = object()


@dataclass(frozen=True, slots=True)
class _Step:
    kind: int
    arg: Any = None


class JsonPath:
    """A compiled path. `find` evaluates it; `assign` writes through a reference path."""

    __slots__ = ("_fast", "context", "definite", "reference", "steps", "text")

    def __init__(self, text: str, context: bool, steps: tuple[_Step, ...]) -> None:
        self.text = text
        self.context = context
        self.steps = steps
        self.definite = all(s.kind in _DEFINITE_KINDS for s in steps)
        self.reference = all(s.kind in (_FIELD, _INDEX) for s in steps)
        # Fast form of a definite path without length(): (is_field, key) pairs.
        self._fast: tuple[tuple[bool, Any], ...] | None = (
            tuple((s.kind == _FIELD, s.arg) for s in steps) if self.reference else None
        )

    def __repr__(self) -> str:
        return f"JsonPath({self.text!r})"

    def find(self, data: Any) -> Any:
        """The value at this path in `data` (definite), or the list of matches (indefinite).

        Raises PathNotFoundError when a definite path matches nothing.
        """
        fast = self._fast
        if fast is not None:
            current = data
            for is_field, key in fast:
                if is_field:
                    if type(current) is dict and key in current:
                        current = current[key]
                    else:
                        raise PathNotFoundError(self.text)
                elif type(current) is list and -len(current) <= key < len(current):
                    current = current[key]
                else:
                    raise PathNotFoundError(self.text)
            return current
        matches = _evaluate(self.steps, [data], data)
        if self.definite:
            if not matches:
                raise PathNotFoundError(self.text)
            return matches[0]
        return matches

    def exists(self, data: Any) -> bool:
        """Whether the path matches something (for IsPresent and filter existence tests)."""
        try:
            result = self.find(data)
        except PathNotFoundError:
            return False
        return self.definite or bool(result)

    def assign(self, data: Any, value: Any) -> Any:
        """A copy of `data` with `value` written at this reference path (ResultPath semantics).

        Missing objects along the way are created; only the containers on the path are copied,
        so `data` itself is never modified. Raises PathAssignError when the path runs into a
        value that is not an object (or an array index out of range).
        """
        if not self.reference:
            raise PathAssignError(f"{self.text} is not a reference path")
        return _assign(data, self.steps, 0, value, self.text)


def _assign(node: Any, steps: tuple[_Step, ...], i: int, value: Any, text: str) -> Any:
    if i == len(steps):
        return value
    step = steps[i]
    if step.kind == _FIELD:
        if node is _MISSING:
            node = {}
        if type(node) is not dict:
            raise PathAssignError(
                f"cannot set field {step.arg!r} of a {_json_type(node)} (path {text})"
            )
        copy = dict(node)
        copy[step.arg] = _assign(node.get(step.arg, _MISSING), steps, i + 1, value, text)
        return copy
    if type(node) is not list:
        raise PathAssignError(
            f"cannot set index [{step.arg}] of a {_json_type(node)} (path {text})"
        )
    index = step.arg
    if not -len(node) <= index < len(node):
        raise PathAssignError(f"index [{index}] is out of range (path {text})")
    copy_list = list(node)
    copy_list[index] = _assign(node[index], steps, i + 1, value, text)
    return copy_list


def _json_type(value: Any) -> str:
    if value is _MISSING:
        return "missing value"
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


def _children(node: Any) -> list[Any]:
    if type(node) is dict:
        return list(node.values())
    if type(node) is list:
        return list(node)
    return []


def _descendants(node: Any) -> list[Any]:
    """`node` and everything below it, in document order (iterative: deep documents must not
    exhaust the Python stack)."""
    out: list[Any] = []
    stack = [node]
    while stack:
        current = stack.pop()
        out.append(current)
        stack.extend(reversed(_children(current)))
    return out


def _apply_step(step: _Step, node: Any, root: Any, out: list[Any]) -> None:
    kind = step.kind
    if kind == _FIELD:
        if type(node) is dict and step.arg in node:
            out.append(node[step.arg])
    elif kind == _INDEX:
        if type(node) is list and -len(node) <= step.arg < len(node):
            out.append(node[step.arg])
    elif kind == _WILDCARD:
        out.extend(_children(node))
    elif kind == _SLICE:
        if type(node) is list:
            start, stop, stride = step.arg
            out.extend(node[slice(start, stop, stride)])
    elif kind == _NAMES:
        if type(node) is dict:
            out.extend(node[name] for name in step.arg if name in node)
    elif kind == _INDEXES:
        if type(node) is list:
            out.extend(node[i] for i in step.arg if -len(node) <= i < len(node))
    elif kind == _DEEP:
        for descendant in _descendants(node):
            _apply_step(step.arg, descendant, root, out)
    elif kind == _FILTER:
        predicate: Callable[[Any, Any], bool] = step.arg
        out.extend(child for child in _children(node) if predicate(child, root))
    elif kind == _LENGTH and isinstance(node, list | dict | str):
        out.append(len(node))


def _evaluate(steps: tuple[_Step, ...], nodes: list[Any], root: Any) -> list[Any]:
    for step in steps:
        out: list[Any] = []
        for node in nodes:
            _apply_step(step, node, root, out)
        nodes = out
        if not nodes:
            break
    return nodes


# --------------------------------------------------------------------------- parsing


class _Parser:
    def __init__(self, text: str, pos: int = 0) -> None:
        self.text = text
        self.pos = pos

    def error(self, message: str) -> PathSyntaxError:
        return PathSyntaxError(f"{message} at position {self.pos} of {self.text!r}")

    def peek(self, n: int = 1) -> str:
        return self.text[self.pos : self.pos + n]

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def skip_spaces(self) -> None:
        while not self.at_end() and self.text[self.pos].isspace():
            self.pos += 1

    def parse_path(self, roots: tuple[str, ...] = ("$",)) -> tuple[str, tuple[_Step, ...]]:
        """Parse a root (`$`, `$$` or `@`) and its steps; stops at the first character that
        cannot continue a path (the caller decides whether that is an error)."""
        root = ""
        if self.text.startswith("$$", self.pos) and "$$" in roots:
            root = "$$"
        elif self.peek() in roots and self.peek():
            root = self.peek()
        if not root:
            raise self.error("a path must start with " + " or ".join(repr(r) for r in roots))
        self.pos += len(root)
        steps: list[_Step] = []
        while not self.at_end():
            ch = self.text[self.pos]
            if ch == ".":
                if self.peek(2) == "..":
                    self.pos += 2
                    if self.peek() == "[":
                        steps.append(_Step(_DEEP, self.parse_bracket()))
                    elif self.peek() == "*":
                        self.pos += 1
                        steps.append(_Step(_DEEP, _Step(_WILDCARD)))
                    else:
                        steps.append(_Step(_DEEP, _Step(_FIELD, self.parse_name())))
                    continue
                self.pos += 1
                if self.peek() == "*":
                    self.pos += 1
                    steps.append(_Step(_WILDCARD))
                    continue
                name = self.parse_name()
                if name == "length" and self.peek(2) == "()":
                    self.pos += 2
                    steps.append(_Step(_LENGTH))
                else:
                    steps.append(_Step(_FIELD, name))
            elif ch == "[":
                steps.append(self.parse_bracket())
            else:
                break
        return root, tuple(steps)

    def parse_name(self) -> str:
        match = _NAME.match(self.text, self.pos)
        if not match:
            raise self.error("expected a field name")
        self.pos = match.end()
        return match.group()

    def parse_quoted(self) -> str:
        quote = self.text[self.pos]
        self.pos += 1
        chars: list[str] = []
        while True:
            if self.at_end():
                raise self.error("unterminated quoted name")
            ch = self.text[self.pos]
            if ch == "\\" and self.pos + 1 < len(self.text):
                chars.append(self.text[self.pos + 1])
                self.pos += 2
                continue
            self.pos += 1
            if ch == quote:
                return "".join(chars)
            chars.append(ch)

    def parse_bracket(self) -> _Step:
        self.pos += 1  # '['
        self.skip_spaces()
        ch = self.peek()
        if ch == "*":
            self.pos += 1
            step = _Step(_WILDCARD)
        elif ch == "?":
            self.pos += 1
            if self.peek() != "(":
                raise self.error("expected '(' after '?'")
            self.pos += 1
            predicate = _FilterParser(self).parse_or()
            self.skip_spaces()
            if self.peek() != ")":
                raise self.error("expected ')' to close the filter")
            self.pos += 1
            step = _Step(_FILTER, predicate)
        elif ch in ("'", '"'):
            names = [self.parse_quoted()]
            self.skip_spaces()
            while self.peek() == ",":
                self.pos += 1
                self.skip_spaces()
                if self.peek() not in ("'", '"') or not self.peek():
                    raise self.error("expected a quoted name")
                names.append(self.parse_quoted())
                self.skip_spaces()
            step = _Step(_FIELD, names[0]) if len(names) == 1 else _Step(_NAMES, tuple(names))
        else:
            step = self.parse_index_or_slice()
        self.skip_spaces()
        if self.peek() != "]":
            raise self.error("expected ']'")
        self.pos += 1
        return step

    def parse_int(self) -> int | None:
        self.skip_spaces()
        match = _INT.match(self.text, self.pos)
        if not match:
            return None
        self.pos = match.end()
        self.skip_spaces()
        return int(match.group())

    def parse_index_or_slice(self) -> _Step:
        first = self.parse_int()
        if self.peek() == ":":
            parts: list[int | None] = [first]
            while self.peek() == ":" and len(parts) < 3:
                self.pos += 1
                parts.append(self.parse_int())
            while len(parts) < 3:
                parts.append(None)
            if parts[2] == 0:
                raise self.error("a slice step cannot be 0")
            return _Step(_SLICE, (parts[0], parts[1], parts[2]))
        if first is None:
            raise self.error("expected an index, a slice, '*', a quoted name or a filter")
        indexes = [first]
        while self.peek() == ",":
            self.pos += 1
            nxt = self.parse_int()
            if nxt is None:
                raise self.error("expected an index")
            indexes.append(nxt)
        if len(indexes) == 1:
            return _Step(_INDEX, first)
        return _Step(_INDEXES, tuple(indexes))


# --------------------------------------------------------------------------- filters

Predicate = Callable[[Any, Any], bool]
_Operand = Callable[[Any, Any], Any]  # (current, root) -> value or _MISSING


class _FilterParser:
    """`?( ... )` expressions: ||, &&, !, comparisons, existence tests, literals, paths."""

    def __init__(self, parser: _Parser) -> None:
        self.p = parser

    def parse_or(self) -> Predicate:
        left = self.parse_and()
        while True:
            self.p.skip_spaces()
            if self.p.peek(2) != "||":
                return left
            self.p.pos += 2
            right = self.parse_and()
            left = _or(left, right)

    def parse_and(self) -> Predicate:
        left = self.parse_not()
        while True:
            self.p.skip_spaces()
            if self.p.peek(2) != "&&":
                return left
            self.p.pos += 2
            right = self.parse_not()
            left = _and(left, right)

    def parse_not(self) -> Predicate:
        self.p.skip_spaces()
        if self.p.peek() == "!" and self.p.peek(2) != "!=":
            self.p.pos += 1
            inner = self.parse_not()
            return lambda current, root: not inner(current, root)
        return self.parse_comparison()

    def parse_comparison(self) -> Predicate:
        self.p.skip_spaces()
        if self.p.peek() == "(":
            self.p.pos += 1
            inner = self.parse_or()
            self.p.skip_spaces()
            if self.p.peek() != ")":
                raise self.p.error("expected ')'")
            self.p.pos += 1
            return inner
        left = self.parse_operand()
        self.p.skip_spaces()
        for op in ("==", "!=", "<=", ">=", "<", ">"):
            if self.p.text.startswith(op, self.p.pos):
                self.p.pos += len(op)
                right = self.parse_operand()
                return _comparison(op, left, right)
        return lambda current, root: _truthy(left(current, root))

    def parse_operand(self) -> _Operand:
        p = self.p
        p.skip_spaces()
        ch = p.peek()
        if ch in ("@", "$"):
            root_char, steps = p.parse_path(roots=("@", "$"))
            return _path_operand(root_char, steps)
        if ch in ("'", '"'):
            text = p.parse_quoted()
            return lambda current, root: text
        for word, value in (("true", True), ("false", False), ("null", None)):
            if p.text.startswith(word, p.pos):
                p.pos += len(word)
                literal = value
                return lambda current, root: literal
        match = _NUMBER.match(p.text, p.pos)
        if match:
            p.pos = match.end()
            number: float = (
                float(match.group()) if match.group(1) or match.group(2) else int(match.group())
            )
            return lambda current, root: number
        raise p.error("expected a path, a string, a number, true, false or null")


def _or(left: Predicate, right: Predicate) -> Predicate:
    return lambda current, root: left(current, root) or right(current, root)


def _and(left: Predicate, right: Predicate) -> Predicate:
    return lambda current, root: left(current, root) and right(current, root)


def _truthy(value: Any) -> bool:
    return value is not _MISSING and value is not False and value is not None


def _path_operand(root_char: str, steps: tuple[_Step, ...]) -> _Operand:
    path = JsonPath(root_char, False, steps)

    def operand(current: Any, root: Any) -> Any:
        base = current if root_char == "@" else root
        try:
            return path.find(base)
        except PathNotFoundError:
            return _MISSING

    return operand


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _comparison(op: str, left: _Operand, right: _Operand) -> Predicate:
    def compare(current: Any, root: Any) -> bool:
        a = left(current, root)
        b = right(current, root)
        if a is _MISSING or b is _MISSING:
            return op == "!=" and not (a is _MISSING and b is _MISSING)
        if op == "==":
            return bool(_json_equal(a, b))
        if op == "!=":
            return not _json_equal(a, b)
        comparable = (_is_number(a) and _is_number(b)) or (
            isinstance(a, str) and isinstance(b, str)
        )
        if not comparable:
            return False
        if op == "<":
            return bool(a < b)
        if op == "<=":
            return bool(a <= b)
        if op == ">":
            return bool(a > b)
        return bool(a >= b)

    return compare


def _json_equal(a: Any, b: Any) -> bool:
    """Equality of JSON values: true is not 1, 1 equals 1.0."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    return bool(a == b)


# --------------------------------------------------------------------------- public API

_cache: dict[str, JsonPath] = {}


def parse_path(text: str, *, allow_context: bool = True) -> JsonPath:
    """Compile a Path (`$...` or, when allowed, `$$...`). Raises PathSyntaxError."""
    cached = _cache.get(text)
    if cached is not None:
        if cached.context and not allow_context:
            raise PathSyntaxError(f"{text!r}: the context object ($$) is not allowed here")
        return cached
    if not isinstance(text, str) or not text.startswith("$"):
        raise PathSyntaxError(f"{text!r} is not a path: it must start with '$'")
    if text.startswith("$$") and not allow_context:
        raise PathSyntaxError(f"{text!r}: the context object ($$) is not allowed here")
    parser = _Parser(text)
    root, steps = parser.parse_path(roots=("$$", "$"))
    if not parser.at_end():
        raise parser.error("unexpected character " + repr(parser.peek()))
    path = JsonPath(text, root == "$$", steps)
    if len(_cache) < 4096:
        _cache[text] = path
    return path


def parse_reference_path(text: str, *, allow_context: bool = False) -> JsonPath:
    """Compile a Reference Path: fields and indexes only, naming a single node."""
    path = parse_path(text, allow_context=allow_context)
    if not path.reference:
        raise PathSyntaxError(
            f"{text!r} is not a reference path (only fields and array indexes are allowed; "
            "no '*', '..', slices, unions, filters or functions)"
        )
    return path


def parse_path_prefix(text: str, pos: int) -> tuple[JsonPath, int]:
    """Parse a path that starts at `pos` inside a larger text (an intrinsic-function argument);
    returns it and the position after it."""
    parser = _Parser(text, pos)
    root, steps = parser.parse_path(roots=("$$", "$"))
    source = text[pos : parser.pos]
    return JsonPath(source, root == "$$", steps), parser.pos
