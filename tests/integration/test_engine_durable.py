"""The durable engine on the real local adapters (DirectoryStateStore + SqliteQueue), with its
workers in separate processes that are SIGKILLed at random moments and restarted.

Acceptance: every execution SUCCEEDS with the right output, and each task attempt's keyed side
effect happened exactly once, however many times workers died — whether a kill hit a step
before its record write, between the write and the queue sends, inside a task, or during an ack.

The task function lives in this module (`effect`) so the worker processes can import it; it
writes to the directory named by ENGINE_TEST_DIR:
- `calls.log`: one line per raw invocation (a killed-in-the-middle invocation may repeat);
- `effects/<digest of the idempotency key>`: created with O_EXCL — the side effect that must
  happen exactly once, keyed on the idempotency key as handlers are asked to do.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from shared.adapters.local.sqlite_queue import SqliteQueue
from shared.adapters.local.state_store import DirectoryStateStore
from shared.clock import SystemClock
from shared.engine.durable import DEAD_LETTER_QUEUE, DurableDriver
from shared.engine.idempotency import TaskIdempotency
from shared.engine.invoker import InProcessInvoker, TaskContext
from shared.engine.service import ExecutionService

REPO = Path(__file__).resolve().parents[2]
ENV_DIR = "ENGINE_TEST_DIR"


def effect(payload: Any, context: TaskContext) -> Any:
    """A task whose side effect is keyed on the idempotency key."""
    base = Path(os.environ[ENV_DIR])
    key = context.idempotency_key or ""
    with open(base / "calls.log", "a", encoding="utf-8") as log:
        log.write(key + "\n")
    time.sleep(0.01)  # widen the window in which a kill lands inside the task
    marker = base / "effects" / hashlib.sha256(key.encode()).hexdigest()
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        pass  # the effect already happened for this key
    else:
        with os.fdopen(fd, "w") as out:
            out.write(key)
    time.sleep(0.01)
    return {"did": payload}


DEFINITION = {
    "Comment": "Task, Wait, Choice, Map and Parallel, for the kill test",
    "StartAt": "Prepare",
    "States": {
        "Prepare": {
            "Type": "Task",
            "Resource": "fn:effect",
            "Parameters": {"step": "prepare", "n.$": "$.n"},
            "ResultPath": "$.prepared",
            "Next": "Pause",
        },
        "Pause": {"Type": "Wait", "Seconds": 1, "Next": "Route"},
        "Route": {
            "Type": "Choice",
            "Choices": [{"Variable": "$.items[0]", "IsPresent": True, "Next": "Fan"}],
            "Default": "Finish",
        },
        "Fan": {
            "Type": "Map",
            "ItemsPath": "$.items",
            "MaxConcurrency": 3,
            "ItemSelector": {"step": "item", "value.$": "$$.Map.Item.Value"},
            "ItemProcessor": {
                "StartAt": "Work",
                "States": {"Work": {"Type": "Task", "Resource": "fn:effect", "End": True}},
            },
            "ResultPath": "$.mapped",
            "Next": "Both",
        },
        "Both": {
            "Type": "Parallel",
            "Branches": [
                {
                    "StartAt": "Left",
                    "States": {
                        "Left": {
                            "Type": "Task",
                            "Resource": "fn:effect",
                            "Parameters": {"step": "left"},
                            "End": True,
                        }
                    },
                },
                {
                    "StartAt": "Right",
                    "States": {
                        "Right": {
                            "Type": "Task",
                            "Resource": "fn:effect",
                            "Parameters": {"step": "right"},
                            "End": True,
                        }
                    },
                },
            ],
            "ResultPath": "$.both",
            "Next": "Finish",
        },
        "Finish": {
            "Type": "Task",
            "Resource": "fn:effect",
            "Parameters": {"step": "finish", "count.$": "States.ArrayLength($.mapped)"},
            "ResultPath": "$.finished",
            "End": True,
        },
    },
}
ITEMS = 8
TASKS_PER_EXECUTION = 1 + ITEMS + 2 + 1
EXECUTIONS_PER_ROUND = 3
MIN_KILLS = 25


def execution_input(n: int) -> dict[str, Any]:
    return {"n": n, "items": list(range(n * 10, n * 10 + ITEMS))}


def expected_output(n: int) -> dict[str, Any]:
    items = list(range(n * 10, n * 10 + ITEMS))
    return {
        "n": n,
        "items": items,
        "prepared": {"did": {"step": "prepare", "n": n}},
        "mapped": [{"did": {"step": "item", "value": v}} for v in items],
        "both": [{"did": {"step": "left"}}, {"did": {"step": "right"}}],
        "finished": {"did": {"step": "finish", "count": ITEMS}},
    }


class Workers:
    """Worker processes (`troveless sfn worker`), killed and restarted on demand."""

    def __init__(self, data_dir: Path, effects_dir: Path, count: int) -> None:
        self.data_dir = data_dir
        self.env = {**os.environ, ENV_DIR: str(effects_dir), "TROVELESS_LOG_LEVEL": "ERROR"}
        self.procs: list[subprocess.Popen[bytes]] = [self.spawn() for _ in range(count)]
        self.kills = 0

    def spawn(self) -> subprocess.Popen[bytes]:
        command = [
            sys.executable,
            "-m",
            "infra.cli.main",
            "sfn",
            "worker",
            "--data-dir",
            str(self.data_dir),
            "--resource",
            "fn:effect=tests.integration.test_engine_durable:effect",
            "--visibility-timeout",
            "2",
            "--task-lease",
            "2",
        ]
        return subprocess.Popen(
            command, cwd=REPO, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def kill_one(self, rng: random.Random) -> None:
        index = rng.randrange(len(self.procs))
        proc = self.procs[index]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        self.kills += 1
        self.procs[index] = self.spawn()

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:  # pragma: no cover - a wedged child
                proc.kill()


def open_service(data_dir: Path) -> tuple[ExecutionService, SqliteQueue]:
    clock = SystemClock()
    store = DirectoryStateStore(data_dir / "state", clock=clock)
    queue = SqliteQueue(data_dir / "queues.db", clock=clock)
    # The test process only starts and inspects executions; it runs no task.
    driver = DurableDriver(
        store, queue, InProcessInvoker(), clock, idempotency=TaskIdempotency(store, clock)
    )
    return ExecutionService(driver), queue


def wait_until(condition: Any, deadline_seconds: float, what: str) -> None:
    deadline = time.monotonic() + deadline_seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_executions_survive_random_sigkills_with_effects_exactly_once(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    effects_dir = tmp_path / "effects-root"
    (effects_dir / "effects").mkdir(parents=True)
    (effects_dir / "calls.log").touch()
    service, queue = open_service(data_dir)
    rng = random.Random(20261122)
    workers = Workers(data_dir, effects_dir, count=2)
    arns: list[str] = []

    def all_done() -> bool:
        return all(service.describe(arn).status.is_terminal for arn in arns)

    try:
        # Rounds of executions, each killed at random while it runs, until enough kills have
        # landed (a fast machine finishes a round before many kills happen).
        deadline = time.monotonic() + 180
        while workers.kills < MIN_KILLS and time.monotonic() < deadline:
            first = len(arns)
            arns.extend(
                service.start("kill-test", DEFINITION, execution_input(n), name=f"run-{n}").arn
                for n in range(first, first + EXECUTIONS_PER_ROUND)
            )
            while not all_done() and time.monotonic() < deadline:
                time.sleep(rng.uniform(0.05, 0.5))
                workers.kill_one(rng)
        wait_until(all_done, 120, "the executions to finish after the kills")
    finally:
        workers.stop()

    assert workers.kills >= MIN_KILLS
    for n, arn in enumerate(arns):
        described = service.describe(arn)
        assert described.status == "SUCCEEDED", (described.error, described.cause)
        assert described.output == expected_output(n)
        history = service.history(arn)
        assert [e["id"] for e in history] == list(range(1, len(history) + 1))
        assert history[-1]["type"] == "ExecutionSucceeded"
    tasks = len(arns) * TASKS_PER_EXECUTION
    effects = sorted(p.name for p in (effects_dir / "effects").iterdir())
    assert len(effects) == tasks  # each attempt's keyed effect: exactly once
    calls = Counter((effects_dir / "calls.log").read_text().split())
    assert len(calls) == tasks
    # A key is invoked again only when a kill interrupted a worker inside it or before its
    # outcome was recorded: at most once per kill.
    assert sum(calls.values()) <= tasks + workers.kills
    assert queue.count(DEAD_LETTER_QUEUE) == 0


@pytest.mark.slow
def test_cli_durable_run_on_the_local_adapters(tmp_path: Path) -> None:
    definition = tmp_path / "flow.asl.json"
    definition.write_text(
        json.dumps(
            {
                "StartAt": "Map",
                "States": {
                    "Map": {
                        "Type": "Map",
                        "ItemProcessor": {
                            "StartAt": "E",
                            "States": {"E": {"Type": "Task", "Resource": "fn:effect", "End": True}},
                        },
                        "Next": "Nap",
                    },
                    "Nap": {"Type": "Wait", "Seconds": 1, "End": True},
                },
            }
        )
    )
    (tmp_path / "effects").mkdir()
    env = {**os.environ, ENV_DIR: str(tmp_path), "TROVELESS_LOG_LEVEL": "ERROR"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "infra.cli.main",
            "sfn",
            "run",
            str(definition),
            "--input",
            "[1, 2, 3]",
            "--durable",
            "--data-dir",
            str(tmp_path / "data"),
            "--resource",
            "fn:effect=tests.integration.test_engine_durable:effect",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [{"did": 1}, {"did": 2}, {"did": 3}]
    assert len(list((tmp_path / "effects").iterdir())) == 3
    assert (tmp_path / "data" / "state").is_dir()
