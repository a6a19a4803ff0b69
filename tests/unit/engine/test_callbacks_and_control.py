"""Callback tasks (.waitForTaskToken), heartbeats, task timeouts, stop and redrive, and that the
execution state survives serialisation at any point (what the durable driver relies on)."""

import json

from shared.engine import InMemoryExecution, TaskError
from shared.engine.core import ExecutionState

CALLBACK = {
    "StartAt": "Ask",
    "States": {
        "Ask": {
            "Type": "Task",
            "Resource": "fn:send.waitForTaskToken",
            "Parameters": {"question.$": "$.q", "token.$": "$$.Task.Token"},
            "ResultPath": "$.answer",
            "TimeoutSeconds": 300,
            "HeartbeatSeconds": 60,
            "End": True,
        }
    },
}


def callback_execution(definition=CALLBACK, input_value=None):
    sent = []
    execution = InMemoryExecution(definition, input_value or {"q": "ready?"})
    execution.invoker.register("fn:send", lambda payload: sent.append(payload) or {"queued": True})  # type: ignore[union-attr]
    return execution, sent


def types(execution):
    return [e["type"] for e in execution.history]


def test_callback_success_resumes_the_execution():
    execution, sent = callback_execution()
    result = execution.run(until_idle=True)
    assert result.status == "RUNNING"
    [payload] = sent
    assert payload["question"] == "ready?"
    assert types(execution)[-3:] == ["TaskScheduled", "TaskStarted", "TaskSubmitted"]
    execution.send_task_success(payload["token"], {"yes": True})
    result = execution.run()
    assert result.status == "SUCCEEDED"
    assert result.output == {"q": "ready?", "answer": {"yes": True}}


def test_callback_failure_fails_the_task():
    execution, sent = callback_execution()
    execution.run(until_idle=True)
    execution.send_task_failure(sent[0]["token"], "Guest.Refused", "disk full")
    result = execution.run()
    assert (result.status, result.error, result.cause) == ("FAILED", "Guest.Refused", "disk full")


def test_stale_and_forged_tokens_change_nothing():
    execution, sent = callback_execution()
    execution.run(until_idle=True)
    token = sent[0]["token"]
    execution.send_task_success(token[:-1] + ("A" if token[-1] != "A" else "B"), 1)  # forged nonce
    execution.send_task_success("garbage", 1)
    assert execution.run(until_idle=True).status == "RUNNING"
    execution.send_task_success(token, 2)
    execution.send_task_success(token, 3)  # second answer for the same token: ignored
    result = execution.run()
    assert result.output["answer"] == 2


def test_missing_heartbeat_times_out():
    execution, _sent = callback_execution()
    result = execution.run()  # nothing answers: the heartbeat deadline passes in virtual time
    assert (result.status, result.error) == ("FAILED", "States.HeartbeatTimeout")
    timed_out = [e for e in execution.history if e["type"] == "TaskTimedOut"]
    assert timed_out[0]["taskTimedOutEventDetails"]["error"] == "States.HeartbeatTimeout"


def test_heartbeats_keep_the_task_alive_until_its_timeout():
    execution, sent = callback_execution()
    execution.run(until_idle=True)
    token = sent[0]["token"]
    for _ in range(4):  # 4 x 50 s: each heartbeat arrives before the 60 s deadline
        execution.advance(50)
        execution.send_task_heartbeat(token)
        assert execution.run(until_idle=True).status == "RUNNING"
    execution.send_task_success(token, "done")
    assert execution.run().output["answer"] == "done"


def test_task_timeout_without_heartbeat_setting():
    definition = json.loads(json.dumps(CALLBACK))
    del definition["States"]["Ask"]["HeartbeatSeconds"]
    execution, sent = callback_execution(definition)
    execution.run(until_idle=True)
    execution.advance(299)
    execution.send_task_heartbeat(sent[0]["token"])  # no HeartbeatSeconds: does not extend
    result = execution.run()
    assert (result.status, result.error) == ("FAILED", "States.Timeout")


def test_timeout_from_path():
    definition = json.loads(json.dumps(CALLBACK))
    state = definition["States"]["Ask"]
    del state["TimeoutSeconds"], state["HeartbeatSeconds"]
    state["TimeoutSecondsPath"] = "$.limit"
    execution, _ = callback_execution(definition, {"q": "x", "limit": 5})
    result = execution.run()
    assert result.error == "States.Timeout"
    scheduled = next(e for e in execution.history if e["type"] == "TaskScheduled")
    assert scheduled["taskScheduledEventDetails"]["timeoutInSeconds"] == 5


def test_synchronous_task_overrunning_its_timeout():
    definition = {
        "StartAt": "T",
        "States": {"T": {"Type": "Task", "Resource": "fn:slow", "TimeoutSeconds": 1, "End": True}},
    }
    execution = InMemoryExecution(definition, {})

    def slow(payload):
        execution.advance(5)  # the task "takes" 5 s of (virtual) time
        return "late"

    execution.invoker.register("fn:slow", slow)  # type: ignore[union-attr]
    result = execution.run()
    assert (result.status, result.error) == ("FAILED", "States.Timeout")


def test_stop_aborts_and_later_events_are_stale():
    execution, sent = callback_execution()
    execution.run(until_idle=True)
    execution.stop("Operator.Stop", "maintenance")
    result = execution.run()
    assert (result.status, result.error, result.cause) == (
        "ABORTED",
        "Operator.Stop",
        "maintenance",
    )
    assert execution.history[-1]["type"] == "ExecutionAborted"
    count = len(execution.history)
    execution.send_task_success(sent[0]["token"], 1)
    assert execution.run().status == "ABORTED"
    assert len(execution.history) == count


def test_redrive_restarts_from_the_failed_state():
    calls = {"prepare": 0, "flaky": 0}

    def prepare(payload):
        calls["prepare"] += 1
        return {"prepared": True}

    def flaky(payload, context):
        calls["flaky"] += 1
        if calls["flaky"] == 1:
            raise TaskError("Transient", "first try")
        return {"redrives": payload["redrives"], "key": context.idempotency_key}

    definition = {
        "StartAt": "Prepare",
        "States": {
            "Prepare": {"Type": "Task", "Resource": "fn:prepare", "Next": "Work"},
            "Work": {
                "Type": "Task",
                "Resource": "fn:flaky",
                "Parameters": {"redrives.$": "$$.Execution.RedriveCount"},
                "End": True,
            },
        },
    }
    execution = InMemoryExecution(definition, {})
    execution.invoker.register("fn:prepare", prepare)  # type: ignore[union-attr]
    execution.invoker.register("fn:flaky", flaky)  # type: ignore[union-attr]
    first = execution.run()
    assert (first.status, first.error) == ("FAILED", "Transient")
    first_key = [e for e in execution.history if e["type"] == "TaskScheduled"][-1]
    execution.redrive()
    result = execution.run()
    assert result.status == "SUCCEEDED"
    assert result.output["redrives"] == 1
    assert calls == {"prepare": 1, "flaky": 2}
    assert "ExecutionRedriven" in types(execution)
    assert first_key["taskScheduledEventDetails"]["parameters"] == '{"redrives":0}'


def test_redrive_of_a_running_or_succeeded_execution_is_refused():
    execution = InMemoryExecution(
        {"StartAt": "P", "States": {"P": {"Type": "Pass", "End": True}}}, 1
    )
    assert execution.run().status == "SUCCEEDED"
    execution.redrive()
    assert execution.run().status == "SUCCEEDED"
    assert "ExecutionRedriven" not in types(execution)


def test_state_survives_json_round_trips_between_every_event():
    """Serialise the execution state after every step and continue from the copy."""
    definition = {
        "StartAt": "Fan",
        "States": {
            "Fan": {
                "Type": "Map",
                "ItemsPath": "$.items",
                "MaxConcurrency": 2,
                "ItemProcessor": {
                    "StartAt": "Ask",
                    "States": {
                        "Ask": {
                            "Type": "Task",
                            "Resource": "fn:ask.waitForTaskToken",
                            "Parameters": {"t.$": "$$.Task.Token", "v.$": "$"},
                            "Retry": [{"ErrorEquals": ["Again"], "IntervalSeconds": 5}],
                            "Next": "Nap",
                        },
                        "Nap": {"Type": "Wait", "Seconds": 10, "End": True},
                    },
                },
                "ResultPath": "$.mapped",
                "Next": "Both",
            },
            "Both": {
                "Type": "Parallel",
                "Branches": [
                    {"StartAt": "X", "States": {"X": {"Type": "Pass", "Result": "x", "End": True}}},
                    {"StartAt": "Y", "States": {"Y": {"Type": "Wait", "Seconds": 1, "End": True}}},
                ],
                "ResultPath": "$.both",
                "End": True,
            },
        },
    }
    execution = InMemoryExecution(definition, {"items": [1, 2, 3]})
    asked = []
    execution.invoker.register("fn:ask", asked.append)  # type: ignore[union-attr]
    original_handle = execution._handle

    def handle_then_round_trip(step):
        original_handle(step)
        text = json.dumps(execution.state.to_json())
        execution.state = ExecutionState.from_json(json.loads(text))

    execution._handle = handle_then_round_trip  # type: ignore[method-assign]
    failed_once = False
    while True:
        result = execution.run()
        if result.status != "RUNNING":
            break
        while asked:
            payload = asked.pop(0)
            if payload["v"] == 2 and not failed_once:
                failed_once = True
                execution.send_task_failure(payload["t"], "Again", "retry me")
            else:
                execution.send_task_success(payload["t"], payload["v"] * 10)
    assert result.status == "SUCCEEDED", (result.error, result.cause)
    mapped = {"items": [1, 2, 3], "mapped": [10, 20, 30]}
    assert result.output == {**mapped, "both": ["x", mapped]}
    assert failed_once
