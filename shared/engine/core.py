"""The transition core: a pure function from (definition, execution state, one event) to
(new state, history events to append, effects to perform).

Nothing here does I/O, sleeps or reads a clock: the caller passes `now`, and every effect —
invoke a task, wake me at time T, the execution finished — is returned as data for a *driver* to
carry out (`memory.py` runs them in-process; `durable.py` turns them into queue messages).
`Interpreter.apply` mutates the `ExecutionState` it is given (drivers hand it a private copy,
loaded from the store or owned by the in-memory loop) and returns a `Step`.

The execution state is plain data (`to_json`/`from_json`) and is complete: a driver that loads
it knows every pending wait, so anything lost in a crash can be re-derived from it
(`pending_effects`).

Structure of a running execution: a tree of *runs*. The root run walks the top-level states; a
Parallel state starts one child run per branch and a Map state one per item (at most
MaxConcurrency at a time). A run is either being advanced inside `apply` or blocked on exactly
one `Wait`: a task (result, callback token, timeout, heartbeat), a timer (Wait state or retry
back-off) or its children. Events name the run and the wait id they answer, so an event for a
wait that has since ended is recognised as *stale* and changes nothing — the basis of safe
redelivery.

Events a driver feeds in (dicts):

    {"type": "begin"}                                      enter StartAt (once)
    {"type": "task_result", "run", "wait", "ok": true, "output"}
    {"type": "task_result", "run", "wait", "ok": false, "error", "cause"}
    {"type": "timer", "run", "wait", "purpose"}            purpose: wake | timeout | heartbeat
    {"type": "timer", "run": null, "wait", "purpose": "execution_timeout"}
    {"type": "callback", "token", "ok", "output" | "error", "cause"}   SendTaskSuccess/Failure
    {"type": "heartbeat", "token"}                         SendTaskHeartbeat
    {"type": "stop", "error", "cause"}                     StopExecution
    {"type": "fail", "error", "cause"}                     end it as FAILED (engine errors)
    {"type": "redrive"}                                    RedriveExecution
"""

from __future__ import annotations

import base64
import random
import secrets
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from shared.engine import errors
from shared.engine.definition import (
    Catcher,
    ChoiceState,
    Definition,
    FailState,
    MapState,
    ParallelState,
    PassState,
    ResultState,
    State,
    SucceedState,
    TaskState,
    WaitState,
)
from shared.engine.errors import StatesRuntimeError
from shared.engine.intrinsics import Call, IntrinsicEvaluationError, PathArgumentNotFoundError
from shared.engine.jsonpath import JsonPath, PathAssignError, PathNotFoundError
from shared.engine.templates import json_text
from shared.engine.timestamps import format_timestamp, parse_timestamp

RUNNING = "RUNNING"
SUCCEEDED = "SUCCEEDED"
FAILED = "FAILED"
TIMED_OUT = "TIMED_OUT"
ABORTED = "ABORTED"
TERMINAL = frozenset({SUCCEEDED, FAILED, TIMED_OUT, ABORTED})

# Wait kinds.
TASK = "task"
TIMER = "timer"
RETRY = "retry"
CHILDREN = "children"

TOKEN_PREFIX = "sfn1"


# --------------------------------------------------------------------------- state


@dataclass
class Fanout:
    """Children of a Parallel or Map state."""

    kind: str  # "map" | "parallel"
    total: int
    input: Any  # the state's effective input (branch input / ItemSelector's `$`)
    items: list[Any] | None
    results: list[Any]
    next_index: int = 0
    active: int = 0
    completed: int = 0
    failures: int = 0
    max_concurrency: int = 0
    tolerated_count: int | None = None
    tolerated_percentage: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "total": self.total,
            "input": self.input,
            "items": self.items,
            "results": self.results,
            "next_index": self.next_index,
            "active": self.active,
            "completed": self.completed,
            "failures": self.failures,
            "max_concurrency": self.max_concurrency,
            "tolerated_count": self.tolerated_count,
            "tolerated_percentage": self.tolerated_percentage,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Fanout:
        return cls(**data)


@dataclass
class Wait:
    """What a blocked run waits for. `id` is unique within the execution."""

    id: int
    kind: str
    until: float | None = None
    attempt: int = 0
    payload: Any = None
    token: str | None = None
    key: str | None = None
    timeout_at: float | None = None
    heartbeat_seconds: float | None = None
    heartbeat_at: float | None = None
    started: bool = False
    submitted: bool = False
    fanout: Fanout | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"id": self.id, "kind": self.kind}
        if self.kind == TASK:
            data.update(
                attempt=self.attempt,
                payload=self.payload,
                token=self.token,
                key=self.key,
                timeout_at=self.timeout_at,
                heartbeat_seconds=self.heartbeat_seconds,
                heartbeat_at=self.heartbeat_at,
                started=self.started,
                submitted=self.submitted,
            )
        elif self.kind == CHILDREN:
            assert self.fanout is not None
            data["fanout"] = self.fanout.to_json()
        else:
            data["until"] = self.until
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Wait:
        fields = dict(data)
        fanout = fields.pop("fanout", None)
        wait = cls(**fields)
        if fanout is not None:
            wait.fanout = Fanout.from_json(fanout)
        return wait


@dataclass
class Run:
    """A thread of control walking one set of states (top level, a branch, a Map item)."""

    id: str
    machine: str  # JSON pointer of the states container ("" = top level)
    parent: str | None
    slot: int  # branch / item index in the parent's results
    state: str = ""
    input: Any = None  # raw input of the current state
    entered_at: float = 0.0
    entered_event: int = 0
    retries: int = 0  # $$.State.RetryCount
    retrier_counts: list[int] | None = None
    last_event: int = 0
    wait: Wait | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "machine": self.machine,
            "parent": self.parent,
            "slot": self.slot,
            "state": self.state,
            "input": self.input,
            "entered_at": self.entered_at,
            "entered_event": self.entered_event,
            "retries": self.retries,
            "retrier_counts": self.retrier_counts,
            "last_event": self.last_event,
            "wait": self.wait.to_json() if self.wait is not None else None,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Run:
        fields = dict(data)
        wait = fields.pop("wait", None)
        run = cls(**fields)
        if wait is not None:
            run.wait = Wait.from_json(wait)
        return run


@dataclass
class ExecutionState:
    """Everything about one execution except its history."""

    arn: str
    name: str
    state_machine_name: str
    state_machine_arn: str
    input: Any
    start_time: float
    role_arn: str | None = None
    status: str = RUNNING
    output: Any = None
    error: str | None = None
    cause: str | None = None
    stop_time: float | None = None
    redrive_count: int = 0
    begun: bool = False
    counter: int = 0
    events: int = 0
    timeout_at: float | None = None
    timeout_wait: int | None = None
    redrive_point: dict[str, Any] | None = None
    runs: dict[str, Run] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "arn": self.arn,
            "name": self.name,
            "state_machine_name": self.state_machine_name,
            "state_machine_arn": self.state_machine_arn,
            "input": self.input,
            "start_time": self.start_time,
            "role_arn": self.role_arn,
            "status": self.status,
            "output": self.output,
            "error": self.error,
            "cause": self.cause,
            "stop_time": self.stop_time,
            "redrive_count": self.redrive_count,
            "begun": self.begun,
            "counter": self.counter,
            "events": self.events,
            "timeout_at": self.timeout_at,
            "timeout_wait": self.timeout_wait,
            "redrive_point": self.redrive_point,
            "runs": [run.to_json() for run in self.runs.values()],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ExecutionState:
        fields = dict(data)
        runs = fields.pop("runs", [])
        state = cls(**fields)
        state.runs = {r["id"]: Run.from_json(r) for r in runs}
        return state

    def next_id(self) -> int:
        self.counter += 1
        return self.counter


# --------------------------------------------------------------------------- effects


@dataclass(frozen=True)
class InvokeTask:
    """Call the task's function with `payload`; report back a `task_result` event."""

    run: str
    wait: int
    state: str
    resource: str  # as written in the definition
    function: str  # what the Invoker resolves (callback suffix removed)
    payload: Any
    idempotency_key: str
    token: str
    attempt: int
    callback: bool
    timeout_seconds: float | None
    execution_arn: str


@dataclass(frozen=True)
class ScheduleTimer:
    """Deliver `timer_event` at POSIX time `at` (not before)."""

    run: str | None
    wait: int
    at: float
    purpose: str

    @property
    def event(self) -> dict[str, Any]:
        return {"type": "timer", "run": self.run, "wait": self.wait, "purpose": self.purpose}


@dataclass(frozen=True)
class ExecutionFinished:
    status: str


Effect = InvokeTask | ScheduleTimer | ExecutionFinished


@dataclass
class Step:
    """What one `apply` did. `stale`: the event answered a wait that no longer exists (already
    applied, timed out, aborted...) and nothing changed; `reason` says why."""

    events: list[dict[str, Any]] = field(default_factory=list)
    effects: list[Effect] = field(default_factory=list)
    stale: bool = False
    reason: str = ""


# --------------------------------------------------------------------------- tokens


def make_token(execution_arn: str, run: str, wait: int, nonce: str) -> str:
    arn = base64.urlsafe_b64encode(execution_arn.encode("utf-8")).decode("ascii").rstrip("=")
    return f"{TOKEN_PREFIX}.{arn}.{run}.{wait}.{nonce}"


@dataclass(frozen=True)
class TokenParts:
    execution_arn: str
    run: str
    wait: int


def parse_token(token: str) -> TokenParts | None:
    """The execution, run and wait a task token belongs to, or None if it is malformed."""
    if not isinstance(token, str):
        return None
    parts = token.split(".")
    if len(parts) != 5 or parts[0] != TOKEN_PREFIX or not parts[3].isdigit():
        return None
    try:
        padded = parts[1] + "=" * (-len(parts[1]) % 4)
        arn = base64.urlsafe_b64decode(padded.encode("ascii")).decode("utf-8")
    except (ValueError, UnicodeError):
        return None
    return TokenParts(arn, parts[2], int(parts[3]))


def resource_type(resource: str) -> tuple[str, str]:
    """(resourceType, resource) as Step Functions splits them in history events."""
    if resource.startswith("arn:aws:states:::"):
        rest = resource[len("arn:aws:states:::") :]
        kind, _, name = rest.partition(":")
        return kind, name or rest
    if resource.startswith("arn:") and ":function:" in resource:
        return "lambda", resource
    if ":" in resource and not resource.startswith("arn:"):
        kind, _, name = resource.partition(":")
        return kind, name
    return "function", resource


def error_matches(names: tuple[str, ...], error: str) -> bool:
    """Whether a retrier's/catcher's ErrorEquals covers `error`."""
    if error in errors.UNCATCHABLE:
        return False
    for name in names:
        if name in (error, errors.ALL):
            return True
        if name == errors.TASK_FAILED and error != errors.TIMEOUT:
            return True
    return False


# --------------------------------------------------------------------------- interpreter


class Interpreter:
    """Applies events to executions of one definition. Stateless apart from the definition and
    a random source (retry jitter, task-token nonces)."""

    def __init__(self, definition: Definition, *, rng: random.Random | None = None) -> None:
        self.definition = definition
        self.rng = rng or random.Random()

    def new_execution(
        self,
        *,
        arn: str,
        name: str,
        state_machine_name: str,
        state_machine_arn: str,
        input_value: Any,
        now: float,
        role_arn: str | None = None,
    ) -> ExecutionState:
        return ExecutionState(
            arn=arn,
            name=name,
            state_machine_name=state_machine_name,
            state_machine_arn=state_machine_arn,
            input=input_value,
            start_time=now,
            role_arn=role_arn,
        )

    def start(self, st: ExecutionState, now: float, *, begin: bool = True) -> Step:
        """The ExecutionStarted event (and the execution timeout), then, if `begin`, StartAt.

        Durable drivers start with `begin=False` and deliver a `begin` event from a worker, so
        that starting an execution never runs its states inside the caller."""
        tx = _Transaction(self, st, now)
        details: dict[str, Any] = {
            "input": json_text(st.input),
            "inputDetails": {"truncated": False},
        }
        if st.role_arn:
            details["roleArn"] = st.role_arn
        tx.emit(None, "ExecutionStarted", "executionStartedEventDetails", details)
        tx.arm_execution_timeout()
        if begin:
            tx.begin()
            tx.drive()
        return tx.step()

    def apply(self, st: ExecutionState, event: dict[str, Any], now: float) -> Step:
        tx = _Transaction(self, st, now)
        kind = event.get("type")
        if kind == "redrive":
            tx.redrive()
        elif st.status != RUNNING:
            return Step(stale=True, reason=f"the execution is {st.status}")
        elif kind == "begin":
            if st.begun:
                return Step(stale=True, reason="the execution has already begun")
            tx.begin()
        elif kind == "task_result":
            tx.task_result(event)
        elif kind == "timer":
            tx.timer(event)
        elif kind == "callback":
            tx.callback(event)
        elif kind == "heartbeat":
            tx.heartbeat(event)
        elif kind == "stop":
            tx.stop(event)
        elif kind == "fail":
            tx.end_execution(
                FAILED,
                "ExecutionFailed",
                "executionFailedEventDetails",
                str(event.get("error") or errors.RUNTIME),
                str(event.get("cause") or ""),
            )
        else:
            raise ValueError(f"unknown event type {kind!r}")
        if tx.stale is not None:
            return Step(stale=True, reason=tx.stale)
        tx.drive()
        return tx.step()

    def pending_effects(self, st: ExecutionState, now: float) -> list[Effect]:
        """Every effect the current state is waiting on, re-derived from the state alone: what
        a driver re-sends when it cannot know whether the effects of an earlier step were sent
        (a crash between saving the state and sending them). Receivers ignore duplicates."""
        if st.status != RUNNING:
            return []
        out: list[Effect] = []
        if st.timeout_at is not None and st.timeout_wait is not None:
            out.append(ScheduleTimer(None, st.timeout_wait, st.timeout_at, "execution_timeout"))
        for run in st.runs.values():
            wait = run.wait
            if wait is None:
                continue
            if wait.kind in (TIMER, RETRY) and wait.until is not None:
                out.append(ScheduleTimer(run.id, wait.id, wait.until, "wake"))
            elif wait.kind == TASK:
                state = self.definition.machine(run.machine).states[run.state]
                assert isinstance(state, TaskState)
                if not wait.submitted:
                    out.append(_invoke_effect(st, run, state, wait))
                if wait.timeout_at is not None:
                    out.append(ScheduleTimer(run.id, wait.id, wait.timeout_at, "timeout"))
                if wait.heartbeat_at is not None:
                    out.append(ScheduleTimer(run.id, wait.id, wait.heartbeat_at, "heartbeat"))
        return out

    def task_effect(self, st: ExecutionState, run_id: str, wait_id: int) -> InvokeTask | None:
        """The invocation a run's task wait still needs, or None (no such wait, or the task was
        already invoked and now waits for its callback)."""
        run = st.runs.get(run_id)
        wait = run.wait if run is not None else None
        if run is None or wait is None or wait.id != wait_id or wait.kind != TASK:
            return None
        if wait.submitted or st.status != RUNNING:
            return None
        state = self.definition.machine(run.machine).states[run.state]
        assert isinstance(state, TaskState)
        return _invoke_effect(st, run, state, wait)


def _invoke_effect(st: ExecutionState, run: Run, state: TaskState, wait: Wait) -> InvokeTask:
    assert wait.key is not None and wait.token is not None
    timeout = None if wait.timeout_at is None else max(0.0, wait.timeout_at - run.entered_at)
    return InvokeTask(
        run=run.id,
        wait=wait.id,
        state=state.name,
        resource=state.resource,
        function=state.function,
        payload=wait.payload,
        idempotency_key=wait.key,
        token=wait.token,
        attempt=wait.attempt,
        callback=state.callback,
        timeout_seconds=timeout,
        execution_arn=st.arn,
    )


class _Transaction:
    """One `apply`: the working set of events, effects and runs ready to advance."""

    def __init__(self, interp: Interpreter, st: ExecutionState, now: float) -> None:
        self.interp = interp
        self.definition = interp.definition
        self.st = st
        self.now = now
        self.now_text = format_timestamp(now)
        self.events: list[dict[str, Any]] = []
        self.effects: list[Effect] = []
        self.ready: deque[Run] = deque()
        self.stale: str | None = None
        self._start_text: str | None = None

    def step(self) -> Step:
        return Step(self.events, self.effects)

    # ----------------------------------------------------------------- history

    def emit(
        self, run: Run | None, kind: str, details_key: str | None, details: dict[str, Any] | None
    ) -> int:
        st = self.st
        st.events += 1
        event_id = st.events
        previous = run.last_event if run is not None and run.last_event else event_id - 1
        event: dict[str, Any] = {
            "id": event_id,
            "previousEventId": previous,
            "timestamp": self.now_text,
            "type": kind,
        }
        if details_key is not None:
            event[details_key] = details
        self.events.append(event)
        if run is not None:
            run.last_event = event_id
        return event_id

    def state_of(self, run: Run) -> State:
        return self.definition.machine(run.machine).states[run.state]

    # ----------------------------------------------------------------- driving

    def drive(self) -> None:
        ready = self.ready
        while ready:
            run = ready.popleft()
            if run.id not in self.st.runs:
                continue  # aborted meanwhile
            self.execute(run)

    def begin(self) -> None:
        st = self.st
        st.begun = True
        root = Run(id=f"r{st.next_id()}", machine="", parent=None, slot=0)
        st.runs[root.id] = root
        self.enter(root, self.definition.root.start_at, st.input)

    def arm_execution_timeout(self) -> None:
        st = self.st
        timeout = self.definition.timeout_seconds
        if timeout is None:
            st.timeout_at = st.timeout_wait = None
            return
        st.timeout_at = self.now + timeout
        st.timeout_wait = st.next_id()
        self.effects.append(
            ScheduleTimer(None, st.timeout_wait, st.timeout_at, "execution_timeout")
        )

    def enter(self, run: Run, name: str, raw_input: Any) -> None:
        state = self.definition.machine(run.machine).states[name]
        run.state = name
        run.input = raw_input
        run.entered_at = self.now
        run.retries = 0
        run.retrier_counts = None
        run.wait = None
        run.entered_event = self.emit(
            run,
            f"{state.type}StateEntered",
            "stateEnteredEventDetails",
            {"name": name, "input": json_text(raw_input), "inputDetails": {"truncated": False}},
        )
        self.ready.appendleft(run)

    def execute(self, run: Run) -> None:
        state = self.state_of(run)
        try:
            if isinstance(state, PassState):
                self.run_pass(run, state)
            elif isinstance(state, TaskState):
                self.run_task(run, state)
            elif isinstance(state, ChoiceState):
                self.run_choice(run, state)
            elif isinstance(state, WaitState):
                self.run_wait(run, state)
            elif isinstance(state, SucceedState):
                output = self.output_of(state, self.effective_input(run, state))
                self.exit(run, state, output)
            elif isinstance(state, FailState):
                self.run_fail(run, state)
            elif isinstance(state, ParallelState):
                self.run_parallel(run, state)
            elif isinstance(state, MapState):
                self.run_map(run, state)
        except StatesRuntimeError as exc:
            self.fail_state(run, state, exc.error, self.located(run, state, exc.cause))

    def located(self, run: Run, state: State, cause: str) -> str:
        return (
            f"An error occurred while executing the state '{state.name}' (entered at the event "
            f"id #{run.entered_event}). {cause}"
        )

    # ----------------------------------------------------------------- data flow

    def context(self, run: Run, *, token: str | None = None) -> dict[str, Any]:
        """The `$$` context object of `run`'s current state (a fresh object each time: callers
        may add to it)."""
        st = self.st
        if self._start_text is None:
            self._start_text = format_timestamp(st.start_time)
        execution: dict[str, Any] = {
            "Id": st.arn,
            "Input": st.input,
            "Name": st.name,
            "StartTime": self._start_text,
            "RedriveCount": st.redrive_count,
        }
        if st.role_arn:
            execution["RoleArn"] = st.role_arn
        entered = self.now_text if run.entered_at == self.now else format_timestamp(run.entered_at)
        ctx: dict[str, Any] = {
            "Execution": execution,
            "State": {
                "EnteredTime": entered,
                "Name": run.state,
                "RetryCount": run.retries,
            },
            "StateMachine": {"Id": st.state_machine_arn, "Name": st.state_machine_name},
        }
        if token is not None:
            ctx["Task"] = {"Token": token}
        return ctx

    def effective_input(self, run: Run, state: State) -> Any:
        if state.input_null:
            return {}
        path = state.input_path
        if path is None:
            return run.input
        try:
            return path.find(run.input)
        except PathNotFoundError:
            raise StatesRuntimeError(
                errors.RUNTIME,
                f"Invalid path '{path.text}' : The InputPath matched nothing in the input "
                f"'{json_text(run.input)}'",
            ) from None

    def output_of(self, state: State, value: Any) -> Any:
        if state.output_null:
            return {}
        path = state.output_path
        if path is None:
            return value
        try:
            return path.find(value)
        except PathNotFoundError:
            raise StatesRuntimeError(
                errors.RUNTIME,
                f"Invalid path '{path.text}' : The OutputPath matched nothing in "
                f"'{json_text(value)}'",
            ) from None

    def merge_result(self, raw: Any, result: Any, path: JsonPath | None, null: bool) -> Any:
        if null:
            return raw
        if path is None:
            return result
        try:
            return path.assign(raw, result)
        except PathAssignError as exc:
            raise StatesRuntimeError(
                errors.RESULT_PATH_MATCH_FAILURE,
                f"Unable to apply ResultPath '{path.text}' to input '{json_text(raw)}': {exc}",
            ) from None

    def finish_result(self, run: Run, state: ResultState, result: Any) -> Any:
        """ResultSelector, ResultPath, OutputPath: a state's result becomes its output."""
        if state.result_selector is not None:
            selector = state.result_selector
            result = selector.evaluate(result, self.context(run) if selector.uses_context else None)
        merged = self.merge_result(run.input, result, state.result_path, state.result_null)
        return self.output_of(state, merged)

    def exit(self, run: Run, state: State, output: Any) -> None:
        self.emit(
            run,
            f"{state.type}StateExited",
            "stateExitedEventDetails",
            {
                "name": state.name,
                "output": json_text(output),
                "outputDetails": {"truncated": False},
            },
        )
        if state.end or isinstance(state, SucceedState):
            self.finish_run(run, output)
        else:
            assert state.next is not None
            self.enter(run, state.next, output)

    def number_from(self, path: JsonPath, data: Any, field_name: str, *, positive: bool) -> float:
        try:
            value = path.find(data)
        except PathNotFoundError:
            raise StatesRuntimeError(
                errors.RUNTIME,
                f"Invalid path '{path.text}' : the {field_name} matched nothing in the input "
                f"'{json_text(data)}'",
            ) from None
        is_number = isinstance(value, int | float) and not isinstance(value, bool)
        if not is_number or value < 0 or (positive and value == 0):
            raise StatesRuntimeError(
                errors.RUNTIME,
                f"The {field_name} '{path.text}' must select a "
                f"{'positive' if positive else 'non-negative'} number, got {json_text(value)}",
            )
        return float(value)

    # ----------------------------------------------------------------- simple states

    def run_pass(self, run: Run, state: PassState) -> None:
        value = self.effective_input(run, state)
        params = state.parameters
        if params is not None:
            value = params.evaluate(value, self.context(run) if params.uses_context else None)
        result = state.result if state.has_result else value
        merged = self.merge_result(run.input, result, state.result_path, state.result_null)
        self.exit(run, state, self.output_of(state, merged))

    def run_choice(self, run: Run, state: ChoiceState) -> None:
        value = self.effective_input(run, state)
        ctx = self.context(run)
        target = None
        for rule in state.choices:
            if rule.test(value, ctx):
                target = rule.next
                break
        if target is None:
            target = state.default
        if target is None:
            raise StatesRuntimeError(
                errors.NO_CHOICE_MATCHED,
                f"No Choice Rule matched and no Default is specified in state '{state.name}'",
            )
        output = self.output_of(state, value)
        self.emit(
            run,
            "ChoiceStateExited",
            "stateExitedEventDetails",
            {
                "name": state.name,
                "output": json_text(output),
                "outputDetails": {"truncated": False},
            },
        )
        self.enter(run, target, output)

    def run_wait(self, run: Run, state: WaitState) -> None:
        value = self.effective_input(run, state)
        if state.seconds is not None:
            until = self.now + state.seconds
        elif state.timestamp is not None:
            until = state.timestamp
        elif state.seconds_path is not None:
            base = self.context(run) if state.seconds_path.context else value
            until = self.now + self.number_from(
                state.seconds_path, base, "SecondsPath", positive=False
            )
        else:
            assert state.timestamp_path is not None
            base = self.context(run) if state.timestamp_path.context else value
            try:
                text = state.timestamp_path.find(base)
            except PathNotFoundError:
                raise StatesRuntimeError(
                    errors.RUNTIME,
                    f"Invalid path '{state.timestamp_path.text}' : the TimestampPath matched "
                    f"nothing in the input '{json_text(base)}'",
                ) from None
            stamp = parse_timestamp(text)
            if stamp is None:
                raise StatesRuntimeError(
                    errors.RUNTIME,
                    f"The TimestampPath '{state.timestamp_path.text}' must select an RFC 3339 "
                    f"timestamp, got {json_text(text)}",
                )
            until = stamp
        if until <= self.now:
            self.exit(run, state, self.output_of(state, value))
            return
        run.wait = Wait(id=self.st.next_id(), kind=TIMER, until=until)
        self.effects.append(ScheduleTimer(run.id, run.wait.id, until, "wake"))

    def finish_wait(self, run: Run, state: WaitState) -> None:
        try:
            output = self.output_of(state, self.effective_input(run, state))
        except StatesRuntimeError as exc:
            self.fail_state(run, state, exc.error, self.located(run, state, exc.cause))
            return
        self.exit(run, state, output)

    def run_fail(self, run: Run, state: FailState) -> None:
        error = state.error
        cause = state.cause
        if state.error_path is not None:
            error = self.fail_text(run, state.error_path, "ErrorPath")
        if state.cause_path is not None:
            cause = self.fail_text(run, state.cause_path, "CausePath")
        self.fail_run(run, error, cause)

    def fail_text(self, run: Run, source: JsonPath | Call, field_name: str) -> str:
        try:
            if isinstance(source, Call):
                value = source.evaluate(run.input, self.context(run))
            else:
                base = self.context(run) if source.context else run.input
                value = source.find(base)
        except (PathNotFoundError, PathArgumentNotFoundError) as exc:
            raise StatesRuntimeError(
                errors.RUNTIME,
                f"The {field_name} matched nothing in the input '{json_text(run.input)}' ({exc})",
            ) from None
        except IntrinsicEvaluationError as exc:
            raise StatesRuntimeError(
                errors.INTRINSIC_FAILURE, f"The {field_name} intrinsic function failed: {exc}"
            ) from None
        if not isinstance(value, str):
            raise StatesRuntimeError(
                errors.RUNTIME, f"The {field_name} must select a string, got {json_text(value)}"
            )
        return value

    # ----------------------------------------------------------------- tasks

    def run_task(self, run: Run, state: TaskState) -> None:
        st = self.st
        value = self.effective_input(run, state)
        wait_id = st.next_id()
        token = make_token(st.arn, run.id, wait_id, secrets.token_urlsafe(12))
        payload = value
        if state.parameters is not None:
            payload = state.parameters.evaluate(value, self.context(run, token=token))
        timeout = state.timeout_seconds
        if state.timeout_seconds_path is not None:
            timeout = self.number_from(
                state.timeout_seconds_path, value, "TimeoutSecondsPath", positive=True
            )
        heartbeat = state.heartbeat_seconds
        if state.heartbeat_seconds_path is not None:
            heartbeat = self.number_from(
                state.heartbeat_seconds_path, value, "HeartbeatSecondsPath", positive=True
            )
        wait = Wait(
            id=wait_id,
            kind=TASK,
            attempt=run.retries,
            payload=payload,
            token=token,
            key=f"{st.arn}/{state.name}/{run.entered_event}/{run.retries}",
            timeout_at=self.now + timeout if timeout is not None else None,
            heartbeat_seconds=heartbeat,
            heartbeat_at=self.now + heartbeat if heartbeat is not None else None,
        )
        run.wait = wait
        kind, resource = resource_type(state.resource)
        details: dict[str, Any] = {
            "resourceType": kind,
            "resource": resource,
            "region": "local",
            "parameters": json_text(payload),
        }
        if timeout is not None:
            details["timeoutInSeconds"] = int(timeout)
        if heartbeat is not None:
            details["heartbeatInSeconds"] = int(heartbeat)
        self.emit(run, "TaskScheduled", "taskScheduledEventDetails", details)
        self.effects.append(_invoke_effect(st, run, state, wait))
        if wait.timeout_at is not None:
            self.effects.append(ScheduleTimer(run.id, wait_id, wait.timeout_at, "timeout"))
        if wait.heartbeat_at is not None:
            self.effects.append(ScheduleTimer(run.id, wait_id, wait.heartbeat_at, "heartbeat"))

    def task_wait(self, run_id: Any, wait_id: Any) -> tuple[Run, TaskState, Wait] | None:
        run = self.st.runs.get(run_id) if isinstance(run_id, str) else None
        wait = run.wait if run is not None else None
        if run is None or wait is None or wait.id != wait_id or wait.kind != TASK:
            return None
        state = self.state_of(run)
        assert isinstance(state, TaskState)
        return run, state, wait

    def task_details(self, state: TaskState, **extra: Any) -> dict[str, Any]:
        kind, resource = resource_type(state.resource)
        return {"resourceType": kind, "resource": resource, **extra}

    def mark_started(self, run: Run, state: TaskState, wait: Wait) -> None:
        if not wait.started:
            wait.started = True
            self.emit(run, "TaskStarted", "taskStartedEventDetails", self.task_details(state))

    def task_result(self, event: dict[str, Any]) -> None:
        found = self.task_wait(event.get("run"), event.get("wait"))
        if found is None:
            self.stale = (
                "no task is waiting for this result (already recorded, timed out or aborted)"
            )
            return
        run, state, wait = found
        if wait.submitted:
            self.stale = "the task was already invoked; it now waits for its callback token"
            return
        self.mark_started(run, state, wait)
        if event.get("ok"):
            if state.callback:
                wait.submitted = True
                self.emit(
                    run,
                    "TaskSubmitted",
                    "taskSubmittedEventDetails",
                    self.task_details(state, output=json_text(event.get("output"))),
                )
                return
            self.task_succeeded(run, state, event.get("output"))
        else:
            self.task_failed(
                run, state, str(event.get("error") or ""), str(event.get("cause") or "")
            )

    def task_succeeded(self, run: Run, state: TaskState, result: Any) -> None:
        run.wait = None
        self.emit(
            run,
            "TaskSucceeded",
            "taskSucceededEventDetails",
            self.task_details(state, output=json_text(result), outputDetails={"truncated": False}),
        )
        try:
            output = self.finish_result(run, state, result)
        except StatesRuntimeError as exc:
            self.fail_state(run, state, exc.error, self.located(run, state, exc.cause))
            return
        self.exit(run, state, output)

    def task_failed(self, run: Run, state: TaskState, error: str, cause: str) -> None:
        run.wait = None
        self.emit(
            run,
            "TaskFailed",
            "taskFailedEventDetails",
            self.task_details(state, error=error, cause=cause),
        )
        self.fail_state(run, state, error, cause)

    def callback_target(self, token: Any) -> tuple[Run, TaskState, Wait] | None:
        if not isinstance(token, str):
            self.stale = "the task token is not a string"
            return None
        parts = parse_token(token)
        if parts is None or parts.execution_arn != self.st.arn:
            self.stale = "the task token does not belong to this execution"
            return None
        found = self.task_wait(parts.run, parts.wait)
        if found is None or found[2].token != token:
            self.stale = "the task is no longer waiting (it finished, timed out or was stopped)"
            return None
        return found

    def callback(self, event: dict[str, Any]) -> None:
        found = self.callback_target(event.get("token"))
        if found is None:
            return
        run, state, wait = found
        self.mark_started(run, state, wait)
        if event.get("ok"):
            self.task_succeeded(run, state, event.get("output"))
        else:
            self.task_failed(
                run, state, str(event.get("error") or ""), str(event.get("cause") or "")
            )

    def heartbeat(self, event: dict[str, Any]) -> None:
        found = self.callback_target(event.get("token"))
        if found is None:
            return
        _run, _state, wait = found
        if wait.heartbeat_seconds is not None:
            # The pending heartbeat timer re-arms itself at the new deadline when it fires.
            wait.heartbeat_at = self.now + wait.heartbeat_seconds

    # ----------------------------------------------------------------- timers

    def timer(self, event: dict[str, Any]) -> None:
        st = self.st
        purpose = event.get("purpose")
        wait_id = event.get("wait")
        if purpose == "execution_timeout":
            if st.timeout_wait is None or st.timeout_wait != wait_id or st.timeout_at is None:
                self.stale = "the execution timeout was replaced"
                return
            if self.now < st.timeout_at:
                self.effects.append(ScheduleTimer(None, st.timeout_wait, st.timeout_at, purpose))
                return
            self.end_execution(
                TIMED_OUT,
                "ExecutionTimedOut",
                "executionTimedOutEventDetails",
                errors.TIMEOUT,
                f"The execution ran longer than its TimeoutSeconds "
                f"({self.definition.timeout_seconds:g} s)",
            )
            return
        run_id = event.get("run")
        run = st.runs.get(run_id) if isinstance(run_id, str) else None
        wait = run.wait if run is not None else None
        if run is None or wait is None or wait.id != wait_id:
            self.stale = "nothing waits for this timer any more"
            return
        if purpose == "wake" and wait.kind in (TIMER, RETRY):
            assert wait.until is not None
            if self.now < wait.until:
                self.effects.append(ScheduleTimer(run.id, wait.id, wait.until, "wake"))
                return
            run.wait = None
            state = self.state_of(run)
            if wait.kind == TIMER:
                assert isinstance(state, WaitState)
                self.finish_wait(run, state)
            else:
                self.execute(run)
            return
        if wait.kind != TASK or purpose not in ("timeout", "heartbeat"):
            self.stale = "nothing waits for this timer any more"
            return
        state = self.state_of(run)
        assert isinstance(state, TaskState)
        deadline = wait.timeout_at if purpose == "timeout" else wait.heartbeat_at
        if deadline is None:
            self.stale = "the task has no such deadline"
            return
        if self.now < deadline:
            self.effects.append(ScheduleTimer(run.id, wait.id, deadline, purpose))
            return
        if purpose == "timeout":
            error, cause = errors.TIMEOUT, "The task did not finish within its TimeoutSeconds"
        else:
            error = errors.HEARTBEAT_TIMEOUT
            cause = "The task sent no heartbeat within its HeartbeatSeconds"
        run.wait = None
        self.emit(
            run,
            "TaskTimedOut",
            "taskTimedOutEventDetails",
            self.task_details(state, error=error, cause=cause),
        )
        self.fail_state(run, state, error, cause)

    # ----------------------------------------------------------------- errors

    def fail_state(self, run: Run, state: State, error: str, cause: str) -> None:
        """A state failed: retry it, catch the error, or fail the run."""
        if (
            isinstance(state, TaskState | ParallelState | MapState)
            and error not in errors.UNCATCHABLE
        ):
            for index, retrier in enumerate(state.retry):
                if not error_matches(retrier.error_equals, error):
                    continue
                counts = run.retrier_counts or [0] * len(state.retry)
                if counts[index] < retrier.max_attempts:
                    delay = retrier.interval_seconds * retrier.backoff_rate ** counts[index]
                    if retrier.max_delay_seconds is not None:
                        delay = min(delay, retrier.max_delay_seconds)
                    if retrier.jitter == "FULL":
                        delay = self.interp.rng.uniform(0, delay)
                    counts[index] += 1
                    run.retrier_counts = counts
                    run.retries += 1
                    run.wait = Wait(id=self.st.next_id(), kind=RETRY, until=self.now + delay)
                    self.effects.append(
                        ScheduleTimer(run.id, run.wait.id, run.wait.until or 0, "wake")
                    )
                    return
                break  # the first matching retrier is spent: normal error handling resumes
            for catcher in state.catch:
                if error_matches(catcher.error_equals, error):
                    self.catch(run, state, catcher, error, cause)
                    return
        self.fail_run(run, error, cause)

    def catch(self, run: Run, state: State, catcher: Catcher, error: str, cause: str) -> None:
        error_output = {"Error": error, "Cause": cause}
        try:
            output = self.merge_result(
                run.input, error_output, catcher.result_path, catcher.result_path_null
            )
        except StatesRuntimeError as exc:
            self.fail_run(run, exc.error, self.located(run, state, exc.cause))
            return
        self.emit(
            run,
            f"{state.type}StateExited",
            "stateExitedEventDetails",
            {
                "name": state.name,
                "output": json_text(output),
                "outputDetails": {"truncated": False},
            },
        )
        self.enter(run, catcher.next, output)

    # ----------------------------------------------------------------- run endings

    def finish_run(self, run: Run, output: Any) -> None:
        if run.parent is None:
            st = self.st
            st.output = output
            self.end_execution(
                SUCCEEDED,
                "ExecutionSucceeded",
                "executionSucceededEventDetails",
                None,
                None,
                output=output,
            )
            return
        parent = self.st.runs[run.parent]
        self.child_finished(parent, run, ok=True, output=output, error=None, cause=None)

    def fail_run(self, run: Run, error: str | None, cause: str | None) -> None:
        if run.parent is None:
            self.st.redrive_point = {"state": run.state, "input": run.input}
            self.end_execution(
                FAILED, "ExecutionFailed", "executionFailedEventDetails", error, cause
            )
            return
        parent = self.st.runs[run.parent]
        self.child_finished(
            parent, run, ok=False, output=None, error=error or "", cause=cause or ""
        )

    def end_execution(
        self,
        status: str,
        kind: str,
        details_key: str,
        error: str | None,
        cause: str | None,
        *,
        output: Any = None,
    ) -> None:
        st = self.st
        if status != SUCCEEDED and st.redrive_point is None:
            root = next((r for r in st.runs.values() if r.parent is None), None)
            if root is not None:
                st.redrive_point = {"state": root.state, "input": root.input}
        details: dict[str, Any] = {}
        if status == SUCCEEDED:
            details = {"output": json_text(output), "outputDetails": {"truncated": False}}
        else:
            if error is not None:
                details["error"] = error
            if cause is not None:
                details["cause"] = cause
        self.emit(None, kind, details_key, details)
        st.status = status
        st.error = error
        st.cause = cause
        st.stop_time = self.now
        st.runs.clear()
        st.timeout_at = st.timeout_wait = None
        self.ready.clear()
        self.effects.append(ExecutionFinished(status))

    def stop(self, event: dict[str, Any]) -> None:
        error = event.get("error")
        cause = event.get("cause")
        self.end_execution(
            ABORTED,
            "ExecutionAborted",
            "executionAbortedEventDetails",
            str(error) if error is not None else None,
            str(cause) if cause is not None else None,
        )

    def redrive(self) -> None:
        st = self.st
        if st.status not in (FAILED, TIMED_OUT, ABORTED):
            self.stale = (
                f"only a FAILED, TIMED_OUT or ABORTED execution can be redriven, not {st.status}"
            )
            return
        point = st.redrive_point
        if point is None:
            self.stale = "the execution stopped before it entered any state"
            return
        st.redrive_count += 1
        st.status = RUNNING
        st.error = st.cause = None
        st.stop_time = None
        st.output = None
        st.redrive_point = None
        st.begun = True
        self.emit(
            None,
            "ExecutionRedriven",
            "executionRedrivenEventDetails",
            {"redriveCount": st.redrive_count},
        )
        self.arm_execution_timeout()
        root = Run(id=f"r{st.next_id()}", machine="", parent=None, slot=0)
        st.runs[root.id] = root
        self.enter(root, point["state"], point["input"])

    # ----------------------------------------------------------------- Parallel and Map

    def run_parallel(self, run: Run, state: ParallelState) -> None:
        value = self.effective_input(run, state)
        params = state.parameters
        if params is not None:
            value = params.evaluate(value, self.context(run) if params.uses_context else None)
        count = len(state.branches)
        fanout = Fanout(
            kind="parallel", total=count, input=value, items=None, results=[None] * count
        )
        self.emit(run, "ParallelStateStarted", None, None)
        run.wait = Wait(id=self.st.next_id(), kind=CHILDREN, fanout=fanout)
        self.launch(run, state)

    def run_map(self, run: Run, state: MapState) -> None:
        value = self.effective_input(run, state)
        items: Any = value
        if state.items_path is not None:
            base = self.context(run) if state.items_path.context else value
            try:
                items = state.items_path.find(base)
            except PathNotFoundError:
                raise StatesRuntimeError(
                    errors.RUNTIME,
                    f"Invalid path '{state.items_path.text}' : the ItemsPath matched nothing in "
                    f"the input '{json_text(base)}'",
                ) from None
        if not isinstance(items, list):
            raise StatesRuntimeError(
                errors.RUNTIME,
                f"The Map state's items must be a JSON array, got {json_text(items)[:200]}",
            )
        concurrency = state.max_concurrency
        if state.max_concurrency_path is not None:
            concurrency = int(
                self.number_from(
                    state.max_concurrency_path, value, "MaxConcurrencyPath", positive=False
                )
            )
        tolerated_count = state.tolerated_failure_count
        if state.tolerated_failure_count_path is not None:
            tolerated_count = int(
                self.number_from(
                    state.tolerated_failure_count_path,
                    value,
                    "ToleratedFailureCountPath",
                    positive=False,
                )
            )
        tolerated_pct = state.tolerated_failure_percentage
        if state.tolerated_failure_percentage_path is not None:
            tolerated_pct = self.number_from(
                state.tolerated_failure_percentage_path,
                value,
                "ToleratedFailurePercentagePath",
                positive=False,
            )
            if tolerated_pct > 100:
                raise StatesRuntimeError(
                    errors.RUNTIME, "ToleratedFailurePercentagePath must select a number <= 100"
                )
        fanout = Fanout(
            kind="map",
            total=len(items),
            input=value,
            items=items,
            results=[None] * len(items),
            max_concurrency=concurrency,
            tolerated_count=tolerated_count,
            tolerated_percentage=tolerated_pct,
        )
        self.emit(run, "MapStateStarted", "mapStateStartedEventDetails", {"length": len(items)})
        run.wait = Wait(id=self.st.next_id(), kind=CHILDREN, fanout=fanout)
        if not items:
            self.complete_fanout(run, state)
            return
        self.launch(run, state)

    def launch(self, run: Run, state: ParallelState | MapState) -> None:
        """Start children up to the concurrency limit."""
        assert run.wait is not None and run.wait.fanout is not None
        fanout = run.wait.fanout
        limit = fanout.max_concurrency or fanout.total
        st = self.st
        while fanout.next_index < fanout.total and fanout.active < limit:
            index = fanout.next_index
            fanout.next_index += 1
            if isinstance(state, MapState):
                assert state.processor is not None and fanout.items is not None
                machine = state.processor
                value = fanout.items[index]
                self.emit(
                    run,
                    "MapIterationStarted",
                    "mapIterationStartedEventDetails",
                    {"name": state.name, "index": index},
                )
                if state.item_selector is not None:
                    ctx = self.context(run)
                    ctx["Map"] = {"Item": {"Index": index, "Value": value}}
                    try:
                        value = state.item_selector.evaluate(fanout.input, ctx)
                    except StatesRuntimeError as exc:
                        fanout.next_index = fanout.total
                        self.abort_children(run, state)
                        self.emit(run, "MapStateFailed", None, None)
                        run.wait = None
                        self.fail_state(run, state, exc.error, self.located(run, state, exc.cause))
                        return
            else:
                machine = state.branches[index]
                value = fanout.input
            child = Run(id=f"r{st.next_id()}", machine=machine.pointer, parent=run.id, slot=index)
            child.last_event = run.last_event
            st.runs[child.id] = child
            fanout.active += 1
            self.enter(child, machine.start_at, value)
            # Children start in order: the most recently entered must not jump the queue.
            self.ready.append(self.ready.popleft())
        if fanout.next_index >= fanout.total:
            fanout.items = None  # every child has its item now: keep the stored state small

    def child_finished(
        self,
        parent: Run,
        child: Run,
        *,
        ok: bool,
        output: Any,
        error: str | None,
        cause: str | None,
    ) -> None:
        st = self.st
        st.runs.pop(child.id, None)
        assert parent.wait is not None and parent.wait.fanout is not None
        fanout = parent.wait.fanout
        state = self.state_of(parent)
        assert isinstance(state, ParallelState | MapState)
        fanout.active -= 1
        is_map = isinstance(state, MapState)
        if ok:
            fanout.results[child.slot] = output
            fanout.completed += 1
            if is_map:
                self.emit(
                    parent,
                    "MapIterationSucceeded",
                    "mapIterationSucceededEventDetails",
                    {"name": state.name, "index": child.slot},
                )
        else:
            error = error or ""
            cause = cause or ""
            if is_map:
                self.emit(
                    parent,
                    "MapIterationFailed",
                    "mapIterationFailedEventDetails",
                    {"name": state.name, "index": child.slot},
                )
                fanout.failures += 1
                tolerant = (
                    fanout.tolerated_count is not None or fanout.tolerated_percentage is not None
                )
                if tolerant and error not in errors.UNCATCHABLE:
                    if not self.tolerance_exceeded(fanout):
                        fanout.results[child.slot] = {"Error": error, "Cause": cause}
                        fanout.completed += 1
                        self.after_child(parent, state, fanout)
                        return
                    error = errors.EXCEED_TOLERATED_FAILURE_THRESHOLD
                    cause = (
                        f"The Map state '{state.name}' failed because {fanout.failures} of its "
                        f"{fanout.total} iterations failed, more than it tolerates"
                    )
            fanout.next_index = fanout.total
            self.abort_children(parent, state)
            self.emit(parent, "MapStateFailed" if is_map else "ParallelStateFailed", None, None)
            parent.wait = None
            self.fail_state(parent, state, error, cause)
            return
        self.after_child(parent, state, fanout)

    def tolerance_exceeded(self, fanout: Fanout) -> bool:
        if fanout.tolerated_count is not None and fanout.failures > fanout.tolerated_count:
            return True
        if fanout.tolerated_percentage is not None and fanout.total:
            return fanout.failures * 100.0 / fanout.total > fanout.tolerated_percentage
        return False

    def after_child(self, parent: Run, state: ParallelState | MapState, fanout: Fanout) -> None:
        if fanout.completed == fanout.total:
            self.complete_fanout(parent, state)
        else:
            self.launch(parent, state)

    def abort_children(self, parent: Run, state: ParallelState | MapState) -> None:
        doomed = {parent.id}
        aborted_items: list[int] = []
        # Runs are created after their parents, so one pass in creation order finds them all.
        for run in list(self.st.runs.values()):
            if run.parent in doomed:
                doomed.add(run.id)
                if run.parent == parent.id and isinstance(state, MapState):
                    aborted_items.append(run.slot)
        doomed.discard(parent.id)
        for run_id in doomed:
            self.st.runs.pop(run_id, None)
        for index in aborted_items:
            self.emit(
                parent,
                "MapIterationAborted",
                "mapIterationAbortedEventDetails",
                {"name": state.name, "index": index},
            )

    def complete_fanout(self, run: Run, state: ParallelState | MapState) -> None:
        assert run.wait is not None and run.wait.fanout is not None
        results = run.wait.fanout.results
        run.wait = None
        self.emit(
            run,
            "MapStateSucceeded" if isinstance(state, MapState) else "ParallelStateSucceeded",
            None,
            None,
        )
        try:
            output = self.finish_result(run, state, results)
        except StatesRuntimeError as exc:
            self.fail_state(run, state, exc.error, self.located(run, state, exc.cause))
            return
        self.exit(run, state, output)
