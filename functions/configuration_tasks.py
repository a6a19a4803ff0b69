"""Task functions of the `apply_configuration` state machine (thin: the service does the work).

- `send_overrides` (a `.waitForTaskToken` task): sends the guest `update_overrides` with the
  whole set of values and the task token; the guest-events consumer answers the token with the
  guest's result (`{"restart_required": bool}`), or fails it with the guest's error.
- `finish_apply`: ends the instance's task, ACTIVE or RESTART_REQUIRED.
- `fail_apply`: records the fault and puts the previous configuration group back.
"""

from __future__ import annotations

import uuid
from typing import Any

from functions.runtime import get_runtime
from shared.engine.errors import TaskError
from shared.engine.invoker import TaskContext
from shared.errors import NotFoundError
from shared.models.guest import GuestCommandName
from shared.services.configurations import ConfigurationService
from shared.services.guest_channel import GuestClient
from shared.services.instance_secrets import guest_secret
from shared.services.instances import InstanceRecords

GUEST_COMMAND_TIMEOUT = 120.0
_COMMAND_IDS = uuid.UUID("0b7e4cf2-52a4-4c1e-9f0c-5b0f6f1d2a10")


def _service() -> ConfigurationService:
    runtime = get_runtime()
    return ConfigurationService(runtime.store, runtime.workflows, runtime.clock)


def send_overrides(payload: dict[str, Any], context: TaskContext) -> dict[str, Any]:
    runtime = get_runtime()
    instance_id = str(payload["instance_id"])
    instance = InstanceRecords(runtime.store).find(instance_id)
    if instance is None:
        raise TaskError("InstanceGone", f"instance {instance_id} no longer exists")
    client = GuestClient(
        runtime.queue, runtime.clock, instance.id, guest_secret(instance, runtime.master_key)
    )
    # A redelivered step sends the same command id, which the guest runs only once.
    key = context.idempotency_key or str(uuid.uuid4())
    command = client.send(
        GuestCommandName.UPDATE_OVERRIDES,
        {"overrides": dict(payload["values"])},
        command_id=str(uuid.uuid5(_COMMAND_IDS, key)),
        task_token=str(payload["task_token"]),
        timeout=GUEST_COMMAND_TIMEOUT,
    )
    return {"command_id": command.id}


def _restart_required(guest: object) -> bool:
    """The guest's answer, whether the consumer forwarded the result or the whole message."""
    if isinstance(guest, dict):
        if isinstance(guest.get("restart_required"), bool):
            return bool(guest["restart_required"])
        if "result" in guest:
            return _restart_required(guest["result"])
    raise TaskError("UnexpectedGuestResult", f"no restart_required in the guest's answer: {guest}")


def finish_apply(payload: dict[str, Any]) -> dict[str, Any]:
    instance = _service().finish_apply(
        str(payload["instance_id"]), _restart_required(payload.get("guest"))
    )
    return {"instance_id": instance.id, "status": instance.status.value}


def fail_apply(payload: dict[str, Any]) -> dict[str, Any]:
    error = payload.get("error") or {}
    try:
        instance = _service().fail_apply(
            str(payload["instance_id"]),
            configuration_id=payload.get("configuration_id"),
            previous_configuration_id=payload.get("previous_configuration_id"),
            previous_status=str(payload["previous_status"]),
            error=str(error.get("Error", "unknown error")),
            cause=str(error.get("Cause", "")),
        )
    except NotFoundError:
        return {"instance_id": payload["instance_id"], "status": "DELETED"}
    return {"instance_id": instance.id, "status": instance.status.value}
