"""Rewrite our state machine definitions for AWS Step Functions.

Our definitions name task functions, not ARNs: `"Resource": "fn:module.func"`, and
`fn:module.func.waitForTaskToken` for callback tasks. On AWS each task function is its own
Lambda function (infra/aws/template.yaml) running `functions.lambda_tasks.handler`, which
expects a task envelope (shared/engine/task_envelope.py). So every such Task becomes:

- `fn:module.func` -> `"Resource": <the function's ARN>` (direct Lambda invocation: the task's
  result is the function's return value and a failure's error name is its `errorType`, exactly
  what our Retry/Catch fields and ResultPaths expect), with
  `"Parameters": {"payload": <the original Parameters, or "$">, "context": <from $$>}`.
- `fn:module.func.waitForTaskToken` -> the Lambda integration
  `"Resource": "arn:aws:states:::lambda:invoke.waitForTaskToken"` with
  `"Parameters": {"FunctionName": <ARN>, "Payload": <the same envelope, plus $$.Task.Token>}`;
  the task's result is what SendTaskSuccess gives, as in the embedded engine.
- A Retry for Lambda's transient service errors goes first (AWS's advice for Lambda tasks);
  the definition's own retriers follow unchanged, so a trailing `States.ALL` stays last.

Everything else (other ARNs, Pass/Choice/Wait/...) is left as it is. The functions here are pure;
`python -m infra.aws.definitions --out DIR` writes the rewritten files for `sam build`, with
`${Variable}` placeholders that the template's DefinitionSubstitutions fill with function ARNs.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from shared.engine.task_envelope import CONTEXT, PAYLOAD, step_functions_context
from shared.ports import JSON

FUNCTION_PREFIX = "fn:"
CALLBACK_SUFFIX = ".waitForTaskToken"
UNSUPPORTED_SUFFIXES = (".sync", ".sync:2")
LAMBDA_INVOKE_CALLBACK = "arn:aws:states:::lambda:invoke.waitForTaskToken"
DEFINITION_SUFFIX = ".asl.json"
LAMBDA_SERVICE_ERRORS = [
    "Lambda.ServiceException",
    "Lambda.AWSLambdaException",
    "Lambda.SdkClientException",
    "Lambda.TooManyRequestsException",
]
LAMBDA_SERVICE_RETRY: JSON = {
    "ErrorEquals": LAMBDA_SERVICE_ERRORS,
    "IntervalSeconds": 1,
    "MaxAttempts": 3,
    "BackoffRate": 2,
}

FunctionArn = Callable[[str], str]


class DefinitionRewriteError(ValueError):
    """A Task resource this rewrite cannot express on Step Functions."""


@dataclass(frozen=True)
class TaskResource:
    """A parsed `fn:` resource: the task function (`module.func`) and whether it is a callback."""

    function: str
    callback: bool

    @property
    def resource(self) -> str:
        return FUNCTION_PREFIX + self.function


def parse_task_resource(resource: str) -> TaskResource | None:
    """`fn:module.func[.waitForTaskToken]` -> TaskResource; None for any other resource."""
    if not resource.startswith(FUNCTION_PREFIX):
        return None
    name = resource[len(FUNCTION_PREFIX) :]
    if name.endswith(UNSUPPORTED_SUFFIXES):
        raise DefinitionRewriteError(f"{resource!r}: .sync tasks have no Lambda equivalent")
    callback = name.endswith(CALLBACK_SUFFIX)
    if callback:
        name = name[: -len(CALLBACK_SUFFIX)]
    module, dot, function = name.partition(".")
    if not dot or not module or not function or "." in function:
        raise DefinitionRewriteError(f"{resource!r} is not of the form fn:module.function")
    return TaskResource(function=name, callback=callback)


def _camel(text: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in text.replace(".", "_").split("_"))


def function_logical_id(function: str) -> str:
    """The template's resource name for a task function: `InstanceTasksCreateServerFunction`."""
    return f"{_camel(function)}Function"


def arn_variable(function: str) -> str:
    """The DefinitionSubstitutions variable holding a task function's ARN."""
    return f"{_camel(function)}Arn"


def state_machine_logical_id(name: str) -> str:
    """`provision_instance` -> `ProvisionInstanceStateMachine`."""
    return f"{_camel(name)}StateMachine"


def lambda_function_name(function: str, prefix: str = "") -> str:
    """The deployed Lambda function's name: `{prefix}instance_tasks-create_server`.

    Lambda names allow letters, digits, `-` and `_` (64 at most), so the dot becomes `-`;
    `shared/adapters/aws/lambda_invoker.py` maps resources to names the same way.
    """
    return prefix + function.replace(".", "-")


def substitution_arn(function: str) -> str:
    """The placeholder written into definitions for `sam build` (filled by the template)."""
    return "${" + arn_variable(function) + "}"


def _nested_machines(state: JSON) -> Iterator[JSON]:
    if state.get("Type") == "Parallel":
        yield from state.get("Branches", [])
    elif state.get("Type") == "Map":
        for field in ("ItemProcessor", "Iterator"):
            if isinstance(state.get(field), dict):
                yield state[field]


def iter_states(machine: JSON) -> Iterator[tuple[str, JSON]]:
    """Every (name, state) of a definition, branches of Parallel and Map states included."""
    for name, state in machine.get("States", {}).items():
        yield name, state
        for nested in _nested_machines(state):
            yield from iter_states(nested)


def task_resources(definition: JSON) -> list[TaskResource]:
    """The `fn:` task resources a definition calls, sorted, each once."""
    found = {
        parsed
        for _, state in iter_states(definition)
        if state.get("Type") == "Task"
        and (parsed := parse_task_resource(str(state.get("Resource", "")))) is not None
    }
    return sorted(found, key=lambda t: (t.function, t.callback))


def task_functions(definition: JSON) -> list[str]:
    """The task functions (`module.func`) a definition calls, sorted, each once."""
    return sorted({t.function for t in task_resources(definition)})


def _rewrite_task(state: JSON, task: TaskResource, function_arn: FunctionArn) -> None:
    payload: JSON = (
        {PAYLOAD: state.pop("Parameters")} if "Parameters" in state else {f"{PAYLOAD}.$": "$"}
    )
    envelope: JSON = {
        **payload,
        CONTEXT: step_functions_context(task.resource, callback=task.callback),
    }
    arn = function_arn(task.function)
    if task.callback:
        state["Resource"] = LAMBDA_INVOKE_CALLBACK
        state["Parameters"] = {"FunctionName": arn, "Payload": envelope}
    else:
        state["Resource"] = arn
        state["Parameters"] = envelope
    state["Retry"] = [copy.deepcopy(LAMBDA_SERVICE_RETRY), *state.get("Retry", [])]


def rewrite_for_step_functions(definition: JSON, function_arn: FunctionArn) -> JSON:
    """A copy of `definition` whose `fn:` Tasks call Lambda functions (`function_arn(func)`)."""
    rewritten = copy.deepcopy(definition)
    for _, state in iter_states(rewritten):
        if state.get("Type") != "Task":
            continue
        task = parse_task_resource(str(state.get("Resource", "")))
        if task is not None:
            _rewrite_task(state, task, function_arn)
    return rewritten


def load_definitions(directory: Path) -> dict[str, JSON]:
    """`{name: definition}` for every `*.asl.json` in `directory`, by name."""
    definitions: dict[str, JSON] = {}
    for path in sorted(directory.glob(f"*{DEFINITION_SUFFIX}")):
        definitions[path.name[: -len(DEFINITION_SUFFIX)]] = json.loads(path.read_text())
    return definitions


def write_step_functions_definitions(source: Path, target: Path) -> list[Path]:
    """Rewrite every definition of `source` into `target` (with `${...Arn}` placeholders)."""
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for name, definition in load_definitions(source).items():
        path = target / f"{name}{DEFINITION_SUFFIX}"
        rewritten = rewrite_for_step_functions(definition, substitution_arn)
        path.write_text(json.dumps(rewritten, indent=2) + "\n")
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infra.aws.definitions",
        description="Rewrite state_machines/*.asl.json for Step Functions (for sam build).",
    )
    parser.add_argument("--source", type=Path, default=Path("state_machines"))
    parser.add_argument("--out", type=Path, default=Path("build/aws/state_machines"))
    args = parser.parse_args(argv)
    try:
        written = write_step_functions_definitions(args.source, args.out)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
