"""Scheduled backups and retention (server-side; Trove left this to clients).

Records (StateStore):

    backup-schedules/<id>                       the BackupSchedule (compare-and-swap writes)
    instance-backup-schedules/<instance>/<id>   index for an instance's schedules
    schedule-backups/<schedule>/<backup>        the backups a schedule made (retention)

Firing exactly once. A schedule is due when `next_run <= now`. A scheduler claims the run by
writing the schedule with `next_run` moved to the cron's next time *after now*, as a
compare-and-swap on the revision it read: of two schedulers ticking together, one write
wins and only that one starts the backup. Because the next time is computed from now, the
runs missed while no scheduler ran fire once, not once per missed slot.

Retention. After each tick's runs, each schedule's backups beyond `keep_last` (newest kept)
or older than `max_age_days` are deleted, except any backup that is in the chain of a backup
that stays (a parent of a kept incremental) and any backup still running.
"""

from __future__ import annotations

import builtins
import uuid
from datetime import datetime, timedelta
from typing import Annotated

from croniter import croniter
from pydantic import BaseModel, ConfigDict, Field

from shared.errors import ConflictError, NotFoundError, RequestError, TrovelessError
from shared.models.backup import Backup
from shared.models.base import DomainModel, Name, ProjectId, UtcDatetime, Uuid
from shared.observability import get_logger
from shared.ports import Clock, StateStore
from shared.services.backups import BackupService, CreateBackup

log = get_logger("backup-schedules")

MAX_SCHEDULES_PER_INSTANCE = 10


class BackupSchedule(DomainModel):
    id: Uuid
    project_id: ProjectId
    instance_id: Uuid
    name: Name
    cron: str = Field(min_length=1, max_length=255)
    incremental: bool = False
    keep_last: Annotated[int, Field(ge=1)] | None = None
    max_age_days: Annotated[int, Field(ge=1)] | None = None
    enabled: bool = True
    next_run: UtcDatetime
    last_run: UtcDatetime | None = None
    last_backup_id: Uuid | None = None
    last_error: str | None = None
    created: UtcDatetime
    updated: UtcDatetime


class CreateSchedule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    cron: str
    incremental: bool = False
    keep_last: int | None = None
    max_age_days: int | None = None
    enabled: bool = True


def schedule_key(schedule_id: str) -> str:
    return f"backup-schedules/{schedule_id}"


def instance_index_key(instance_id: str, schedule_id: str) -> str:
    return f"instance-backup-schedules/{instance_id}/{schedule_id}"


def made_by_key(schedule_id: str, backup_id: str) -> str:
    return f"schedule-backups/{schedule_id}/{backup_id}"


def next_time(cron: str, after: datetime) -> datetime:
    """The first time the cron expression names strictly after `after` (UTC)."""
    found = croniter(cron, after).get_next(datetime)
    assert isinstance(found, datetime)
    return found


def validate_cron(cron: str) -> str:
    """The expression (five fields, minute resolution); RequestError naming `cron` otherwise."""
    clean = " ".join(cron.split())
    if len(clean.split(" ")) != 5 or not croniter.is_valid(clean):
        raise RequestError(
            "cron",
            f"{cron!r} is not a cron expression (five fields: minute hour day month weekday)",
        )
    return clean


class BackupScheduleService:
    """Create, list, show and delete an instance's backup schedules."""

    def __init__(self, store: StateStore, clock: Clock, backups: BackupService) -> None:
        self._store = store
        self._clock = clock
        self.backups = backups

    def _find(self, schedule_id: str) -> BackupSchedule | None:
        record = self._store.get(schedule_key(schedule_id))
        return BackupSchedule.model_validate(record.data) if record is not None else None

    def get(self, project_id: str, instance_id: str, schedule_id: str) -> BackupSchedule:
        try:
            found = self._find(str(uuid.UUID(schedule_id)))
        except ValueError:
            found = None
        if found is None or found.project_id != project_id or found.instance_id != instance_id:
            raise NotFoundError(schedule_id, "backup schedule")
        return found

    def list(self, project_id: str, instance_id: str) -> builtins.list[BackupSchedule]:
        instance = self.backups.instances.get(project_id, instance_id)
        prefix = f"instance-backup-schedules/{instance.id}/"
        found = []
        for key in self._store.list(prefix):
            schedule = self._find(key[len(prefix) :])
            if schedule is not None and schedule.project_id == project_id:
                found.append(schedule)
        found.sort(key=lambda s: (s.created, s.id))
        return found

    def create(self, project_id: str, instance_id: str, request: CreateSchedule) -> BackupSchedule:
        instance = self.backups.instances.get(project_id, instance_id)
        name = request.name.strip()
        if not name or len(name) > 255:
            raise RequestError("name", "must be 1 to 255 characters")
        cron = validate_cron(request.cron)
        for field, value in (
            ("keep_last", request.keep_last),
            ("max_age_days", request.max_age_days),
        ):
            if value is not None and value < 1:
                raise RequestError(field, f"must be at least 1, got {value}")
        if request.incremental and instance.datastore.type not in {"mariadb", "mysql"}:
            raise RequestError(
                "incremental",
                f"{instance.datastore.type} backups are full backups only",
                status=422,
            )
        if len(self.list(project_id, instance.id)) >= MAX_SCHEDULES_PER_INSTANCE:
            raise RequestError(
                "instance", f"has {MAX_SCHEDULES_PER_INSTANCE} schedules already", status=422
            )
        now = self._clock.now()
        schedule = BackupSchedule(
            id=str(uuid.uuid4()),
            project_id=project_id,
            instance_id=instance.id,
            name=name,
            cron=cron,
            incremental=request.incremental,
            keep_last=request.keep_last,
            max_age_days=request.max_age_days,
            enabled=request.enabled,
            next_run=next_time(cron, now),
            created=now,
            updated=now,
        )
        self._store.put(instance_index_key(instance.id, schedule.id), {}, 0)
        self._store.put(schedule_key(schedule.id), schedule.model_dump(mode="json"), 0)
        return schedule

    def delete(self, project_id: str, instance_id: str, schedule_id: str) -> None:
        """Delete the schedule; the backups it made stay (delete them as backups)."""
        schedule = self.get(project_id, instance_id, schedule_id)
        self._store.delete(schedule_key(schedule.id))
        self._store.delete(instance_index_key(schedule.instance_id, schedule.id))
        for key in builtins.list(self._store.list(f"schedule-backups/{schedule.id}/")):
            self._store.delete(key)


class BackupScheduler:
    """One tick of the backup timer: fire due schedules once, then apply retention."""

    def __init__(self, store: StateStore, clock: Clock, backups: BackupService) -> None:
        self._store = store
        self._clock = clock
        self.backups = backups

    def tick(self, now: datetime | None = None) -> builtins.list[str]:
        """Fire every due schedule this scheduler wins; returns the backup ids started."""
        moment = now or self._clock.now()
        started = []
        for key in builtins.list(self._store.list("backup-schedules/")):
            record = self._store.get(key)
            if record is None:
                continue
            schedule = BackupSchedule.model_validate(record.data)
            if schedule.enabled and schedule.next_run <= moment:
                claimed = schedule.replace(
                    next_run=next_time(schedule.cron, moment), last_run=moment, updated=moment
                )
                try:
                    self._store.put(key, claimed.model_dump(mode="json"), record.revision)
                except ConflictError:
                    continue  # another scheduler claimed this run (or the schedule changed)
                backup_id = self._fire(claimed, moment)
                if backup_id is not None:
                    started.append(backup_id)
            self._prune(schedule, moment)
        return started

    def _fire(self, schedule: BackupSchedule, moment: datetime) -> str | None:
        name = f"{schedule.name}-{moment:%Y%m%dT%H%M}"
        error: str | None = None
        backup_id: str | None = None
        try:
            backup = self.backups.create(
                schedule.project_id,
                CreateBackup(
                    name=name,
                    instance_id=schedule.instance_id,
                    incremental=schedule.incremental and self._has_completed(schedule),
                    description=f"scheduled by {schedule.id}",
                ),
            )
            backup_id = backup.id
            self._store.put(made_by_key(schedule.id, backup.id), {}, 0)
        except NotFoundError:
            # The instance is gone: so is its schedule (its backups stay).
            self._store.delete(schedule_key(schedule.id))
            self._store.delete(instance_index_key(schedule.instance_id, schedule.id))
            log.info("schedule of a deleted instance removed", extra={"schedule_id": schedule.id})
            return None
        except (TrovelessError, ValueError) as exc:
            error = str(exc)  # busy (409), over quota, not ACTIVE: this run is skipped
            log.warning(
                "scheduled backup not started", extra={"schedule_id": schedule.id, "why": error}
            )
        self._record_outcome(schedule.id, backup_id, error)
        return backup_id

    def _has_completed(self, schedule: BackupSchedule) -> bool:
        return any(
            b.status.value == "COMPLETED"
            for b in self.backups.list(schedule.project_id, instance_id=schedule.instance_id)
        )

    def _record_outcome(self, schedule_id: str, backup_id: str | None, error: str | None) -> None:
        for _ in range(10):
            record = self._store.get(schedule_key(schedule_id))
            if record is None:
                return
            current = BackupSchedule.model_validate(record.data)
            changed = current.replace(
                last_backup_id=backup_id or current.last_backup_id,
                last_error=error[:2000] if error else None,
            )
            try:
                self._store.put(
                    schedule_key(schedule_id), changed.model_dump(mode="json"), record.revision
                )
                return
            except ConflictError:
                continue

    # ------------------------------------------------------------------ retention
    def _prune(self, schedule: BackupSchedule, moment: datetime) -> builtins.list[str]:
        if schedule.keep_last is None and schedule.max_age_days is None:
            return []
        prefix = f"schedule-backups/{schedule.id}/"
        made_ids = {key[len(prefix) :] for key in self._store.list(prefix)}
        everything = {b.id: b for b in self.backups.records.of_project(schedule.project_id)}
        for gone in made_ids - set(everything):
            self._store.delete(made_by_key(schedule.id, gone))  # deleted by hand meanwhile
        made = sorted(
            (everything[i] for i in made_ids if i in everything),
            key=lambda b: (b.created, b.id),
            reverse=True,
        )
        doomed: set[str] = set()
        for rank, backup in enumerate(made):
            beyond_count = schedule.keep_last is not None and rank >= schedule.keep_last
            too_old = schedule.max_age_days is not None and backup.created < moment - timedelta(
                days=schedule.max_age_days
            )
            if (beyond_count or too_old) and not backup.status.is_running:
                doomed.add(backup.id)
        doomed -= _ancestors_of_survivors(everything, doomed)
        deleted = []
        # Children before parents: newest first within the doomed set.
        for backup in made:
            if backup.id in doomed:
                self.backups.delete_one(backup)
                self._store.delete(made_by_key(schedule.id, backup.id))
                deleted.append(backup.id)
        if deleted:
            log.info(
                "retention deleted backups", extra={"schedule_id": schedule.id, "ids": deleted}
            )
        return deleted


def _ancestors_of_survivors(everything: dict[str, Backup], doomed: set[str]) -> set[str]:
    """Every backup some surviving backup is built on (parents, grandparents...)."""
    protected: set[str] = set()
    for backup in everything.values():
        if backup.id in doomed:
            continue
        parent = backup.parent_id
        while parent is not None and parent not in protected:
            protected.add(parent)
            found = everything.get(parent)
            parent = found.parent_id if found is not None else None
    return protected
