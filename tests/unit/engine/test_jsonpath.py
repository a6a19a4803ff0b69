import pytest

from shared.engine.jsonpath import (
    PathAssignError,
    PathNotFoundError,
    PathSyntaxError,
    parse_path,
    parse_reference_path,
)

DATA = {
    "a": {"b": [1, 2, {"c": 3}]},
    "items": [{"x": 1, "n": "a"}, {"x": 5, "n": "b"}, {"x": 3, "n": "c", "tag": True}],
    "dash-name": 7,
    "with space": 8,
    "empty": [],
}


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("$", DATA),
        ("$.a.b[2].c", 3),
        ("$.a.b[0]", 1),
        ("$.a.b[-1]", {"c": 3}),
        ("$['a']['b'][1]", 2),
        ('$["with space"]', 8),
        ("$.dash-name", 7),
        ("$.a.b.length()", 3),
        ("$.a.b[*]", [1, 2, {"c": 3}]),
        ("$.items[*].n", ["a", "b", "c"]),
        ("$.items[0:2].x", [1, 5]),
        ("$.items[-1:].n", ["c"]),
        ("$.items[::2].n", ["a", "c"]),
        ("$.items[0,2].n", ["a", "c"]),
        ("$['a','dash-name']", [{"b": [1, 2, {"c": 3}]}, 7]),
        ("$..c", [3]),
        ("$..x", [1, 5, 3]),
        ("$.items[?(@.x > 2)].n", ["b", "c"]),
        ("$.items[?(@.x >= 3 && @.n != 'c')].n", ["b"]),
        ("$.items[?(@.n == 'a' || @.x == 3)].x", [1, 3]),
        ("$.items[?(@.tag)].n", ["c"]),
        ("$.items[?(!@.tag)].n", ["a", "b"]),
        ("$.items[?(@.x < $.a.b[2].c)].n", ["a"]),
        ("$.empty[*]", []),
        ("$.missing[*]", []),
    ],
)
def test_find(path, expected):
    assert parse_path(path).find(DATA) == expected


@pytest.mark.parametrize("path", ["$.missing", "$.a.b[3]", "$.a.b[-4]", "$.a.b.c", "$.dash-name.x"])
def test_definite_path_that_matches_nothing_raises(path):
    with pytest.raises(PathNotFoundError):
        parse_path(path).find(DATA)


def test_definite_and_reference_classification():
    assert parse_path("$.a[0].b").reference
    assert parse_path("$.a.length()").definite
    assert not parse_path("$.a.length()").reference
    for indefinite in ("$.a[*]", "$..a", "$.a[0:1]", "$.a[0,1]", "$.a[?(@.x)]"):
        assert not parse_path(indefinite).definite


def test_exists():
    assert parse_path("$.a.b").exists(DATA)
    assert not parse_path("$.nope").exists(DATA)
    assert not parse_path("$.nope[*]").exists(DATA)
    assert parse_path("$.items[?(@.x > 4)]").exists(DATA)


@pytest.mark.parametrize(
    "bad",
    ["a.b", "$.", "$[", "$.a[", "$.a[1:2:0]", "$.a[?(@.x ==)]", "$.a b", "$['unterminated]"],
)
def test_syntax_errors(bad):
    with pytest.raises(PathSyntaxError):
        parse_path(bad)


def test_context_paths_only_where_allowed():
    assert parse_path("$$.Execution.Id").context
    with pytest.raises(PathSyntaxError):
        parse_path("$$.Execution.Id", allow_context=False)


@pytest.mark.parametrize("bad", ["$.a[*]", "$..a", "$.a[0:1]", "$.a.length()"])
def test_reference_paths_reject_operators(bad):
    with pytest.raises(PathSyntaxError, match="reference path"):
        parse_reference_path(bad)


def test_assign_creates_missing_objects_and_copies():
    original = {"keep": 1, "x": {"y": 1}}
    out = parse_reference_path("$.x.z.w").assign(original, 5)
    assert out == {"keep": 1, "x": {"y": 1, "z": {"w": 5}}}
    assert original == {"keep": 1, "x": {"y": 1}}  # not modified


def test_assign_root_replaces():
    assert parse_reference_path("$").assign({"a": 1}, [1]) == [1]


def test_assign_into_array_index():
    assert parse_reference_path("$.a[1]").assign({"a": [0, 0]}, 9) == {"a": [0, 9]}


@pytest.mark.parametrize(
    ("path", "data"),
    [("$.a.b", {"a": "string"}), ("$.x", [1, 2]), ("$.a[5]", {"a": [1]}), ("$.a[0]", {"a": {}})],
)
def test_assign_failures(path, data):
    with pytest.raises(PathAssignError):
        parse_reference_path(path).assign(data, 1)


def test_deeply_nested_document_does_not_exhaust_the_stack():
    doc: dict = {}
    node = doc
    for _ in range(5000):
        node["n"] = {}
        node = node["n"]
    node["leaf"] = 1
    assert parse_path("$..leaf").find(doc) == [1]


def test_filter_comparisons_follow_json_types():
    data = {"v": [{"a": True}, {"a": 1}, {"a": "1"}, {"a": 1.0}]}
    assert parse_path("$.v[?(@.a == 1)]").find(data) == [{"a": 1}, {"a": 1.0}]
    assert parse_path("$.v[?(@.a == true)]").find(data) == [{"a": True}]
    assert parse_path("$.v[?(@.a > '0')]").find(data) == [{"a": "1"}]
