"""The in-memory driver: runs an execution to its end inside this process, with no I/O.

Tasks are invoked synchronously, in the order the core asks for them. Time is *virtual*: a
Wait state, a retry back-off or a task timeout does not sleep; the driver jumps its clock to the
next timer instead, so a flow with `"Seconds": 3600` finishes at once while `$$.State.EnteredTime`
and the history still show the hour passing. (AWS really waits; pass `real_time=True` to sleep
until each timer instead — `troveless sfn run --real-time`.) The virtual clock is the real clock
plus the time skipped so far, so timestamps stay meaningful.

Because a task runs synchronously, a Task `TimeoutSeconds` cannot interrupt it: a task that
returns after its deadline is reported as `States.Timeout` instead of its result.

`.waitForTaskToken` tasks wait for `send_task_success` / `send_task_failure` on the
`InMemoryExecution` (whoever holds it answers the tokens between `run()` calls). `run()` returns
when the execution has ended or nothing more can happen without a callback; the result's status
is then RUNNING. Pending deadlines (TimeoutSeconds, HeartbeatSeconds) are timers like any other:
`run()` fires them in virtual time, `run(until_idle=True)` stops before them.
"""

from __future__ import annotations

import heapq
import itertools
import json
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from shared.engine import core
from shared.engine.core import (
    ExecutionFinished,
    ExecutionState,
    Interpreter,
    InvokeTask,
    ScheduleTimer,
    Step,
)
from shared.engine.definition import Definition, load_definition
from shared.engine.invoker import (
    ContextInvoker,
    InProcessInvoker,
    TaskContext,
    describe_exception,
)
from shared.engine.names import check_name, execution_arn, state_machine_arn
from shared.ports import Clock, Invoker

DEFAULT_STATE_MACHINE = "in-memory"


@dataclass
class ExecutionResult:
    """How an execution ended. `output` is the parsed JSON output when SUCCEEDED."""

    status: str  # SUCCEEDED | FAILED | TIMED_OUT | ABORTED | RUNNING (waiting for a callback)
    output: Any = None
    error: str | None = None
    cause: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    arn: str = ""
    name: str = ""

    @property
    def succeeded(self) -> bool:
        return self.status == core.SUCCEEDED


def json_copy(value: Any) -> Any:
    """A deep copy that is also proof the value is JSON (raises TypeError/ValueError if not)."""
    return json.loads(json.dumps(value, allow_nan=False))


class InMemoryExecution:
    """One execution driven in-process. Not thread-safe."""

    def __init__(
        self,
        definition: Definition | Mapping[str, Any] | str,
        input_value: Any,
        invoker: Invoker | ContextInvoker | None = None,
        *,
        name: str | None = None,
        state_machine_name: str = DEFAULT_STATE_MACHINE,
        clock: Clock | None = None,
        real_time: bool = False,
        interpreter: Interpreter | None = None,
    ) -> None:
        self.definition = load_definition(definition)
        self.interpreter = interpreter or Interpreter(self.definition)
        self.invoker = invoker if invoker is not None else InProcessInvoker()
        self.clock = clock
        self.real_time = real_time
        self.skipped = 0.0
        self.history: list[dict[str, Any]] = []
        self._pending: deque[dict[str, Any]] = deque()
        self._timers: list[tuple[float, int, dict[str, Any]]] = []
        self._seq = itertools.count()
        name = check_name("execution name", name or str(uuid.uuid4()))
        check_name("state machine name", state_machine_name)
        self.state: ExecutionState = self.interpreter.new_execution(
            arn=execution_arn(state_machine_name, name),
            name=name,
            state_machine_name=state_machine_name,
            state_machine_arn=state_machine_arn(state_machine_name),
            input_value=input_value,
            now=self.now(),
        )
        self._started = False

    # ----------------------------------------------------------------- time

    def now(self) -> float:
        base = self.clock.time() if self.clock is not None else time.time()
        return base + self.skipped

    def _advance_to(self, moment: float) -> None:
        delay = moment - self.now()
        if delay <= 0:
            return
        if self.real_time:
            time.sleep(delay)
        else:
            self.skipped += delay

    # ----------------------------------------------------------------- control

    def send_task_success(self, token: str, output: Any) -> None:
        self._pending.append({"type": "callback", "token": token, "ok": True, "output": output})

    def send_task_failure(self, token: str, error: str = "", cause: str = "") -> None:
        self._pending.append(
            {"type": "callback", "token": token, "ok": False, "error": error, "cause": cause}
        )

    def send_task_heartbeat(self, token: str) -> None:
        self._pending.append({"type": "heartbeat", "token": token})

    def stop(self, error: str | None = None, cause: str | None = None) -> None:
        self._pending.append({"type": "stop", "error": error, "cause": cause})

    def redrive(self) -> None:
        self._pending.append({"type": "redrive"})

    def advance(self, seconds: float) -> None:
        """Move virtual time forward (tests: let a heartbeat or timeout come due)."""
        self.skipped += seconds

    def run(self, *, until_idle: bool = False) -> ExecutionResult:
        """Drive the execution until it ends, or until only callbacks could move it.

        With `until_idle`, also stop before firing timers once no event is pending (tests use it
        to answer a callback before its timeout fires)."""
        if not self._started:
            self._started = True
            self._handle(self.interpreter.start(self.state, self.now()))
        while True:
            if self._pending:
                event = self._pending.popleft()
                step = self.interpreter.apply(self.state, event, self.now())
                self._handle(step)
                continue
            if self.state.status != core.RUNNING or until_idle or not self._timers:
                break
            moment, _seq, event = heapq.heappop(self._timers)
            self._advance_to(moment)
            self._handle(self.interpreter.apply(self.state, event, self.now()))
        return self.result()

    def result(self) -> ExecutionResult:
        st = self.state
        return ExecutionResult(
            status=st.status,
            output=st.output if st.status == core.SUCCEEDED else None,
            error=st.error,
            cause=st.cause,
            history=self.history,
            arn=st.arn,
            name=st.name,
        )

    def pending_tokens(self) -> list[str]:
        """Tokens of the tasks now waiting for a callback."""
        return [
            run.wait.token
            for run in self.state.runs.values()
            if run.wait is not None and run.wait.kind == core.TASK and run.wait.token
        ]

    # ----------------------------------------------------------------- effects

    def _handle(self, step: Step) -> None:
        self.history.extend(step.events)
        for effect in step.effects:
            if isinstance(effect, InvokeTask):
                self._invoke(effect)
            elif isinstance(effect, ScheduleTimer):
                heapq.heappush(self._timers, (effect.at, next(self._seq), effect.event))
            elif isinstance(effect, ExecutionFinished):
                self._timers.clear()

    def _invoke(self, effect: InvokeTask) -> None:
        started = self.now()
        event: dict[str, Any] = {"type": "task_result", "run": effect.run, "wait": effect.wait}
        try:
            payload = json_copy(effect.payload)
            context = TaskContext(
                resource=effect.function,
                idempotency_key=effect.idempotency_key,
                task_token=effect.token,
                execution_arn=effect.execution_arn,
                state_name=effect.state,
                attempt=effect.attempt,
            )
            if isinstance(self.invoker, ContextInvoker):
                result = self.invoker.invoke_task(effect.function, payload, context)
            else:
                result = self.invoker.invoke(
                    effect.function, payload, idempotency_key=effect.idempotency_key
                )
            try:
                event.update(ok=True, output=json_copy(result))
            except (TypeError, ValueError) as exc:
                event.update(
                    ok=False,
                    error="Runtime.MarshalError",
                    cause=f"the function returned a value that is not JSON: {exc}",
                )
        except Exception as exc:  # a task's failure, whatever it is, becomes TaskFailed
            error, cause = describe_exception(exc)
            event.update(ok=False, error=error, cause=cause)
        if effect.timeout_seconds is not None and self.now() - started > effect.timeout_seconds:
            # The function overran its deadline: the timeout timer wins over its late result.
            self._pending.append(
                {"type": "timer", "run": effect.run, "wait": effect.wait, "purpose": "timeout"}
            )
            return
        self._pending.append(event)


def run_in_memory(
    definition: Definition | Mapping[str, Any] | str,
    input_value: Any,
    resources: Mapping[str, Callable[..., Any]] | Invoker | None = None,
    *,
    name: str | None = None,
    state_machine_name: str = DEFAULT_STATE_MACHINE,
    clock: Clock | None = None,
    real_time: bool = False,
) -> ExecutionResult:
    """Run one execution in-process and return how it ended.

    `resources` maps Task Resource names to functions (see `invoker.py` for the calling
    convention), or is an Invoker. Raises DefinitionError for an invalid definition; every
    runtime problem (bad input for a path, failing task...) is a FAILED result instead.
    """
    invoker: Invoker | ContextInvoker
    if resources is None or isinstance(resources, Mapping):
        invoker = InProcessInvoker(resources)
    else:
        invoker = resources
    execution = InMemoryExecution(
        definition,
        input_value,
        invoker,
        name=name,
        state_machine_name=state_machine_name,
        clock=clock,
        real_time=real_time,
    )
    return execution.run()
