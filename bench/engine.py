"""State-machine engine figures: transitions per second.

`python -m bench.engine` prints the table; `run()` returns the rows for `python -m bench`.

A *transition* is a state entered (one `...StateEntered` event), the unit Step Functions bills.

In memory, beside moto (issue goal: >= 10x moto). The same definitions run through our
in-memory driver and through moto's Step Functions interpreter (a port of LocalStack's), in this
process, in the same run: `mock_aws(config={"stepfunctions": {"execute_state_machine": True}})`,
boto3 `create_state_machine` + `start_execution`, then `describe_execution` polled until the
execution ends; moto's time is from the start call to the first poll that sees it ended (polls
every 2 ms, so that adds at most a few ms to runs of a second or more). Floor = moto's figure.

- pass chain: 1,000 Pass states in a row.
- map: a Map over 1,000 items whose processor is one Pass state with Parameters (1,001
  transitions: the Map state and each iteration's Pass).

Durable, on the local adapters (issue goal: >= 500 transitions/s). A DirectoryStateStore
(default durability: each revision fsynced) and a SqliteQueue in a temporary directory, worker
threads in this process. Timed from `start` until the execution record says SUCCEEDED.

- pass chain: the same 1,000 Pass states. Pass/Choice chains are advanced inside one step (they
  have no side effect to make durable), so this is one queue message and a handful of writes:
  it measures the interpreter plus history paging, not the durability machinery.
- task chain: 200 Task states calling an in-process function. Every task is a durability
  boundary: claim its idempotency key, call, record the outcome, compare-and-swap the
  execution record (4 store writes). This is the figure that says what a durable step costs.
- map of tasks: a Map over 200 items whose processor is one Task, MaxConcurrency 0 (all at
  once), 2 workers (this thread and one more): the fan-out path (invoke messages handled in
  batches whose outcomes share one compare-and-swap; the two workers' writes conflict and are
  retried).
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from shared.engine import load_definition, run_in_memory
from shared.engine.definition import Definition

CHAIN = 1000
MAP_ITEMS = 1000
DURABLE_TASKS = 200
DURABLE_MAP_ITEMS = 200
MIN_SECONDS = 0.5


def pass_chain(length: int) -> dict[str, Any]:
    states: dict[str, Any] = {
        f"S{i}": {"Type": "Pass", "Next": f"S{i + 1}"} for i in range(length - 1)
    }
    states[f"S{length - 1}"] = {"Type": "Pass", "End": True}
    return {"StartAt": "S0", "States": states}


def task_chain(length: int) -> dict[str, Any]:
    states: dict[str, Any] = {
        f"T{i}": {"Type": "Task", "Resource": "fn:inc", "Next": f"T{i + 1}"}
        for i in range(length - 1)
    }
    states[f"T{length - 1}"] = {"Type": "Task", "Resource": "fn:inc", "End": True}
    return {"StartAt": "T0", "States": states}


def map_of(processor: dict[str, Any]) -> dict[str, Any]:
    return {
        "StartAt": "M",
        "States": {
            "M": {
                "Type": "Map",
                "ItemProcessor": {"StartAt": "P", "States": {"P": {**processor, "End": True}}},
                "End": True,
            }
        },
    }


PASS_PROCESSOR = {"Type": "Pass", "Parameters": {"value.$": "$"}}
TASK_PROCESSOR = {"Type": "Task", "Resource": "fn:inc"}


def _transitions(history: list[dict[str, Any]]) -> int:
    return sum(1 for event in history if event["type"].endswith("StateEntered"))


def _inc(value: Any) -> Any:
    return value + 1 if isinstance(value, int) else 1


# --------------------------------------------------------------------------- in memory


def in_memory_rate(definition: Definition, input_value: Any) -> float:
    """Transitions/s of repeated in-memory runs (at least MIN_SECONDS in all)."""
    transitions = 0
    started = time.perf_counter()
    while True:
        result = run_in_memory(definition, input_value, {"fn:inc": _inc})
        assert result.status == "SUCCEEDED", (result.error, result.cause)
        transitions += _transitions(result.history)
        elapsed = time.perf_counter() - started
        if elapsed >= MIN_SECONDS:
            return transitions / elapsed


def moto_rates(cases: list[tuple[dict[str, Any], Any, int]]) -> list[float]:
    """Transitions/s of moto's interpreter for each (definition, input, transitions) case."""
    import boto3
    from moto import mock_aws

    rates: list[float] = []
    with mock_aws(config={"stepfunctions": {"execute_state_machine": True}}):
        client = boto3.client("stepfunctions", region_name="us-east-1")
        for definition, input_value, transitions in cases:
            machine = client.create_state_machine(
                name=f"bench-{uuid.uuid4().hex[:12]}",
                definition=json.dumps(definition),
                roleArn="arn:aws:iam::123456789012:role/bench",
            )["stateMachineArn"]
            started = time.perf_counter()
            execution = client.start_execution(
                stateMachineArn=machine, name=uuid.uuid4().hex, input=json.dumps(input_value)
            )["executionArn"]
            while True:
                described = client.describe_execution(executionArn=execution)
                if described["status"] != "RUNNING":
                    break
                time.sleep(0.002)
            elapsed = time.perf_counter() - started
            if described["status"] != "SUCCEEDED":
                raise RuntimeError(f"moto's execution ended {described['status']}")
            rates.append(transitions / elapsed)
    return rates


# --------------------------------------------------------------------------- durable


def durable_rate(
    definition: dict[str, Any], input_value: Any, *, workers: int, workdir: Path
) -> float:
    """Transitions/s from `start` until the execution record says SUCCEEDED.

    One worker runs in this thread and checks the record after each batch it handles (exact
    end time, no polling thread competing for the GIL); more workers run in threads while
    this thread polls every 10 ms."""
    from infra.cli.sfn import local_engine
    from shared.engine.durable import execution_key
    from shared.engine.invoker import InProcessInvoker

    driver, service = local_engine(workdir, InProcessInvoker({"fn:inc": _inc}))
    name = uuid.uuid4().hex
    key = execution_key("bench", name)

    def finished() -> bool:
        loaded = driver.load(key)
        return loaded is not None and loaded.state.status != "RUNNING"

    stop = threading.Event()
    pool = [
        threading.Thread(target=driver.work, args=(stop.is_set,), kwargs={"wait_seconds": 0.05})
        for _ in range(workers - 1)
    ]
    for thread in pool:
        thread.start()
    try:
        started = time.perf_counter()
        arn = service.start("bench", definition, input_value, name=name).arn
        if pool:
            while not finished():
                time.sleep(0.01)
        else:
            while not finished():
                driver.process_batch(driver.receive(10, 0.05))
        elapsed = time.perf_counter() - started
    finally:
        stop.set()
        for thread in pool:
            thread.join()
    described = service.describe(arn)
    if described.status != "SUCCEEDED":
        raise RuntimeError(f"durable run ended {described.status}: {described.cause}")
    return _transitions(service.history(arn)) / elapsed


def _row(figure: str, value: float, goal: str, floor: float | None = None) -> dict[str, Any]:
    return {
        "figure": figure,
        "value": round(value),
        "unit": "transitions/s",
        "goal": goal,
        "floor": round(floor) if floor else None,
        "ratio": round(value / floor, 1) if floor else None,
    }


def run() -> list[dict[str, Any]]:
    chain = pass_chain(CHAIN)
    mapped = map_of(PASS_PROCESSOR)
    items = list(range(MAP_ITEMS))
    chain_rate = in_memory_rate(load_definition(chain), {"x": 1})
    map_rate = in_memory_rate(load_definition(mapped), items)
    moto_chain, moto_map = moto_rates([(chain, {"x": 1}, CHAIN), (mapped, items, MAP_ITEMS + 1)])
    durable: dict[str, float] = {}
    cases: list[tuple[str, dict[str, Any], Any, int]] = [
        ("chain", chain, {"x": 1}, 1),
        ("tasks", task_chain(DURABLE_TASKS), 0, 1),
        ("map", map_of(TASK_PROCESSOR), list(range(DURABLE_MAP_ITEMS)), 2),
    ]
    for name, definition, input_value, workers in cases:
        with tempfile.TemporaryDirectory(prefix="bench-engine-") as tmp:
            durable[name] = durable_rate(
                definition, input_value, workers=workers, workdir=Path(tmp)
            )
    return [
        _row(
            f"in-memory, {CHAIN}-state Pass chain (floor: moto)",
            chain_rate,
            ">= 10x moto",
            moto_chain,
        ),
        _row(
            f"in-memory, Map over {MAP_ITEMS} items (floor: moto)",
            map_rate,
            ">= 10x moto",
            moto_map,
        ),
        _row(f"moto, {CHAIN}-state Pass chain", moto_chain, "(reference)"),
        _row(f"moto, Map over {MAP_ITEMS} items", moto_map, "(reference)"),
        _row(f"durable local, {CHAIN}-state Pass chain", durable["chain"], ">= 500"),
        _row(f"durable local, {DURABLE_TASKS}-Task chain", durable["tasks"], ">= 500"),
        _row(
            f"durable local, Map of {DURABLE_MAP_ITEMS} Tasks, 2 workers", durable["map"], ">= 500"
        ),
    ]


def _print_table(rows: list[dict[str, Any]]) -> None:
    columns = ["figure", "value", "unit", "goal", "floor", "ratio"]
    widths = {c: max(len(c), *(len(str(row[c])) for row in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(str(row[c]).ljust(widths[c]) for c in columns))


if __name__ == "__main__":
    _print_table(run())
