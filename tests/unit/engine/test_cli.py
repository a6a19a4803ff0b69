"""`troveless sfn validate` and `troveless sfn run` (in-memory; the durable mode has an
integration test on the real local adapters)."""

import json
import sys

import pytest
from typer.testing import CliRunner

from infra.cli.main import app

runner = CliRunner()

GOOD = {
    "StartAt": "Double",
    "States": {
        "Double": {"Type": "Task", "Resource": "fn:double", "Next": "Check"},
        "Check": {
            "Type": "Choice",
            "Choices": [{"Variable": "$", "NumericGreaterThan": 10, "Next": "Big"}],
            "Default": "Small",
        },
        "Big": {"Type": "Succeed"},
        "Small": {"Type": "Fail", "Error": "TooSmall", "Cause": "need more than 10"},
    },
}


def double(value):
    return value * 2


@pytest.fixture
def definition_file(tmp_path):
    path = tmp_path / "flow.asl.json"
    path.write_text(json.dumps(GOOD))
    return path


def run_cli(*args):
    return runner.invoke(app, ["sfn", *args])


def test_validate_valid(definition_file):
    result = run_cli("validate", str(definition_file))
    assert result.exit_code == 0
    assert "valid (4 states)" in result.output


def test_validate_lists_every_problem_with_pointers(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"StartAt": "A", "States": {"A": {"Type": "Pass", "Nxt": "B"}}}))
    result = run_cli("validate", str(path))
    assert result.exit_code == 1
    assert "/States/A/Nxt: unknown field 'Nxt'" in result.output
    assert "/States/A: a Pass state needs Next or End: true" in result.output
    assert "Traceback" not in result.output


def test_validate_unreadable_and_not_json(tmp_path):
    assert run_cli("validate", str(tmp_path / "missing.json")).exit_code == 2
    path = tmp_path / "broken.json"
    path.write_text("{nope")
    result = run_cli("validate", str(path))
    assert result.exit_code == 1
    assert "not valid JSON" in result.output


def test_run_prints_output_and_exits_zero(definition_file):
    result = run_cli(
        "run", str(definition_file), "--input", "6", "--resource", f"fn:double={__name__}:double"
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == 12


def test_run_failure_prints_error_and_cause(definition_file):
    result = run_cli(
        "run", str(definition_file), "--input", "2", "-r", f"fn:double={__name__}:double"
    )
    assert result.exit_code == 1
    assert json.loads(result.stdout) == {
        "status": "FAILED",
        "error": "TooSmall",
        "cause": "need more than 10",
    }


def test_run_without_resource_fails_the_task_cleanly(definition_file):
    result = run_cli("run", str(definition_file), "--input", "2")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["error"] == "States.TaskFailed"
    assert "fn:double" in report["cause"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--input", "{oops"], "not valid JSON"),
        (["--resource", "nonsense"], "NAME=module:callable"),
        (["--resource", "fn:x=no_such_module_xyz:f"], "cannot import"),
        (["--resource", f"fn:x={__name__}:nothing_here"], "has no"),
        (["--name", "bad name"], "invalid execution name"),
    ],
)
def test_run_usage_errors(definition_file, args, message):
    result = run_cli("run", str(definition_file), *args)
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_run_rejects_an_invalid_definition(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"StartAt": "A", "States": {}}))
    result = run_cli("run", str(path))
    assert result.exit_code == 2
    assert "/States" in result.output


def test_run_input_file_and_history(tmp_path, definition_file):
    data = tmp_path / "input.json"
    data.write_text("7")
    result = run_cli(
        "run",
        str(definition_file),
        "--input-file",
        str(data),
        "--history",
        "-r",
        f"fn:double={__name__}:double",
    )
    assert result.exit_code == 0
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert lines[0]["type"] == "ExecutionStarted"
    assert lines[-1]["type"] == "ExecutionSucceeded"


def test_run_durable_in_a_temporary_directory(definition_file):
    result = run_cli(
        "run",
        str(definition_file),
        "--input",
        "6",
        "--durable",
        "-r",
        f"fn:double={__name__}:double",
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == 12


def test_module_is_importable_by_name():
    # The --resource specs above import this module by its dotted name.
    assert sys.modules[__name__].double(2) == 4


def ignore(payload):
    return None


def test_run_durable_timeout_stops_a_waiting_execution(tmp_path):
    path = tmp_path / "callback.json"
    path.write_text(
        json.dumps(
            {
                "StartAt": "Ask",
                "States": {
                    "Ask": {"Type": "Task", "Resource": "fn:ask.waitForTaskToken", "End": True}
                },
            }
        )
    )
    result = run_cli(
        "run", str(path), "--durable", "--timeout", "0.3", "-r", f"fn:ask={__name__}:ignore"
    )
    assert result.exit_code == 1
    assert json.loads(result.stdout)["status"] == "ABORTED"
