import pytest

from shared.engine import DefinitionError, load_definition, run_in_memory
from shared.engine.choice import compile_rules, string_matches_regex


def choose(rule, data):
    problems: list = []
    rules = compile_rules([{**rule, "Next": "X"}], "/Choices", problems)
    assert not problems, problems
    return rules[0].test(data, {"Execution": {"Name": "e"}})


DATA = {
    "s": "banana",
    "n": 5,
    "f": 2.5,
    "b": True,
    "z": None,
    "t": "2024-01-02T03:04:05Z",
    "t2": "2024-01-02T05:04:05+02:00",
    "other": "apple",
    "five": 5,
    "list": [1],
}


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ({"Variable": "$.s", "StringEquals": "banana"}, True),
        ({"Variable": "$.s", "StringEquals": "x"}, False),
        ({"Variable": "$.n", "StringEquals": "5"}, False),  # wrong type: false, not an error
        ({"Variable": "$.s", "StringLessThan": "cherry"}, True),
        ({"Variable": "$.s", "StringGreaterThan": "apple"}, True),
        ({"Variable": "$.s", "StringLessThanEquals": "banana"}, True),
        ({"Variable": "$.s", "StringGreaterThanEquals": "banana"}, True),
        ({"Variable": "$.s", "StringEqualsPath": "$.other"}, False),
        ({"Variable": "$.s", "StringGreaterThanPath": "$.other"}, True),
        ({"Variable": "$.n", "NumericEquals": 5}, True),
        ({"Variable": "$.n", "NumericEquals": 5.0}, True),
        ({"Variable": "$.b", "NumericEquals": 1}, False),  # a boolean is not a number
        ({"Variable": "$.f", "NumericLessThan": 3}, True),
        ({"Variable": "$.f", "NumericGreaterThan": 3}, False),
        ({"Variable": "$.n", "NumericLessThanEquals": 5}, True),
        ({"Variable": "$.n", "NumericGreaterThanEquals": 6}, False),
        ({"Variable": "$.n", "NumericEqualsPath": "$.five"}, True),
        ({"Variable": "$.f", "NumericLessThanPath": "$.five"}, True),
        ({"Variable": "$.s", "NumericEquals": 5}, False),
        ({"Variable": "$.b", "BooleanEquals": True}, True),
        ({"Variable": "$.n", "BooleanEquals": True}, False),
        ({"Variable": "$.b", "BooleanEqualsPath": "$.b"}, True),
        ({"Variable": "$.t", "TimestampEquals": "2024-01-02T03:04:05Z"}, True),
        ({"Variable": "$.t2", "TimestampEquals": "2024-01-02T03:04:05Z"}, True),  # offsets
        ({"Variable": "$.t", "TimestampLessThan": "2024-01-02T03:04:06Z"}, True),
        ({"Variable": "$.t", "TimestampGreaterThan": "2024-01-02T03:04:06Z"}, False),
        ({"Variable": "$.t", "TimestampLessThanEquals": "2024-01-02T03:04:05Z"}, True),
        ({"Variable": "$.t", "TimestampGreaterThanEquals": "2024-01-02T03:04:05Z"}, True),
        ({"Variable": "$.t", "TimestampEqualsPath": "$.t2"}, True),
        ({"Variable": "$.s", "TimestampEquals": "2024-01-02T03:04:05Z"}, False),
        ({"Variable": "$.s", "StringMatches": "b*a"}, True),
        ({"Variable": "$.s", "StringMatches": "*nan*"}, True),
        ({"Variable": "$.s", "StringMatches": "b*x"}, False),
        ({"Variable": "$.n", "StringMatches": "*"}, False),
        ({"Variable": "$.z", "IsNull": True}, True),
        ({"Variable": "$.s", "IsNull": True}, False),
        ({"Variable": "$.s", "IsPresent": True}, True),
        ({"Variable": "$.nope", "IsPresent": True}, False),
        ({"Variable": "$.nope", "IsPresent": False}, True),
        ({"Variable": "$.n", "IsNumeric": True}, True),
        ({"Variable": "$.b", "IsNumeric": True}, False),
        ({"Variable": "$.s", "IsString": True}, True),
        ({"Variable": "$.b", "IsBoolean": True}, True),
        ({"Variable": "$.t", "IsTimestamp": True}, True),
        ({"Variable": "$.s", "IsTimestamp": False}, True),
        ({"Variable": "$$.Execution.Name", "StringEquals": "e"}, True),
        (
            {
                "And": [
                    {"Variable": "$.n", "NumericEquals": 5},
                    {"Variable": "$.b", "BooleanEquals": True},
                ]
            },
            True,
        ),
        (
            {
                "And": [
                    {"Variable": "$.n", "NumericEquals": 5},
                    {"Variable": "$.b", "BooleanEquals": False},
                ]
            },
            False,
        ),
        (
            {
                "Or": [
                    {"Variable": "$.n", "NumericEquals": 1},
                    {"Variable": "$.s", "IsString": True},
                ]
            },
            True,
        ),
        ({"Not": {"Variable": "$.n", "NumericEquals": 5}}, False),
        ({"Not": {"Or": [{"Variable": "$.nope", "IsPresent": True}]}}, True),
    ],
)
def test_operators(rule, expected):
    assert choose(rule, DATA) is expected


def test_string_matches_escapes():
    assert string_matches_regex(r"log-\*.txt").fullmatch("log-*.txt")
    assert not string_matches_regex(r"log-\*.txt").fullmatch("log-1.txt")
    assert string_matches_regex(r"a\\*").fullmatch("a\\xyz")
    assert string_matches_regex("*.log").fullmatch("x.y.log")
    assert not string_matches_regex("a.c").fullmatch("abc")  # '.' is literal


@pytest.mark.parametrize(
    "rule",
    [
        {"Variable": "$.nope", "StringEquals": "x"},
        {"Variable": "$.nope", "IsNull": True},
        {"Variable": "$.s", "StringEqualsPath": "$.nope"},
    ],
)
def test_missing_variable_is_a_runtime_error(rule):
    definition = {
        "StartAt": "C",
        "States": {
            "C": {"Type": "Choice", "Choices": [{**rule, "Next": "D"}], "Default": "D"},
            "D": {"Type": "Succeed"},
        },
    }
    result = run_in_memory(definition, DATA)
    assert result.status == "FAILED"
    assert result.error == "States.Runtime"
    assert "'C'" in result.cause


def test_no_match_without_default():
    definition = {
        "StartAt": "C",
        "States": {
            "C": {
                "Type": "Choice",
                "Choices": [{"Variable": "$.n", "NumericEquals": 1, "Next": "D"}],
            },
            "D": {"Type": "Succeed"},
        },
    }
    result = run_in_memory(definition, {"n": 2})
    assert (result.status, result.error) == ("FAILED", "States.NoChoiceMatched")


def test_first_matching_rule_wins_and_output_path_applies():
    definition = {
        "StartAt": "C",
        "States": {
            "C": {
                "Type": "Choice",
                "InputPath": "$.in",
                "OutputPath": "$.v",
                "Choices": [
                    {"Variable": "$.v", "NumericGreaterThan": 1, "Next": "A"},
                    {"Variable": "$.v", "NumericGreaterThan": 0, "Next": "B"},
                ],
            },
            "A": {"Type": "Pass", "Result": "A", "End": True},
            "B": {"Type": "Pass", "Result": "B", "End": True},
        },
    }
    assert run_in_memory(definition, {"in": {"v": 5}}).output == "A"
    assert run_in_memory(definition, {"in": {"v": 1}}).output == "B"
    history = run_in_memory(definition, {"in": {"v": 1}}).history
    exited = next(e for e in history if e["type"] == "ChoiceStateExited")
    assert exited["stateExitedEventDetails"]["output"] == "1"


@pytest.mark.parametrize(
    ("rule", "pointer"),
    [
        ({"Variable": "$.a", "StringEquals": 1, "Next": "D"}, "/States/C/Choices/0/StringEquals"),
        (
            {"Variable": "$.a", "NumericEquals": "1", "Next": "D"},
            "/States/C/Choices/0/NumericEquals",
        ),
        (
            {"Variable": "$.a", "TimestampEquals": "yesterday", "Next": "D"},
            "/States/C/Choices/0/TimestampEquals",
        ),
        ({"Variable": "$.a", "IsNull": "yes", "Next": "D"}, "/States/C/Choices/0/IsNull"),
        (
            {"Variable": "$.a", "StringEqualsPath": "nope", "Next": "D"},
            "/States/C/Choices/0/StringEqualsPath",
        ),
        ({"Variable": "a", "StringEquals": "x", "Next": "D"}, "/States/C/Choices/0/Variable"),
        ({"Variable": "$.a", "Next": "D"}, "/States/C/Choices/0"),
        (
            {"Variable": "$.a", "StringEquals": "x", "IsNull": True, "Next": "D"},
            "/States/C/Choices/0",
        ),
        ({"Variable": "$.a", "StringEquals": "x"}, "/States/C/Choices/0"),
        ({"Variable": "$.a", "StringEquals": "x", "Next": "Nope"}, "/States/C/Choices/0/Next"),
        ({"And": [], "Next": "D"}, "/States/C/Choices/0/And"),
        (
            {"And": [{"Variable": "$.a", "IsNull": True, "Next": "D"}], "Next": "D"},
            "/States/C/Choices/0/And/0/Next",
        ),
        ({"Not": {"Variable": "$.a", "Bogus": 1}, "Next": "D"}, "/States/C/Choices/0/Not/Bogus"),
        (
            {"Variable": "$.a", "StringEquals": "x", "Next": "D", "Extra": 1},
            "/States/C/Choices/0/Extra",
        ),
    ],
)
def test_rule_validation(rule, pointer):
    definition = {
        "StartAt": "C",
        "States": {
            "C": {"Type": "Choice", "Choices": [rule], "Default": "D"},
            "D": {"Type": "Succeed"},
        },
    }
    with pytest.raises(DefinitionError) as info:
        load_definition(definition)
    assert pointer in [p for p, _ in info.value.problems], info.value.problems


def test_string_order_is_utf16_code_units_like_java():
    emoji, ligature = "\U0001f600", "\ufb01"  # surrogate pair D83D DE00 sorts before FB01
    assert choose({"Variable": "$.a", "StringLessThan": ligature}, {"a": emoji})
    assert not choose({"Variable": "$.a", "StringGreaterThan": ligature}, {"a": emoji})
    assert choose({"Variable": "$.a", "StringLessThanEquals": "b"}, {"a": "a"})
