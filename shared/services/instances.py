"""Instances: the tenant-facing use cases (`InstanceService`) and the steps the lifecycle
flows run (`InstanceFlowSteps`, called by `functions/instance_tasks.py`).

Records (StateStore):

    instances/<id>                     the Instance (every writer uses compare-and-swap)
    project-instances/<project>/<id>   index of a project's instances (seeds the listing)
    project-listings/<project>         a copy of all of them, for listing in one read
                                       (shared/services/instance_listing.py)
    instance-waits/<id>                the task token a flow is waiting on from the guest,
                                       so a delete can end that wait at once

Concurrency. Every change to an instance is a compare-and-swap on its record. An action
(restart, resize...) starts only from a settled instance (`begin_action`: no task under way,
status ACTIVE-like), else ActionInProgressError (409). Delete always wins: it marks the record
DELETING first; each flow step re-reads the record and stops (InstanceDeleted) when it sees
that, and the provision step that creates the server re-checks *after* creating it, deleting
the server itself if a delete slipped in between, so a create racing a delete leaves nothing.

Secrets. The guest secret is stored only sealed by the master key; user passwords go to the
guest sealed under the instance's key (`encrypted_password`) in the flow input.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Callable
from typing import Any, Protocol, Self

from pydantic import BaseModel, ConfigDict, Field

from shared.crypto import encode_secret, new_instance_secret
from shared.errors import (
    ActionInProgressError,
    ConflictError,
    NotFoundError,
    RequestError,
    TrovelessError,
)
from shared.models.backup import Backup
from shared.models.configuration import Configuration
from shared.models.database import Database, User
from shared.models.datastore import DatastoreRef
from shared.models.flavor import Flavor
from shared.models.instance import (
    Address,
    Fault,
    Instance,
    InstanceStatus,
    InstanceTask,
    ServiceStatus,
)
from shared.models.volume import Volume, VolumeKind
from shared.observability import get_logger
from shared.ports import JSON, BlobStore, Clock, Compute, Queue, StateStore, Workflows
from shared.rules.names import NameRuleError, validate_prepare_request
from shared.services.backup_records import BackupRecords, RestorePlan, plan_restore
from shared.services.catalog import CatalogService
from shared.services.guest_channel import (
    EVENTS_QUEUE,
    GuestClient,
    command_queue_name,
    seen_key,
)
from shared.services.guest_liveness import liveness_key
from shared.services.instance_listing import ProjectListing
from shared.services.instance_secrets import guest_secret, seal_guest_secret
from shared.services.quotas import INSTANCES, VOLUMES, QuotaService
from shared.settings import Profile, Settings

log = get_logger("instances")

PROVISION = "provision_instance"
DELETE = "delete_instance"
RESTART = "restart_instance"
RESIZE_FLAVOR = "resize_flavor"
RESIZE_VOLUME = "resize_volume"

# Statuses an instance can start an action from (Trove: "ready" statuses).
READY_STATUSES = frozenset(
    {
        InstanceStatus.ACTIVE,
        InstanceStatus.HEALTHY,
        InstanceStatus.RESTART_REQUIRED,
        InstanceStatus.SHUTDOWN,
    }
)
DEFAULT_PORTS = {"mariadb": 3306, "mysql": 3306, "postgresql": 5432, "redis": 6379}
_CAS_ATTEMPTS = 20


def instance_key(instance_id: str) -> str:
    return f"instances/{instance_id}"


def index_key(project_id: str, instance_id: str) -> str:
    return f"project-instances/{project_id}/{instance_id}"


def wait_key(instance_id: str) -> str:
    return f"instance-waits/{instance_id}"


def results_prefix(instance_id: str) -> str:
    return f"guests/{instance_id}/results/"


def forget_guest_records(store: StateStore, instance_id: str) -> None:
    """Delete what the control plane keeps about an instance's guest: its replay state, its
    liveness record and its stored results."""
    store.delete(seen_key(instance_id))
    store.delete(liveness_key(instance_id))  # else the watchdog removes it later
    for key in list(store.list(results_prefix(instance_id))):
        store.delete(key)


def execution_name(action: str, instance_id: str, nonce: str | None = None) -> str:
    """Execution names derive from the instance id, so starting twice starts once."""
    return f"{action}-{instance_id}" if nonce is None else f"{action}-{instance_id}-{nonce}"


class InstanceDeletedError(TrovelessError):
    """The instance was deleted (or is being deleted) while a flow worked on it."""

    def __init__(self, instance_id: str) -> None:
        self.instance_id = instance_id
        super().__init__(f"instance {instance_id} was deleted")


class CreateInstance(BaseModel):
    """What a tenant asks for when creating an instance (the API maps Trove's JSON to it)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    flavor_id: str
    volume_size_gb: int
    datastore_type: str | None = None
    datastore_version: str | None = None
    databases: list[Database] = Field(default_factory=list)
    users: list[User] = Field(default_factory=list)
    availability_zone: str | None = None
    configuration_id: str | None = None
    restore_backup_id: str | None = None  # Trove's restorePoint.backupRef


class RuntimePorts(Protocol):
    """What `InstanceService.from_runtime` needs (functions.runtime.Runtime fits)."""

    settings: Settings
    clock: Clock
    store: StateStore
    queue: Queue
    compute: Compute
    workflows: Workflows
    master_key: bytes
    blobs: BlobStore


# --------------------------------------------------------------------------- records
class InstanceRecords:
    """Instance records with compare-and-swap updates."""

    def __init__(self, store: StateStore) -> None:
        self._store = store
        self._listing = ProjectListing(store, self._revisions_of_project)

    def find(self, instance_id: str) -> Instance | None:
        record = self._store.get(instance_key(instance_id))
        return Instance.model_validate(record.data) if record is not None else None

    def get(self, instance_id: str) -> Instance:
        found = self.find(instance_id)
        if found is None:
            raise NotFoundError(instance_id, "instance")
        return found

    def create(self, instance: Instance) -> None:
        # Index first: a listing skips an index entry whose record is missing, never the reverse.
        self._store.put(index_key(instance.project_id, instance.id), {}, 0)
        data = instance.model_dump(mode="json")
        written = self._store.put(instance_key(instance.id), data, 0)
        self._listing.record_write(instance.project_id, instance.id, written.revision, data)

    def update(
        self, instance_id: str, change: Callable[[Instance], Instance | None]
    ) -> Instance | None:
        """Apply `change` to the latest revision and write it (retrying lost races).

        `change` returns the new instance, or None to write nothing; it may raise. Returns
        what was written (or None when nothing was, including when the record is gone)."""
        key = instance_key(instance_id)
        for _ in range(_CAS_ATTEMPTS):
            record = self._store.get(key)
            if record is None:
                return None
            current = Instance.model_validate(record.data)
            changed = change(current)
            if changed is None:
                return None
            data = changed.model_dump(mode="json")
            try:
                written = self._store.put(key, data, record.revision)
            except ConflictError:
                continue
            self._listing.record_write(changed.project_id, changed.id, written.revision, data)
            return changed
        raise ConflictError(key, 0)

    def ids_of_project(self, project_id: str) -> list[str]:
        prefix = f"project-instances/{project_id}/"
        return [key[len(prefix) :] for key in self._store.list(prefix)]

    def delete(self, instance: Instance) -> None:
        self.remove(instance.project_id, instance.id)

    def remove(self, project_id: str, instance_id: str) -> None:
        """Delete the record, its index entry and its listing entry (tombstoned)."""
        self._store.delete(instance_key(instance_id))
        self._store.delete(index_key(project_id, instance_id))
        self._listing.record_removal(project_id, instance_id)

    def of_project(self, project_id: str) -> list[Instance]:
        """The project's instances, oldest first, from its listing record (one read); they
        carry no guest secret or execution arn (instance_listing.OMITTED_FIELDS)."""
        return self._listing.read(project_id)

    def _revisions_of_project(self, project_id: str) -> dict[str, tuple[int, JSON]]:
        """The project's instance records as they are now (seeds the listing)."""
        found: dict[str, tuple[int, JSON]] = {}
        for instance_id in self.ids_of_project(project_id):
            record = self._store.get(instance_key(instance_id))
            if record is not None and record.data.get("project_id") == project_id:
                found[instance_id] = (record.revision, record.data)
        return found


def _is_deleting(instance: Instance) -> bool:
    return instance.task is InstanceTask.DELETING


# --------------------------------------------------------------------------- service
class _InstancePorts:
    """The ports, settings and record helpers the instance service and its flow steps share."""

    def __init__(
        self,
        *,
        store: StateStore,
        queue: Queue,
        compute: Compute,
        workflows: Workflows,
        clock: Clock,
        master_key: bytes,
        settings: Settings,
        catalog: CatalogService | None = None,
        blobs: BlobStore | None = None,
    ) -> None:
        self._store = store
        self._blobs = blobs
        self._queue = queue
        self._compute = compute
        self._workflows = workflows
        self._clock = clock
        self._master_key = master_key
        self._settings = settings
        self.catalog = catalog or CatalogService(settings)
        self.quotas = QuotaService(store, settings)
        self.records = InstanceRecords(store)

    @classmethod
    def from_runtime(cls, runtime: RuntimePorts, **kwargs: Any) -> Self:
        return cls(
            store=runtime.store,
            queue=runtime.queue,
            compute=runtime.compute,
            workflows=runtime.workflows,
            clock=runtime.clock,
            master_key=runtime.master_key,
            settings=runtime.settings,
            blobs=runtime.blobs,
            **kwargs,
        )


class InstanceService(_InstancePorts):
    """Create, show, list, change and delete instances; start the flows that do the work."""

    # ------------------------------------------------------------------ reads
    def get(self, project_id: str, instance_id: str) -> Instance:
        """The instance; NotFoundError if it does not exist or is another project's."""
        try:
            instance = self.records.find(str(uuid.UUID(instance_id)))
        except ValueError:
            instance = None  # not a UUID (clients look names up this way first): 404
        if instance is None or instance.project_id != project_id:
            raise NotFoundError(instance_id, "instance")
        return instance

    def list(self, project_id: str) -> list[Instance]:
        return self.records.of_project(project_id)

    # ------------------------------------------------------------------ create
    def create(self, project_id: str, request: CreateInstance) -> Instance:
        """Validate everything, reserve quota, write the BUILD record, start provisioning."""
        plan = self._plan(project_id, request)
        instance_id = str(uuid.uuid4())
        self.quotas.reserve(
            project_id, instance_id, {INSTANCES: 1, VOLUMES: request.volume_size_gb}
        )
        try:
            secret = new_instance_secret()
            now = self._clock.now()
            instance = Instance(
                id=instance_id,
                project_id=project_id,
                name=plan["name"],
                status=InstanceStatus.BUILD,
                operating_status=ServiceStatus.NEW,
                task=InstanceTask.BUILDING,
                flavor_id=plan["flavor"].id,
                volume=Volume(kind=VolumeKind.DIRECTORY, size_gb=request.volume_size_gb),
                datastore=plan["datastore"],
                availability_zone=request.availability_zone,
                configuration_id=request.configuration_id,
                encrypted_guest_secret=seal_guest_secret(instance_id, secret, self._master_key),
                created=now,
                updated=now,
            )
            self.records.create(instance)
            guest = GuestClient(self._queue, self._clock, instance_id, secret)
            users = [
                {
                    "name": u["name"],
                    "host": u["host"],
                    "databases": u["databases"],
                    "encrypted_password": guest.seal_password(u["password"]),
                }
                for u in plan["users"]
            ]
            flow_input: JSON = {
                "instance_id": instance_id,
                "project_id": project_id,
                "prepare": {
                    "databases": plan["databases"],
                    "users": users,
                    "overrides": plan["overrides"],
                },
                "prepare_timeout": self._settings.guest_prepare_timeout,
            }
            restore: RestorePlan | None = plan["restore"]
            if restore is not None:
                # Each link's data key, re-sealed so only the new instance's guest opens it.
                chain = restore.guest_chain(self._master_key, guest.seal_password)
                flow_input["prepare"]["restore"] = {"chain": chain}
            arn = self._workflows.start(
                PROVISION, flow_input, name=execution_name("provision", instance_id)
            )
        except Exception:
            # Nothing was started (or the start failed): leave no record and no hold behind.
            self.quotas.release(project_id, instance_id)
            self.records.remove(project_id, instance_id)
            raise
        updated = self.records.update(
            instance_id,
            lambda i: (
                i.replace(task_execution_arn=arn)
                if i.task is InstanceTask.BUILDING and i.task_execution_arn is None
                else None
            ),
        )
        log.info(
            "instance create started",
            extra={"instance_id": instance_id, "project_id": project_id, "execution": arn},
        )
        return updated or self.records.find(instance_id) or instance

    def _plan(self, project_id: str, request: CreateInstance) -> dict[str, Any]:
        """Everything `create` checks before it makes anything; raises the first problem."""
        name = request.name.strip()
        if not name or len(name) > 255:
            raise RequestError("name", "must be 1 to 255 characters")
        flavor = self.catalog.flavor(request.flavor_id)
        max_gb = self._settings.max_volume_size_gb
        if not 1 <= request.volume_size_gb <= max_gb:
            raise RequestError(
                "volume.size",
                f"must be between 1 and {max_gb} GB, got {request.volume_size_gb}",
                status=422,
            )
        datastore_type, datastore_version = request.datastore_type, request.datastore_version
        if request.restore_backup_id is not None and datastore_type is None:
            # Trove restores into the backup's datastore unless told otherwise.
            source = self._restore_source(project_id, request.restore_backup_id)
            datastore_type = source.datastore.type
            datastore_version = datastore_version or source.datastore.version
        datastore = (
            self.catalog.datastore(datastore_type)
            if datastore_type
            else self.catalog.default_datastore()
        )
        version = (
            self.catalog.version(datastore.name, datastore_version)
            if datastore_version
            else self.catalog.default_version(datastore.name)
        )
        restore = None
        if request.restore_backup_id is not None:
            if request.databases or request.users:
                raise RequestError(
                    "restorePoint",
                    "a restore brings the backup's databases and users; give none",
                )
            restore = plan_restore(
                BackupRecords(self._store),
                self._blobs,
                project_id,
                request.restore_backup_id,
                volume_size_gb=request.volume_size_gb,
                datastore_type=datastore.name,
                datastore_version=version.name,
            )
        if request.availability_zone is not None:
            zones = self._compute.zones()
            if request.availability_zone not in zones:
                raise RequestError(
                    "availability_zone",
                    f"unknown zone {request.availability_zone!r}; zones: {', '.join(zones)}",
                )
        overrides: JSON = {}
        if request.configuration_id is not None:
            config = self._configuration(project_id, request.configuration_id)
            if config.datastore.type != datastore.name or config.datastore.version not in (
                version.name,
                version.id,
            ):
                raise RequestError(
                    "configuration",
                    f"is for {config.datastore.type} {config.datastore.version}, "
                    f"not {datastore.name} {version.name}",
                    status=422,
                )
            overrides = dict(config.values)
        users_in = []
        for i, user in enumerate(request.users):
            if user.password is None:
                raise RequestError(f"users[{i}].password", "is required")
            users_in.append(
                {
                    "name": user.name,
                    "host": user.host,
                    "password": user.password.get_secret_value(),
                    "databases": list(user.databases),
                }
            )
        databases_in = [
            {k: v for k, v in db.model_dump().items() if v is not None} for db in request.databases
        ]
        try:
            databases, users = validate_prepare_request(datastore.name, databases_in, users_in)
        except NameRuleError as exc:
            raise RequestError(exc.field, exc.rule) from None
        return {
            "name": name,
            "flavor": flavor,
            "datastore": DatastoreRef(type=datastore.name, version=version.name),
            "databases": [{k: v for k, v in d.items() if v is not None} for d in databases],
            "users": users,
            "overrides": overrides,
            "restore": restore,
        }

    def _restore_source(self, project_id: str, backup_id: str) -> Backup:
        try:
            found = BackupRecords(self._store).find(str(uuid.UUID(backup_id)))
        except ValueError:
            found = None
        if found is None or found.project_id != project_id:
            raise NotFoundError(backup_id, "backup")
        return found

    def _configuration(self, project_id: str, configuration_id: str) -> Configuration:
        record = self._store.get(f"configurations/{configuration_id}")
        if record is None:
            raise NotFoundError(configuration_id, "configuration")
        config = Configuration.model_validate(record.data)
        if config.project_id != project_id:
            raise NotFoundError(configuration_id, "configuration")
        return config

    # ------------------------------------------------------------------ changes
    def update(self, project_id: str, instance_id: str, *, name: str | None = None) -> Instance:
        instance = self.get(project_id, instance_id)
        if name is None:
            return instance
        clean = name.strip()
        if not clean or len(clean) > 255:
            raise RequestError("name", "must be 1 to 255 characters")
        updated = self.records.update(
            instance.id, lambda i: i.replace(name=clean, updated=self._clock.now())
        )
        if updated is None:
            raise NotFoundError(instance_id, "instance")
        return updated

    def begin_action(
        self,
        project_id: str,
        instance_id: str,
        task: InstanceTask,
        status: InstanceStatus,
    ) -> Instance:
        """Claim the instance for an action (compare-and-swap): its `task` becomes `task` and
        its `status` `status`. ActionInProgressError (409) while another action runs;
        RequestError (422, field "instance") when it is not ready (ERROR...); NotFoundError
        for another project's or a missing instance."""
        self.get(project_id, instance_id)

        def claim(current: Instance) -> Instance:
            if current.task is not InstanceTask.NONE:
                raise ActionInProgressError(current.id, current.task.value)
            if current.status not in READY_STATUSES:
                raise RequestError(
                    "instance",
                    f"is {current.status.value}; this action needs it ACTIVE "
                    "(reset its status or delete it)",
                    status=422,
                )
            return current.replace(
                task=task,
                status=status,
                task_execution_arn=None,
                fault=None,
                updated=self._clock.now(),
            )

        claimed = self.records.update(str(uuid.UUID(instance_id)), claim)
        if claimed is None:
            raise NotFoundError(instance_id, "instance")
        return claimed

    def finish_action(
        self,
        instance_id: str,
        task: InstanceTask,
        *,
        fault: str | None = None,
        changes: JSON | None = None,
    ) -> Instance | None:
        """End the action `task` (only if it is still the one under way): ACTIVE, or ERROR
        with `fault`; `changes` are applied to the record as well."""
        return finish_action(
            self.records, self._clock, instance_id, task, fault=fault, changes=changes
        )

    def _start_action(
        self,
        project_id: str,
        instance_id: str,
        *,
        task: InstanceTask,
        status: InstanceStatus,
        flow: str,
        flow_input: JSON,
    ) -> None:
        claimed = self.begin_action(project_id, instance_id, task, status)
        self._launch(claimed, task, flow, flow_input)

    def _launch(self, claimed: Instance, task: InstanceTask, flow: str, flow_input: JSON) -> None:
        """Start the flow of an action already claimed; a start that fails ends it in ERROR."""
        nonce = uuid.uuid4().hex[:12]
        try:
            arn = self._workflows.start(
                flow,
                {"instance_id": claimed.id, "project_id": claimed.project_id, **flow_input},
                name=execution_name(flow.replace("_instance", ""), claimed.id, nonce),
            )
        except Exception as exc:
            self.finish_action(claimed.id, task, fault=f"could not start {flow}: {exc}")
            raise
        self.records.update(
            claimed.id, lambda i: i.replace(task_execution_arn=arn) if i.task is task else None
        )

    def _undo_claim(self, claimed: Instance, task: InstanceTask, status: InstanceStatus) -> None:
        """Give back a claim whose action was refused before it started."""
        self.records.update(
            claimed.id,
            lambda i: i.replace(task=InstanceTask.NONE, status=status) if i.task is task else None,
        )

    def restart(self, project_id: str, instance_id: str) -> None:
        self._start_action(
            project_id,
            instance_id,
            task=InstanceTask.REBOOTING,
            status=InstanceStatus.REBOOT,
            flow=RESTART,
            flow_input={},
        )

    def resize_flavor(self, project_id: str, instance_id: str, flavor_id: str) -> None:
        instance = self.get(project_id, instance_id)
        flavor = self.catalog.flavor(flavor_id)
        if flavor.id == instance.flavor_id:
            raise RequestError("flavorRef", f"the instance already has flavor {flavor.id}")
        self._start_action(
            project_id,
            instance_id,
            task=InstanceTask.RESIZING,
            status=InstanceStatus.RESIZE,
            flow=RESIZE_FLAVOR,
            flow_input={"flavor": _flavor_json(flavor)},
        )

    def resize_volume(self, project_id: str, instance_id: str, size_gb: int) -> None:
        instance = self.get(project_id, instance_id)
        max_gb = self._settings.max_volume_size_gb
        if size_gb <= instance.volume.size_gb:
            raise RequestError(
                "volume.size",
                f"volumes only grow: {size_gb} GB is not more than the current "
                f"{instance.volume.size_gb} GB",
            )
        if size_gb > max_gb:
            raise RequestError("volume.size", f"must be at most {max_gb} GB", status=422)
        # Claim first, then the quota: concurrent resizes cannot overwrite each other's hold.
        claimed = self.begin_action(
            project_id, instance_id, InstanceTask.RESIZING, InstanceStatus.RESIZE
        )
        old_size = claimed.volume.size_gb
        try:
            self.quotas.reserve(project_id, claimed.id, {INSTANCES: 1, VOLUMES: size_gb})
        except Exception:
            self._undo_claim(claimed, InstanceTask.RESIZING, instance.status)
            raise
        try:
            self._launch(
                claimed,
                InstanceTask.RESIZING,
                RESIZE_VOLUME,
                {"old_size_gb": old_size, "new_size_gb": size_gb},
            )
        except Exception:
            self.quotas.reserve(project_id, claimed.id, {INSTANCES: 1, VOLUMES: old_size})
            raise

    def reset_status(self, project_id: str, instance_id: str) -> None:
        """Trove's reset_status: an instance stuck in an action ends it, in ERROR."""
        self.get(project_id, instance_id)

        def reset(current: Instance) -> Instance | None:
            if current.task is InstanceTask.DELETING:
                return None  # a delete is not undone
            stuck = current.task is not InstanceTask.NONE or current.status not in (
                READY_STATUSES | {InstanceStatus.ERROR}
            )
            if not stuck:
                return None
            return current.replace(
                task=InstanceTask.NONE,
                task_execution_arn=None,
                status=InstanceStatus.ERROR,
                fault=Fault(
                    message=f"status reset by request (was {current.status.value}, "
                    f"task {current.task.value})",
                    created=self._clock.now(),
                ),
                updated=self._clock.now(),
            )

        self.records.update(str(uuid.UUID(instance_id)), reset)

    def delete(self, project_id: str, instance_id: str) -> None:
        """Mark the instance DELETING and start its deletion; deleting an instance that is
        already being deleted changes nothing. Works from any status."""
        instance = self.get(project_id, instance_id)

        def mark(current: Instance) -> Instance | None:
            if _is_deleting(current):
                return None
            return current.replace(
                task=InstanceTask.DELETING,
                status=InstanceStatus.SHUTDOWN,
                updated=self._clock.now(),
            )

        self.records.update(instance.id, mark)
        arn = self._workflows.start(
            DELETE,
            {"instance_id": instance.id, "project_id": project_id},
            name=execution_name("delete", instance.id),
        )
        self.records.update(
            instance.id,
            lambda i: (
                i.replace(task_execution_arn=arn)
                if _is_deleting(i) and i.task_execution_arn != arn
                else None
            ),
        )


def finish_action(
    records: InstanceRecords,
    clock: Clock,
    instance_id: str,
    task: InstanceTask,
    *,
    fault: str | None = None,
    changes: JSON | None = None,
) -> Instance | None:
    def finish(current: Instance) -> Instance | None:
        if current.task is not task:
            return None  # another action (a delete) took over: it owns the record now
        now = clock.now()
        return current.replace(
            **(changes or {}),
            task=InstanceTask.NONE,
            task_execution_arn=None,
            status=InstanceStatus.ERROR if fault else InstanceStatus.ACTIVE,
            fault=Fault(message=fault[:2000], created=now) if fault else None,
            updated=now,
        )

    return records.update(instance_id, finish)


def _flavor_json(flavor: Flavor) -> JSON:
    return {"id": flavor.id, "ram_mb": flavor.ram_mb, "vcpus": flavor.vcpus}


# --------------------------------------------------------------------------- flow steps
class InstanceFlowSteps(_InstancePorts):
    """What each Task state of the instance flows does. Each step is safe to repeat."""

    def _live(self, instance_id: str) -> Instance:
        """The instance, unless it is gone or being deleted (InstanceDeletedError)."""
        instance = self.records.find(instance_id)
        if instance is None or _is_deleting(instance):
            raise InstanceDeletedError(instance_id)
        return instance

    def guest_user_data(self, instance: Instance, secret: bytes) -> JSON:
        """The user-data the guest agent boots with; its command queue is created first."""
        commands = command_queue_name(instance.id)
        self._queue.ensure_queue(commands)
        data: JSON = {
            "instance_id": instance.id,
            "datastore_type": instance.datastore.type,
            "datastore_version": instance.datastore.version,
            "command_queue": commands,
            "events_queue": EVENTS_QUEUE,
            "secret": encode_secret(secret),
            "profile": self._settings.profile.value,
            "heartbeat_interval": self._settings.heartbeat_interval,
        }
        if self._settings.profile is Profile.LOCAL:
            # The embedded cloud's layout under data_dir (infra/local/cloud.py makes it).
            root = self._settings.data_dir
            data["local"] = {
                "queue_path": str(root / "queues" / "queues.db"),
                "blob_dir": str(root / "blobs"),
            }
        return data

    # ------------------------------------------------------------------ provision
    def create_server(self, instance_id: str) -> JSON:
        instance = self._live(instance_id)
        flavor = self.catalog.flavor(instance.flavor_id)
        secret = guest_secret(instance, self._master_key)
        server = self._compute.create_server(
            instance.id,
            flavor,
            instance.volume.size_gb,
            instance.availability_zone,
            self.guest_user_data(instance, secret),
        )
        port = DEFAULT_PORTS.get(instance.datastore.type)

        def record(current: Instance) -> Instance | None:
            if _is_deleting(current):
                return None
            return current.replace(
                server_id=server.server_id,
                availability_zone=server.zone,
                addresses=[Address(address=server.address)],
                port=port,
                volume=current.volume.replace(
                    kind=VolumeKind(server.volume_kind),
                    id=server.volume_id,
                    size_gb=server.volume_gb,
                ),
                operating_status=ServiceStatus.BUILDING,
                updated=self._clock.now(),
            )

        if self.records.update(instance.id, record) is None:
            # Deleted while the server was being made: the delete may have run before the
            # server existed, so remove it here (deleting twice is harmless).
            self._compute.delete_server(instance.id)
            raise InstanceDeletedError(instance.id)
        return {"address": server.address, "zone": server.zone, "port": port}

    def send_guest_command(
        self,
        instance_id: str,
        command: str,
        args: JSON,
        task_token: str,
        *,
        command_key: str | None = None,
        timeout: float = 300.0,
    ) -> JSON:
        """Send a signed command whose result answers `task_token` (the flow waits for it).

        The token is recorded first and the record re-checked after, so a delete that runs
        at any moment either sees the token (and ends the wait) or is seen here."""
        self._store.delete(wait_key(instance_id))
        self._store.put(wait_key(instance_id), {"token": task_token, "command": command}, 0)
        instance = self._live(instance_id)
        client = GuestClient(
            self._queue, self._clock, instance.id, guest_secret(instance, self._master_key)
        )
        self._queue.ensure_queue(client.command_queue)  # cheap; the guest may not be up yet
        command_id = (
            str(uuid.uuid5(uuid.NAMESPACE_URL, f"troveless/{command_key}")) if command_key else None
        )
        sent = client.send(
            command, args, task_token=task_token, command_id=command_id, timeout=timeout
        )
        return {"command_id": sent.id}

    def mark_active(self, instance_id: str) -> JSON:
        def activate(current: Instance) -> Instance | None:
            if current.task is not InstanceTask.BUILDING:
                return None
            return current.replace(
                status=InstanceStatus.ACTIVE,
                task=InstanceTask.NONE,
                task_execution_arn=None,
                fault=None,
                updated=self._clock.now(),
            )

        self._store.delete(wait_key(instance_id))
        if self.records.update(instance_id, activate) is None:
            raise InstanceDeletedError(instance_id)
        return {"status": InstanceStatus.ACTIVE.value}

    def compensate_provision(self, instance_id: str, project_id: str) -> JSON:
        """Undo a failed provision: the server (and its volume) and the quota hold."""
        self._compute.delete_server(instance_id)
        self.quotas.release(project_id, instance_id)
        self._store.delete(wait_key(instance_id))
        return {"compensated": True}

    def mark_error(self, instance_id: str, error: str, cause: str) -> JSON:
        reason = describe_failure(error, cause)

        def fail(current: Instance) -> Instance | None:
            if _is_deleting(current):
                return None
            now = self._clock.now()
            return current.replace(
                status=InstanceStatus.ERROR,
                task=InstanceTask.NONE,
                task_execution_arn=None,
                fault=Fault(message=reason, details=f"{error}: {cause}"[:4000], created=now),
                updated=now,
            )

        self.records.update(instance_id, fail)
        log.warning("instance provision failed", extra={"instance_id": instance_id, "why": reason})
        return {"fault": reason}

    # ------------------------------------------------------------------ delete
    def end_guest_wait(self, instance_id: str) -> JSON:
        """Fail the guest wait a flow may be in (prepare, restart...) so it stops at once."""
        record = self._store.get(wait_key(instance_id))
        if record is None:
            return {"ended": False}
        # A wait that already ended (answered or timed out) refuses the answer: fine.
        with contextlib.suppress(TrovelessError):
            self._workflows.send_task_failure(
                str(record.data["token"]), "InstanceDeleted", "the instance is being deleted"
            )
        self._store.delete(wait_key(instance_id))
        return {"ended": True}

    def delete_server(self, instance_id: str) -> JSON:
        self._compute.delete_server(instance_id)
        return {"deleted": True}

    def forget_guest(self, instance_id: str) -> JSON:
        with contextlib.suppress(NotFoundError):  # no queue: the server was never made
            self._queue.purge(command_queue_name(instance_id))
        forget_guest_records(self._store, instance_id)
        return {"forgotten": True}

    def release_quota(self, instance_id: str, project_id: str) -> JSON:
        self.quotas.release(project_id, instance_id)
        return {"released": True}

    def delete_records(self, instance_id: str, project_id: str) -> JSON:
        self._store.delete(wait_key(instance_id))
        self.records.remove(project_id, instance_id)
        return {"deleted": True}

    # ------------------------------------------------------------------ actions
    def resize_server_flavor(self, instance_id: str, flavor: JSON) -> JSON:
        """New RAM/CPU limits, then a reboot so the guest derives its memory settings again."""
        self._live(instance_id)
        spec = self.catalog.flavor(str(flavor["id"]))
        self._compute.resize_flavor(instance_id, spec)
        self._compute.reboot_server(instance_id)
        return {"flavor_id": spec.id}

    def resize_server_volume(self, instance_id: str, new_size_gb: int) -> JSON:
        self._live(instance_id)
        server = self._compute.resize_volume(instance_id, new_size_gb)
        return {"volume_gb": server.volume_gb}

    def finish_action(
        self, instance_id: str, task: str, changes: JSON | None = None, fault: str | None = None
    ) -> JSON:
        self._store.delete(wait_key(instance_id))
        done = finish_action(
            self.records,
            self._clock,
            instance_id,
            InstanceTask(task),
            fault=fault,
            changes=changes,
        )
        return {"finished": done is not None}

    def finish_resize_volume(self, instance_id: str, new_size_gb: int) -> JSON:
        instance = self.records.find(instance_id)
        if instance is None:
            return {"finished": False}
        return self.finish_action(
            instance_id,
            InstanceTask.RESIZING.value,
            {"volume": instance.volume.replace(size_gb=new_size_gb).model_dump(mode="json")},
        )

    def fail_resize_volume(
        self, instance_id: str, project_id: str, old_size_gb: int, error: str, cause: str
    ) -> JSON:
        current = self.records.find(instance_id)
        if current is None or current.task is not InstanceTask.RESIZING:
            return {"finished": False}  # a delete took over (and released the quota)
        self.quotas.reserve(project_id, instance_id, {INSTANCES: 1, VOLUMES: old_size_gb})
        return self.finish_action(
            instance_id, InstanceTask.RESIZING.value, fault=describe_failure(error, cause)
        )


def describe_failure(error: str, cause: str) -> str:
    """A fault message a person can act on, from a flow's error name and cause."""
    why = cause
    if cause.startswith("{"):
        try:
            parsed = json.loads(cause)
            why = str(parsed.get("errorMessage") or cause)
        except ValueError:
            pass
    reasons = {
        "States.Timeout": "the guest agent did not answer in time",
        "States.HeartbeatTimeout": "the guest agent stopped answering",
        "InstanceDeleted": "the instance was deleted",
        "GuestHeartbeatLost": "the guest agent stopped sending heartbeats",
    }
    lead = reasons.get(error, error)
    return f"{lead}: {why}"[:2000] if why and why != lead else lead
