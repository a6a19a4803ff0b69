"""Trove's backup resource: create, list (filters `instance_id`, `datastore`), show, delete,
an instance's backups, and backup strategies (the default container of a project's or an
instance's backups: the first segment of the objects' keys in the blob store).

Bodies as python-troveclient sends them: `{"backup": {"name", "instance", "description"?,
"parent_id"?, "incremental"? (0/1 or a boolean)}}`. Trove's `size` is in GB (a float);
`locationRef` names the object in the blob store.
"""

from __future__ import annotations

from typing import Annotated, Any

from aws_lambda_powertools.event_handler.api_gateway import Response
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from functions.api_errors import json_body, parse_body, section
from functions.routes import new_router
from functions.runtime import get_runtime
from functions.trove_views import timestamp
from shared.models.backup import Backup
from shared.services.backup_records import GIB
from shared.services.backups import BackupService, BackupStrategy, CreateBackup
from shared.services.catalog import version_id

router = new_router()


def backup_service() -> BackupService:
    runtime = get_runtime()
    return BackupService.from_runtime(runtime, runtime.blobs)


def backup_view(backup: Backup) -> dict[str, Any]:
    """Trove's backup JSON (trove/backup/views.py), plus `fail_reason` when FAILED."""
    view: dict[str, Any] = {
        "id": backup.id,
        "name": backup.name,
        "description": backup.description,
        "locationRef": backup.location,
        "instance_id": backup.instance_id,
        "created": timestamp(backup.created),
        "updated": timestamp(backup.updated),
        "size": round(backup.size_bytes / GIB, 6) if backup.size_bytes is not None else None,
        "status": backup.status.value,
        "parent_id": backup.parent_id,
        "project_id": backup.project_id,
        "datastore": {
            "type": backup.datastore.type,
            "version": backup.datastore.version,
            "version_id": version_id(backup.datastore.type, backup.datastore.version),
        },
    }
    if backup.fail_reason is not None:
        view["fail_reason"] = backup.fail_reason
    return view


def _reference(value: Any) -> Any:
    if isinstance(value, dict) and "id" in value:
        return value["id"]
    return value


def _flag(value: Any) -> Any:
    """troveclient sends `incremental` as 0/1; openstacksdk as a boolean."""
    return bool(value) if isinstance(value, int) else value


class CreateBackupBody(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    name: Annotated[str, Field(min_length=1, max_length=255)]
    instance: Annotated[str, BeforeValidator(_reference), Field(min_length=1, max_length=255)]
    description: Annotated[str, Field(max_length=1024)] | None = None
    parent_id: Annotated[str, Field(min_length=1, max_length=255)] | None = None
    incremental: Annotated[bool, BeforeValidator(_flag)] = False
    swift_container: Annotated[str, Field(min_length=1, max_length=64)] | None = None


def _query(name: str) -> str | None:
    params = router.current_event.query_string_parameters or {}
    value = params.get(name)
    return value or None


@router.get("/v1.0/<project_id>/backups", summary="List backups")
def list_backups(project_id: str) -> dict[str, Any]:
    backups = backup_service().list(
        project_id, instance_id=_query("instance_id"), datastore=_query("datastore")
    )
    return {"backups": [backup_view(b) for b in backups]}


@router.post("/v1.0/<project_id>/backups", summary="Create a backup")
def create_backup(project_id: str) -> Response[dict[str, Any]]:
    raw = section(json_body(router.current_event.body), "backup")
    body = parse_body(CreateBackupBody, raw, "backup")
    backup = backup_service().create(
        project_id,
        CreateBackup(
            name=body.name,
            instance_id=body.instance,
            description=body.description,
            incremental=body.incremental or body.parent_id is not None,
            parent_id=body.parent_id,
            container=body.swift_container,
        ),
    )
    return Response(
        status_code=202, content_type="application/json", body={"backup": backup_view(backup)}
    )


@router.get("/v1.0/<project_id>/backups/<backup_id>", summary="Show a backup")
def show_backup(project_id: str, backup_id: str) -> dict[str, Any]:
    return {"backup": backup_view(backup_service().get(project_id, backup_id))}


@router.delete("/v1.0/<project_id>/backups/<backup_id>", summary="Delete a backup")
def delete_backup(project_id: str, backup_id: str) -> Response[str]:
    backup_service().delete(project_id, backup_id)
    return Response(status_code=202, content_type="application/json", body="")


@router.get("/v1.0/<project_id>/instances/<instance_id>/backups", summary="An instance's backups")
def instance_backups(project_id: str, instance_id: str) -> dict[str, Any]:
    service = backup_service()
    instance = service.instances.get(project_id, instance_id)
    return {"backups": [backup_view(b) for b in service.list(project_id, instance_id=instance.id)]}


# ------------------------------------------------------------------ backup strategies


def strategy_view(strategy: BackupStrategy) -> dict[str, Any]:
    return {
        "backend": "blob",
        "project_id": strategy.project_id,
        "instance_id": strategy.instance_id,
        "swift_container": strategy.container,
    }


class StrategyBody(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    instance_id: Annotated[str, Field(min_length=1, max_length=255)] | None = None
    swift_container: Annotated[str, Field(min_length=1, max_length=64)]


@router.get("/v1.0/<project_id>/backup_strategies", summary="List backup strategies")
def list_strategies(project_id: str) -> dict[str, Any]:
    strategies = backup_service().strategies.list(project_id, _query("instance_id"))
    return {"backup_strategies": [strategy_view(s) for s in strategies]}


@router.post("/v1.0/<project_id>/backup_strategies", summary="Set a backup strategy")
def create_strategy(project_id: str) -> Response[dict[str, Any]]:
    raw = section(json_body(router.current_event.body), "backup_strategy")
    body = parse_body(StrategyBody, raw, "backup_strategy")
    strategy = backup_service().strategies.set(project_id, body.instance_id, body.swift_container)
    return Response(
        status_code=202,
        content_type="application/json",
        body={"backup_strategy": strategy_view(strategy)},
    )


@router.delete("/v1.0/<project_id>/backup_strategies", summary="Delete a backup strategy")
def delete_strategy(project_id: str) -> Response[str]:
    backup_service().strategies.delete(project_id, _query("instance_id"))
    return Response(status_code=202, content_type="application/json", body="")
