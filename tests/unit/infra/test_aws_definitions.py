"""infra/aws/definitions.py: our `fn:` Task resources rewritten for Step Functions."""

from __future__ import annotations

import copy
import json

import pytest

from infra.aws.definitions import (
    LAMBDA_INVOKE_CALLBACK,
    LAMBDA_SERVICE_ERRORS,
    DefinitionRewriteError,
    TaskResource,
    arn_variable,
    function_logical_id,
    lambda_function_name,
    load_definitions,
    parse_task_resource,
    rewrite_for_step_functions,
    state_machine_logical_id,
    substitution_arn,
    task_functions,
    write_step_functions_definitions,
)
from shared.engine import load_definition
from shared.settings import REPO_ROOT

STATE_MACHINES = REPO_ROOT / "state_machines"


def fake_arn(function: str) -> str:
    return f"arn:aws:lambda:us-east-1:123456789012:function:{lambda_function_name(function)}"


CONTEXT_TEMPLATE = {
    "execution_arn.$": "$$.Execution.Id",
    "state_name.$": "$$.State.Name",
    "entered_time.$": "$$.State.EnteredTime",
    "attempt.$": "$$.State.RetryCount",
}


@pytest.mark.parametrize(
    ("resource", "expected"),
    [
        ("fn:instance_tasks.create_server", TaskResource("instance_tasks.create_server", False)),
        (
            "fn:instance_tasks.send_guest_command.waitForTaskToken",
            TaskResource("instance_tasks.send_guest_command", True),
        ),
        ("arn:aws:lambda:us-east-1:123456789012:function:x", None),
        ("arn:aws:states:::lambda:invoke", None),
    ],
)
def test_parse_task_resource(resource: str, expected: TaskResource | None) -> None:
    assert parse_task_resource(resource) == expected


@pytest.mark.parametrize(
    "resource", ["fn:tasks.run.sync", "fn:tasks.run.sync:2", "fn:nomodule", "fn:a.b.c", "fn:.b"]
)
def test_unexpressible_resources_are_refused(resource: str) -> None:
    with pytest.raises(DefinitionRewriteError):
        parse_task_resource(resource)


def test_names_derived_from_a_function() -> None:
    function = "instance_tasks.create_server"
    assert function_logical_id(function) == "InstanceTasksCreateServerFunction"
    assert arn_variable(function) == "InstanceTasksCreateServerArn"
    assert substitution_arn(function) == "${InstanceTasksCreateServerArn}"
    assert lambda_function_name(function, "stack-") == "stack-instance_tasks-create_server"
    assert state_machine_logical_id("provision_instance") == "ProvisionInstanceStateMachine"


def machine(**task: object) -> dict[str, object]:
    state = {"Type": "Task", "End": True, **task}
    return {"StartAt": "T", "States": {"T": state}}


def test_a_plain_task_calls_its_function_directly_with_an_envelope() -> None:
    definition = machine(
        Resource="fn:instance_tasks.create_server",
        Parameters={"instance_id.$": "$.instance_id"},
        ResultPath="$.server",
        Retry=[{"ErrorEquals": ["States.ALL"], "MaxAttempts": 5}],
        Catch=[{"ErrorEquals": ["States.ALL"], "Next": "T"}],
    )
    original = copy.deepcopy(definition)

    state = rewrite_for_step_functions(definition, fake_arn)["States"]["T"]

    assert definition == original  # pure: the input is not touched
    assert state["Resource"] == fake_arn("instance_tasks.create_server")
    assert state["Parameters"] == {
        "payload": {"instance_id.$": "$.instance_id"},
        "context": {"resource": "fn:instance_tasks.create_server", **CONTEXT_TEMPLATE},
    }
    assert state["ResultPath"] == "$.server"
    assert state["Catch"] == original["States"]["T"]["Catch"]  # type: ignore[index]
    # Lambda's transient errors are retried first; the definition's retriers follow, in order.
    assert state["Retry"][0]["ErrorEquals"] == LAMBDA_SERVICE_ERRORS
    assert state["Retry"][1:] == [{"ErrorEquals": ["States.ALL"], "MaxAttempts": 5}]


def test_a_task_without_parameters_sends_its_whole_input() -> None:
    state = rewrite_for_step_functions(machine(Resource="fn:m.f"), fake_arn)["States"]["T"]
    assert state["Parameters"]["payload.$"] == "$"
    assert "payload" not in state["Parameters"]


def test_a_callback_task_uses_the_lambda_integration_and_passes_the_token() -> None:
    definition = machine(
        Resource="fn:instance_tasks.send_guest_command.waitForTaskToken",
        Parameters={"command": "restart", "token.$": "$$.Task.Token"},
        TimeoutSeconds=180,
    )
    state = rewrite_for_step_functions(definition, fake_arn)["States"]["T"]
    assert state["Resource"] == LAMBDA_INVOKE_CALLBACK
    assert state["TimeoutSeconds"] == 180
    assert state["Parameters"] == {
        "FunctionName": fake_arn("instance_tasks.send_guest_command"),
        "Payload": {
            "payload": {"command": "restart", "token.$": "$$.Task.Token"},
            "context": {
                "resource": "fn:instance_tasks.send_guest_command",
                **CONTEXT_TEMPLATE,
                "task_token.$": "$$.Task.Token",
            },
        },
    }


def test_tasks_inside_parallel_and_map_states_are_rewritten() -> None:
    definition = {
        "StartAt": "P",
        "States": {
            "P": {
                "Type": "Parallel",
                "Next": "M",
                "Branches": [
                    {
                        "StartAt": "A",
                        "States": {"A": {"Type": "Task", "Resource": "fn:m.a", "End": True}},
                    }
                ],
            },
            "M": {
                "Type": "Map",
                "End": True,
                "ItemProcessor": {
                    "StartAt": "B",
                    "States": {"B": {"Type": "Task", "Resource": "fn:m.b", "End": True}},
                },
            },
        },
    }
    assert task_functions(definition) == ["m.a", "m.b"]
    rewritten = rewrite_for_step_functions(definition, fake_arn)
    branch = rewritten["States"]["P"]["Branches"][0]["States"]["A"]
    assert branch["Resource"] == fake_arn("m.a")
    assert rewritten["States"]["M"]["ItemProcessor"]["States"]["B"]["Resource"] == fake_arn("m.b")


def test_other_states_and_resources_are_left_alone() -> None:
    definition = {
        "StartAt": "A",
        "States": {
            "A": {"Type": "Task", "Resource": "arn:aws:states:::sqs:sendMessage", "Next": "W"},
            "W": {"Type": "Wait", "Seconds": 1, "Next": "F"},
            "F": {"Type": "Fail", "Error": "X"},
        },
    }
    assert rewrite_for_step_functions(definition, fake_arn) == definition


@pytest.mark.parametrize("name", sorted(load_definitions(STATE_MACHINES)))
def test_every_rewritten_definition_is_still_valid_asl(name: str) -> None:
    definition = load_definitions(STATE_MACHINES)[name]
    assert task_functions(definition), f"{name} calls no task function"
    rewritten = rewrite_for_step_functions(definition, fake_arn)
    load_definition(rewritten)  # our validator: raises DefinitionError when broken
    resources = [s["Resource"] for s in rewritten["States"].values() if s.get("Type") == "Task"]
    assert all(r.startswith("arn:aws:") for r in resources)


def test_written_definitions_carry_one_placeholder_per_function(tmp_path) -> None:
    written = write_step_functions_definitions(STATE_MACHINES, tmp_path)
    assert sorted(p.name for p in written) == sorted(
        p.name for p in STATE_MACHINES.glob("*.asl.json")
    )
    for path in written:
        text = path.read_text()
        source = json.loads((STATE_MACHINES / path.name).read_text())
        for function in task_functions(source):
            assert substitution_arn(function) in text
        assert '"Resource": "fn:' not in text
