"""Backup schedules of an instance (our extension; Trove left scheduling to clients):
`/v1.0/<project>/instances/<id>/backup-schedules` to list and create, `.../<schedule id>` to
show and delete.

Create body: `{"backup_schedule": {"name", "cron", "incremental"?, "keep_last"?,
"max_age_days"?, "enabled"?}}`; a bad cron expression is a 400 naming `cron`.
"""

from __future__ import annotations

from typing import Annotated, Any

from aws_lambda_powertools.event_handler.api_gateway import Response
from pydantic import BaseModel, ConfigDict, Field

from functions.api_errors import json_body, parse_body, section
from functions.routes import new_router
from functions.routes.backups import backup_service
from functions.runtime import get_runtime
from functions.trove_views import timestamp
from shared.services.backup_schedules import BackupSchedule, BackupScheduleService, CreateSchedule

router = new_router()
BASE = "/v1.0/<project_id>/instances/<instance_id>/backup-schedules"


def schedule_service() -> BackupScheduleService:
    runtime = get_runtime()
    return BackupScheduleService(runtime.store, runtime.clock, backup_service())


def schedule_view(schedule: BackupSchedule) -> dict[str, Any]:
    return {
        "id": schedule.id,
        "name": schedule.name,
        "instance_id": schedule.instance_id,
        "cron": schedule.cron,
        "incremental": schedule.incremental,
        "keep_last": schedule.keep_last,
        "max_age_days": schedule.max_age_days,
        "enabled": schedule.enabled,
        "next_run": timestamp(schedule.next_run),
        "last_run": timestamp(schedule.last_run) if schedule.last_run else None,
        "last_backup_id": schedule.last_backup_id,
        "last_error": schedule.last_error,
        "created": timestamp(schedule.created),
        "updated": timestamp(schedule.updated),
    }


class CreateScheduleBody(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(min_length=1, max_length=255)]
    cron: Annotated[str, Field(min_length=1, max_length=255)]
    incremental: bool = False
    keep_last: Annotated[int, Field(ge=1, le=10000)] | None = None
    max_age_days: Annotated[int, Field(ge=1, le=36500)] | None = None
    enabled: bool = True


@router.get(BASE, summary="List an instance's backup schedules")
def list_schedules(project_id: str, instance_id: str) -> dict[str, Any]:
    schedules = schedule_service().list(project_id, instance_id)
    return {"backup_schedules": [schedule_view(s) for s in schedules]}


@router.post(BASE, summary="Create a backup schedule")
def create_schedule(project_id: str, instance_id: str) -> Response[dict[str, Any]]:
    raw = section(json_body(router.current_event.body), "backup_schedule")
    body = parse_body(CreateScheduleBody, raw, "backup_schedule")
    schedule = schedule_service().create(
        project_id, instance_id, CreateSchedule.model_validate(body.model_dump())
    )
    return Response(
        status_code=200,
        content_type="application/json",
        body={"backup_schedule": schedule_view(schedule)},
    )


@router.get(BASE + "/<schedule_id>", summary="Show a backup schedule")
def show_schedule(project_id: str, instance_id: str, schedule_id: str) -> dict[str, Any]:
    service = schedule_service()
    instance = service.backups.instances.get(project_id, instance_id)
    return {"backup_schedule": schedule_view(service.get(project_id, instance.id, schedule_id))}


@router.delete(BASE + "/<schedule_id>", summary="Delete a backup schedule")
def delete_schedule(project_id: str, instance_id: str, schedule_id: str) -> Response[str]:
    service = schedule_service()
    instance = service.backups.instances.get(project_id, instance_id)
    service.delete(project_id, instance.id, schedule_id)
    return Response(status_code=202, content_type="application/json", body="")
