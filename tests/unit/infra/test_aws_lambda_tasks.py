"""functions/lambda_tasks.py and shared/engine/task_envelope.py: task functions on Lambda."""

from __future__ import annotations

from typing import Any

import pytest

from functions import lambda_tasks
from infra.aws.definitions import load_definitions, task_functions
from shared.engine.errors import TaskError
from shared.engine.invoker import InProcessInvoker, TaskContext, load_callable
from shared.engine.task_envelope import TaskEnvelopeError, unwrap, wrap
from shared.settings import REPO_ROOT

RESOURCE = "fn:instance_tasks.create_server"


@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Task functions the dispatcher loads instead of importing functions.<module>."""
    functions: dict[str, Any] = {}
    monkeypatch.setattr(lambda_tasks, "_invoker", InProcessInvoker())
    monkeypatch.setattr(lambda_tasks, "load_callable", lambda target: functions[target])
    return functions


def step_functions_event(payload: Any, **context: Any) -> dict[str, Any]:
    """What Step Functions sends after the rewrite (infra/aws/definitions.py)."""
    fields = {
        "resource": RESOURCE,
        "execution_arn": "arn:aws:states:us-east-1:123456789012:execution:sm:run-1",
        "state_name": "CreateServer",
        "entered_time": "2026-11-22T03:00:15.655Z",
        "attempt": 0,
        **context,
    }
    return {"payload": payload, "context": fields}


def test_envelope_round_trip_keeps_payload_and_context() -> None:
    context = TaskContext(
        resource=RESOURCE,
        idempotency_key="key-1",
        task_token="tok",
        execution_arn="arn:x",
        state_name="S",
        attempt=2,
    )
    payload, unwrapped = unwrap(wrap({"a": [1]}, context), resource=RESOURCE)
    assert payload == {"a": [1]}
    assert unwrapped == context


def test_step_functions_events_get_a_key_per_attempt() -> None:
    _, first = unwrap(step_functions_event({}), resource=RESOURCE)
    _, again = unwrap(step_functions_event({}), resource=RESOURCE)
    _, retry = unwrap(step_functions_event({}, attempt=1), resource=RESOURCE)
    assert first.idempotency_key == again.idempotency_key  # a redelivery: same key
    assert first.idempotency_key != retry.idempotency_key
    assert first.idempotency_key is not None and "CreateServer" in first.idempotency_key


@pytest.mark.parametrize(
    "event",
    [
        None,
        {"context": {}},
        {"payload": {}, "context": []},
        {"payload": {}, "context": {"attempt": -1}},
        {"payload": {}, "context": {"attempt": True}},
        {"payload": {}, "context": {"task_token": ""}},
        {"payload": {}, "context": {"resource": "fn:instance_tasks.delete_server"}},
    ],
)
def test_malformed_or_misaddressed_envelopes_are_refused(event: Any) -> None:
    with pytest.raises(TaskEnvelopeError):
        unwrap(event, resource=RESOURCE)


def test_dispatcher_calls_the_named_function_with_payload_and_context(
    registered: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[Any, TaskContext]] = []

    def create_server(payload: Any, context: TaskContext) -> Any:
        calls.append((payload, context))
        return {"server_id": "s-1"}

    registered["functions.instance_tasks:create_server"] = create_server
    monkeypatch.setenv(lambda_tasks.TASK_FUNCTION_ENV, "instance_tasks.create_server")
    event = step_functions_event({"instance_id": "i-1"}, task_token="tok-1")

    assert lambda_tasks.handler(event, None) == {"server_id": "s-1"}
    [(payload, context)] = calls
    assert payload == {"instance_id": "i-1"}
    assert context.resource == RESOURCE
    assert context.task_token == "tok-1"
    assert context.state_name == "CreateServer"
    assert context.idempotency_key == unwrap(event, resource=RESOURCE)[1].idempotency_key


def test_a_payload_only_function_gets_the_payload(registered: dict[str, Any]) -> None:
    registered["functions.instance_tasks:create_server"] = lambda payload: {"got": payload}
    assert lambda_tasks.run_task("instance_tasks.create_server", step_functions_event(7)) == {
        "got": 7
    }


def test_task_errors_become_exceptions_named_after_the_error(registered: dict[str, Any]) -> None:
    def create_server(payload: Any) -> Any:
        raise TaskError("ComputeError", "no capacity in az1")

    registered["functions.instance_tasks:create_server"] = create_server
    with pytest.raises(TaskError) as raised:
        lambda_tasks.run_task("instance_tasks.create_server", step_functions_event({}))
    # Lambda reports type(exc).__name__ as errorType and str(exc) as errorMessage.
    assert type(raised.value).__name__ == "ComputeError"
    assert str(raised.value) == "no capacity in az1"
    assert raised.value.error == "ComputeError"
    assert isinstance(raised.value.__cause__, TaskError)
    # One class per name: Lambda's and our own isinstance checks stay stable.
    again = lambda_tasks.named_error(TaskError("ComputeError", "x"))
    assert type(again) is type(raised.value)


def test_other_exceptions_keep_their_own_class(registered: dict[str, Any]) -> None:
    def create_server(payload: Any) -> Any:
        raise KeyError("instance_id")

    registered["functions.instance_tasks:create_server"] = create_server
    with pytest.raises(KeyError):
        lambda_tasks.run_task("instance_tasks.create_server", step_functions_event({}))


def test_an_event_for_another_function_is_refused(registered: dict[str, Any]) -> None:
    registered["functions.instance_tasks:delete_server"] = lambda payload: None
    with pytest.raises(TaskEnvelopeError):
        lambda_tasks.run_task("instance_tasks.delete_server", step_functions_event({}))


@pytest.mark.parametrize("name", ["", "instance_tasks", "os.system.x", "../x.y", "A.b"])
def test_bad_function_names_are_refused(name: str) -> None:
    with pytest.raises(lambda_tasks.TaskFunctionNameError):
        lambda_tasks.run_task(name, step_functions_event({}))


def test_the_handler_needs_its_function_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(lambda_tasks.TASK_FUNCTION_ENV, raising=False)
    with pytest.raises(lambda_tasks.TaskFunctionNameError):
        lambda_tasks.handler(step_functions_event({}), None)


def test_every_task_function_of_the_state_machines_resolves() -> None:
    for definition in load_definitions(REPO_ROOT / "state_machines").values():
        for function in task_functions(definition):
            module, _, attribute = function.partition(".")
            assert lambda_tasks.resource_of(function) == f"fn:{function}"
            assert callable(load_callable(f"functions.{module}:{attribute}"))
