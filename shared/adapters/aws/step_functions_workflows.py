"""The Workflows port on AWS Step Functions (boto3 `stepfunctions`).

`state_machine` "provision_instance" is the state machine `<arn prefix>provision_instance`; the
SAM template names them `${StackName}-<definition>` and gives the prefix to every function.

Where Step Functions differs from the embedded engine (shared/adapters/local/workflows.py),
and what this adapter does about it:

- A repeated start: AWS returns the running execution for the same name and input, but answers
  ExecutionAlreadyExists once it has ended. The engine returns the execution either way, so
  here an existing execution of that name with the same input (compared as JSON) is returned
  too; a different input raises ExecutionAlreadyExistsError, as in the engine. (The engine also
  refuses a name reused with another definition; AWS keeps no digest to compare, so this cannot.)
- Inputs are sent as canonical JSON (sorted keys), so AWS's own comparison of a running
  execution's input text sees equal values as equal.
- `describe` returns the engine's shape (`shared.models.execution.Execution` as JSON), with the
  state machine's name without the prefix.
- AWS errors become the engine's (`shared/engine/errors.py`): an unknown or malformed token
  TaskDoesNotExistError, a task no longer waiting TaskTimedOutError, which callers treat as "the
  wait ended". Anything else (throttling, permissions) stays a botocore ClientError so that it
  is never mistaken for that.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from shared.engine import errors
from shared.engine.names import check_name
from shared.errors import NotFoundError
from shared.models.execution import Execution
from shared.ports import JSON

STATE_MACHINE_MARKER = ":stateMachine:"
# SendTaskFailure's limits; longer text would be refused (ValidationException) with the answer.
MAX_ERROR_CHARS = 256
MAX_CAUSE_CHARS = 32768


def make_step_functions_client(
    endpoint_url: str | None = None,
    *,
    region: str = "us-east-1",
    access_key: str | None = None,
    secret_key: str | None = None,
) -> Any:
    """A boto3 Step Functions client; without keys boto3's usual credential chain applies."""
    return boto3.client(
        "stepfunctions",
        endpoint_url=endpoint_url,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        config=Config(region_name=region, retries={"mode": "standard", "max_attempts": 5}),
    )


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _message(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Message", ""))


def _canonical_json(value: JSON) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _parse(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        # moto 5.2.5 returns a string output unquoted; AWS always returns JSON text.
        return text


def _execution_arn(state_machine_arn: str, name: str) -> str:
    head, marker, machine = state_machine_arn.partition(STATE_MACHINE_MARKER)
    return f"{head}:execution:{machine}:{name}" if marker else ""


def _token_error(exc: ClientError) -> Exception | None:
    """The engine's error for an answer AWS refused; None when it is not about the token."""
    code = _code(exc)
    if code == "TaskTimedOut":
        return errors.TaskTimedOutError(_message(exc) or code)
    if code in ("TaskDoesNotExist", "InvalidToken"):
        return errors.TaskDoesNotExistError(_message(exc) or code)
    if code == "InvalidOutput":
        return errors.InvalidTaskOutputError(_message(exc) or code)
    return None


class StepFunctionsWorkflows:
    """Workflows on Step Functions; see the module docstring for where it differs."""

    def __init__(self, client: Any, state_machine_arn_prefix: str) -> None:
        if STATE_MACHINE_MARKER not in state_machine_arn_prefix:
            raise ValueError(
                f"not a state machine ARN prefix (no {STATE_MACHINE_MARKER!r}): "
                f"{state_machine_arn_prefix!r}"
            )
        self.client = client
        self.prefix = state_machine_arn_prefix
        self._machine_name_prefix = state_machine_arn_prefix.partition(STATE_MACHINE_MARKER)[2]

    def state_machine_arn(self, state_machine: str) -> str:
        return self.prefix + state_machine

    # ------------------------------------------------------------------ the port
    def start(self, state_machine: str, input_value: JSON, *, name: str | None = None) -> str:
        machine_arn = self.state_machine_arn(state_machine)
        value = {} if input_value is None else input_value
        try:
            text = _canonical_json(value)
        except (TypeError, ValueError) as exc:
            raise errors.InvalidExecutionInputError(f"not JSON: {exc}") from None
        # A name of our own when none is given, as AWS would make (moto would name it "None").
        execution_name = str(uuid.uuid4()) if name is None else name
        # The engine's name rule (AWS's), checked here too: moto does not check every character.
        check_name("execution name", execution_name)
        try:
            answer = self.client.start_execution(
                stateMachineArn=machine_arn, name=execution_name, input=text
            )
        except ClientError as exc:
            code = _code(exc)
            if code == "ExecutionAlreadyExists" and name is not None:
                return self._existing(machine_arn, name, value)
            if code == "StateMachineDoesNotExist":
                raise NotFoundError(machine_arn, "state machine") from None
            if code == "InvalidName":
                raise errors.InvalidNameError(
                    "execution name", execution_name, _message(exc)
                ) from None
            if code == "InvalidExecutionInput":
                raise errors.InvalidExecutionInputError(_message(exc)) from None
            raise
        return str(answer["executionArn"])

    def _existing(self, machine_arn: str, name: str, value: JSON) -> str:
        arn = _execution_arn(machine_arn, name)
        try:
            described = self.client.describe_execution(executionArn=arn)
        except ClientError as exc:
            if _code(exc) == "ExecutionDoesNotExist":
                raise errors.ExecutionAlreadyExistsError(arn, _message(exc)) from None
            raise
        if _parse(described.get("input")) != value:
            raise errors.ExecutionAlreadyExistsError(arn, "it was started with a different input")
        return arn

    def describe(self, execution_arn: str) -> JSON:
        try:
            described = self.client.describe_execution(executionArn=execution_arn)
        except ClientError as exc:
            if _code(exc) in ("ExecutionDoesNotExist", "InvalidArn"):
                raise errors.ExecutionDoesNotExistError(execution_arn) from None
            raise
        machine = str(described["stateMachineArn"]).partition(STATE_MACHINE_MARKER)[2]
        status = str(described["status"])
        execution = Execution(
            arn=str(described["executionArn"]),
            state_machine_name=machine.removeprefix(self._machine_name_prefix) or machine,
            name=str(described["name"]),
            status=status,  # validated into ExecutionStatus
            input=_parse(described.get("input")),
            output=_parse(described.get("output")) if status == "SUCCEEDED" else None,
            error=described.get("error"),
            cause=described.get("cause"),
            start_date=described["startDate"],
            stop_date=described.get("stopDate"),
            redrive_count=int(described.get("redriveCount", 0)),
        )
        return execution.model_dump(mode="json")

    def send_task_success(self, task_token: str, output: JSON) -> None:
        try:
            text = json.dumps(output, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise errors.InvalidTaskOutputError(str(exc)) from None
        try:
            self.client.send_task_success(taskToken=task_token, output=text)
        except ClientError as exc:
            mapped = _token_error(exc)
            if mapped is None:
                raise
            raise mapped from None

    def send_task_failure(self, task_token: str, error: str, cause: str) -> None:
        try:
            self.client.send_task_failure(
                taskToken=task_token, error=error[:MAX_ERROR_CHARS], cause=cause[:MAX_CAUSE_CHARS]
            )
        except ClientError as exc:
            mapped = _token_error(exc)
            if mapped is None:
                raise
            raise mapped from None

    def send_task_heartbeat(self, task_token: str) -> None:
        try:
            self.client.send_task_heartbeat(taskToken=task_token)
        except ClientError as exc:
            mapped = _token_error(exc)
            if mapped is None:
                raise
            raise mapped from None
