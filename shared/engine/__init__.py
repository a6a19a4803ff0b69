"""The embedded Amazon States Language engine (JSONPath query language).

Public API:

    load_definition(obj_or_json_text) -> Definition      raises DefinitionError(.problems)
    run_in_memory(definition, input, resources=None, *, name=None) -> ExecutionResult

Layers: `definition` (load + validate + compile), `core` (the pure transition function),
drivers (`memory` in-process, `durable` over the StateStore/Queue ports), `service` (the
Step Functions-like API over the durable driver).
"""

from shared.engine.definition import Definition, load_definition
from shared.engine.errors import DefinitionError, TaskError
from shared.engine.invoker import InProcessInvoker, TaskContext
from shared.engine.memory import ExecutionResult, InMemoryExecution, run_in_memory

__all__ = [
    "Definition",
    "DefinitionError",
    "ExecutionResult",
    "InMemoryExecution",
    "InProcessInvoker",
    "TaskContext",
    "TaskError",
    "load_definition",
    "run_in_memory",
]
