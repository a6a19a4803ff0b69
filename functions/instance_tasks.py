"""Task functions of the instance flows (state_machines/*_instance.asl.json, resize_*.asl.json).

Each is thin: build `InstanceFlowSteps` from the runtime, call one step, and turn the
service's exceptions into named task errors the flows' Retry and Catch fields branch on:

    ComputeError         the cloud failed (retried with backoff)
    ComputeRequestError  the request can never succeed as asked (not retried)
    InstanceDeleted      a delete took over; the flow stops
    NotFound             something the step needs does not exist
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from functions.runtime import get_runtime
from shared.engine.errors import TaskError
from shared.engine.invoker import TaskContext
from shared.errors import ComputeError, ComputeRequestError, NotFoundError
from shared.ports import JSON
from shared.services.instances import InstanceDeletedError, InstanceFlowSteps, describe_failure


def _steps() -> InstanceFlowSteps:
    return InstanceFlowSteps.from_runtime(get_runtime())


@contextmanager
def _named_errors() -> Iterator[None]:
    try:
        yield
    except InstanceDeletedError as exc:
        raise TaskError("InstanceDeleted", str(exc)) from exc
    except ComputeRequestError as exc:
        raise TaskError("ComputeRequestError", str(exc)) from exc
    except ComputeError as exc:
        raise TaskError("ComputeError", str(exc)) from exc
    except NotFoundError as exc:
        raise TaskError("NotFound", str(exc)) from exc


def _run(step: Callable[[], JSON]) -> JSON:
    with _named_errors():
        return step()


def create_server(payload: dict[str, Any]) -> JSON:
    return _run(lambda: _steps().create_server(payload["instance_id"]))


def send_guest_command(payload: dict[str, Any], context: TaskContext) -> JSON:
    """`.waitForTaskToken` task: payload {instance_id, command, args?, timeout?}; the guest's
    result answers the token (via the guest-events consumer)."""
    token = context.task_token or payload.get("token")
    if not token:
        raise TaskError("NoTaskToken", "send_guest_command must run as a .waitForTaskToken task")
    return _run(
        lambda: _steps().send_guest_command(
            payload["instance_id"],
            payload["command"],
            dict(payload.get("args") or {}),
            str(token),
            command_key=context.idempotency_key,
            timeout=float(payload.get("timeout", 300)),
        )
    )


def mark_active(payload: dict[str, Any]) -> JSON:
    return _run(lambda: _steps().mark_active(payload["instance_id"]))


def compensate_provision(payload: dict[str, Any]) -> JSON:
    return _run(
        lambda: _steps().compensate_provision(payload["instance_id"], payload["project_id"])
    )


def mark_error(payload: dict[str, Any]) -> JSON:
    return _run(
        lambda: _steps().mark_error(
            payload["instance_id"],
            str(payload.get("error") or "Failed"),
            str(payload.get("cause") or ""),
        )
    )


def end_guest_wait(payload: dict[str, Any]) -> JSON:
    return _run(lambda: _steps().end_guest_wait(payload["instance_id"]))


def delete_server(payload: dict[str, Any]) -> JSON:
    return _run(lambda: _steps().delete_server(payload["instance_id"]))


def forget_guest(payload: dict[str, Any]) -> JSON:
    return _run(lambda: _steps().forget_guest(payload["instance_id"]))


def release_quota(payload: dict[str, Any]) -> JSON:
    return _run(lambda: _steps().release_quota(payload["instance_id"], payload["project_id"]))


def delete_records(payload: dict[str, Any]) -> JSON:
    return _run(lambda: _steps().delete_records(payload["instance_id"], payload["project_id"]))


def resize_server_flavor(payload: dict[str, Any]) -> JSON:
    return _run(lambda: _steps().resize_server_flavor(payload["instance_id"], payload["flavor"]))


def resize_server_volume(payload: dict[str, Any]) -> JSON:
    return _run(
        lambda: _steps().resize_server_volume(payload["instance_id"], int(payload["new_size_gb"]))
    )


def finish_action(payload: dict[str, Any]) -> JSON:
    """payload {instance_id, task, changes?, error?, cause?}: ACTIVE, or ERROR when `error`."""
    error = payload.get("error")
    fault = None
    if error:
        fault = describe_failure(str(error), str(payload.get("cause") or ""))
    return _run(
        lambda: _steps().finish_action(
            payload["instance_id"], payload["task"], payload.get("changes"), fault
        )
    )


def finish_resize_volume(payload: dict[str, Any]) -> JSON:
    return _run(
        lambda: _steps().finish_resize_volume(payload["instance_id"], int(payload["new_size_gb"]))
    )


def fail_resize_volume(payload: dict[str, Any]) -> JSON:
    return _run(
        lambda: _steps().fail_resize_volume(
            payload["instance_id"],
            payload["project_id"],
            int(payload["old_size_gb"]),
            str(payload.get("error") or "Failed"),
            str(payload.get("cause") or ""),
        )
    )
