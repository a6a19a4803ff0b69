"""Task functions of the backup flow (state_machines/backup_instance.asl.json).

Each builds `BackupFlowSteps` from the runtime and calls one step; a stored object that does
not match what the guest reported is the named error `BackupVerificationFailed`.
"""

from __future__ import annotations

from typing import Any

from functions.runtime import get_runtime
from shared.engine.errors import TaskError
from shared.errors import NotFoundError
from shared.ports import JSON
from shared.services.backups import BackupFlowSteps, BackupVerificationError
from shared.services.instances import describe_failure


def _steps() -> BackupFlowSteps:
    runtime = get_runtime()
    return BackupFlowSteps.from_runtime(runtime, runtime.blobs)


def begin(payload: dict[str, Any]) -> JSON:
    try:
        return _steps().begin(str(payload["backup_id"]))
    except NotFoundError as exc:
        raise TaskError("NotFound", str(exc)) from exc


def seal_data_key(payload: dict[str, Any]) -> JSON:
    try:
        return _steps().seal_data_key(str(payload["backup_id"]), dict(payload["guest_args"]))
    except NotFoundError as exc:
        raise TaskError("NotFound", str(exc)) from exc


def verify(payload: dict[str, Any]) -> JSON:
    try:
        return _steps().verify(str(payload["backup_id"]), dict(payload.get("result") or {}))
    except BackupVerificationError as exc:
        raise TaskError("BackupVerificationFailed", str(exc)) from exc
    except NotFoundError as exc:
        raise TaskError("NotFound", str(exc)) from exc


def fail(payload: dict[str, Any]) -> JSON:
    reason = describe_failure(
        str(payload.get("error") or "Failed"), str(payload.get("cause") or "")
    )
    instance_id = payload.get("instance_id")
    return _steps().fail(
        str(payload["backup_id"]), reason, str(instance_id) if instance_id else None
    )
