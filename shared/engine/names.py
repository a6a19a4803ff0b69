"""Names and ARNs of state machines and executions, shaped like Step Functions' so the console,
the API and the `$$.Execution.Id` a flow sees look the same everywhere."""

from __future__ import annotations

import re

from shared.engine.errors import InvalidNameError

PARTITION = "troveless"
REGION = "local"
ACCOUNT = "000000000000"

# Step Functions' rule for state machine and execution names.
_NAME = re.compile(r"^[^\s<>{}\[\]?*\"#%\\^|~`$&,;:/\x00-\x1f\x7f-\x9f]{1,80}$")


def check_name(what: str, name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidNameError(
            what,
            str(name),
            "1-80 characters without whitespace, brackets, wildcards, control characters "
            'or any of " # % \\ ^ | ~ ` $ & , ; : /',
        )
    return name


def state_machine_arn(state_machine: str) -> str:
    return f"arn:{PARTITION}:states:{REGION}:{ACCOUNT}:stateMachine:{state_machine}"


def execution_arn(state_machine: str, name: str) -> str:
    return f"arn:{PARTITION}:states:{REGION}:{ACCOUNT}:execution:{state_machine}:{name}"


def split_execution_arn(arn: str) -> tuple[str, str] | None:
    """(state machine, execution name) of an execution ARN, or None."""
    parts = arn.split(":")
    if len(parts) != 8 or parts[0] != "arn" or parts[2] != "states" or parts[5] != "execution":
        return None
    return parts[6], parts[7]
