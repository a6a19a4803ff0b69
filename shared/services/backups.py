"""Backups: the tenant-facing use cases (`BackupService`) and the steps of the backup flow
(`BackupFlowSteps`, called by `functions/backup_tasks.py`).

A backup claims its instance first (task BACKING_UP, status BACKUP, by compare-and-swap), so
only one backup (or any other action) runs on an instance at a time: a second gets 409. The
flow (state_machines/backup_instance.asl.json) marks the backup BUILDING, seals a fresh data
key for the guest, has the guest stream the backup into the blob store, and then *verifies*
the stored object (its size and sha256 must be what the guest reported): only then is the
backup COMPLETED. Any failure ends it FAILED with the reason, deletes the partial object, and
gives the instance back (ACTIVE).
"""

from __future__ import annotations

import builtins
import re
import uuid
from typing import Any, Self

from pydantic import BaseModel, ConfigDict

from shared.errors import (
    ActionInProgressError,
    ConflictError,
    NotFoundError,
    RequestError,
    TrovelessError,
)
from shared.models.backup import Backup, BackupStatus
from shared.models.base import DomainModel, ProjectId, UtcDatetime, Uuid
from shared.models.instance import Instance, InstanceStatus, InstanceTask
from shared.observability import get_logger
from shared.ports import JSON, BlobStore, Clock, StateStore, Workflows
from shared.services.backup_records import (
    BackupRecords,
    master_key_id,
    new_data_key,
    open_data_key,
    seal_data_key,
    seal_for_guest,
)
from shared.services.instances import (
    InstanceRecords,
    InstanceService,
    RuntimePorts,
    wait_key,
)
from shared.services.quotas import BACKUPS, QuotaService
from shared.settings import Settings

log = get_logger("backups")

BACKUP_FLOW = "backup_instance"
DEFAULT_CONTAINER = "backups"
PROJECT_WIDE = "project"  # the strategy key's last segment for a project-wide strategy
_CONTAINER = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
# Datastores whose guests make incremental backups (PostgreSQL's come with WAL archiving).
INCREMENTAL_DATASTORES = frozenset({"mariadb", "mysql"})
BACKUPABLE_STATUSES = frozenset({InstanceStatus.ACTIVE, InstanceStatus.HEALTHY})
_OBJECT_SUFFIX = {
    "mariadb": "xbstream.zst.enc",
    "mysql": "xbstream.zst.enc",
    "postgresql": "tar.zst.enc",
    "redis": "rdb.zst.enc",
}


class BackupVerificationError(TrovelessError):
    """The stored object is not what the guest said it wrote (missing, size or checksum)."""

    def __init__(self, backup_id: str, reason: str) -> None:
        self.backup_id = backup_id
        self.reason = reason
        super().__init__(f"backup {backup_id} failed verification: {reason}")


class CreateBackup(BaseModel):
    """What a tenant asks for (the API maps Trove's JSON to it)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    instance_id: str
    description: str | None = None
    incremental: bool = False
    parent_id: str | None = None
    container: str | None = None  # Trove's swift_container: the objects' top-level prefix


def object_location(
    project_id: str,
    instance_id: str,
    backup_id: str,
    datastore: str,
    container: str = DEFAULT_CONTAINER,
) -> str:
    suffix = _OBJECT_SUFFIX.get(datastore, "bin.zst.enc")
    return f"{container}/{project_id}/{instance_id}/{backup_id}.{suffix}"


def validate_container(container: str, field: str = "swift_container") -> str:
    """A container is the first segment of the objects' keys: 1-64 of [A-Za-z0-9._-]."""
    if not _CONTAINER.fullmatch(container) or set(container) == {"."}:
        raise RequestError(field, "must be 1 to 64 of the characters A-Z a-z 0-9 . _ -")
    return container


class BackupStrategy(DomainModel):
    """Trove's backup strategy: the container a project's (or one instance's) backups go to."""

    project_id: ProjectId
    instance_id: Uuid | None = None
    container: str
    created: UtcDatetime


def strategy_key(project_id: str, instance_id: str | None) -> str:
    return f"backup-strategies/{project_id}/{instance_id or PROJECT_WIDE}"


class BackupStrategyService:
    """Per-project and per-instance default containers; an instance's beats its project's."""

    def __init__(self, store: StateStore, clock: Clock, instances: InstanceService) -> None:
        self._store = store
        self._clock = clock
        self._instances = instances

    def set(self, project_id: str, instance_id: str | None, container: str) -> BackupStrategy:
        if instance_id is not None:
            instance_id = self._instances.get(project_id, instance_id).id
        strategy = BackupStrategy(
            project_id=project_id,
            instance_id=instance_id,
            container=validate_container(container),
            created=self._clock.now(),
        )
        key = strategy_key(project_id, instance_id)
        for _ in range(10):
            record = self._store.get(key)
            try:
                self._store.put(
                    key, strategy.model_dump(mode="json"), record.revision if record else 0
                )
                return strategy
            except ConflictError:
                continue
        raise ConflictError(key, 0)

    def list(
        self, project_id: str, instance_id: str | None = None
    ) -> builtins.list[BackupStrategy]:
        found = []
        for key in self._store.list(f"backup-strategies/{project_id}/"):
            record = self._store.get(key)
            if record is None:
                continue
            strategy = BackupStrategy.model_validate(record.data)
            if instance_id is None or strategy.instance_id == instance_id:
                found.append(strategy)
        return found

    def delete(self, project_id: str, instance_id: str | None) -> None:
        if instance_id is not None:
            instance_id = _uuid_or_404(instance_id, "backup strategy")
        key = strategy_key(project_id, instance_id)
        if self._store.get(key) is None:
            raise NotFoundError(instance_id or project_id, "backup strategy")
        self._store.delete(key)

    def container_for(self, project_id: str, instance_id: str) -> str:
        for key in (strategy_key(project_id, instance_id), strategy_key(project_id, None)):
            record = self._store.get(key)
            if record is not None:
                return BackupStrategy.model_validate(record.data).container
        return DEFAULT_CONTAINER


def _uuid_or_404(value: str, what: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise NotFoundError(value, what) from None


class _BackupPorts:
    def __init__(
        self,
        *,
        store: StateStore,
        blobs: BlobStore,
        workflows: Workflows,
        clock: Clock,
        master_key: bytes,
        settings: Settings,
        instances: InstanceService,
    ) -> None:
        self._store = store
        self._blobs = blobs
        self._workflows = workflows
        self._clock = clock
        self._master_key = master_key
        self._settings = settings
        self.instances = instances
        self.records = BackupRecords(store)
        self.instance_records = InstanceRecords(store)
        self.quotas = QuotaService(store, settings)
        self.strategies = BackupStrategyService(store, clock, instances)

    @classmethod
    def from_runtime(cls, runtime: RuntimePorts, blobs: BlobStore, **kwargs: Any) -> Self:
        instances = kwargs.pop("instances", None) or InstanceService.from_runtime(runtime)
        return cls(
            store=runtime.store,
            blobs=blobs,
            workflows=runtime.workflows,
            clock=runtime.clock,
            master_key=runtime.master_key,
            settings=runtime.settings,
            instances=instances,
            **kwargs,
        )


class BackupService(_BackupPorts):
    """Create, list, show and delete backups; start the flow that makes one."""

    # ------------------------------------------------------------------ reads
    def get(self, project_id: str, backup_id: str) -> Backup:
        backup = self.records.find(_uuid_or_404(backup_id, "backup"))
        if backup is None or backup.project_id != project_id:
            raise NotFoundError(backup_id, "backup")
        return backup

    def list(
        self, project_id: str, *, instance_id: str | None = None, datastore: str | None = None
    ) -> list[Backup]:
        found = self.records.of_project(project_id)
        if instance_id is not None:
            found = [b for b in found if b.instance_id == instance_id]
        if datastore is not None:
            found = [b for b in found if b.datastore.type == datastore]
        return found

    # ------------------------------------------------------------------ create
    def create(self, project_id: str, request: CreateBackup) -> Backup:
        """Validate, claim the instance (409 if busy), reserve quota, write the NEW record and
        start the backup flow. Nothing is left behind when any of that fails."""
        name = request.name.strip()
        if not name or len(name) > 255:
            raise RequestError("name", "must be 1 to 255 characters")
        instance = self.instances.get(project_id, _uuid_or_404(request.instance_id, "instance"))
        if instance.task is InstanceTask.BACKING_UP:
            raise ActionInProgressError(instance.id, "a backup")
        if instance.status not in BACKUPABLE_STATUSES and instance.task is InstanceTask.NONE:
            raise RequestError(
                "instance",
                f"is {instance.status.value}; a backup needs it ACTIVE",
                status=422,
            )
        parent = self._parent(project_id, instance, request)
        container = (
            validate_container(request.container)
            if request.container is not None
            else self.strategies.container_for(project_id, instance.id)
        )
        backup_id = str(uuid.uuid4())
        claimed = self.instances.begin_action(
            project_id, instance.id, InstanceTask.BACKING_UP, InstanceStatus.BACKUP
        )
        backup: Backup | None = None
        try:
            self.quotas.reserve(project_id, backup_id, {BACKUPS: 1})
            now = self._clock.now()
            backup = Backup(
                id=backup_id,
                project_id=project_id,
                name=name,
                description=request.description,
                instance_id=instance.id,
                parent_id=parent.id if parent else None,
                incremental=parent is not None,
                status=BackupStatus.NEW,
                datastore=instance.datastore,
                location=object_location(
                    project_id, instance.id, backup_id, instance.datastore.type, container
                ),
                encryption_key_id=master_key_id(self._master_key),
                created=now,
                updated=now,
            )
            self.records.create(backup)
            arn = self._workflows.start(
                BACKUP_FLOW,
                {
                    "backup_id": backup_id,
                    "instance_id": instance.id,
                    "project_id": project_id,
                    "backup_timeout": self._settings.guest_prepare_timeout,
                },
                name=f"backup-{backup_id}",
            )
        except Exception:
            self.quotas.release(project_id, backup_id)
            if backup is not None:
                self.records.remove(backup)
            self._give_back(claimed)
            raise
        self.instance_records.update(
            instance.id,
            lambda i: (
                i.replace(task_execution_arn=arn) if i.task is InstanceTask.BACKING_UP else None
            ),
        )
        log.info(
            "backup started",
            extra={"backup_id": backup_id, "instance_id": instance.id, "execution": arn},
        )
        return backup

    def _parent(self, project_id: str, instance: Instance, request: CreateBackup) -> Backup | None:
        """The parent of an incremental backup: the one named, or (Trove's rule for
        `incremental` without `parent_id`) the instance's latest COMPLETED backup."""
        if request.parent_id is None and not request.incremental:
            return None
        if instance.datastore.type not in INCREMENTAL_DATASTORES:
            raise RequestError(
                "incremental",
                f"{instance.datastore.type} backups are full backups only "
                f"(incrementals: {', '.join(sorted(INCREMENTAL_DATASTORES))})",
                status=422,
            )
        if request.parent_id is not None:
            parent = self.get(project_id, request.parent_id)
        else:
            completed = [
                b
                for b in self.list(project_id, instance_id=instance.id)
                if b.status is BackupStatus.COMPLETED
            ]
            if not completed:
                raise RequestError(
                    "incremental",
                    f"instance {instance.id} has no COMPLETED backup to build on",
                    status=422,
                )
            parent = completed[-1]
        if parent.instance_id != instance.id:
            raise RequestError(
                "parent_id", f"backup {parent.id} is not of instance {instance.id}", status=422
            )
        if parent.status is not BackupStatus.COMPLETED:
            raise RequestError(
                "parent_id",
                f"backup {parent.id} is {parent.status.value}; a parent must be COMPLETED",
                status=422,
            )
        return parent

    def _give_back(self, claimed: Instance) -> None:
        """Undo a claim whose backup never started: the instance as it was, nothing else."""
        self.instance_records.update(
            claimed.id,
            lambda i: (
                i.replace(task=InstanceTask.NONE, status=InstanceStatus.ACTIVE)
                if i.task is InstanceTask.BACKING_UP
                else None
            ),
        )

    # ------------------------------------------------------------------ delete
    def descendants(self, backup: Backup) -> builtins.list[Backup]:
        """Backups built on `backup` (children, grandchildren...), deepest first."""
        everything = self.records.of_project(backup.project_id)
        children: dict[str, list[Backup]] = {}
        for other in everything:
            if other.parent_id is not None:
                children.setdefault(other.parent_id, []).append(other)
        found: builtins.list[Backup] = []
        frontier = [backup.id]
        while frontier:
            current = frontier.pop()
            for child in children.get(current, []):
                if child.id not in {b.id for b in found}:
                    found.append(child)
                    frontier.append(child.id)
        found.reverse()
        return found

    def delete(self, project_id: str, backup_id: str) -> builtins.list[str]:
        """Delete the backup and every backup built on it (objects, records, quota holds).
        409 while any of them is running. Returns the ids deleted, children first."""
        backup = self.get(project_id, backup_id)
        doomed = [*self.descendants(backup), backup]
        running = [b for b in doomed if b.status.is_running]
        if running:
            raise ActionInProgressError(running[0].id, f"backup ({running[0].status.value})")
        for victim in doomed:
            self.delete_one(victim)
        return [b.id for b in doomed]

    def delete_one(self, backup: Backup) -> None:
        if backup.location is not None:
            self._blobs.delete(backup.location)
        self.records.remove(backup)
        self.quotas.release(backup.project_id, backup.id)
        log.info("backup deleted", extra={"backup_id": backup.id})


# --------------------------------------------------------------------------- flow steps
class BackupFlowSteps(_BackupPorts):
    """What each Task state of the backup flow does. Each step is safe to repeat."""

    def begin(self, backup_id: str) -> JSON:
        """Mark the backup BUILDING; return the guest's `backup` args (data key not yet)."""
        backup = self.records.get(backup_id)
        if backup.status is BackupStatus.NEW:
            self.records.update(
                backup_id,
                lambda b: (
                    b.replace(status=BackupStatus.BUILDING, updated=self._clock.now())
                    if b.status is BackupStatus.NEW
                    else None
                ),
            )
        parent: JSON | None = None
        if backup.parent_id is not None:
            found = self.records.get(backup.parent_id)
            parent = {"backup_id": found.id, "lsn": found.lsn}
        return {
            "backup_id": backup.id,
            "location": backup.location,
            "incremental": backup.incremental,
            "parent": parent,
        }

    def seal_data_key(self, backup_id: str, guest_args: JSON) -> JSON:
        """A fresh data key for this backup, kept sealed by the master key (a repeat of the
        step reuses it), and returned sealed under the instance's key for the guest."""
        backup = self.records.get(backup_id)
        if backup.encrypted_data_key is None:
            sealed = seal_data_key(backup.id, new_data_key(), self._master_key)
            backup = self.records.update(
                backup_id,
                lambda b: (
                    b.replace(encrypted_data_key=sealed) if b.encrypted_data_key is None else None
                ),
            ) or self.records.get(backup_id)
        assert backup.instance_id is not None
        instance = self.instance_records.get(backup.instance_id)
        return {
            **guest_args,
            "encrypted_data_key": seal_for_guest(
                instance, self._master_key, open_data_key(backup, self._master_key)
            ),
        }

    def verify(self, backup_id: str, result: JSON) -> JSON:
        """Check the stored object against what the guest reported; COMPLETED only if it
        matches (BackupVerificationError otherwise) and the instance is given back."""
        backup = self.records.get(backup_id)
        if backup.status is BackupStatus.COMPLETED:
            self._finish_instance(backup)  # a repeat of the step after a crash
            return {"status": backup.status.value}
        location = str(result.get("location") or "")
        if location != backup.location:
            raise BackupVerificationError(
                backup_id, f"the guest wrote {location!r}, not {backup.location!r}"
            )
        try:
            info = self._blobs.head(location)
        except NotFoundError:
            raise BackupVerificationError(backup_id, f"no object at {location}") from None
        size = result.get("size_bytes")
        if info.size != size:
            raise BackupVerificationError(
                backup_id, f"the object holds {info.size} bytes; the guest reported {size}"
            )
        if info.sha256 != result.get("sha256"):
            raise BackupVerificationError(
                backup_id, "the object's sha256 differs from the one the guest reported"
            )
        position = result.get("position")
        lsn = result.get("lsn")
        completed = self.records.update(
            backup_id,
            lambda b: b.replace(
                status=BackupStatus.COMPLETED,
                size_bytes=info.size,
                data_size_bytes=int(result.get("data_size_bytes") or 0),
                checksum=info.sha256,
                replication_position=str(position) if position is not None else None,
                lsn=str(lsn) if lsn is not None else None,
                fail_reason=None,
                updated=self._clock.now(),
            ),
        )
        self._finish_instance(backup)
        log.info("backup completed", extra={"backup_id": backup_id, "bytes": info.size})
        return {"status": (completed or backup).status.value, "size_bytes": info.size}

    def fail(self, backup_id: str, reason: str, instance_id: str | None = None) -> JSON:
        """FAILED with the reason; the partial object deleted; the instance given back."""
        backup = self.records.find(backup_id)
        if backup is None:
            if instance_id is not None:  # the record vanished: still end the instance's claim
                self.instances.finish_action(instance_id, InstanceTask.BACKING_UP)
            return {"status": "gone"}
        if backup.status is BackupStatus.COMPLETED:
            self._finish_instance(backup)  # verified already: the object stays
            return {"status": backup.status.value, "reason": reason}
        if backup.location is not None:
            self._blobs.delete(backup.location)
        self.records.update(
            backup_id,
            lambda b: (
                b.replace(
                    status=BackupStatus.FAILED,
                    fail_reason=reason[:2000],
                    updated=self._clock.now(),
                )
                if b.status is not BackupStatus.COMPLETED
                else None
            ),
        )
        self._finish_instance(backup)
        log.warning("backup failed", extra={"backup_id": backup_id, "why": reason})
        return {"status": BackupStatus.FAILED.value, "reason": reason}

    def _finish_instance(self, backup: Backup) -> None:
        if backup.instance_id is not None:
            current = self.instance_records.find(backup.instance_id)
            if current is not None and current.task is InstanceTask.BACKING_UP:
                self._store.delete(wait_key(backup.instance_id))
            self.instances.finish_action(backup.instance_id, InstanceTask.BACKING_UP)
