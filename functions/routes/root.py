"""Trove's root user of an instance: enable (a new password, shown once), status, disable."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.event_handler.api_gateway import Response

from functions.routes import databases as database_routes
from functions.routes import new_router

router = new_router()


@router.post("/v1.0/<project_id>/instances/<instance_id>/root", summary="Enable root")
def enable_root(project_id: str, instance_id: str) -> dict[str, Any]:
    root = database_routes.database_service().enable_root(project_id, instance_id)
    return {"user": {"name": root.name, "password": root.password}}


@router.get("/v1.0/<project_id>/instances/<instance_id>/root", summary="Is root enabled")
def root_status(project_id: str, instance_id: str) -> dict[str, Any]:
    return {"rootEnabled": database_routes.database_service().root_enabled(project_id, instance_id)}


@router.delete("/v1.0/<project_id>/instances/<instance_id>/root", summary="Disable root")
def disable_root(project_id: str, instance_id: str) -> Response[str]:
    database_routes.database_service().disable_root(project_id, instance_id)
    return Response(status_code=204, content_type="application/json", body="")
