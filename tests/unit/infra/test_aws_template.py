"""infra/aws/template.yaml: generated, up to date, complete, and clean under cfn-lint."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.aws.build import CODE_PACKAGES, build, runtime_requirements
from infra.aws.definitions import (
    arn_variable,
    function_logical_id,
    load_definitions,
    state_machine_logical_id,
    task_functions,
)
from infra.aws.template import (
    BACKUPS_PREFIX,
    ENTRY_FUNCTIONS,
    GUEST_COMMAND_QUEUE_PREFIX,
    GUEST_EVENTS,
    TASK_FUNCTION_ENV,
    TASK_HANDLER,
    TEMPLATE_PATH,
    render,
)
from shared.settings import REPO_ROOT

STATE_MACHINES = REPO_ROOT / "state_machines"
FUNCTIONS_DIR = REPO_ROOT / "functions"
# cfn-lint's exit code is a bit mask: 1 fatal, 2 error, 4 warning, 8 informational.
CFN_LINT_FAILURE_BITS = 1 | 2


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    # The generator writes intrinsics in long form (`{"Ref": ...}`), so plain YAML reads them.
    loaded: dict[str, Any] = yaml.safe_load(TEMPLATE_PATH.read_text())
    return loaded


def resources_of(template: dict[str, Any], kind: str) -> dict[str, Any]:
    return {k: v for k, v in template["Resources"].items() if v["Type"] == kind}


def test_the_committed_template_is_what_the_generator_writes() -> None:
    assert TEMPLATE_PATH.read_text() == render(), (
        "infra/aws/template.yaml is stale: run `python -m infra.aws.template`"
    )


@pytest.mark.slow  # cfn-lint loads its schemas: 3-7 s
def test_cfn_lint_finds_no_errors() -> None:
    cfn_lint = Path(sys.executable).with_name("cfn-lint")
    result = subprocess.run(
        [str(cfn_lint), "--format", "json", str(TEMPLATE_PATH)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    problems = json.loads(result.stdout or "[]")
    errors = [p for p in problems if p.get("Level") == "Error"]
    assert not (result.returncode & CFN_LINT_FAILURE_BITS), (errors, result.stderr[-2000:])
    assert errors == []


def test_every_state_machine_has_its_resource(template: dict[str, Any]) -> None:
    machines = resources_of(template, "AWS::Serverless::StateMachine")
    definitions = load_definitions(STATE_MACHINES)
    assert set(machines) == {state_machine_logical_id(name) for name in definitions}
    for name, definition in definitions.items():
        properties = machines[state_machine_logical_id(name)]["Properties"]
        assert properties["DefinitionUri"].endswith(f"/{name}.asl.json")
        functions = task_functions(definition)
        substitutions = properties["DefinitionSubstitutions"]
        assert set(substitutions) == {arn_variable(f) for f in functions}
        for function in functions:
            assert substitutions[arn_variable(function)] == {
                "Fn::GetAtt": [function_logical_id(function), "Arn"]
            }
        invocable = [p["LambdaInvokePolicy"]["FunctionName"]["Ref"] for p in properties["Policies"]]
        assert sorted(invocable) == sorted(function_logical_id(f) for f in functions)


def test_every_task_function_has_its_lambda(template: dict[str, Any]) -> None:
    lambdas = resources_of(template, "AWS::Serverless::Function")
    needed = {f for d in load_definitions(STATE_MACHINES).values() for f in task_functions(d)}
    deployed = {
        v["Properties"]["Environment"]["Variables"][TASK_FUNCTION_ENV]: k
        for k, v in lambdas.items()
        if v["Properties"]["Handler"] == TASK_HANDLER
    }
    assert set(deployed) == needed
    for function, logical_id in deployed.items():
        assert logical_id == function_logical_id(function)


def _handler_modules() -> set[str]:
    """functions/*.py modules with a Lambda-style `handler`: each needs a template entry."""
    found = set()
    for path in FUNCTIONS_DIR.glob("*.py"):
        module = importlib.import_module(f"functions.{path.stem}")
        if callable(getattr(module, "handler", None)):
            found.add(f"functions.{path.stem}.handler")
    return found


def test_every_handler_module_is_deployed(template: dict[str, Any]) -> None:
    handlers = {
        v["Properties"]["Handler"]
        for v in resources_of(template, "AWS::Serverless::Function").values()
    }
    assert _handler_modules() <= handlers
    assert {e.handler for e in ENTRY_FUNCTIONS} <= handlers
    for handler in handlers:
        module, _, attribute = handler.rpartition(".")
        assert callable(getattr(importlib.import_module(module), attribute))


def test_triggers(template: dict[str, Any]) -> None:
    functions = template["Resources"]
    guest_events = functions[GUEST_EVENTS.logical_id]["Properties"]["Events"]["GuestEvents"]
    assert guest_events["Type"] == "SQS"
    assert guest_events["Properties"]["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    queue = functions["GuestEventsQueue"]["Properties"]
    assert queue["RedrivePolicy"]["deadLetterTargetArn"] == {
        "Fn::GetAtt": ["GuestEventsDeadLetterQueue", "Arn"]
    }
    for timer in ("BackupSchedulerFunction", "HeartbeatWatchdogFunction"):
        [event] = functions[timer]["Properties"]["Events"].values()
        assert event["Type"] == "Schedule"
    api_events = functions["ApiFunction"]["Properties"]["Events"].values()
    assert {e["Properties"]["Path"] for e in api_events} == {"/", "/{proxy+}"}


def test_policies_name_only_this_stacks_resources(template: dict[str, Any]) -> None:
    for name, policy in resources_of(template, "AWS::IAM::ManagedPolicy").items():
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            assert not any(action.endswith("*") for action in statement["Action"]), name
            if statement["Resource"] == "*":
                # Only read-only EC2 Describe calls, which have no resource-level permissions.
                assert all(a.startswith("ec2:Describe") for a in statement["Action"]), name


def test_only_task_functions_may_touch_servers(template: dict[str, Any]) -> None:
    for logical_id, function in resources_of(template, "AWS::Serverless::Function").items():
        policies = {p["Ref"] for p in function["Properties"]["Policies"]}
        is_task = function["Properties"]["Handler"] == TASK_HANDLER
        assert ("ComputePolicy" in policies) == is_task, logical_id
        assert {"StorePolicy", "QueuesPolicy", "WorkflowsPolicy"} <= policies


def _statements(template: dict[str, Any], policy: str) -> dict[str, dict[str, Any]]:
    document = template["Resources"][policy]["Properties"]["PolicyDocument"]
    return {statement["Sid"]: statement for statement in document["Statement"]}


def test_guests_get_an_instance_profile_of_least_privilege(template: dict[str, Any]) -> None:
    resources = template["Resources"]
    role = resources["GuestRole"]["Properties"]
    [trust] = role["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"Service": "ec2.amazonaws.com"}
    assert trust["Action"] == ["sts:AssumeRole"]
    assert role["ManagedPolicyArns"] == [{"Ref": "GuestPolicy"}]
    assert "Policies" not in role
    profile = resources["GuestInstanceProfile"]
    assert profile["Type"] == "AWS::IAM::InstanceProfile"
    assert profile["Properties"]["Roles"] == [{"Ref": "GuestRole"}]
    environment = template["Globals"]["Function"]["Environment"]["Variables"]
    assert environment["TROVELESS_AWS_GUEST_INSTANCE_PROFILE"] == {
        "Fn::GetAtt": ["GuestInstanceProfile", "Arn"]
    }

    statements = _statements(template, "GuestPolicy")
    # Queues: receive from the command queues, send to the events queue, nothing else.
    commands = statements["OwnCommands"]
    assert commands["Resource"] == {
        "Fn::Sub": "arn:${AWS::Partition}:sqs:${AWS::Region}:${AWS::AccountId}:"
        "${QueuePrefix}" + GUEST_COMMAND_QUEUE_PREFIX + "*"
    }
    assert "sqs:SendMessage" not in commands["Action"]
    assert statements["SendEvents"]["Resource"] == {"Fn::GetAtt": ["GuestEventsQueue", "Arn"]}
    assert statements["SendEvents"]["Action"] == ["sqs:GetQueueUrl", "sqs:SendMessage"]
    # The bucket: only under the backups prefix; deletes only of staged uploads.
    assert statements["ListBackups"]["Condition"] == {
        "StringLike": {"s3:prefix": [BACKUPS_PREFIX + "*"]}
    }
    backups = "${StateBucket.Arn}/" + BACKUPS_PREFIX
    assert statements["ReadWriteBackups"]["Resource"] == {"Fn::Sub": backups + "*"}
    assert "s3:DeleteObject" not in statements["ReadWriteBackups"]["Action"]
    assert statements["CleanStagedUploads"]["Resource"] == {"Fn::Sub": backups + "staging/*"}
    services = {a.split(":")[0] for st in statements.values() for a in st["Action"]}
    assert services == {"sqs", "s3"}  # no EC2, Step Functions, Secrets Manager or IAM
    # The guest role is attached to no function.
    for function in resources_of(template, "AWS::Serverless::Function").values():
        assert {"Ref": "GuestPolicy"} not in function["Properties"]["Policies"]


def test_task_functions_may_pass_only_the_guest_role_to_ec2(template: dict[str, Any]) -> None:
    passing = [
        st
        for st in _statements(template, "ComputePolicy").values()
        if "iam:PassRole" in st["Action"]
    ]
    assert passing == [
        {
            "Sid": "PassGuestRole",
            "Effect": "Allow",
            "Action": ["iam:PassRole"],
            "Resource": {"Fn::GetAtt": ["GuestRole", "Arn"]},
            "Condition": {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}},
        }
    ]


def test_build_writes_definitions_and_code(tmp_path: Path) -> None:
    written = build(tmp_path)
    names = {p.name for p in written}
    assert {p.name for p in STATE_MACHINES.glob("*.asl.json")} <= names
    for package in CODE_PACKAGES:
        assert (tmp_path / "src" / package / "__init__.py").exists()
    assert (tmp_path / "src" / "functions" / "lambda_tasks.py").exists()
    assert not list((tmp_path / "src").rglob("__pycache__"))
    requirements = (tmp_path / "src" / "requirements.txt").read_text().splitlines()
    assert requirements == runtime_requirements(REPO_ROOT / "pyproject.toml")
    assert any(r.startswith("boto3") for r in requirements)
