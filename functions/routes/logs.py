"""Trove's guest logs of an instance: list, and enable / disable / publish / discard one.

python-troveclient POSTs `{"name": "general", "publish": 1}` (any of enable, disable,
publish, discard) and reads `{"log": {...}}`; published logs are objects in the blob store
under `<container>/<prefix>`. `GET .../log/<name>` (our extension: Trove's clients read Swift
directly) returns the published text.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.event_handler.api_gateway import Response

from functions.api_errors import json_body
from functions.routes import new_router
from functions.runtime import get_runtime
from shared.services.instance_logs import InstanceLogService

router = new_router()

MAX_LOG_BYTES = 4 << 20


def log_service() -> InstanceLogService:
    runtime = get_runtime()
    return InstanceLogService(
        runtime.store, runtime.queue, runtime.clock, runtime.master_key, runtime.blobs
    )


@router.get("/v1.0/<project_id>/instances/<instance_id>/log", summary="List guest logs")
def list_logs(project_id: str, instance_id: str) -> dict[str, Any]:
    return {"logs": log_service().list_logs(project_id, instance_id)}


@router.get(
    "/v1.0/<project_id>/instances/<instance_id>/log/<name>",
    summary="Read a published guest log (troveless extension)",
)
def read_log(project_id: str, instance_id: str, name: str) -> Response[str]:
    """What was published of a log, as text: the newest MAX_LOG_BYTES of it (a Lambda
    response is limited to 6 MB); `X-Troveless-Truncated: true` when older bytes were left out."""
    data, truncated = log_service().published_tail(project_id, instance_id, name, MAX_LOG_BYTES)
    return Response(
        status_code=200,
        content_type="text/plain; charset=utf-8",
        body=data.decode(errors="replace"),
        headers={"X-Troveless-Truncated": "true" if truncated else "false"},
    )


@router.post("/v1.0/<project_id>/instances/<instance_id>/log", summary="Act on a guest log")
def log_action(project_id: str, instance_id: str) -> dict[str, Any]:
    body = json_body(router.current_event.body)
    return {"log": log_service().act(project_id, instance_id, body)}
