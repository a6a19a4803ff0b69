"""Trove's users of an instance: list, create, show, update, delete, bulk password change,
and access (the databases a user may use): list, grant, revoke.

A user is named in paths as `name` or `name@host` (percent-encoded by clients). Bodies:
python-troveclient sends `{"users": [...]}` and `{"user": {...}}`; openstacksdk sends
`{"users": {...}}` to `/users/<name>`: both are accepted. Passwords are sealed for the guest
as soon as they are validated and never echoed back.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aws_lambda_powertools.event_handler.api_gateway import Response

from functions.api_errors import ApiError, json_body
from functions.routes import databases as database_routes
from functions.routes import new_router
from functions.routes.databases import accepted, listed, path_name
from shared.models.database import User
from shared.services.databases import split_user_reference

router = new_router()

USERS = "/v1.0/<project_id>/instances/<instance_id>/users"


def user_view(user: User) -> dict[str, Any]:
    return {
        "name": user.name,
        "host": user.host,
        "databases": [{"name": db} for db in user.databases],
    }


def _user(reference: str) -> tuple[str, str]:
    host = router.current_event.get_query_string_value("host")
    return split_user_reference(path_name(reference), host)


@router.get(USERS, summary="List users")
def list_users(project_id: str, instance_id: str) -> dict[str, Any]:
    users = database_routes.database_service().list_users(project_id, instance_id)
    return {"users": [user_view(u) for u in users]}


@router.post(USERS, summary="Create users")
def create_users(project_id: str, instance_id: str) -> Response[str]:
    body = json_body(router.current_event.body)
    database_routes.database_service().create_users(
        project_id, instance_id, listed(body, "users", "user")
    )
    return accepted()


@router.put(USERS, summary="Change the passwords of users")
def change_passwords(project_id: str, instance_id: str) -> Response[str]:
    body = json_body(router.current_event.body)
    database_routes.database_service().change_passwords(
        project_id, instance_id, listed(body, "users", "user")
    )
    return accepted()


@router.get(USERS + "/<name>", summary="Show a user")
def show_user(project_id: str, instance_id: str, name: str) -> dict[str, Any]:
    user_name, host = _user(name)
    user = database_routes.database_service().get_user(project_id, instance_id, user_name, host)
    return {"user": user_view(user)}


@router.put(USERS + "/<name>", summary="Update a user")
def update_user(project_id: str, instance_id: str, name: str) -> Response[str]:
    body = json_body(router.current_event.body)
    if not isinstance(body, Mapping):
        raise ApiError(400, "The request body must be a JSON object.")
    changes = body.get("user", body.get("users"))
    if not isinstance(changes, Mapping):
        raise ApiError(400, "user: this field is required (an object).")
    unknown = set(changes) - {"name", "host", "password"}
    if unknown:
        raise ApiError(400, f"user.{sorted(unknown)[0]}: is not an attribute that can change.")
    for key in ("name", "host", "password"):
        if key in changes and not isinstance(changes[key], str):
            raise ApiError(400, f"user.{key}: must be a string.")
    user_name, host = _user(name)
    database_routes.database_service().update_user(
        project_id,
        instance_id,
        user_name,
        host,
        new_name=changes.get("name"),
        new_host=changes.get("host"),
        password=changes.get("password"),
    )
    return accepted()


@router.delete(USERS + "/<name>", summary="Delete a user")
def delete_user(project_id: str, instance_id: str, name: str) -> Response[str]:
    user_name, host = _user(name)
    database_routes.database_service().delete_user(project_id, instance_id, user_name, host)
    return accepted()


@router.get(USERS + "/<name>/databases", summary="List a user's databases")
def list_access(project_id: str, instance_id: str, name: str) -> dict[str, Any]:
    user_name, host = _user(name)
    databases = database_routes.database_service().list_access(
        project_id, instance_id, user_name, host
    )
    return {"databases": [{"name": db} for db in databases]}


@router.put(USERS + "/<name>/databases", summary="Grant a user access to databases")
def grant_access(project_id: str, instance_id: str, name: str) -> Response[str]:
    body = json_body(router.current_event.body)
    user_name, host = _user(name)
    database_routes.database_service().grant_access(
        project_id, instance_id, user_name, listed(body, "databases", "database"), host
    )
    return accepted()


@router.delete(USERS + "/<name>/databases/<database>", summary="Revoke a user's access")
def revoke_access(project_id: str, instance_id: str, name: str, database: str) -> Response[str]:
    user_name, host = _user(name)
    database_routes.database_service().revoke_access(
        project_id, instance_id, user_name, path_name(database), host
    )
    return accepted()
