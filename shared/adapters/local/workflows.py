"""Workflows on the embedded engine: definitions from the state_machines/ directory, executions
kept by the durable driver (StateStore + Queue)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

from shared.engine.definition import Definition, load_definition
from shared.engine.service import ExecutionService
from shared.errors import NotFoundError
from shared.ports import JSON

SUFFIX = ".asl.json"


class EngineWorkflows:
    """The Workflows port over `ExecutionService`."""

    def __init__(self, service: ExecutionService, definitions_dir: Path) -> None:
        self.service = service
        self.definitions_dir = Path(definitions_dir)

    def definition(self, state_machine: str) -> Definition:
        return _load(self.definitions_dir / f"{state_machine}{SUFFIX}")

    def start(self, state_machine: str, input_value: JSON, *, name: str | None = None) -> str:
        execution = self.service.start(
            state_machine, self.definition(state_machine), input_value, name=name
        )
        return execution.arn

    def describe(self, execution_arn: str) -> JSON:
        return self.service.describe(execution_arn).model_dump(mode="json")

    def send_task_success(self, task_token: str, output: JSON) -> None:
        self.service.send_task_success(task_token, output)

    def send_task_failure(self, task_token: str, error: str, cause: str) -> None:
        self.service.send_task_failure(task_token, error, cause)

    def send_task_heartbeat(self, task_token: str) -> None:
        self.service.send_task_heartbeat(task_token)


@cache
def _load(path: Path) -> Definition:
    # Definitions are part of the deployed code: read and validated once per process.
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise NotFoundError(path.name, "state machine definition") from None
    return load_definition(json.loads(text))
