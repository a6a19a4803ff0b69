"""Loading and validating Amazon States Language definitions (JSONPath query language).

`load_definition` parses a definition (JSON text or an already-parsed object), checks it
completely and compiles it into `Definition`: every path, payload template, intrinsic and
choice rule is compiled once here, so running a state only evaluates.

Validation reports *every* problem, each with the JSON pointer of the offending field
(`/States/Foo/Next`, `/States/M/ItemProcessor/States/Bar/Retry/0/ErrorEquals`): unknown
fields per state type, missing or unknown Next, End and Next together, states nobody can reach,
containers without a terminal state, bad paths, bad intrinsics, invalid Retry/Catch, Choice
without Choices, bad numbers, and features this engine does not run (JSONata, distributed Map's
ItemReader/ResultWriter/ItemBatcher, workflow variables).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shared.engine import errors
from shared.engine.choice import ChoiceRule, compile_rules
from shared.engine.errors import DefinitionError
from shared.engine.intrinsics import (
    Call,
    IntrinsicSyntaxError,
    is_intrinsic,
    parse_intrinsic,
)
from shared.engine.jsonpath import (
    JsonPath,
    PathSyntaxError,
    parse_path,
    parse_reference_path,
)
from shared.engine.templates import PayloadTemplate, compile_template, pointer_escape
from shared.engine.timestamps import parse_timestamp

MAX_STATE_NAME = 80
MAX_TIMEOUT = 99_999_999
CALLBACK_SUFFIX = ".waitForTaskToken"
SYNC_SUFFIXES = (".sync:2", ".sync")

STATE_TYPES = ("Pass", "Task", "Choice", "Wait", "Succeed", "Fail", "Parallel", "Map")


# --------------------------------------------------------------------------- model


@dataclass(frozen=True)
class Retrier:
    error_equals: tuple[str, ...]
    interval_seconds: float = 1.0
    max_attempts: int = 3
    backoff_rate: float = 2.0
    max_delay_seconds: float | None = None
    jitter: str = "NONE"  # "FULL" or "NONE"


@dataclass(frozen=True)
class Catcher:
    error_equals: tuple[str, ...]
    next: str
    result_path: JsonPath | None  # None: "$" (default) unless result_path_null
    result_path_null: bool = False


@dataclass
class State:
    """Fields common to all states. `input_path=None` means `$` (unless `input_null`)."""

    name: str
    type: str
    pointer: str
    next: str | None = None
    end: bool = False
    input_path: JsonPath | None = None
    input_null: bool = False
    output_path: JsonPath | None = None
    output_null: bool = False

    @property
    def terminal(self) -> bool:
        return self.end or self.type in ("Succeed", "Fail")


@dataclass
class ResultState(State):
    """States that produce a result merged by ResultPath (Pass, Task, Parallel, Map)."""

    parameters: PayloadTemplate | None = None
    result_selector: PayloadTemplate | None = None
    result_path: JsonPath | None = None
    result_null: bool = False
    retry: tuple[Retrier, ...] = ()
    catch: tuple[Catcher, ...] = ()


@dataclass
class PassState(ResultState):
    result: Any = None
    has_result: bool = False


@dataclass
class TaskState(ResultState):
    resource: str = ""
    function: str = ""  # the resource the Invoker resolves (callback suffix removed)
    callback: bool = False
    timeout_seconds: float | None = None
    timeout_seconds_path: JsonPath | None = None
    heartbeat_seconds: float | None = None
    heartbeat_seconds_path: JsonPath | None = None


@dataclass
class ChoiceState(State):
    choices: tuple[ChoiceRule, ...] = ()
    default: str | None = None


@dataclass
class WaitState(State):
    seconds: float | None = None
    timestamp: float | None = None
    seconds_path: JsonPath | None = None
    timestamp_path: JsonPath | None = None


@dataclass
class SucceedState(State):
    pass


@dataclass
class FailState(State):
    error: str | None = None
    cause: str | None = None
    error_path: JsonPath | Call | None = None
    cause_path: JsonPath | Call | None = None


@dataclass
class ParallelState(ResultState):
    branches: tuple[Machine, ...] = ()


@dataclass
class MapState(ResultState):
    processor: Machine | None = None
    items_path: JsonPath | None = None
    item_selector: PayloadTemplate | None = None
    max_concurrency: int = 0
    max_concurrency_path: JsonPath | None = None
    tolerated_failure_count: int | None = None
    tolerated_failure_count_path: JsonPath | None = None
    tolerated_failure_percentage: float | None = None
    tolerated_failure_percentage_path: JsonPath | None = None
    label: str | None = None


@dataclass
class Machine:
    """A set of states with a StartAt: the top level, a Parallel branch or a Map processor."""

    pointer: str
    start_at: str
    states: dict[str, State] = field(default_factory=dict)


@dataclass
class Definition:
    """A validated, compiled state-machine definition."""

    source: dict[str, Any]
    root: Machine
    machines: dict[str, Machine]
    timeout_seconds: float | None
    comment: str | None
    digest: str  # sha256 of the canonical JSON text: identifies the definition

    def machine(self, pointer: str) -> Machine:
        return self.machines[pointer]

    @property
    def text(self) -> str:
        return canonical_json(self.source)


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


# --------------------------------------------------------------------------- field sets

_COMMON = frozenset({"Type", "Comment"})
_FLOW = frozenset({"Next", "End"})
_IO = frozenset({"InputPath", "OutputPath"})
_FIELDS: dict[str, frozenset[str]] = {
    "Pass": _COMMON | _FLOW | _IO | {"Parameters", "Result", "ResultPath"},
    "Task": _COMMON
    | _FLOW
    | _IO
    | {
        "Resource",
        "Parameters",
        "ResultSelector",
        "ResultPath",
        "Retry",
        "Catch",
        "TimeoutSeconds",
        "TimeoutSecondsPath",
        "HeartbeatSeconds",
        "HeartbeatSecondsPath",
        "Credentials",
    },
    "Choice": _COMMON | _IO | {"Choices", "Default"},
    "Wait": _COMMON | _FLOW | _IO | {"Seconds", "Timestamp", "SecondsPath", "TimestampPath"},
    "Succeed": _COMMON | _IO,
    "Fail": _COMMON | {"Error", "ErrorPath", "Cause", "CausePath"},
    "Parallel": _COMMON
    | _FLOW
    | _IO
    | {"Branches", "Parameters", "ResultSelector", "ResultPath", "Retry", "Catch"},
    "Map": _COMMON
    | _FLOW
    | _IO
    | {
        "ItemProcessor",
        "Iterator",
        "ItemsPath",
        "ItemSelector",
        "Parameters",
        "MaxConcurrency",
        "MaxConcurrencyPath",
        "ToleratedFailureCount",
        "ToleratedFailureCountPath",
        "ToleratedFailurePercentage",
        "ToleratedFailurePercentagePath",
        "ResultSelector",
        "ResultPath",
        "Retry",
        "Catch",
        "Label",
    },
}
_JSONATA_FIELDS = frozenset({"Arguments", "Output", "Items", "Condition"})
_UNSUPPORTED_MAP_FIELDS = frozenset({"ItemReader", "ItemBatcher", "ResultWriter"})
_TOP_FIELDS = frozenset(
    {"StartAt", "States", "Comment", "Version", "TimeoutSeconds", "QueryLanguage"}
)
_BRANCH_FIELDS = frozenset({"StartAt", "States", "Comment"})
_PROCESSOR_FIELDS = _BRANCH_FIELDS | {"ProcessorConfig"}
_RETRY_FIELDS = frozenset(
    {
        "ErrorEquals",
        "IntervalSeconds",
        "MaxAttempts",
        "BackoffRate",
        "MaxDelaySeconds",
        "JitterStrategy",
        "Comment",
    }
)
_CATCH_FIELDS = frozenset({"ErrorEquals", "Next", "ResultPath", "Comment"})
# Intrinsics AWS allows in a Fail state's ErrorPath/CausePath.
_FAIL_INTRINSICS = frozenset(
    {
        "States.Format",
        "States.JsonToString",
        "States.ArrayGetItem",
        "States.Base64Encode",
        "States.Base64Decode",
        "States.Hash",
        "States.UUID",
    }
)


# --------------------------------------------------------------------------- loader


def load_definition(source: str | bytes | Mapping[str, Any] | Definition) -> Definition:
    """Parse, validate and compile a definition. Raises DefinitionError listing every problem."""
    if isinstance(source, Definition):
        return source
    if isinstance(source, str | bytes):
        try:
            obj = json.loads(source)
        except json.JSONDecodeError as exc:
            raise DefinitionError(
                [("", f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})")]
            ) from None
        except UnicodeDecodeError as exc:
            raise DefinitionError([("", f"not UTF-8 text: {exc}")]) from None
    else:
        obj = source
    if not isinstance(obj, Mapping):
        raise DefinitionError([("", "a state machine definition must be a JSON object")])
    loader = _Loader()
    definition = loader.load(dict(obj))
    if loader.problems:
        raise DefinitionError(loader.problems)
    assert definition is not None
    return definition


class _Loader:
    def __init__(self) -> None:
        self.problems: list[tuple[str, str]] = []
        self.machines: dict[str, Machine] = {}

    def problem(self, pointer: str, message: str) -> None:
        self.problems.append((pointer, message))

    def load(self, obj: dict[str, Any]) -> Definition | None:
        for key in obj:
            if key not in _TOP_FIELDS:
                self.problem(f"/{pointer_escape(key)}", f"unknown top-level field {key!r}")
        language = obj.get("QueryLanguage", "JSONPath")
        if language != "JSONPath":
            self.problem(
                "/QueryLanguage",
                f"QueryLanguage {language!r} is not supported: this engine runs JSONPath only",
            )
        version = obj.get("Version")
        if version is not None and version != "1.0":
            self.problem("/Version", 'Version must be "1.0"')
        comment = obj.get("Comment")
        if comment is not None and not isinstance(comment, str):
            self.problem("/Comment", "Comment must be a string")
        timeout = self.positive_int(obj, "TimeoutSeconds", "")
        root = self.machine(obj, "", _TOP_FIELDS, check_fields=False)
        digest = hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()
        if root is None:
            return None
        return Definition(
            source=obj,
            root=root,
            machines=self.machines,
            timeout_seconds=timeout,
            comment=comment if isinstance(comment, str) else None,
            digest=digest,
        )

    # ----------------------------------------------------------------- containers

    def machine(
        self, obj: Any, pointer: str, allowed: frozenset[str], *, check_fields: bool = True
    ) -> Machine | None:
        if not isinstance(obj, dict):
            self.problem(pointer, "must be an object with StartAt and States")
            return None
        if check_fields:
            for key in obj:
                if key not in allowed:
                    self.problem(f"{pointer}/{pointer_escape(key)}", f"unknown field {key!r}")
        start_at = obj.get("StartAt")
        states_obj = obj.get("States")
        ok = True
        if not isinstance(start_at, str):
            self.problem(f"{pointer}/StartAt", "StartAt is required and must be a state name")
            ok = False
        if not isinstance(states_obj, dict) or not states_obj:
            self.problem(f"{pointer}/States", "States is required and must be a non-empty object")
            return None
        machine = Machine(pointer=pointer, start_at=start_at if isinstance(start_at, str) else "")
        self.machines[pointer] = machine
        for name, state_obj in states_obj.items():
            where = f"{pointer}/States/{pointer_escape(name)}"
            if not name or len(name) > MAX_STATE_NAME:
                self.problem(where, f"a state name must be 1 to {MAX_STATE_NAME} characters long")
            state = self.state(name, state_obj, where)
            if state is not None:
                machine.states[name] = state
        if ok and start_at not in states_obj:
            self.problem(
                f"{pointer}/StartAt", f"StartAt names a state that does not exist: {start_at!r}"
            )
            ok = False
        self.check_graph(machine, states_obj, pointer, start_ok=ok)
        return machine

    def check_graph(
        self, machine: Machine, states_obj: dict[str, Any], pointer: str, *, start_ok: bool
    ) -> None:
        names = set(states_obj)
        edges: dict[str, list[str]] = {}
        for name, state in machine.states.items():
            targets: list[tuple[str, str]] = []
            if state.next is not None:
                targets.append((f"{state.pointer}/Next", state.next))
            if isinstance(state, ChoiceState):
                targets.extend((rule.pointer + "/Next", rule.next) for rule in state.choices)
                if state.default is not None:
                    targets.append((f"{state.pointer}/Default", state.default))
            if isinstance(state, ResultState):
                targets.extend(
                    (f"{state.pointer}/Catch/{i}/Next", c.next) for i, c in enumerate(state.catch)
                )
            for where, target in targets:
                if target not in names:
                    self.problem(where, f"there is no state named {target!r} here")
            edges[name] = [t for _w, t in targets if t in names]
        if not any(state.terminal for state in machine.states.values()) and machine.states:
            self.problem(
                f"{pointer}/States",
                "no terminal state: at least one state must be End: true, Succeed or Fail",
            )
        if not start_ok:
            return
        reached = {machine.start_at}
        todo = [machine.start_at]
        while todo:
            for target in edges.get(todo.pop(), []):
                if target not in reached:
                    reached.add(target)
                    todo.append(target)
        for name in states_obj:
            if name not in reached:
                self.problem(
                    f"{pointer}/States/{pointer_escape(name)}",
                    f"state {name!r} cannot be reached from StartAt ({machine.start_at!r})",
                )

    # ----------------------------------------------------------------- states

    def state(self, name: str, obj: Any, where: str) -> State | None:
        if not isinstance(obj, dict):
            self.problem(where, "a state must be an object")
            return None
        kind = obj.get("Type")
        if kind not in STATE_TYPES:
            self.problem(
                f"{where}/Type",
                f"Type must be one of {', '.join(STATE_TYPES)}"
                + (f" (got {kind!r})" if kind is not None else " (missing)"),
            )
            return None
        allowed = _FIELDS[kind]
        for key in obj:
            if key in allowed:
                continue
            at = f"{where}/{pointer_escape(key)}"
            if key in _JSONATA_FIELDS or key == "QueryLanguage":
                self.problem(at, f"{key} is JSONata, which this engine does not support")
            elif key == "Assign":
                self.problem(at, "Assign (workflow variables) is not supported by this engine")
            elif kind == "Map" and key in _UNSUPPORTED_MAP_FIELDS:
                self.problem(at, f"{key} (distributed Map over external items) is not supported")
            elif key in _FLOW:
                self.problem(at, f"a {kind} state cannot have {key}")
            else:
                self.problem(at, f"unknown field {key!r} for a {kind} state")
        builder = getattr(self, f"state_{kind.lower()}")
        state: State = builder(name, obj, where)
        if "Comment" in obj and not isinstance(obj["Comment"], str):
            self.problem(f"{where}/Comment", "Comment must be a string")
        if "InputPath" in allowed:
            state.input_path, state.input_null = self.path_field(obj, "InputPath", where)
            state.output_path, state.output_null = self.path_field(obj, "OutputPath", where)
        if "Next" in allowed:
            self.flow(state, obj, where)
        return state

    def flow(self, state: State, obj: dict[str, Any], where: str) -> None:
        nxt = obj.get("Next")
        end = obj.get("End", False)
        if "End" in obj and not isinstance(end, bool):
            self.problem(f"{where}/End", "End must be true or false")
            end = False
        if "Next" in obj and not isinstance(nxt, str):
            self.problem(f"{where}/Next", "Next must be a state name")
            nxt = None
        if nxt is not None and end:
            self.problem(where, "a state cannot have both Next and End: true")
        elif nxt is None and not end and "Next" not in obj:
            self.problem(where, f"a {state.type} state needs Next or End: true")
        state.next = nxt
        state.end = bool(end) and nxt is None

    def path_field(
        self,
        obj: dict[str, Any],
        key: str,
        where: str,
        *,
        reference: bool = False,
        allow_context: bool = False,
    ) -> tuple[JsonPath | None, bool]:
        """(compiled path or None for the default `$`, whether it was null)."""
        if key not in obj:
            return None, False
        value = obj[key]
        if value is None:
            return None, True
        if not isinstance(value, str):
            self.problem(f"{where}/{key}", f"{key} must be a path string or null")
            return None, False
        try:
            path = (
                parse_reference_path(value)
                if reference
                else parse_path(value, allow_context=allow_context)
            )
        except PathSyntaxError as exc:
            self.problem(f"{where}/{key}", f"bad {'reference ' if reference else ''}path: {exc}")
            return None, False
        if not path.steps and not reference:
            return None, False  # "$" is the default
        return path, False

    def reference_path(self, obj: dict[str, Any], key: str, where: str) -> JsonPath | None:
        value = obj.get(key)
        if key not in obj:
            return None
        if not isinstance(value, str):
            self.problem(f"{where}/{key}", f"{key} must be a reference path string")
            return None
        try:
            return parse_reference_path(value, allow_context=True)
        except PathSyntaxError as exc:
            self.problem(f"{where}/{key}", f"bad reference path: {exc}")
            return None

    def template(self, obj: dict[str, Any], key: str, where: str) -> PayloadTemplate | None:
        if key not in obj:
            return None
        value = obj[key]
        if key in ("ResultSelector", "ItemSelector") and not isinstance(value, dict):
            self.problem(f"{where}/{key}", f"{key} must be an object")
            return None
        return compile_template(value, key, f"{where}/{key}", self.problems)

    def positive_int(
        self,
        obj: dict[str, Any],
        key: str,
        where: str,
        *,
        minimum: int = 1,
        maximum: int = MAX_TIMEOUT,
    ) -> int | None:
        if key not in obj:
            return None
        value = obj[key]
        if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
            self.problem(f"{where}/{key}", f"{key} must be an integer from {minimum} to {maximum}")
            return None
        return value

    def exclusive(self, obj: dict[str, Any], keys: tuple[str, ...], where: str) -> None:
        present = [k for k in keys if k in obj]
        if len(present) > 1:
            self.problem(where, f"use only one of {', '.join(present)}")

    def result_fields(self, state: ResultState, obj: dict[str, Any], where: str) -> None:
        state.parameters = self.template(obj, "Parameters", where)
        state.result_selector = self.template(obj, "ResultSelector", where)
        state.result_path, state.result_null = self.path_field(
            obj, "ResultPath", where, reference=True
        )
        if state.result_path is not None and not state.result_path.steps:
            state.result_path = None  # "$": the result replaces the input
        state.retry = self.retriers(obj.get("Retry"), f"{where}/Retry") if "Retry" in obj else ()
        state.catch = self.catchers(obj.get("Catch"), f"{where}/Catch") if "Catch" in obj else ()

    def state_pass(self, name: str, obj: dict[str, Any], where: str) -> State:
        state = PassState(name=name, type="Pass", pointer=where)
        self.result_fields(state, obj, where)
        state.has_result = "Result" in obj
        state.result = obj.get("Result")
        return state

    def state_task(self, name: str, obj: dict[str, Any], where: str) -> State:
        state = TaskState(name=name, type="Task", pointer=where)
        self.result_fields(state, obj, where)
        resource = obj.get("Resource")
        if not isinstance(resource, str) or not resource:
            self.problem(f"{where}/Resource", "Resource is required: the name of a function")
            resource = ""
        state.resource = resource
        state.callback = resource.endswith(CALLBACK_SUFFIX)
        function = resource[: -len(CALLBACK_SUFFIX)] if state.callback else resource
        for suffix in SYNC_SUFFIXES:
            if function.endswith(suffix):
                function = function[: -len(suffix)]
                break
        state.function = function
        self.exclusive(obj, ("TimeoutSeconds", "TimeoutSecondsPath"), where)
        self.exclusive(obj, ("HeartbeatSeconds", "HeartbeatSecondsPath"), where)
        timeout = self.positive_int(obj, "TimeoutSeconds", where)
        heartbeat = self.positive_int(obj, "HeartbeatSeconds", where)
        state.timeout_seconds = float(timeout) if timeout is not None else None
        state.heartbeat_seconds = float(heartbeat) if heartbeat is not None else None
        if timeout is not None and heartbeat is not None and heartbeat >= timeout:
            self.problem(
                f"{where}/HeartbeatSeconds", "HeartbeatSeconds must be smaller than TimeoutSeconds"
            )
        state.timeout_seconds_path = self.reference_path(obj, "TimeoutSecondsPath", where)
        state.heartbeat_seconds_path = self.reference_path(obj, "HeartbeatSecondsPath", where)
        if "Credentials" in obj and not isinstance(obj["Credentials"], dict):
            self.problem(f"{where}/Credentials", "Credentials must be an object")
        return state

    def state_choice(self, name: str, obj: dict[str, Any], where: str) -> State:
        state = ChoiceState(name=name, type="Choice", pointer=where)
        if "Choices" not in obj:
            self.problem(where, "a Choice state needs Choices (a non-empty array of rules)")
        else:
            state.choices = tuple(compile_rules(obj["Choices"], f"{where}/Choices", self.problems))
        default = obj.get("Default")
        if "Default" in obj and not isinstance(default, str):
            self.problem(f"{where}/Default", "Default must be a state name")
            default = None
        state.default = default
        return state

    def state_wait(self, name: str, obj: dict[str, Any], where: str) -> State:
        state = WaitState(name=name, type="Wait", pointer=where)
        keys = ("Seconds", "Timestamp", "SecondsPath", "TimestampPath")
        present = [k for k in keys if k in obj]
        if len(present) != 1:
            self.problem(
                where,
                "a Wait state needs exactly one of Seconds, Timestamp, SecondsPath, TimestampPath"
                + (f" (found {', '.join(present)})" if present else ""),
            )
        seconds = self.positive_int(obj, "Seconds", where, minimum=0)
        state.seconds = float(seconds) if seconds is not None else None
        if "Timestamp" in obj:
            stamp = parse_timestamp(obj["Timestamp"])
            if stamp is None:
                self.problem(
                    f"{where}/Timestamp",
                    "Timestamp must be an RFC 3339 timestamp such as 2016-03-14T01:59:00Z",
                )
            state.timestamp = stamp
        state.seconds_path = self.reference_path(obj, "SecondsPath", where)
        state.timestamp_path = self.reference_path(obj, "TimestampPath", where)
        return state

    def state_succeed(self, name: str, obj: dict[str, Any], where: str) -> State:
        return SucceedState(name=name, type="Succeed", pointer=where)

    def state_fail(self, name: str, obj: dict[str, Any], where: str) -> State:
        state = FailState(name=name, type="Fail", pointer=where)
        self.exclusive(obj, ("Error", "ErrorPath"), where)
        self.exclusive(obj, ("Cause", "CausePath"), where)
        for key in ("Error", "Cause"):
            if key in obj and not isinstance(obj[key], str):
                self.problem(f"{where}/{key}", f"{key} must be a string")
        state.error = obj["Error"] if isinstance(obj.get("Error"), str) else None
        state.cause = obj["Cause"] if isinstance(obj.get("Cause"), str) else None
        state.error_path = self.fail_path(obj, "ErrorPath", where)
        state.cause_path = self.fail_path(obj, "CausePath", where)
        return state

    def fail_path(self, obj: dict[str, Any], key: str, where: str) -> JsonPath | Call | None:
        if key not in obj:
            return None
        value = obj[key]
        if is_intrinsic(value):
            try:
                call = parse_intrinsic(value.strip())
            except IntrinsicSyntaxError as exc:
                self.problem(f"{where}/{key}", f"bad intrinsic function: {exc}")
                return None
            if call.name not in _FAIL_INTRINSICS:
                self.problem(
                    f"{where}/{key}",
                    f"{call.name} cannot be used in {key} (it does not return a string)",
                )
            return call
        return self.reference_path(obj, key, where)

    def state_parallel(self, name: str, obj: dict[str, Any], where: str) -> State:
        state = ParallelState(name=name, type="Parallel", pointer=where)
        self.result_fields(state, obj, where)
        branches = obj.get("Branches")
        if not isinstance(branches, list) or not branches:
            self.problem(f"{where}/Branches", "Branches is required: a non-empty array of branches")
            return state
        built = []
        for i, branch in enumerate(branches):
            machine = self.machine(branch, f"{where}/Branches/{i}", _BRANCH_FIELDS)
            if machine is not None:
                built.append(machine)
        state.branches = tuple(built)
        return state

    def state_map(self, name: str, obj: dict[str, Any], where: str) -> State:
        state = MapState(name=name, type="Map", pointer=where)
        self.result_fields(state, obj, where)
        # ItemSelector replaces Parameters on Map; the legacy name keeps working.
        state.parameters = None
        self.exclusive(obj, ("ItemSelector", "Parameters"), where)
        selector_key = "ItemSelector" if "ItemSelector" in obj else "Parameters"
        if selector_key in obj:
            if not isinstance(obj[selector_key], dict):
                self.problem(f"{where}/{selector_key}", f"{selector_key} must be an object")
            else:
                state.item_selector = compile_template(
                    obj[selector_key], "ItemSelector", f"{where}/{selector_key}", self.problems
                )
        self.exclusive(obj, ("ItemProcessor", "Iterator"), where)
        processor_key = "ItemProcessor" if "ItemProcessor" in obj else "Iterator"
        if processor_key not in obj:
            self.problem(where, "a Map state needs ItemProcessor (or the legacy Iterator)")
        else:
            processor = obj[processor_key]
            allowed = _PROCESSOR_FIELDS if processor_key == "ItemProcessor" else _BRANCH_FIELDS
            state.processor = self.machine(processor, f"{where}/{processor_key}", allowed)
            if isinstance(processor, dict) and "ProcessorConfig" in processor:
                self.processor_config(
                    processor["ProcessorConfig"], f"{where}/{processor_key}/ProcessorConfig"
                )
        if "ItemsPath" in obj:
            path, null = self.path_field(obj, "ItemsPath", where, allow_context=True)
            if null:
                self.problem(f"{where}/ItemsPath", "ItemsPath cannot be null")
            state.items_path = path
        self.exclusive(obj, ("MaxConcurrency", "MaxConcurrencyPath"), where)
        concurrency = self.positive_int(obj, "MaxConcurrency", where, minimum=0)
        state.max_concurrency = concurrency or 0
        state.max_concurrency_path = self.reference_path(obj, "MaxConcurrencyPath", where)
        self.exclusive(obj, ("ToleratedFailureCount", "ToleratedFailureCountPath"), where)
        self.exclusive(obj, ("ToleratedFailurePercentage", "ToleratedFailurePercentagePath"), where)
        state.tolerated_failure_count = self.positive_int(
            obj, "ToleratedFailureCount", where, minimum=0
        )
        state.tolerated_failure_count_path = self.reference_path(
            obj, "ToleratedFailureCountPath", where
        )
        if "ToleratedFailurePercentage" in obj:
            pct = obj["ToleratedFailurePercentage"]
            if isinstance(pct, bool) or not isinstance(pct, int | float) or not 0 <= pct <= 100:
                self.problem(
                    f"{where}/ToleratedFailurePercentage",
                    "ToleratedFailurePercentage must be a number from 0 to 100",
                )
            else:
                state.tolerated_failure_percentage = float(pct)
        state.tolerated_failure_percentage_path = self.reference_path(
            obj, "ToleratedFailurePercentagePath", where
        )
        label = obj.get("Label")
        if "Label" in obj and (not isinstance(label, str) or not 1 <= len(label) <= 40):
            self.problem(f"{where}/Label", "Label must be a string of 1 to 40 characters")
        state.label = label if isinstance(label, str) else None
        return state

    def processor_config(self, config: Any, where: str) -> None:
        if not isinstance(config, dict):
            self.problem(where, "ProcessorConfig must be an object")
            return
        for key, value in config.items():
            if key == "Mode":
                if value not in ("INLINE", "DISTRIBUTED"):
                    self.problem(f"{where}/Mode", "Mode must be INLINE or DISTRIBUTED")
            elif key == "ExecutionType":
                if value not in ("STANDARD", "EXPRESS"):
                    self.problem(
                        f"{where}/ExecutionType", "ExecutionType must be STANDARD or EXPRESS"
                    )
            else:
                self.problem(f"{where}/{pointer_escape(key)}", f"unknown field {key!r}")

    # ----------------------------------------------------------------- Retry / Catch

    def error_equals(self, obj: dict[str, Any], where: str, is_last: bool) -> tuple[str, ...]:
        names = obj.get("ErrorEquals")
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            self.problem(
                f"{where}/ErrorEquals", "ErrorEquals is required: a non-empty array of error names"
            )
            return ()
        if errors.ALL in names:
            if len(names) != 1:
                self.problem(f"{where}/ErrorEquals", "States.ALL must appear alone in ErrorEquals")
            if not is_last:
                self.problem(
                    f"{where}/ErrorEquals", "States.ALL must be in the last retrier or catcher"
                )
        for n in names:
            if n.startswith("States.") and n not in errors.KNOWN_STATES_ERRORS:
                self.problem(f"{where}/ErrorEquals", f"unknown error name {n!r}")
        return tuple(names)

    def retriers(self, value: Any, where: str) -> tuple[Retrier, ...]:
        if not isinstance(value, list):
            self.problem(where, "Retry must be an array of retriers")
            return ()
        out: list[Retrier] = []
        for i, obj in enumerate(value):
            at = f"{where}/{i}"
            if not isinstance(obj, dict):
                self.problem(at, "a retrier must be an object")
                continue
            for key in obj:
                if key not in _RETRY_FIELDS:
                    self.problem(
                        f"{at}/{pointer_escape(key)}", f"unknown field {key!r} in a retrier"
                    )
            names = self.error_equals(obj, at, i == len(value) - 1)
            interval = self.positive_int(obj, "IntervalSeconds", at) or 1
            attempts = self.positive_int(obj, "MaxAttempts", at, minimum=0)
            max_delay = self.positive_int(obj, "MaxDelaySeconds", at, maximum=31_622_400)
            backoff = obj.get("BackoffRate", 2.0)
            if isinstance(backoff, bool) or not isinstance(backoff, int | float) or backoff < 1:
                self.problem(f"{at}/BackoffRate", "BackoffRate must be a number >= 1.0")
                backoff = 2.0
            jitter = obj.get("JitterStrategy", "NONE")
            if jitter not in ("FULL", "NONE"):
                self.problem(f"{at}/JitterStrategy", "JitterStrategy must be FULL or NONE")
                jitter = "NONE"
            out.append(
                Retrier(
                    error_equals=names,
                    interval_seconds=float(interval),
                    max_attempts=3 if attempts is None else attempts,
                    backoff_rate=float(backoff),
                    max_delay_seconds=float(max_delay) if max_delay is not None else None,
                    jitter=jitter,
                )
            )
        return tuple(out)

    def catchers(self, value: Any, where: str) -> tuple[Catcher, ...]:
        if not isinstance(value, list):
            self.problem(where, "Catch must be an array of catchers")
            return ()
        out: list[Catcher] = []
        for i, obj in enumerate(value):
            at = f"{where}/{i}"
            if not isinstance(obj, dict):
                self.problem(at, "a catcher must be an object")
                continue
            for key in obj:
                if key not in _CATCH_FIELDS:
                    self.problem(
                        f"{at}/{pointer_escape(key)}", f"unknown field {key!r} in a catcher"
                    )
            names = self.error_equals(obj, at, i == len(value) - 1)
            nxt = obj.get("Next")
            if not isinstance(nxt, str):
                self.problem(f"{at}/Next", "a catcher needs Next: the state to go to")
                continue
            path, null = self.path_field(obj, "ResultPath", at, reference=True)
            if path is not None and not path.steps:
                path = None
            out.append(
                Catcher(error_equals=names, next=nxt, result_path=path, result_path_null=null)
            )
        return tuple(out)
