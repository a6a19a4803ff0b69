"""Errors of the state-machine engine: definition problems, runtime `States.*` errors, task errors.

Three families, kept apart on purpose:

- `DefinitionError`: the definition is rejected before anything runs; `.problems` lists every
  problem as `(json_pointer, message)`.
- `StatesRuntimeError`: something went wrong while a state processed its data (a path that
  matches nothing, an intrinsic that failed...). It carries the standard error name that ends
  up in the history and in the execution's `error`; it never escapes the engine as a traceback.
- `TaskError`: what a task function raises to fail with an explicit error name and cause (any
  other exception fails the task with the exception's class name, as Lambda does).
"""

from __future__ import annotations

from shared.errors import TrovelessError

# Standard error names (Amazon States Language, appendix A, plus those AWS added since).
ALL = "States.ALL"
TASK_FAILED = "States.TaskFailed"
TIMEOUT = "States.Timeout"
HEARTBEAT_TIMEOUT = "States.HeartbeatTimeout"
NO_CHOICE_MATCHED = "States.NoChoiceMatched"
PARAMETER_PATH_FAILURE = "States.ParameterPathFailure"
RESULT_PATH_MATCH_FAILURE = "States.ResultPathMatchFailure"
BRANCH_FAILED = "States.BranchFailed"
INTRINSIC_FAILURE = "States.IntrinsicFailure"
RUNTIME = "States.Runtime"
PERMISSIONS = "States.Permissions"
EXCEED_TOLERATED_FAILURE_THRESHOLD = "States.ExceedToleratedFailureThreshold"
DATA_LIMIT_EXCEEDED = "States.DataLimitExceeded"

# Errors that no Retry or Catch can handle: they always fail the execution (AWS documents that
# States.ALL does not catch them, and that a States.Runtime error is not retriable).
UNCATCHABLE = frozenset({RUNTIME, DATA_LIMIT_EXCEEDED})

KNOWN_STATES_ERRORS = frozenset(
    {
        ALL,
        TASK_FAILED,
        TIMEOUT,
        HEARTBEAT_TIMEOUT,
        NO_CHOICE_MATCHED,
        PARAMETER_PATH_FAILURE,
        RESULT_PATH_MATCH_FAILURE,
        BRANCH_FAILED,
        INTRINSIC_FAILURE,
        RUNTIME,
        PERMISSIONS,
        EXCEED_TOLERATED_FAILURE_THRESHOLD,
        DATA_LIMIT_EXCEEDED,
        "States.ItemReaderFailed",
        "States.ResultWriterFailed",
        "States.QueryEvaluationError",
    }
)


class DefinitionError(TrovelessError, ValueError):
    """A state-machine definition is invalid; `problems` holds every (json_pointer, message)."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        lines = [f"{pointer or '/'}: {message}" for pointer, message in problems]
        super().__init__(
            f"invalid state machine definition ({len(problems)} problem"
            f"{'s' if len(problems) != 1 else ''}):\n  " + "\n  ".join(lines)
        )


class StatesRuntimeError(Exception):
    """A `States.*` (or task) error raised while a state runs; becomes a failure in the history."""

    def __init__(self, error: str, cause: str) -> None:
        self.error = error
        self.cause = cause
        super().__init__(f"{error}: {cause}")


class TaskError(Exception):
    """Raised by a task function to fail with an explicit error name and cause.

    Error names must not start with `States.` (reserved for the engine), exactly as on AWS.
    """

    def __init__(self, error: str, cause: str = "") -> None:
        self.error = error
        self.cause = cause
        super().__init__(f"{error}: {cause}" if cause else error)


class EngineError(TrovelessError):
    """Base of the errors the engine API raises to its callers."""


class ExecutionDoesNotExistError(EngineError):
    def __init__(self, execution: str) -> None:
        self.execution = execution
        super().__init__(f"execution {execution!r} does not exist")


class ExecutionAlreadyExistsError(EngineError):
    """An execution with this name exists with a different input or definition."""

    def __init__(self, execution: str, reason: str) -> None:
        self.execution = execution
        super().__init__(f"execution {execution!r} already exists: {reason}")


class InvalidExecutionInputError(EngineError):
    def __init__(self, reason: str) -> None:
        super().__init__(f"invalid execution input: {reason}")


class InvalidTaskOutputError(EngineError):
    def __init__(self, reason: str) -> None:
        super().__init__(f"invalid task output: {reason}")


class InvalidNameError(EngineError):
    def __init__(self, what: str, name: str, rule: str) -> None:
        super().__init__(f"invalid {what} {name!r}: {rule}")


class TaskDoesNotExistError(EngineError):
    """A task token that names no task (malformed, or of an unknown execution)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"invalid task token: {reason}")


class TaskTimedOutError(EngineError):
    """The task this token belonged to is no longer waiting (finished, timed out or stopped)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"task timed out or finished: {reason}")


class ExecutionNotRedrivableError(EngineError):
    def __init__(self, execution: str, reason: str) -> None:
        super().__init__(f"execution {execution!r} cannot be redriven: {reason}")


class UnknownResourceError(EngineError, LookupError):
    """An Invoker has no function for a Task's Resource."""

    def __init__(self, resource: str) -> None:
        self.resource = resource
        super().__init__(f"no function registered for resource {resource!r}")
