"""Differential test: our ASL engine against moto's Step Functions interpreter.

Every case in `asl_corpus/*.json` runs through `shared.engine.run_in_memory` and through a real
moto server. Both must end the same way: same status; same output when SUCCEEDED; same error
(and, for cases marked `compare_cause`, the same cause) when FAILED; both refuse a definition that
either refuses. A case's optional `expect` is the result the AWS documentation gives; our engine
must match it, and so must moto unless the case carries `moto_wrong` (recorded, with references, in
docs/asl-differences.md), in which case only our engine is held to `expect`. A case marked
`"compare_error": false` fails on both sides with an error name AWS does not document; only the
status is compared (the docs page lists both names).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.moto_sfn import ECHO_FUNCTION_ARN, MotoStepFunctions, Outcome

CORPUS_DIR = Path(__file__).parent / "asl_corpus"
DIFFERENCES_DOC = Path(__file__).parents[2] / "docs" / "asl-differences.md"
INVALID_DEFINITION = "INVALID_DEFINITION"
# Step Functions execution names: 1-80 characters, letters, digits, '-' and '_'.
EXECUTION_NAME = re.compile(r"^[A-Za-z0-9_-]{1,80}$")


@dataclass(frozen=True)
class CorpusCase:
    name: str
    source: str
    comment: str
    definition: dict[str, Any]
    input: Any
    expect: dict[str, Any] | None
    moto_wrong: dict[str, str] | None
    compare_cause: bool
    compare_error: bool


def load_corpus() -> list[CorpusCase]:
    cases = []
    for path in sorted(CORPUS_DIR.glob("*.json")):
        for raw in json.loads(path.read_text())["cases"]:
            cases.append(
                CorpusCase(
                    name=raw["name"],
                    source=path.name,
                    comment=raw["comment"],
                    definition=raw["definition"],
                    input=raw["input"],
                    expect=raw.get("expect"),
                    moto_wrong=raw.get("moto_wrong"),
                    compare_cause=bool(raw.get("compare_cause", False)),
                    compare_error=bool(raw.get("compare_error", True)),
                )
            )
    return cases


CASES = load_corpus()


def echo(payload: Any) -> Any:
    """What moto's Docker-less Lambda does for `ECHO_FUNCTION_ARN`: answer with the payload."""
    return copy.deepcopy(payload)


def run_ours(case: CorpusCase) -> Outcome:
    from shared.engine import DefinitionError, load_definition, run_in_memory

    try:
        load_definition(case.definition)
    except DefinitionError as exc:
        return Outcome(status=INVALID_DEFINITION, error=type(exc).__name__, cause=str(exc))
    result = run_in_memory(
        case.definition, case.input, resources={ECHO_FUNCTION_ARN: echo}, name=case.name
    )
    return Outcome(
        status=result.status,
        output=result.output if result.status == "SUCCEEDED" else None,
        error=result.error,
        cause=result.cause,
    )


def disagreements(ours: Outcome, theirs: Outcome, case: CorpusCase) -> list[str]:
    """The ways two outcomes differ, for the fields that matter for their status."""
    if ours.status != theirs.status:
        return [f"status: ours {ours.status}, moto {theirs.status}"]
    found = []
    if ours.status == "SUCCEEDED" and ours.output != theirs.output:
        found.append("output differs")
    if ours.status == "FAILED":
        if case.compare_error and ours.error != theirs.error:
            found.append(f"error: ours {ours.error!r}, moto {theirs.error!r}")
        if case.compare_cause and ours.cause != theirs.cause:
            found.append(f"cause: ours {ours.cause!r}, moto {theirs.cause!r}")
    return found


def departures_from_expected(outcome: Outcome, expect: dict[str, Any]) -> list[str]:
    """Fields of `expect` (written from the AWS docs) that `outcome` does not match."""
    actual = outcome.as_dict()
    return [
        f"{field}: expected {wanted!r}, got {actual[field]!r}"
        for field, wanted in expect.items()
        if actual[field] != wanted
    ]


def report(case: CorpusCase, problems: list[str], **outcomes: Outcome | None) -> str:
    lines = [f"{case.name} ({case.source}): {case.comment}", *[f"  - {p}" for p in problems]]
    if case.expect is not None:
        lines.append(f"  documented: {json.dumps(case.expect, ensure_ascii=False)}")
    for label, outcome in outcomes.items():
        if outcome is not None:
            lines.append(f"  {label}: {json.dumps(outcome.as_dict(), ensure_ascii=False)}")
    if case.moto_wrong is not None:
        lines.append(f"  moto is known wrong here: {case.moto_wrong['reason']}")
    return "\n".join(lines)


@pytest.fixture(scope="module")
def moto_server() -> Iterator[MotoStepFunctions]:
    server = MotoStepFunctions.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def engine_ready() -> None:
    try:
        from shared.engine import run_in_memory  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"shared.engine.run_in_memory is not available yet: {exc}")


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_engine_and_moto_agree(
    case: CorpusCase, engine_ready: None, moto_server: MotoStepFunctions
) -> None:
    ours = run_ours(case)
    theirs = moto_server.run(case.definition, case.input, name=case.name)
    problems = []
    if case.expect is not None:
        problems += [f"engine {p}" for p in departures_from_expected(ours, case.expect)]
    if case.moto_wrong is None:
        problems += disagreements(ours, theirs, case)
        if case.expect is not None:
            problems += [
                f"moto {p} (not marked moto_wrong: check the docs and record it)"
                for p in departures_from_expected(theirs, case.expect)
            ]
    assert not problems, report(case, problems, engine=ours, moto=theirs)


# -- the corpus itself ------------------------------------------------------------------------


def test_corpus_is_large_and_well_formed() -> None:
    assert len(CASES) >= 40
    names = [case.name for case in CASES]
    assert len(names) == len(set(names)), "case names must be unique"
    for case in CASES:
        assert EXECUTION_NAME.match(case.name), f"{case.name} is not a valid execution name"
        assert case.comment, f"{case.name} has no comment"
        assert "StartAt" in case.definition and "States" in case.definition, case.name
        if case.moto_wrong is not None:
            assert case.expect is not None, f"{case.name}: moto_wrong needs a documented expect"
            assert case.moto_wrong.get("reason") and case.moto_wrong.get("reference"), case.name
        if case.expect is not None:
            assert set(case.expect) <= {"status", "output", "error", "cause"}, case.name
        if not case.compare_error:
            assert case.expect is not None and "error" not in case.expect, case.name


def test_corpus_covers_every_state_type_and_intrinsic() -> None:
    text = json.dumps([case.definition for case in CASES])
    for state_type in ("Pass", "Task", "Choice", "Wait", "Succeed", "Fail", "Parallel", "Map"):
        assert f'"Type": "{state_type}"' in text, state_type
    intrinsics = [
        "Format", "StringToJson", "JsonToString", "Array", "ArrayPartition", "ArrayContains",
        "ArrayRange", "ArrayGetItem", "ArrayLength", "ArrayUnique", "Base64Encode",
        "Base64Decode", "Hash", "JsonMerge", "MathRandom", "MathAdd", "StringSplit", "UUID",
    ]  # fmt: skip
    for name in intrinsics:
        assert f"States.{name}(" in text, name


def test_every_moto_difference_is_documented() -> None:
    documented = DIFFERENCES_DOC.read_text()
    missing = [
        case.name
        for case in CASES
        if case.moto_wrong is not None and f"`{case.name}`" not in documented
    ]
    assert not missing, f"add these moto_wrong cases to {DIFFERENCES_DOC}: {missing}"
