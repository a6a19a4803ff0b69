"""StepFunctionsWorkflows against a real moto server running Step Functions executions.

One state machine waits for a callback (lambda:invoke.waitForTaskToken on moto's echo
function): the tests read its task token from the execution history, answer it through the
adapter, and check what DescribeExecution says through the adapter, in the engine's shape.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest

from shared.adapters.aws.step_functions_workflows import StepFunctionsWorkflows
from shared.engine import errors
from shared.errors import NotFoundError, TrovelessError
from shared.models.execution import Execution
from shared.ports import Workflows
from tests.integration.moto_sfn import (
    ACCOUNT_ID,
    ECHO_FUNCTION_ARN,
    REGION,
    ROLE_ARN,
    MotoStepFunctions,
    wait_for,
)

pytestmark = pytest.mark.slow  # a moto server of its own (Step Functions execution on)

STACK = "tltest"
PREFIX = f"arn:aws:states:{REGION}:{ACCOUNT_ID}:stateMachine:{STACK}-"
MACHINE = "wait_for_answer"
TIMEOUT = 20.0
WAIT_FOR_ANSWER = {
    "StartAt": "Ask",
    "States": {
        "Ask": {
            "Type": "Task",
            "Resource": "arn:aws:states:::lambda:invoke.waitForTaskToken",
            "Parameters": {
                "FunctionName": ECHO_FUNCTION_ARN,
                "Payload": {"token.$": "$$.Task.Token", "input.$": "$"},
            },
            "HeartbeatSeconds": 300,
            "ResultPath": "$.answer",
            "End": True,
        }
    },
}


@pytest.fixture(scope="module")
def server() -> Iterator[MotoStepFunctions]:
    with MotoStepFunctions.start() as running:
        yield running


@pytest.fixture(scope="module")
def sfn(server: MotoStepFunctions) -> Any:
    client = boto3.client(
        "stepfunctions",
        endpoint_url=server.endpoint,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    client.create_state_machine(
        name=f"{STACK}-{MACHINE}", definition=json.dumps(WAIT_FOR_ANSWER), roleArn=ROLE_ARN
    )
    return client


@pytest.fixture
def workflows(sfn: Any) -> StepFunctionsWorkflows:
    return StepFunctionsWorkflows(sfn, PREFIX)


def _name() -> str:
    return f"run-{uuid.uuid4().hex}"


def task_token(sfn: Any, workflows: StepFunctionsWorkflows, execution_arn: str) -> str:
    """The token of the execution's callback task, once Step Functions waits on it.

    moto readies a task's heartbeat just after TaskStarted, and an answer sent before that may
    be lost (the execution never ends): waiting is over once a heartbeat is taken.
    """

    def scheduled() -> str | None:
        token = None
        for event in sfn.get_execution_history(executionArn=execution_arn)["events"]:
            if event["type"] == "TaskScheduled":
                parameters = json.loads(event["taskScheduledEventDetails"]["parameters"])
                token = parameters["Payload"]["token"]
            elif token and event["type"] == "TaskStarted":
                return str(token)
        return None

    token = wait_for(scheduled, timeout=TIMEOUT, what=f"{execution_arn} to wait for its answer")

    def heartbeat_taken() -> bool | None:
        try:
            workflows.send_task_heartbeat(token)
        except errors.TaskDoesNotExistError:
            return None
        return True

    wait_for(heartbeat_taken, timeout=TIMEOUT, what=f"{execution_arn} to take heartbeats")
    return token


def ended(workflows: StepFunctionsWorkflows, execution_arn: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        described = workflows.describe(execution_arn)
        assert isinstance(described, dict)
        return None if described["status"] == "RUNNING" else described

    return wait_for(done, timeout=TIMEOUT, what=f"{execution_arn} to end")


def test_it_is_a_workflows_port(workflows: StepFunctionsWorkflows) -> None:
    port: Workflows = workflows
    assert port is workflows


def test_start_and_describe_a_running_execution(
    workflows: StepFunctionsWorkflows, sfn: Any
) -> None:
    name = _name()
    arn = workflows.start(MACHINE, {"instance_id": "i-1"}, name=name)
    assert arn == f"arn:aws:states:{REGION}:{ACCOUNT_ID}:execution:{STACK}-{MACHINE}:{name}"
    task_token(sfn, workflows, arn)
    described = workflows.describe(arn)
    # The engine's shape: exactly the fields of the Execution model, valid as one.
    assert isinstance(described, dict)
    assert set(described) == set(Execution.model_fields)
    Execution.model_validate(described)
    assert described["arn"] == arn
    assert described["name"] == name
    assert described["state_machine_name"] == MACHINE
    assert described["status"] == "RUNNING"
    assert described["input"] == {"instance_id": "i-1"}
    assert described["output"] is None
    assert described["stop_date"] is None
    assert described["start_date"].endswith("Z")


def test_answered_success_ends_with_the_answer_as_output(
    workflows: StepFunctionsWorkflows, sfn: Any
) -> None:
    arn = workflows.start(MACHINE, {"n": 1}, name=_name())
    token = task_token(sfn, workflows, arn)
    workflows.send_task_heartbeat(token)  # a waiting task takes heartbeats (again)
    workflows.send_task_success(token, {"prepared": True})
    described = ended(workflows, arn)
    assert described["status"] == "SUCCEEDED"
    assert described["output"] == {"n": 1, "answer": {"prepared": True}}
    assert described["stop_date"] is not None
    assert described["error"] is None


def test_answered_failure_fails_the_execution_with_the_error(
    workflows: StepFunctionsWorkflows, sfn: Any
) -> None:
    arn = workflows.start(MACHINE, {"n": 2}, name=_name())
    workflows.send_task_failure(task_token(sfn, workflows, arn), "GuestError", "disk full")
    described = ended(workflows, arn)
    assert described["status"] == "FAILED"
    assert described["error"] == "GuestError"
    assert described["output"] is None
    # moto 5.2.5 drops SendTaskFailure's cause (docs/aws.md), so it is not asserted here.


def test_starting_a_name_again_returns_the_same_execution(
    workflows: StepFunctionsWorkflows, sfn: Any
) -> None:
    name = _name()
    first = workflows.start(MACHINE, {"b": 1, "a": [1, 2]}, name=name)
    # Same value, keys in another order: the same input (sent as canonical JSON).
    assert workflows.start(MACHINE, {"a": [1, 2], "b": 1}, name=name) == first
    with pytest.raises(errors.ExecutionAlreadyExistsError, match="different input"):
        workflows.start(MACHINE, {"a": [1, 2], "b": 2}, name=name)
    workflows.send_task_success(task_token(sfn, workflows, first), {})
    assert ended(workflows, first)["status"] == "SUCCEEDED"
    # AWS refuses the name once the execution ended; the port (like the engine) returns it.
    assert workflows.start(MACHINE, {"a": [1, 2], "b": 1}, name=name) == first
    with pytest.raises(errors.ExecutionAlreadyExistsError):
        workflows.start(MACHINE, {"other": True}, name=name)
    listed = sfn.list_executions(stateMachineArn=PREFIX + MACHINE)["executions"]
    assert [e["executionArn"] for e in listed].count(first) == 1


def test_a_start_without_a_name_gets_a_new_execution_each_time(
    workflows: StepFunctionsWorkflows, sfn: Any
) -> None:
    first = workflows.start(MACHINE, {"x": 1})
    second = workflows.start(MACHINE, {"x": 1})
    assert first != second
    for arn in (first, second):
        workflows.send_task_failure(task_token(sfn, workflows, arn), "Cleanup", "test over")


def test_answers_to_no_waiting_task_are_engine_errors(
    workflows: StepFunctionsWorkflows, sfn: Any
) -> None:
    arn = workflows.start(MACHINE, {}, name=_name())
    token = task_token(sfn, workflows, arn)
    workflows.send_task_success(token, {"first": True})
    ended(workflows, arn)
    # Callers treat any TrovelessError as "the wait ended already" (guest events, watchdog).
    # (A late SendTaskFailure is not among them: moto 5.2.5 accepts it, AWS says TaskTimedOut.)
    answers: list[Callable[[], None]] = [
        lambda: workflows.send_task_success(token, {"again": True}),
        lambda: workflows.send_task_heartbeat(token),
        lambda: workflows.send_task_success("not-a-token", {}),
        lambda: workflows.send_task_failure("not-a-token", "Late", "too late"),
    ]
    for answer in answers:
        with pytest.raises((errors.TaskDoesNotExistError, errors.TaskTimedOutError)) as raised:
            answer()
        assert isinstance(raised.value, TrovelessError)


def test_unknown_executions_and_state_machines(workflows: StepFunctionsWorkflows) -> None:
    missing = f"arn:aws:states:{REGION}:{ACCOUNT_ID}:execution:{STACK}-{MACHINE}:nope"
    with pytest.raises(errors.ExecutionDoesNotExistError):
        workflows.describe(missing)
    with pytest.raises(NotFoundError):
        workflows.start("no_such_machine", {}, name=_name())


def test_bad_names_and_inputs_are_refused(workflows: StepFunctionsWorkflows) -> None:
    with pytest.raises(errors.InvalidNameError):
        workflows.start(MACHINE, {}, name="has space")
    with pytest.raises(errors.InvalidExecutionInputError):
        workflows.start(MACHINE, {"x": float("nan")}, name=_name())
    with pytest.raises(errors.InvalidTaskOutputError):
        workflows.send_task_success("any-token", {"x": object()})


def test_the_prefix_must_name_state_machines() -> None:
    with pytest.raises(ValueError, match="stateMachine"):
        StepFunctionsWorkflows(object(), "arn:aws:lambda:us-east-1:1:function:x-")
