"""The execution API over the durable driver: what the HTTP API, the console and `troveless sfn`
call. Shaped like Step Functions' (StartExecution, DescribeExecution, GetExecutionHistory,
StopExecution, RedriveExecution, ListExecutions, SendTaskSuccess/Failure/Heartbeat).

Starting is idempotent: starting the same execution name of the same state machine again with
the same input and definition returns the existing execution (and re-sends its `begin` message if
it never began, which heals a start interrupted between its two writes); a different input or
definition under that name raises ExecutionAlreadyExistsError.

Callbacks are applied directly to the execution record (one compare-and-swap), so the caller
learns at once whether the token was still wanted: a token of a finished, timed-out or stopped
task raises TaskTimedOutError, a malformed one TaskDoesNotExistError — the errors AWS returns.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from shared.engine import core, errors
from shared.engine.core import Interpreter
from shared.engine.definition import Definition, load_definition
from shared.engine.durable import (
    DurableDriver,
    LoadedExecution,
    PlaintextSecretError,
    begin_message,
    check_secret_free,
    execution_key,
    iter_execution_keys,
    key_for_arn,
    new_execution_name,
)
from shared.engine.names import check_name, execution_arn, state_machine_arn
from shared.models.execution import Execution, ExecutionStatus


def _date(seconds: float | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC)


def describe_state(state: core.ExecutionState) -> Execution:
    return Execution(
        arn=state.arn,
        state_machine_name=state.state_machine_name,
        name=state.name,
        status=ExecutionStatus(state.status),
        input=state.input,
        output=state.output if state.status == core.SUCCEEDED else None,
        error=state.error,
        cause=state.cause,
        start_date=datetime.fromtimestamp(state.start_time, UTC),
        stop_date=_date(state.stop_time),
        redrive_count=state.redrive_count,
    )


class ExecutionService:
    """Start, inspect, stop, redrive and answer executions stored by a DurableDriver."""

    def __init__(self, driver: DurableDriver) -> None:
        self.driver = driver

    # ----------------------------------------------------------------- helpers

    def _key(self, arn: str) -> str:
        key = key_for_arn(arn)
        if key is None:
            raise errors.ExecutionDoesNotExistError(arn)
        return key

    def _load(self, arn: str) -> LoadedExecution:
        loaded = self.driver.load(self._key(arn))
        if loaded is None or loaded.state.arn != arn:
            raise errors.ExecutionDoesNotExistError(arn)
        return loaded

    # ----------------------------------------------------------------- API

    def start(
        self,
        state_machine: str,
        definition: Definition | dict[str, Any] | str,
        input_value: Any = None,
        *,
        name: str | None = None,
        role_arn: str | None = None,
    ) -> Execution:
        """Start an execution (see the module docstring for what a repeated name does).

        Raises DefinitionError, InvalidNameError, InvalidExecutionInputError,
        ExecutionAlreadyExistsError."""
        compiled = load_definition(definition)
        check_name("state machine name", state_machine)
        name = check_name("execution name", name or new_execution_name())
        value = {} if input_value is None else input_value
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise errors.InvalidExecutionInputError(f"not JSON: {exc}") from None
        try:
            check_secret_free(value, "the input")
        except PlaintextSecretError as exc:
            raise errors.InvalidExecutionInputError(str(exc)) from None
        key = execution_key(state_machine, name)
        now = self.driver.clock.time()
        interpreter = Interpreter(compiled)
        state = interpreter.new_execution(
            arn=execution_arn(state_machine, name),
            name=name,
            state_machine_name=state_machine,
            state_machine_arn=state_machine_arn(state_machine),
            input_value=value,
            now=now,
            role_arn=role_arn,
        )
        step = interpreter.start(state, now, begin=False)
        if not self.driver.create(key, compiled, state, step):
            return self._existing(key, state, compiled)
        self.driver.queue.send(self.driver.queue_name, begin_message(key))
        return describe_state(state)

    def _existing(self, key: str, wanted: core.ExecutionState, definition: Definition) -> Execution:
        loaded = self.driver.load(key)
        if loaded is None:  # deleted in between: extremely unlikely; let the caller retry
            raise errors.ExecutionAlreadyExistsError(wanted.arn, "it was being replaced; try again")
        current = loaded.state
        if current.arn != wanted.arn:
            raise errors.ExecutionAlreadyExistsError(wanted.arn, "its name collides with another")
        if loaded.definition.digest != definition.digest:
            raise errors.ExecutionAlreadyExistsError(wanted.arn, "it runs a different definition")
        if current.input != wanted.input:
            raise errors.ExecutionAlreadyExistsError(
                wanted.arn, "it was started with a different input"
            )
        if current.status == core.RUNNING and not current.begun:
            self.driver.queue.send(self.driver.queue_name, begin_message(key))
        return describe_state(current)

    def describe(self, arn: str) -> Execution:
        return describe_state(self._load(arn).state)

    def history(self, arn: str) -> list[dict[str, Any]]:
        self._load(arn)
        return self.driver.history(self._key(arn))

    def stop(self, arn: str, error: str | None = None, cause: str | None = None) -> Execution:
        """Abort a running execution (ExecutionAborted). Stopping an ended one changes nothing."""
        self._load(arn)
        self.driver.deliver(
            self._key(arn), {"type": "stop", "error": error, "cause": cause}, inline=False
        )
        return self.describe(arn)

    def redrive(self, arn: str) -> Execution:
        """Restart a FAILED, TIMED_OUT or ABORTED execution from the state where it stopped."""
        self._load(arn)
        step, _ = self.driver.deliver(self._key(arn), {"type": "redrive"}, inline=False)
        if step.stale:
            raise errors.ExecutionNotRedrivableError(arn, step.reason)
        return self.describe(arn)

    def list_executions(
        self, state_machine: str | None = None, status: str | None = None
    ) -> list[Execution]:
        """Executions, newest first, optionally of one state machine and/or one status."""
        found: list[Execution] = []
        for key in iter_execution_keys(self.driver.store, state_machine):
            loaded = self.driver.load(key)
            if loaded is None:
                continue
            state = loaded.state
            if state_machine is not None and state.state_machine_name != state_machine:
                continue
            if status is not None and state.status != status:
                continue
            found.append(describe_state(state))
        found.sort(key=lambda e: e.start_date, reverse=True)
        return found

    def send_task_success(self, token: str, output: Any) -> None:
        try:
            json.dumps(output, allow_nan=False)
            check_secret_free(output, "the output")
        except (TypeError, ValueError) as exc:
            raise errors.InvalidTaskOutputError(str(exc)) from None
        self._callback(token, {"type": "callback", "token": token, "ok": True, "output": output})

    def send_task_failure(
        self, token: str, error: str | None = None, cause: str | None = None
    ) -> None:
        self._callback(
            token,
            {
                "type": "callback",
                "token": token,
                "ok": False,
                "error": error or "",
                "cause": cause or "",
            },
        )

    def send_task_heartbeat(self, token: str) -> None:
        self._callback(token, {"type": "heartbeat", "token": token})

    def _callback(self, token: str, event: dict[str, Any]) -> None:
        parts = core.parse_token(token)
        if parts is None:
            raise errors.TaskDoesNotExistError("not a task token of this engine")
        key = key_for_arn(parts.execution_arn)
        if key is None:
            raise errors.TaskDoesNotExistError("the token names no execution")
        try:
            step, _ = self.driver.deliver(key, event, inline=False)
        except errors.ExecutionDoesNotExistError:
            raise errors.TaskDoesNotExistError("its execution does not exist") from None
        if step.stale:
            raise errors.TaskTimedOutError(step.reason)
