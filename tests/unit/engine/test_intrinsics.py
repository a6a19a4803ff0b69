import hashlib
import uuid

import pytest

from shared.engine.intrinsics import (
    IntrinsicEvaluationError,
    IntrinsicSyntaxError,
    PathArgumentNotFoundError,
    parse_intrinsic,
)

DATA = {
    "name": "Arnav",
    "template": "Hello, my name is {}.",
    "arr": [1, 2, 2, 3, 1],
    "obj": {"a": 1, "b": [2, "x"], "c": None},
    "json": '{"foo": "bar", "n": [1, 2]}',
    "arn": "arn:aws:imagebuilder:us-east-1:123456789012:image-recipe/myrecipe.build/1.0.3",
}
CONTEXT = {"Execution": {"Name": "exec-1"}}


def ev(text, data=DATA):
    return parse_intrinsic(text).evaluate(data, CONTEXT)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("States.Format('Hello, my name is {}.', $.name)", "Hello, my name is Arnav."),
        ("States.Format($.template, $.name)", "Hello, my name is Arnav."),
        ("States.Format('{} {} {} {}', 1, 2.5, true, null)", "1 2.5 true null"),
        ("States.Format('obj={}', $.obj)", "obj={a=1, b=[2, x], c=null}"),
        ("States.Format('esc \\{\\} \\'q\\' \\\\ {}', 'x')", "esc {} 'q' \\ x"),
        ("States.Format('exec {}', $$.Execution.Name)", "exec exec-1"),
        ("States.StringToJson($.json)", {"foo": "bar", "n": [1, 2]}),
        ("States.JsonToString($.obj)", '{"a":1,"b":[2,"x"],"c":null}'),
        ("States.Array()", []),
        ("States.Array(1, 'two', $.obj.a, States.Array(null))", [1, "two", 1, [None]]),
        ("States.ArrayPartition($.arr, 2)", [[1, 2], [2, 3], [1]]),
        ("States.ArrayPartition(States.Array(), 2)", []),
        ("States.ArrayContains($.arr, 3)", True),
        ("States.ArrayContains($.arr, 9)", False),
        ("States.ArrayContains(States.Array(true), 1)", False),
        ("States.ArrayRange(1, 9, 2)", [1, 3, 5, 7, 9]),
        ("States.ArrayRange(5, 1, -2)", [5, 3, 1]),
        ("States.ArrayGetItem($.arr, 3)", 3),
        ("States.ArrayLength($.arr)", 5),
        ("States.ArrayUnique($.arr)", [1, 2, 3]),
        ("States.Base64Encode('Data to encode')", "RGF0YSB0byBlbmNvZGU="),
        ("States.Base64Decode('RGF0YSB0byBlbmNvZGU=')", "Data to encode"),
        ("States.Hash('input data', 'SHA-1')", "aaff4a450a104cd177d28d18d74485e8cae074b7"),
        ("States.Hash('x', 'MD5')", hashlib.md5(b"x").hexdigest()),
        ("States.Hash('x', 'SHA-256')", hashlib.sha256(b"x").hexdigest()),
        ("States.Hash('x', 'SHA-384')", hashlib.sha384(b"x").hexdigest()),
        ("States.Hash('x', 'SHA-512')", hashlib.sha512(b"x").hexdigest()),
        (
            'States.JsonMerge($.obj, States.StringToJson(\'{"a": 9, "d": 1}\'), false)',
            {"a": 9, "b": [2, "x"], "c": None, "d": 1},
        ),
        ("States.MathAdd(111, -1)", 110),
        ("States.MathAdd($.obj.a, 2)", 3),
        (
            "States.StringSplit('This.is+a,test=string', '.+,=')",
            ["This", "is", "a", "test", "string"],
        ),
        ("States.StringSplit('a,,b', ',')", ["a", "b"]),
        (
            "States.Format('{}.{}', States.ArrayGetItem(States.StringSplit("
            "States.ArrayGetItem(States.StringSplit($.arn, '/'), 2), '.'), 0), "
            "States.ArrayGetItem(States.StringSplit(States.ArrayGetItem("
            "States.StringSplit($.arn, '/'), 2), '.'), 1))",
            "1.0",
        ),
    ],
)
def test_functions(text, expected):
    assert ev(text) == expected


def test_math_random_range_and_seed():
    values = {ev("States.MathRandom(1, 4)") for _ in range(200)}
    assert values == {1, 2, 3}  # the end is exclusive
    assert {ev("States.MathRandom(1, 2)") for _ in range(50)} == {1}
    assert ev("States.MathRandom(1, 1000, 7)") == ev("States.MathRandom(1, 1000, 7)")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("States.MathAdd(1.2, 2.5)", 4),  # 1 + 3: halves round up, like Java's Math.round
        ("States.MathAdd(-1.5, 0)", -1),
        ("States.ArrayRange(1.2, 3.6, 0.9)", [1, 2, 3, 4]),
        ("States.ArrayPartition(States.Array(1, 2, 3), 1.6)", [[1, 2], [3]]),
    ],
)
def test_non_integers_are_rounded_where_aws_rounds(text, expected):
    assert ev(text) == expected


def test_uuid_is_v4():
    value = ev("States.UUID()")
    assert uuid.UUID(value).version == 4
    assert ev("States.UUID()") != value


@pytest.mark.parametrize(
    "text",
    [
        "States.Format('{} {}', 1)",
        "States.Nope(1)",
        "States.Format('bad \\x escape')",
        "States.ArrayLength()",
        "States.ArrayLength($.a, $.b)",
        "States.UUID(1)",
        "States.Array(1,",
        "States.Array(1) trailing",
        "States.ArrayGetItem($.arr, 'x')",
        "States.ArrayPartition($.arr, true)",
        "States.Format('unterminated)",
        "States.Array($.[)",
        "States.Array(" * 12 + ")" * 12,
        "States.Hash('x', 5)",
    ],
)
def test_syntax_errors_are_caught_at_parse_time(text):
    with pytest.raises(IntrinsicSyntaxError):
        parse_intrinsic(text)


@pytest.mark.parametrize(
    "text",
    [
        "States.Format($.template)",  # one placeholder, no argument (template from a path)
        "States.StringToJson($.name)",
        "States.ArrayPartition($.arr, 0)",
        "States.ArrayPartition($.name, 2)",
        "States.ArrayRange(1, 5000, 1)",
        "States.ArrayRange(1, 5, 0)",
        "States.ArrayGetItem($.arr, 10)",
        "States.ArrayLength($.name)",
        "States.Base64Decode('***')",
        "States.Hash($.arr, 'SHA-1')",
        "States.Hash('x', 'SHA-3')",
        "States.JsonMerge($.obj, $.obj, true)",
        "States.JsonMerge($.arr, $.obj, false)",
        "States.MathRandom(5, 1)",
        "States.MathRandom(1, 1)",
        "States.MathAdd('1', 2)",
        "States.StringSplit($.arr, ',')",
        "States.Format('{}', $.obj.c, 1)",
    ],
)
def test_runtime_failures(text):
    with pytest.raises((IntrinsicEvaluationError, IntrinsicSyntaxError)):
        ev(text)


def test_missing_path_argument():
    with pytest.raises(PathArgumentNotFoundError) as info:
        ev("States.Format('{}', $.nope)")
    assert info.value.path == "$.nope"


def test_base64_limit():
    with pytest.raises(IntrinsicEvaluationError, match="10000"):
        ev("States.Base64Encode($.s)", {"s": "x" * 10001})
