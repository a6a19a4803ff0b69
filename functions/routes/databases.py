"""Trove's databases of an instance: list, create, delete.

Bodies: python-troveclient sends `{"databases": [{"name": ..., "character_set"?, "collate"?}]}`;
openstacksdk sends `{"database": {...}}` (one): both are accepted. Names are checked with the
datastore's rules before anything reaches the guest: a bad one is a 400 naming the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

from aws_lambda_powertools.event_handler.api_gateway import Response

from functions.api_errors import ApiError, json_body
from functions.routes import new_router
from functions.runtime import get_runtime
from shared.services.databases import DatabaseService

router = new_router()


def database_service() -> DatabaseService:
    runtime = get_runtime()
    return DatabaseService(runtime.store, runtime.queue, runtime.clock, runtime.master_key)


def accepted() -> Response[str]:
    return Response(status_code=202, content_type="application/json", body="")


def listed(body: Any, plural: str, singular: str) -> Any:
    """`body[plural]` (a list), or `[body[singular]]` as openstacksdk sends one item."""
    if not isinstance(body, Mapping):
        raise ApiError(400, "The request body must be a JSON object.")
    if plural in body:
        value = body[plural]
        return [value] if isinstance(value, Mapping) else value
    if singular in body:
        return [body[singular]]
    raise ApiError(400, f"{plural}: this field is required.")


def path_name(value: str) -> str:
    """A name from the path (clients percent-encode '@' and '%')."""
    return unquote(value)


@router.get("/v1.0/<project_id>/instances/<instance_id>/databases", summary="List databases")
def list_databases(project_id: str, instance_id: str) -> dict[str, Any]:
    databases = database_service().list_databases(project_id, instance_id)
    return {"databases": [{"name": db.name} for db in databases]}


@router.post("/v1.0/<project_id>/instances/<instance_id>/databases", summary="Create databases")
def create_databases(project_id: str, instance_id: str) -> Response[str]:
    body = json_body(router.current_event.body)
    database_service().create_databases(
        project_id, instance_id, listed(body, "databases", "database")
    )
    return accepted()


@router.delete(
    "/v1.0/<project_id>/instances/<instance_id>/databases/<name>", summary="Delete a database"
)
def delete_database(project_id: str, instance_id: str, name: str) -> Response[str]:
    database_service().delete_database(project_id, instance_id, path_name(name))
    return accepted()
