"""Execution semantics, run through the in-memory driver (virtual time, no sleeps)."""

import itertools
import json

import pytest

from shared.clock import ManualClock
from shared.engine import InMemoryExecution, TaskError, run_in_memory
from shared.engine.timestamps import parse_timestamp


def one(state, **more):
    return {"StartAt": "S", "States": {"S": {**state, **more}}}


def events(result, kind):
    return [e for e in result.history if e["type"] == kind]


# --------------------------------------------------------------------------- data flow


def test_aws_input_output_processing_example():
    # The worked example from AWS's "Input and output processing" page.
    definition = one(
        {
            "Type": "Task",
            "Resource": "fn:add",
            "InputPath": "$.lambda",
            "Parameters": {"val1.$": "$.val1", "val2.$": "$.val2", "fixed": 3},
            "ResultSelector": {"sum.$": "$.sum", "status": "ok"},
            "ResultPath": "$.data.lambdaresult",
            "OutputPath": "$.data",
            "End": True,
        }
    )

    def add(payload):
        return {"sum": payload["val1"] + payload["val2"] + payload["fixed"], "noise": 1}

    result = run_in_memory(
        definition,
        {"comment": "x", "lambda": {"val1": 1, "val2": 2}, "data": {"other": True}},
        {"fn:add": add},
    )
    assert result.status == "SUCCEEDED"
    # ResultPath merges into the raw input (not the InputPath-filtered one).
    assert result.output == {"other": True, "lambdaresult": {"sum": 6, "status": "ok"}}


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ({"Result": {"r": 1}}, {"r": 1}),
        ({"Result": {"r": 1}, "ResultPath": "$.res"}, {"in": 1, "res": {"r": 1}}),
        ({"Result": {"r": 1}, "ResultPath": None}, {"in": 1}),
        ({"Parameters": {"copy.$": "$.in", "lit": "x"}}, {"copy": 1, "lit": "x"}),
        ({"Parameters": {"copy.$": "$.in"}, "ResultPath": "$.p"}, {"in": 1, "p": {"copy": 1}}),
        ({"InputPath": None}, {}),
        ({"OutputPath": None}, {}),
        ({"InputPath": "$.in"}, 1),
        ({"Parameters": {"a": [{"b.$": "$.in"}, 2]}}, {"a": [{"b": 1}, 2]}),
        ({"Parameters": {"all.$": "$"}, "OutputPath": "$.all.in"}, 1),
    ],
)
def test_pass_state_processing(state, expected):
    result = run_in_memory(one({"Type": "Pass", "End": True, **state}), {"in": 1})
    assert result.status == "SUCCEEDED"
    assert result.output == expected


def test_indefinite_paths_yield_arrays():
    definition = one({"Type": "Pass", "Parameters": {"ids.$": "$.items[*].id"}, "End": True})
    result = run_in_memory(definition, {"items": [{"id": 1}, {"id": 2}]})
    assert result.output == {"ids": [1, 2]}


@pytest.mark.parametrize(
    ("state", "error", "fragments"),
    [
        ({"InputPath": "$.missing"}, "States.Runtime", ["'S'", "$.missing", "InputPath"]),
        ({"OutputPath": "$.missing"}, "States.Runtime", ["'S'", "$.missing", "OutputPath"]),
        ({"Parameters": {"x.$": "$.missing"}}, "States.Runtime", ["'S'", "$.missing", "'x.$'"]),
        (
            {"Result": 1, "ResultPath": "$.in.deeper"},
            "States.ResultPathMatchFailure",
            ["'S'", "$.in.deeper"],
        ),
        (
            {"Parameters": {"x.$": "States.ArrayGetItem($.arr, 5)"}},
            "States.IntrinsicFailure",
            ["'S'", "'x.$'", "out of range"],
        ),
        ({"Parameters": {"x.$": "States.Array($.nope)"}}, "States.Runtime", ["$.nope", "'x.$'"]),
    ],
)
def test_data_errors_name_state_and_field(state, error, fragments):
    result = run_in_memory(one({"Type": "Pass", "End": True, **state}), {"in": 1, "arr": [1]})
    assert result.status == "FAILED"
    assert result.error == error
    for fragment in fragments:
        assert fragment in result.cause
    assert result.history[-1]["type"] == "ExecutionFailed"
    assert result.history[-1]["executionFailedEventDetails"]["error"] == error


def test_runtime_errors_cannot_be_caught_but_intrinsic_failures_can():
    def definition(params):
        return {
            "StartAt": "T",
            "States": {
                "T": {
                    "Type": "Task",
                    "Resource": "fn:echo",
                    "Parameters": params,
                    "Catch": [{"ErrorEquals": ["States.ALL"], "Next": "Caught"}],
                    "End": True,
                },
                "Caught": {"Type": "Pass", "End": True},
            },
        }

    echo = {"fn:echo": lambda p: p}
    missing = run_in_memory(definition({"x.$": "$.nope"}), {}, echo)
    assert (missing.status, missing.error) == ("FAILED", "States.Runtime")
    bad_intrinsic = run_in_memory(definition({"x.$": "States.StringToJson('nope')"}), {}, echo)
    assert bad_intrinsic.status == "SUCCEEDED"
    assert bad_intrinsic.output["Error"] == "States.IntrinsicFailure"


# --------------------------------------------------------------------------- context object


def test_context_object_fields():
    clock = ManualClock(start=1_700_000_000.0)
    definition = {
        "StartAt": "First",
        "States": {
            "First": {"Type": "Pass", "Next": "T"},
            "T": {
                "Type": "Task",
                "Resource": "fn:echo",
                "Parameters": {
                    "id.$": "$$.Execution.Id",
                    "name.$": "$$.Execution.Name",
                    "input.$": "$$.Execution.Input",
                    "start.$": "$$.Execution.StartTime",
                    "redrives.$": "$$.Execution.RedriveCount",
                    "state.$": "$$.State.Name",
                    "entered.$": "$$.State.EnteredTime",
                    "retries.$": "$$.State.RetryCount",
                    "sm.$": "$$.StateMachine.Id",
                    "smname.$": "$$.StateMachine.Name",
                    "token.$": "$$.Task.Token",
                },
                "End": True,
            },
        },
    }
    result = run_in_memory(
        definition,
        {"k": "v"},
        {"fn:echo": lambda p: p},
        name="ctx-test",
        state_machine_name="flows",
        clock=clock,
    )
    out = result.output
    assert out["id"] == result.arn and out["id"].endswith(":execution:flows:ctx-test")
    assert out["name"] == "ctx-test"
    assert out["input"] == {"k": "v"}
    assert out["start"] == "2023-11-14T22:13:20.000Z"
    assert out["redrives"] == 0
    assert out["state"] == "T"
    assert parse_timestamp(out["entered"]) == pytest.approx(1_700_000_000.0)
    assert out["retries"] == 0
    assert out["sm"].endswith(":stateMachine:flows")
    assert out["smname"] == "flows"
    assert isinstance(out["token"], str) and len(out["token"]) > 20


def test_map_item_context():
    definition = one(
        {
            "Type": "Map",
            "ItemsPath": "$.things",
            "ItemSelector": {
                "index.$": "$$.Map.Item.Index",
                "value.$": "$$.Map.Item.Value",
                "shared.$": "$.shared",
            },
            "ItemProcessor": {"StartAt": "P", "States": {"P": {"Type": "Pass", "End": True}}},
            "End": True,
        }
    )
    result = run_in_memory(definition, {"things": ["a", "b"], "shared": 7})
    assert result.output == [
        {"index": 0, "value": "a", "shared": 7},
        {"index": 1, "value": "b", "shared": 7},
    ]


# --------------------------------------------------------------------------- tasks


def test_task_calling_conventions_and_idempotency_keys():
    seen = []

    def with_context(payload, context):
        seen.append((context.idempotency_key, context.state_name, context.attempt))
        return {"ok": payload}

    definition = {
        "StartAt": "A",
        "States": {
            "A": {"Type": "Task", "Resource": "fn:plain", "Next": "B"},
            "B": {"Type": "Task", "Resource": "fn:ctx", "End": True},
        },
    }
    result = run_in_memory(
        definition, 1, {"plain": lambda p: p + 1, "fn:ctx": with_context}, name="keys"
    )
    assert result.output == {"ok": 2}
    [(key, state, attempt)] = seen
    assert state == "B" and attempt == 0
    assert key.startswith(result.arn + "/B/")


def test_task_payload_is_a_private_copy():
    def mutate(payload):
        payload["x"].append(2)
        return payload

    definition = {
        "StartAt": "T",
        "States": {"T": {"Type": "Task", "Resource": "fn:m", "ResultPath": "$.r", "End": True}},
    }
    result = run_in_memory(definition, {"x": [1]}, {"fn:m": mutate})
    assert result.output == {"x": [1], "r": {"x": [1, 2]}}


class DiskFullError(Exception):
    pass


def test_task_exceptions_become_task_failures():
    def boom(payload):
        raise DiskFullError("no space left")

    result = run_in_memory(
        one({"Type": "Task", "Resource": "fn:b", "End": True}), {}, {"fn:b": boom}
    )
    assert result.status == "FAILED"
    assert result.error == "DiskFullError"
    assert json.loads(result.cause) == {
        "errorMessage": "no space left",
        "errorType": "DiskFullError",
    }
    failed = events(result, "TaskFailed")[0]["taskFailedEventDetails"]
    assert failed["error"] == "DiskFullError"


def test_task_error_names_its_error():
    def fail(payload):
        raise TaskError("Quota.Exceeded", "3 of 3 instances used")

    result = run_in_memory(
        one({"Type": "Task", "Resource": "fn:f", "End": True}), {}, {"fn:f": fail}
    )
    assert (result.error, result.cause) == ("Quota.Exceeded", "3 of 3 instances used")


def test_non_json_result_and_unknown_resource():
    result = run_in_memory(
        one({"Type": "Task", "Resource": "fn:f", "End": True}), {}, {"fn:f": lambda p: {1, 2}}
    )
    assert result.error == "Runtime.MarshalError"
    result = run_in_memory(one({"Type": "Task", "Resource": "fn:none", "End": True}), {})
    assert result.error == "States.TaskFailed"
    assert "fn:none" in result.cause


def test_lambda_arn_resources_resolve_by_function_name():
    definition = one(
        {
            "Type": "Task",
            "Resource": "arn:aws:lambda:us-east-1:123456789012:function:double",
            "End": True,
        }
    )
    assert run_in_memory(definition, 4, {"double": lambda p: p * 2}).output == 8


# --------------------------------------------------------------------------- retry and catch


def flaky(failures, error="Flaky"):
    calls = []

    def task(payload, context):
        calls.append(context.attempt)
        if len(calls) <= failures:
            raise TaskError(error, f"failure {len(calls)}")
        return {"attempts": len(calls)}

    return task, calls


def scheduled_times(result):
    return [parse_timestamp(e["timestamp"]) for e in events(result, "TaskScheduled")]


def test_retry_backoff_timing_in_virtual_time():
    task, calls = flaky(3)
    definition = one(
        {
            "Type": "Task",
            "Resource": "fn:t",
            "Retry": [
                {"ErrorEquals": ["Flaky"], "IntervalSeconds": 2, "BackoffRate": 3, "MaxAttempts": 3}
            ],
            "End": True,
        }
    )
    result = run_in_memory(definition, {}, {"fn:t": task}, clock=ManualClock())
    assert result.output == {"attempts": 4}
    assert calls == [0, 1, 2, 3]
    times = scheduled_times(result)
    gaps = [round(b - a, 3) for a, b in itertools.pairwise(times)]
    assert gaps == [2, 6, 18]


def test_max_delay_caps_backoff_and_full_jitter_stays_below_it():
    task, _ = flaky(4)
    definition = one(
        {
            "Type": "Task",
            "Resource": "fn:t",
            "Retry": [
                {
                    "ErrorEquals": ["States.ALL"],
                    "IntervalSeconds": 10,
                    "BackoffRate": 10,
                    "MaxAttempts": 4,
                    "MaxDelaySeconds": 50,
                }
            ],
            "End": True,
        }
    )
    times = scheduled_times(run_in_memory(definition, {}, {"fn:t": task}, clock=ManualClock()))
    assert [round(b - a, 3) for a, b in itertools.pairwise(times)] == [10, 50, 50, 50]
    definition["States"]["S"]["Retry"][0]["JitterStrategy"] = "FULL"
    task, _ = flaky(4)
    times = scheduled_times(run_in_memory(definition, {}, {"fn:t": task}, clock=ManualClock()))
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(0 <= g <= 50.001 for g in gaps) and gaps != [10, 50, 50, 50]


def test_retries_exhausted_fall_through_to_catch():
    task, calls = flaky(10)
    definition = {
        "StartAt": "T",
        "States": {
            "T": {
                "Type": "Task",
                "Resource": "fn:t",
                "Retry": [
                    {"ErrorEquals": ["Flaky"], "MaxAttempts": 2, "IntervalSeconds": 1},
                    # Never consulted for Flaky: only the first matching retrier counts.
                    {"ErrorEquals": ["States.ALL"], "MaxAttempts": 5},
                ],
                "Catch": [{"ErrorEquals": ["Flaky"], "ResultPath": "$.error", "Next": "Handled"}],
                "End": True,
            },
            "Handled": {"Type": "Pass", "End": True},
        },
    }
    result = run_in_memory(definition, {"keep": 1}, {"fn:t": task})
    assert len(calls) == 3
    assert result.status == "SUCCEEDED"
    assert result.output == {"keep": 1, "error": {"Error": "Flaky", "Cause": "failure 3"}}


def test_max_attempts_zero_never_retries_and_retry_count_is_visible():
    task, calls = flaky(1)
    definition = one(
        {
            "Type": "Task",
            "Resource": "fn:t",
            "Retry": [{"ErrorEquals": ["Flaky"], "MaxAttempts": 0}],
            "End": True,
        }
    )
    assert run_in_memory(definition, {}, {"fn:t": task}).status == "FAILED"
    assert calls == [0]

    seen = []

    def counting(payload):
        seen.append(payload["retry"])
        if len(seen) < 3:
            raise TaskError("Again")

    definition = one(
        {
            "Type": "Task",
            "Resource": "fn:c",
            "Parameters": {"retry.$": "$$.State.RetryCount"},
            "Retry": [{"ErrorEquals": ["Again"]}],
            "End": True,
        }
    )
    assert run_in_memory(definition, {}, {"fn:c": counting}).status == "SUCCEEDED"
    assert seen == [0, 1, 2]


def test_task_failed_wildcard_does_not_match_timeout():
    definition = {
        "StartAt": "T",
        "States": {
            "T": {
                "Type": "Task",
                "Resource": "fn:wait.waitForTaskToken",
                "TimeoutSeconds": 5,
                "Catch": [
                    {"ErrorEquals": ["States.TaskFailed"], "Next": "TaskFailed"},
                    {"ErrorEquals": ["States.Timeout"], "Next": "TimedOut"},
                ],
                "End": True,
            },
            "TaskFailed": {"Type": "Pass", "Result": "task-failed", "End": True},
            "TimedOut": {"Type": "Pass", "Result": "timed-out", "End": True},
        },
    }
    result = run_in_memory(definition, {}, {"fn:wait": lambda p: None})
    assert result.output == "timed-out"
    assert (
        events(result, "TaskTimedOut")[0]["taskTimedOutEventDetails"]["error"] == "States.Timeout"
    )


def test_catch_default_result_path_replaces_input():
    def fail(payload):
        raise TaskError("E", "why")

    definition = {
        "StartAt": "T",
        "States": {
            "T": {
                "Type": "Task",
                "Resource": "fn:f",
                "Catch": [{"ErrorEquals": ["E"], "Next": "H"}],
                "End": True,
            },
            "H": {"Type": "Pass", "End": True},
        },
    }
    assert run_in_memory(definition, {"x": 1}, {"fn:f": fail}).output == {
        "Error": "E",
        "Cause": "why",
    }


# --------------------------------------------------------------------------- wait


@pytest.mark.parametrize(
    ("wait", "input_value", "seconds"),
    [
        ({"Seconds": 3600}, {}, 3600),
        ({"Seconds": 0}, {}, 0),
        ({"SecondsPath": "$.s"}, {"s": 90}, 90),
        ({"Timestamp": "2027-01-15T08:00:10Z"}, {}, 10),
        ({"TimestampPath": "$.t"}, {"t": "2027-01-15T08:01:00Z"}, 60),
        ({"Timestamp": "2020-01-01T00:00:00Z"}, {}, 0),  # in the past: no wait
    ],
)
def test_wait_uses_virtual_time(wait, input_value, seconds):
    clock = ManualClock(start=parse_timestamp("2027-01-15T08:00:00Z"))
    definition = one({"Type": "Wait", "End": True, **wait})
    result = run_in_memory(definition, input_value, clock=clock)
    assert result.status == "SUCCEEDED"
    assert result.output == input_value
    entered = parse_timestamp(events(result, "WaitStateEntered")[0]["timestamp"])
    exited = parse_timestamp(events(result, "WaitStateExited")[0]["timestamp"])
    assert exited - entered == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("wait", "input_value"),
    [
        ({"SecondsPath": "$.s"}, {}),
        ({"SecondsPath": "$.s"}, {"s": "ten"}),
        ({"SecondsPath": "$.s"}, {"s": -1}),
        ({"TimestampPath": "$.t"}, {"t": "tomorrow"}),
    ],
)
def test_wait_bad_input_is_a_runtime_error(wait, input_value):
    result = run_in_memory(one({"Type": "Wait", "End": True, **wait}), input_value)
    assert (result.status, result.error) == ("FAILED", "States.Runtime")
    assert "'S'" in result.cause


def test_execution_timeout():
    definition = {
        "TimeoutSeconds": 10,
        "StartAt": "W",
        "States": {"W": {"Type": "Wait", "Seconds": 60, "End": True}},
    }
    result = run_in_memory(definition, {})
    assert (result.status, result.error) == ("TIMED_OUT", "States.Timeout")
    assert result.history[-1]["type"] == "ExecutionTimedOut"


# --------------------------------------------------------------------------- map and parallel


def map_definition(processor_state, **map_fields):
    return one(
        {
            "Type": "Map",
            "ItemProcessor": {"StartAt": "P", "States": {"P": {**processor_state, "End": True}}},
            "End": True,
            **map_fields,
        }
    )


def test_map_results_in_order_with_result_selector_and_path():
    definition = {
        "StartAt": "M",
        "States": {
            "M": {
                "Type": "Map",
                "ItemsPath": "$.n",
                "ItemProcessor": {
                    "StartAt": "Sq",
                    "States": {"Sq": {"Type": "Task", "Resource": "fn:sq", "End": True}},
                },
                "ResultSelector": {"squares.$": "$", "count.$": "States.ArrayLength($)"},
                "ResultPath": "$.out",
                "End": True,
            }
        },
    }
    result = run_in_memory(definition, {"n": [3, 1, 2]}, {"fn:sq": lambda x: x * x})
    assert result.output == {"n": [3, 1, 2], "out": {"squares": [9, 1, 4], "count": 3}}
    assert [
        e["mapIterationStartedEventDetails"]["index"] for e in events(result, "MapIterationStarted")
    ] == [0, 1, 2]
    assert events(result, "MapStateStarted")[0]["mapStateStartedEventDetails"] == {"length": 3}


def test_map_of_nothing_and_of_not_an_array():
    definition = map_definition({"Type": "Pass"})
    assert run_in_memory(definition, []).output == []
    result = run_in_memory(definition, {"not": "array"})
    assert (result.status, result.error) == ("FAILED", "States.Runtime")


def test_map_respects_max_concurrency():
    definition = map_definition(
        {
            "Type": "Task",
            "Resource": "fn:w.waitForTaskToken",
            "Parameters": {"t.$": "$$.Task.Token"},
        },
        MaxConcurrency=2,
    )
    execution = InMemoryExecution(definition, list(range(5)), None)
    execution.invoker.register("fn:w", lambda p: None)  # type: ignore[union-attr]
    answered = 0
    while True:
        result = execution.run()
        if result.status != "RUNNING":
            break
        tokens = execution.pending_tokens()
        assert len(tokens) <= 2
        for token in tokens:
            execution.send_task_success(token, answered)
            answered += 1
    assert result.status == "SUCCEEDED"
    assert sorted(result.output) == [0, 1, 2, 3, 4]


def test_map_iteration_failure_fails_the_map_and_can_be_caught():
    def check(item):
        if item == 2:
            raise TaskError("BadItem", "item 2")
        return item

    definition = {
        "StartAt": "M",
        "States": {
            "M": {
                "Type": "Map",
                "ItemsPath": "$.items",
                "ItemProcessor": {
                    "StartAt": "C",
                    "States": {"C": {"Type": "Task", "Resource": "fn:c", "End": True}},
                },
                "Catch": [{"ErrorEquals": ["BadItem"], "ResultPath": "$.err", "Next": "H"}],
                "End": True,
            },
            "H": {"Type": "Pass", "OutputPath": "$.err", "End": True},
        },
    }
    result = run_in_memory(definition, {"items": [1, 2, 3]}, {"fn:c": check})
    assert result.output == {"Error": "BadItem", "Cause": "item 2"}
    assert events(result, "MapIterationFailed")
    assert events(result, "MapStateFailed")
    # A Map whose input is an array cannot merge an error into it with ResultPath "$.err".
    definition["States"]["M"]["ItemsPath"] = "$"
    result = run_in_memory(definition, [1, 2, 3], {"fn:c": check})
    assert (result.status, result.error) == ("FAILED", "States.ResultPathMatchFailure")


def test_map_tolerated_failures():
    def check(item):
        if item < 0:
            raise TaskError("Negative", str(item))
        return item

    base = {"StartAt": "C", "States": {"C": {"Type": "Task", "Resource": "fn:c", "End": True}}}
    tolerant = one({"Type": "Map", "ItemProcessor": base, "ToleratedFailureCount": 1, "End": True})
    result = run_in_memory(tolerant, [1, -1, 2], {"fn:c": check})
    assert result.status == "SUCCEEDED"
    assert result.output == [1, {"Error": "Negative", "Cause": "-1"}, 2]
    result = run_in_memory(tolerant, [-1, -2, 2], {"fn:c": check})
    assert (result.status, result.error) == ("FAILED", "States.ExceedToleratedFailureThreshold")
    by_percent = one(
        {"Type": "Map", "ItemProcessor": base, "ToleratedFailurePercentage": 50, "End": True}
    )
    assert run_in_memory(by_percent, [-1, 1, 2, 3], {"fn:c": check}).status == "SUCCEEDED"
    assert run_in_memory(by_percent, [-1, -1, -1, 3], {"fn:c": check}).status == "FAILED"


def test_nested_map_inside_parallel():
    definition = one(
        {
            "Type": "Parallel",
            "Branches": [
                {
                    "StartAt": "Inner",
                    "States": {
                        "Inner": {
                            "Type": "Map",
                            "ItemsPath": "$.rows",
                            "ItemProcessor": {
                                "StartAt": "Row",
                                "States": {
                                    "Row": {
                                        "Type": "Map",
                                        "ItemProcessor": {
                                            "StartAt": "Cell",
                                            "States": {
                                                "Cell": {
                                                    "Type": "Task",
                                                    "Resource": "fn:inc",
                                                    "End": True,
                                                }
                                            },
                                        },
                                        "End": True,
                                    }
                                },
                            },
                            "End": True,
                        }
                    },
                },
                {
                    "StartAt": "Const",
                    "States": {"Const": {"Type": "Pass", "Result": "b", "End": True}},
                },
            ],
            "End": True,
        }
    )
    result = run_in_memory(definition, {"rows": [[1, 2], [3]]}, {"fn:inc": lambda x: x + 1})
    assert result.output == [[[2, 3], [4]], "b"]


def test_parallel_branch_failure_propagates_its_error_and_aborts_the_rest():
    definition = {
        "StartAt": "P",
        "States": {
            "P": {
                "Type": "Parallel",
                "Branches": [
                    {
                        "StartAt": "Slow",
                        "States": {"Slow": {"Type": "Wait", "Seconds": 100, "End": True}},
                    },
                    {
                        "StartAt": "Boom",
                        "States": {"Boom": {"Type": "Fail", "Error": "Branch.Boom", "Cause": "b"}},
                    },
                ],
                "End": True,
            }
        },
    }
    result = run_in_memory(definition, {})
    assert (result.status, result.error, result.cause) == ("FAILED", "Branch.Boom", "b")
    assert not events(result, "WaitStateExited")
    assert events(result, "ParallelStateFailed")


def test_parallel_retry_reruns_the_whole_state():
    runs = []

    def sometimes(payload):
        runs.append(payload)
        if len(runs) == 1:
            raise TaskError("Once")
        return payload

    definition = one(
        {
            "Type": "Parallel",
            "Branches": [
                {
                    "StartAt": "A",
                    "States": {"A": {"Type": "Task", "Resource": "fn:s", "End": True}},
                },
                {"StartAt": "B", "States": {"B": {"Type": "Pass", "Result": 2, "End": True}}},
            ],
            "Retry": [{"ErrorEquals": ["Once"], "IntervalSeconds": 1}],
            "End": True,
        }
    )
    result = run_in_memory(definition, 1, {"fn:s": sometimes})
    assert result.output == [1, 2]
    assert len(events(result, "ParallelStateStarted")) == 2


def test_fail_state_paths():
    definition = one(
        {"Type": "Fail", "ErrorPath": "$.e", "CausePath": "States.Format('code {}', $.c)"}
    )
    result = run_in_memory(definition, {"e": "Custom.Error", "c": 42})
    assert (result.error, result.cause) == ("Custom.Error", "code 42")
    result = run_in_memory(definition, {"c": 1})
    assert result.error == "States.Runtime"


def test_loops_give_each_visit_its_own_idempotency_key():
    keys = []

    def count(payload, context):
        keys.append(context.idempotency_key)
        return payload + 1

    definition = {
        "StartAt": "Inc",
        "States": {
            "Inc": {"Type": "Task", "Resource": "fn:inc", "Next": "Done?"},
            "Done?": {
                "Type": "Choice",
                "Choices": [{"Variable": "$", "NumericLessThan": 3, "Next": "Inc"}],
                "Default": "End",
            },
            "End": {"Type": "Succeed"},
        },
    }
    assert run_in_memory(definition, 0, {"fn:inc": count}).output == 3
    assert len(keys) == 3 and len(set(keys)) == 3


def test_long_pass_chain():
    states = {f"S{i}": {"Type": "Pass", "Next": f"S{i + 1}"} for i in range(499)}
    states["S499"] = {"Type": "Pass", "End": True}
    result = run_in_memory({"StartAt": "S0", "States": states}, {"x": 1})
    assert result.output == {"x": 1}
    assert len(result.history) == 2 + 2 * 500
