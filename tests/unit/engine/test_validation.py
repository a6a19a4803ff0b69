"""load_definition: every problem is reported, each with the JSON pointer of its field."""

import json

import pytest

from shared.engine import DefinitionError, load_definition


def problems_of(definition):
    with pytest.raises(DefinitionError) as info:
        load_definition(definition)
    return info.value.problems


def pointers(definition):
    return [pointer for pointer, _message in problems_of(definition)]


def machine(**states):
    first = next(iter(states))
    return {"StartAt": first, "States": states}


END = {"Type": "Succeed"}


def test_valid_definition_loads_from_text_and_object():
    definition = machine(A={"Type": "Pass", "End": True})
    assert load_definition(json.dumps(definition)).root.start_at == "A"
    assert load_definition(definition).digest == load_definition(json.dumps(definition)).digest


def test_invalid_json_text_names_line_and_column():
    [(pointer, message)] = problems_of('{"StartAt": "A",\n "States": }')
    assert pointer == ""
    assert "line 2" in message


def test_not_an_object():
    assert pointers("[1, 2]") == [""]


def test_every_problem_is_listed():
    definition = {
        "StartAt": "A",
        "Bogus": 1,
        "States": {
            "A": {"Type": "Pass", "Next": "Missing", "Colour": "red"},
            "B": {"Type": "Pass", "End": True},
            "C": {"Type": "Choice", "Choices": []},
            "D": {"Type": "Dance"},
        },
    }
    found = pointers(definition)
    for expected in (
        "/Bogus",
        "/States/A/Next",
        "/States/A/Colour",
        "/States/B",  # unreachable
        "/States/C/Choices",
        "/States/D/Type",
    ):
        assert expected in found, (expected, found)


@pytest.mark.parametrize(
    ("definition", "pointer", "fragment"),
    [
        ({"States": {"A": {"Type": "Succeed"}}}, "/StartAt", "StartAt is required"),
        ({"StartAt": "A"}, "/States", "States is required"),
        ({"StartAt": "Z", "States": {"A": {"Type": "Succeed"}}}, "/StartAt", "does not exist"),
        (machine(A={"Type": "Pass"}), "/States/A", "needs Next or End"),
        (
            machine(A={"Type": "Pass", "Next": "B", "End": True}, B=END),
            "/States/A",
            "both Next and End",
        ),
        (machine(A={"Type": "Pass", "End": "yes"}), "/States/A/End", "true or false"),
        (machine(A={"Type": "Succeed", "Next": "A"}), "/States/A/Next", "cannot have Next"),
        (machine(A={"Type": "Pass", "Next": "A"}), "/States", "no terminal state"),
        (machine(A=END, B=END), "/States/B", "cannot be reached"),
        (
            machine(A={"Type": "Pass", "InputPath": "a.b", "End": True}),
            "/States/A/InputPath",
            "bad path",
        ),
        (
            machine(A={"Type": "Pass", "OutputPath": 5, "End": True}),
            "/States/A/OutputPath",
            "path string",
        ),
        (
            machine(A={"Type": "Pass", "ResultPath": "$.a[*]", "End": True}),
            "/States/A/ResultPath",
            "reference path",
        ),
        (
            machine(A={"Type": "Pass", "Parameters": {"x.$": "$..["}, "End": True}),
            "/States/A/Parameters/x.$",
            "bad path",
        ),
        (
            machine(A={"Type": "Pass", "Parameters": {"x.$": 5}, "End": True}),
            "/States/A/Parameters/x.$",
            "path or an intrinsic",
        ),
        (
            machine(A={"Type": "Pass", "Parameters": {"n": {"x.$": "States.Nope()"}}, "End": True}),
            "/States/A/Parameters/n/x.$",
            "intrinsic",
        ),
        (
            machine(A={"Type": "Pass", "Parameters": {"x": 1, "x.$": "$"}, "End": True}),
            "/States/A/Parameters/x.$",
            "both produce",
        ),
        (machine(A={"Type": "Task", "End": True}), "/States/A/Resource", "Resource is required"),
        (
            machine(A={"Type": "Task", "Resource": "f", "TimeoutSeconds": 0, "End": True}),
            "/States/A/TimeoutSeconds",
            "integer",
        ),
        (
            machine(
                A={
                    "Type": "Task",
                    "Resource": "f",
                    "TimeoutSeconds": 5,
                    "HeartbeatSeconds": 5,
                    "End": True,
                }
            ),
            "/States/A/HeartbeatSeconds",
            "smaller",
        ),
        (
            machine(
                A={
                    "Type": "Task",
                    "Resource": "f",
                    "TimeoutSeconds": 5,
                    "TimeoutSecondsPath": "$.t",
                    "End": True,
                }
            ),
            "/States/A",
            "only one of",
        ),
        (
            machine(
                A={"Type": "Task", "Resource": "f", "HeartbeatSecondsPath": "$.a[*]", "End": True}
            ),
            "/States/A/HeartbeatSecondsPath",
            "reference path",
        ),
        (
            machine(A={"Type": "Task", "Resource": "f", "ResultSelector": 5, "End": True}),
            "/States/A/ResultSelector",
            "object",
        ),
        (
            machine(A={"Type": "Task", "Resource": "f", "Retry": {}, "End": True}),
            "/States/A/Retry",
            "array",
        ),
        (
            machine(A={"Type": "Task", "Resource": "f", "Retry": [{}], "End": True}),
            "/States/A/Retry/0/ErrorEquals",
            "required",
        ),
        (
            machine(
                A={
                    "Type": "Task",
                    "Resource": "f",
                    "Retry": [{"ErrorEquals": ["States.ALL", "X"]}],
                    "End": True,
                }
            ),
            "/States/A/Retry/0/ErrorEquals",
            "alone",
        ),
        (
            machine(
                A={
                    "Type": "Task",
                    "Resource": "f",
                    "Retry": [{"ErrorEquals": ["States.Bogus"]}],
                    "End": True,
                }
            ),
            "/States/A/Retry/0/ErrorEquals",
            "unknown error name",
        ),
        (
            machine(
                A={
                    "Type": "Task",
                    "Resource": "f",
                    "Retry": [{"ErrorEquals": ["X"], "MaxAttempts": -1}],
                    "End": True,
                }
            ),
            "/States/A/Retry/0/MaxAttempts",
            "integer",
        ),
        (
            machine(
                A={
                    "Type": "Task",
                    "Resource": "f",
                    "Retry": [{"ErrorEquals": ["X"], "IntervalSeconds": 0}],
                    "End": True,
                }
            ),
            "/States/A/Retry/0/IntervalSeconds",
            "integer",
        ),
        (
            machine(
                A={
                    "Type": "Task",
                    "Resource": "f",
                    "Retry": [{"ErrorEquals": ["X"], "BackoffRate": 0.5}],
                    "End": True,
                }
            ),
            "/States/A/Retry/0/BackoffRate",
            ">= 1.0",
        ),
        (
            machine(
                A={
                    "Type": "Task",
                    "Resource": "f",
                    "Retry": [{"ErrorEquals": ["X"], "JitterStrategy": "SOME"}],
                    "End": True,
                }
            ),
            "/States/A/Retry/0/JitterStrategy",
            "FULL or NONE",
        ),
        (
            machine(
                A={
                    "Type": "Task",
                    "Resource": "f",
                    "Retry": [{"ErrorEquals": ["X"], "Backoff": 2}],
                    "End": True,
                }
            ),
            "/States/A/Retry/0/Backoff",
            "unknown field",
        ),
        (
            machine(
                A={"Type": "Task", "Resource": "f", "Catch": [{"ErrorEquals": ["X"]}], "End": True}
            ),
            "/States/A/Catch/0/Next",
            "needs Next",
        ),
        (
            machine(
                A={
                    "Type": "Task",
                    "Resource": "f",
                    "Catch": [{"ErrorEquals": ["X"], "Next": "Nope"}],
                    "End": True,
                }
            ),
            "/States/A/Catch/0/Next",
            "no state named",
        ),
        (
            machine(
                A={
                    "Type": "Task",
                    "Resource": "f",
                    "Catch": [
                        {"ErrorEquals": ["States.ALL"], "Next": "A"},
                        {"ErrorEquals": ["X"], "Next": "A"},
                    ],
                    "End": True,
                }
            ),
            "/States/A/Catch/0/ErrorEquals",
            "last",
        ),
        (
            machine(
                A={
                    "Type": "Task",
                    "Resource": "f",
                    "Catch": [{"ErrorEquals": ["X"], "Next": "A", "ResultPath": "$.a[0:]"}],
                    "End": True,
                }
            ),
            "/States/A/Catch/0/ResultPath",
            "reference path",
        ),
        (
            machine(
                A={
                    "Type": "Choice",
                    "Choices": [{"Variable": "$.a", "IsNull": True, "Next": "B"}],
                    "Default": 3,
                },
                B=END,
            ),
            "/States/A/Default",
            "state name",
        ),
        (
            machine(
                A={
                    "Type": "Choice",
                    "Choices": [{"Variable": "$.a", "IsNull": True, "Next": "B"}],
                    "Default": "Z",
                },
                B=END,
            ),
            "/States/A/Default",
            "no state named",
        ),
        (
            machine(
                A={
                    "Type": "Choice",
                    "Choices": [{"Variable": "$.a", "IsNull": True, "Next": "B"}],
                    "End": True,
                },
                B=END,
            ),
            "/States/A/End",
            "cannot have End",
        ),
        (machine(A={"Type": "Wait", "End": True}), "/States/A", "exactly one"),
        (
            machine(
                A={"Type": "Wait", "Seconds": 1, "Timestamp": "2020-01-01T00:00:00Z", "End": True}
            ),
            "/States/A",
            "exactly one",
        ),
        (machine(A={"Type": "Wait", "Seconds": -1, "End": True}), "/States/A/Seconds", "integer"),
        (
            machine(A={"Type": "Wait", "Timestamp": "2020-01-01 00:00:00", "End": True}),
            "/States/A/Timestamp",
            "RFC 3339",
        ),
        (
            machine(A={"Type": "Wait", "SecondsPath": "$.s[*]", "End": True}),
            "/States/A/SecondsPath",
            "reference path",
        ),
        (machine(A={"Type": "Fail", "Error": "E", "ErrorPath": "$.e"}), "/States/A", "only one of"),
        (machine(A={"Type": "Fail", "Cause": 5}), "/States/A/Cause", "string"),
        (
            machine(A={"Type": "Fail", "CausePath": "States.Array($.x)"}),
            "/States/A/CausePath",
            "does not return a string",
        ),
        (
            machine(A={"Type": "Fail", "ErrorPath": "States.Format("}),
            "/States/A/ErrorPath",
            "intrinsic",
        ),
        (
            machine(A={"Type": "Parallel", "End": True}),
            "/States/A/Branches",
            "Branches is required",
        ),
        (
            machine(
                A={
                    "Type": "Parallel",
                    "Branches": [{"StartAt": "X", "States": {"X": {"Type": "Pass"}}}],
                    "End": True,
                }
            ),
            "/States/A/Branches/0/States/X",
            "needs Next or End",
        ),
        (
            machine(
                A={
                    "Type": "Parallel",
                    "Branches": [{"StartAt": "X", "States": {"X": END}, "Extra": 1}],
                    "End": True,
                }
            ),
            "/States/A/Branches/0/Extra",
            "unknown field",
        ),
        (
            machine(
                A={
                    "Type": "Parallel",
                    "Branches": [{"StartAt": "X", "States": {"X": {"Type": "Pass", "Next": "B"}}}],
                    "Next": "B",
                },
                B=END,
            ),
            "/States/A/Branches/0/States/X/Next",
            "no state named",
        ),
        (machine(A={"Type": "Map", "End": True}), "/States/A", "ItemProcessor"),
        (
            machine(
                A={
                    "Type": "Map",
                    "ItemProcessor": {"StartAt": "X", "States": {"X": END}},
                    "Iterator": {"StartAt": "X", "States": {"X": END}},
                    "End": True,
                }
            ),
            "/States/A",
            "only one of",
        ),
        (
            machine(
                A={
                    "Type": "Map",
                    "ItemProcessor": {
                        "StartAt": "X",
                        "States": {"X": END},
                        "ProcessorConfig": {"Mode": "FAST"},
                    },
                    "End": True,
                }
            ),
            "/States/A/ItemProcessor/ProcessorConfig/Mode",
            "INLINE",
        ),
        (
            machine(
                A={
                    "Type": "Map",
                    "ItemProcessor": {"StartAt": "X", "States": {"X": END}},
                    "MaxConcurrency": -1,
                    "End": True,
                }
            ),
            "/States/A/MaxConcurrency",
            "integer",
        ),
        (
            machine(
                A={
                    "Type": "Map",
                    "ItemProcessor": {"StartAt": "X", "States": {"X": END}},
                    "ToleratedFailurePercentage": 101,
                    "End": True,
                }
            ),
            "/States/A/ToleratedFailurePercentage",
            "0 to 100",
        ),
        (
            machine(
                A={
                    "Type": "Map",
                    "ItemProcessor": {"StartAt": "X", "States": {"X": END}},
                    "ItemsPath": "$.[",
                    "End": True,
                }
            ),
            "/States/A/ItemsPath",
            "bad path",
        ),
        (
            machine(
                A={
                    "Type": "Map",
                    "ItemProcessor": {"StartAt": "X", "States": {"X": END}},
                    "ItemSelector": {"v.$": "States.Format("},
                    "End": True,
                }
            ),
            "/States/A/ItemSelector/v.$",
            "intrinsic",
        ),
        (
            machine(
                A={
                    "Type": "Map",
                    "ItemProcessor": {"StartAt": "X", "States": {"X": END}},
                    "ItemReader": {},
                    "End": True,
                }
            ),
            "/States/A/ItemReader",
            "not supported",
        ),
        (
            machine(
                A={
                    "Type": "Map",
                    "ItemProcessor": {"StartAt": "X", "States": {"X": END}},
                    "Items": [1],
                    "End": True,
                }
            ),
            "/States/A/Items",
            "JSONata",
        ),
        (
            machine(A={"Type": "Pass", "Assign": {"x": 1}, "End": True}),
            "/States/A/Assign",
            "not supported",
        ),
        (
            {"QueryLanguage": "JSONata", "StartAt": "A", "States": {"A": END}},
            "/QueryLanguage",
            "JSONPath only",
        ),
        (
            {"StartAt": "A", "States": {"A": END}, "TimeoutSeconds": "1"},
            "/TimeoutSeconds",
            "integer",
        ),
        ({"StartAt": "A", "States": {"A": END}, "Version": "2.0"}, "/Version", "1.0"),
        (machine(**{"x" * 81: END}), "/States/" + "x" * 81, "80 characters"),
        (machine(A={"Type": "Pass", "Comment": 1, "End": True}), "/States/A/Comment", "string"),
    ],
)
def test_problem_pointer_and_message(definition, pointer, fragment):
    found = problems_of(definition)
    matching = [m for p, m in found if p == pointer]
    assert matching, (pointer, found)
    assert any(fragment in m for m in matching), (fragment, matching)


def test_pointer_escapes_slash_and_tilde():
    definition = {"StartAt": "a/b~c", "States": {"a/b~c": {"Type": "Pass", "Next": "zz"}}}
    assert "/States/a~1b~0c/Next" in pointers(definition)


def test_nested_containers_are_checked_separately():
    # A Next may not cross from a branch into the outer states.
    definition = machine(
        P={
            "Type": "Parallel",
            "Branches": [{"StartAt": "X", "States": {"X": {"Type": "Pass", "Next": "After"}}}],
            "Next": "After",
        },
        After=END,
    )
    found = pointers(definition)
    assert "/States/P/Branches/0/States/X/Next" in found
    assert "/States/P/Branches/0/States" in found  # that branch has no terminal state


def test_catch_next_counts_for_reachability():
    definition = machine(
        A={
            "Type": "Task",
            "Resource": "f",
            "Catch": [{"ErrorEquals": ["States.ALL"], "Next": "H"}],
            "End": True,
        },
        H=END,
    )
    load_definition(definition)


def test_legacy_iterator_and_parameters_are_accepted():
    definition = machine(
        M={
            "Type": "Map",
            "Iterator": {"StartAt": "X", "States": {"X": END}},
            "Parameters": {"v.$": "$$.Map.Item.Value"},
            "End": True,
        }
    )
    assert load_definition(definition).root.states["M"].item_selector is not None
