"""State-machine execution records, shaped like Step Functions' DescribeExecution so the
console and the API show the same thing whether the embedded engine or AWS ran it.

Input and output are stored in the state store, so they must hold no plaintext secret
(`SecretFreeJson`): a flow that needs a password carries it sealed.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated

from pydantic import AfterValidator, Field, model_validator

from shared.models.base import DomainModel, SecretFreeJson, UtcDatetime


class ExecutionStatus(StrEnum):
    """Step Functions' execution statuses."""

    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    TIMED_OUT = "TIMED_OUT"
    ABORTED = "ABORTED"
    PENDING_REDRIVE = "PENDING_REDRIVE"

    @property
    def is_terminal(self) -> bool:
        return self not in (ExecutionStatus.RUNNING, ExecutionStatus.PENDING_REDRIVE)


# Step Functions' name rule: 1-80 characters, no whitespace, brackets, wildcards,
# these punctuation marks or control characters.
_EXECUTION_NAME = re.compile(r"^[^\s<>{}\[\]?*\"#%\\^|~`$&,;:/\x00-\x1f\x7f-\x9f]{1,80}$")


def _execution_name(value: str) -> str:
    if not _EXECUTION_NAME.fullmatch(value):
        raise ValueError(
            "must be 1-80 characters without whitespace, brackets, wildcards, "
            'control characters or any of " # % \\ ^ | ~ ` $ & , ; : /'
        )
    return value


ExecutionName = Annotated[str, AfterValidator(_execution_name)]
ExecutionArn = Annotated[
    str, Field(pattern=r"^arn:[^:]+:states:[^:]*:[^:]*:execution:[^:]+:[^:]+$")
]


class Execution(DomainModel):
    """One run of a state machine.

    A running execution has no stop date and no output; a finished one has a stop date.
    (Stop before start is not refused: the dates may come from hosts whose clocks differ.)
    `error` and `cause` are what a Fail state or an uncaught task error reported.
    """

    arn: ExecutionArn
    state_machine_name: Annotated[str, AfterValidator(_execution_name)]
    name: ExecutionName
    status: ExecutionStatus = ExecutionStatus.RUNNING
    input: SecretFreeJson = None
    output: SecretFreeJson = None
    error: str | None = None
    cause: str | None = None
    start_date: UtcDatetime
    stop_date: UtcDatetime | None = None
    redrive_count: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _status_consistent(self) -> Execution:
        if self.status.is_terminal and self.stop_date is None:
            raise ValueError(f"stop_date: required once an execution is {self.status.value}")
        if self.status is ExecutionStatus.RUNNING and self.stop_date is not None:
            raise ValueError("stop_date: must be empty while an execution is RUNNING")
        if self.output is not None and self.status is not ExecutionStatus.SUCCEEDED:
            raise ValueError(f"output: only a SUCCEEDED execution has one, not {self.status.value}")
        return self
