"""Configuration groups: named sets of datastore parameters that instances use.

Records live at `configurations/<id>` (a `Configuration`, project-scoped: another project's
group is NotFoundError, as if it did not exist). Values are checked against the datastore
version's rules (`shared.rules.config_parameters.validate`: 422 naming the key) before anything
is stored. The instance record's `configuration_id` is the one truth of who uses a group (the
group's own `instance_ids` is not maintained: instances are created and deleted by the instance
service); a group in use cannot be deleted (400, as Trove).

Attaching, detaching, or changing the values of a group in use starts the `apply_configuration`
flow for each instance: the instance gets task UPDATING (409 for other actions meanwhile), the
guest receives the whole set of overrides (`update_overrides`; `{}` on detach) and answers
whether a restart is needed; the flow ends the task with status ACTIVE or RESTART_REQUIRED (the
restart flow clears the latter), or, when the guest refuses, records a fault and puts the
previous configuration back (the guest keeps its old values).
"""

from __future__ import annotations

import builtins
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.errors import ActionInProgressError, ConflictError, NotFoundError, RequestError
from shared.models.configuration import Configuration, ConfigurationParameter, ConfigValue
from shared.models.datastore import DatastoreRef
from shared.models.instance import Fault, Instance, InstanceStatus, InstanceTask
from shared.observability import get_logger
from shared.ports import Clock, StateStore, Workflows
from shared.rules import config_parameters
from shared.services.catalog import CatalogService
from shared.services.instances import InstanceRecords

log = get_logger("configurations")

STATE_MACHINE = "apply_configuration"
CAS_ATTEMPTS = 8
# Instances whose configuration can change now (anything else is busy or broken).
_APPLICABLE = frozenset(
    {InstanceStatus.ACTIVE, InstanceStatus.HEALTHY, InstanceStatus.RESTART_REQUIRED}
)


def configuration_key(configuration_id: str) -> str:
    return f"configurations/{configuration_id}"


class CreateConfiguration(BaseModel):
    """A request to create a group (Trove's `{"configuration": {...}}` body, flattened)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=255)
    description: str | None = Field(default=None, max_length=255)
    values: dict[str, Any] = Field(default_factory=dict)
    datastore_type: str | None = None
    datastore_version: str | None = None


def _canonical_id(value: str, what: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise NotFoundError(value, what) from None  # not an id: it cannot exist


class ConfigurationService:
    """Configuration groups of one deployment (every method names the project)."""

    def __init__(
        self,
        store: StateStore,
        workflows: Workflows,
        clock: Clock,
        *,
        catalog: CatalogService | None = None,
    ) -> None:
        self._store = store
        self._workflows = workflows
        self._clock = clock
        self._catalog = catalog
        self._records = InstanceRecords(store)

    # ------------------------------------------------------------------ groups
    def list(self, project_id: str) -> list[Configuration]:
        groups = []
        for key in self._store.list("configurations/"):
            record = self._store.get(key)
            if record is None:
                continue
            group = Configuration.model_validate(record.data)
            if group.project_id == project_id:
                groups.append(group)
        return sorted(groups, key=lambda g: (g.created, g.id))

    def get(self, project_id: str, configuration_id: str) -> Configuration:
        return self._load(project_id, configuration_id)[0]

    def create(self, project_id: str, request: CreateConfiguration) -> Configuration:
        datastore = self._datastore_ref(request.datastore_type, request.datastore_version)
        values = config_parameters.validate(datastore.type, datastore.version, request.values)
        now = self._clock.now()
        group = Configuration(
            id=str(uuid.uuid4()),
            project_id=project_id,
            name=request.name,
            description=request.description,
            datastore=datastore,
            values=values,
            created=now,
            updated=now,
        )
        self._store.put(configuration_key(group.id), group.model_dump(mode="json"), 0)
        log.info("configuration created", extra={"configuration_id": group.id})
        return group

    def replace(
        self,
        project_id: str,
        configuration_id: str,
        values: object,
        *,
        name: str | None = None,
        description: str | None = None,
    ) -> Configuration:
        """PUT: `values` replace the group's values; attached instances get them applied."""
        return self._change(project_id, configuration_id, lambda _old: values, name, description)

    def patch(self, project_id: str, configuration_id: str, values: object) -> Configuration:
        """PATCH: `values` are merged into the group's values."""
        if not isinstance(values, Mapping):
            raise RequestError("values", "must be an object of parameter: value")
        return self._change(project_id, configuration_id, lambda old: {**old, **values}, None, None)

    def delete(self, project_id: str, configuration_id: str) -> None:
        group, _revision = self._load(project_id, configuration_id)
        users = self._users(group)
        if users:
            raise RequestError(
                "configuration",
                f"is attached to {len(users)} instance(s) "
                f"({', '.join(i.id for i in users)}); detach it first",
            )
        self._store.delete(configuration_key(group.id))
        log.info("configuration deleted", extra={"configuration_id": group.id})

    def instances(self, project_id: str, configuration_id: str) -> builtins.list[Instance]:
        """The instances using the group (Trove's `/configurations/<id>/instances`)."""
        return self._users(self.get(project_id, configuration_id))

    # ------------------------------------------------------------------ parameters
    def parameters(self, datastore: str, version: str) -> builtins.list[ConfigurationParameter]:
        datastore, version = self._version_name(datastore, version)
        return config_parameters.parameters(datastore, version)

    def parameter(self, datastore: str, version: str, name: str) -> ConfigurationParameter:
        datastore, version = self._version_name(datastore, version)
        return config_parameters.parameter(datastore, version, name)

    def datastore_of_version(self, version_id: str) -> tuple[str, str]:
        """(datastore name, version name) of a version id (Trove's `/datastores/versions/<id>`)."""
        if self._catalog is not None:
            for datastore in self._catalog.datastores():
                found = datastore.find_version(version_id)
                if found is not None:
                    return datastore.name, found.name
        raise NotFoundError(version_id, "datastore version")

    # ------------------------------------------------------------------ attach / detach
    def attach(self, project_id: str, instance_id: str, configuration_id: str) -> Instance:
        """Use the group on the instance: its values are applied by the apply flow."""
        group, _revision = self._load(project_id, configuration_id)
        instance = self._project_instance(project_id, instance_id)
        if instance.datastore.type != group.datastore.type or (
            instance.datastore.version != group.datastore.version
        ):
            raise RequestError(
                "configuration",
                f"is for {group.datastore.type} {group.datastore.version}; instance "
                f"{instance.id} runs {instance.datastore.type} {instance.datastore.version}",
            )
        if instance.configuration_id is not None and instance.configuration_id != group.id:
            raise RequestError(
                "configuration",
                f"instance {instance.id} already uses configuration {instance.configuration_id}; "
                "detach it first",
            )
        started, previous = self._begin_apply(
            instance.id, configuration_id=group.id, expected=(None, group.id)
        )
        self._start_flow(started, group.id, group.values, previous_configuration_id=previous)
        return started

    def detach(self, project_id: str, instance_id: str) -> Instance:
        """Stop using the instance's group: the overrides are removed by the apply flow."""
        instance = self._project_instance(project_id, instance_id)
        previous = instance.configuration_id
        if previous is None:
            raise RequestError("configuration", f"instance {instance.id} has none attached")
        started, _ = self._begin_apply(instance.id, configuration_id=None, expected=(previous,))
        self._start_flow(started, None, {}, previous_configuration_id=previous)
        return started

    # ------------------------------------------------------------------ the apply flow's end
    def finish_apply(self, instance_id: str, restart_required: bool) -> Instance:
        """The guest applied the values: ACTIVE, or RESTART_REQUIRED until the next restart."""
        status = InstanceStatus.RESTART_REQUIRED if restart_required else InstanceStatus.ACTIVE

        def done(instance: Instance) -> Instance:
            if instance.status is InstanceStatus.RESTART_REQUIRED:
                # A value applied earlier still waits for a restart.
                return self._idle(instance, InstanceStatus.RESTART_REQUIRED)
            return self._idle(instance, status)

        return self._update_instance(instance_id, done)

    def fail_apply(
        self,
        instance_id: str,
        *,
        configuration_id: str | None,
        previous_configuration_id: str | None,
        previous_status: str,
        error: str,
        cause: str,
    ) -> Instance:
        """The guest refused (it kept its old values): put the previous group back, record
        why, and end the task."""
        fault = Fault(
            message=f"the configuration was not applied: {error}",
            details=cause[:4000] or None,
            created=self._clock.now(),
        )

        def failed(instance: Instance) -> Instance:
            return self._idle(instance, InstanceStatus(previous_status)).replace(
                configuration_id=previous_configuration_id, fault=fault
            )

        return self._update_instance(instance_id, failed)

    # ------------------------------------------------------------------ internals
    def _datastore_ref(self, datastore: str | None, version: str | None) -> DatastoreRef:
        if datastore is None:
            if self._catalog is None:
                raise RequestError("datastore.type", "is required")
            datastore = self._catalog.default_datastore().name
        if version is None:
            if self._catalog is None:
                raise RequestError("datastore.version", "is required")
            version = self._catalog.default_version(datastore).name
        datastore, version = self._version_name(datastore, version)
        config_parameters.rules_for(datastore, version)  # NotFoundError if it has no rules
        return DatastoreRef(type=datastore, version=version)

    def _version_name(self, datastore: str, version: str) -> tuple[str, str]:
        """Names for a datastore and version given by name or id (only installed ones when
        the catalog is known)."""
        if self._catalog is None:
            return datastore.lower(), version
        store = self._catalog.datastore(datastore)
        return store.name, self._catalog.version(store.name, version).name

    def _load(self, project_id: str, configuration_id: str) -> tuple[Configuration, int]:
        key = configuration_key(_canonical_id(configuration_id, "configuration"))
        record = self._store.get(key)
        if record is None:
            raise NotFoundError(configuration_id, "configuration")
        group = Configuration.model_validate(record.data)
        if group.project_id != project_id:
            raise NotFoundError(configuration_id, "configuration")
        return group, record.revision

    def _change(
        self,
        project_id: str,
        configuration_id: str,
        new_values: Callable[[dict[str, ConfigValue]], object],
        name: str | None,
        description: str | None,
    ) -> Configuration:
        for _attempt in range(CAS_ATTEMPTS):
            group, revision = self._load(project_id, configuration_id)
            values = config_parameters.validate(
                group.datastore.type, group.datastore.version, new_values(dict(group.values))
            )
            users = self._users(group)
            for instance in users:
                if instance.task is not InstanceTask.NONE:
                    raise ActionInProgressError(instance.id, instance.task.value.lower())
            changes: dict[str, Any] = {"values": values, "updated": self._clock.now()}
            if name is not None:
                changes["name"] = name
            if description is not None:
                changes["description"] = description
            try:
                updated = group.replace(**changes)
            except ValidationError as exc:
                first = exc.errors()[0]
                raise RequestError(str(first["loc"][0]), first["msg"]) from None
            try:
                self._store.put(
                    configuration_key(group.id), updated.model_dump(mode="json"), revision
                )
            except ConflictError:
                continue
            for instance in users:
                if instance.status not in _APPLICABLE:
                    continue  # it gets the values when it is next applied (or restarted)
                started, _ = self._begin_apply(
                    instance.id, configuration_id=group.id, expected=(group.id,)
                )
                self._start_flow(started, group.id, values, previous_configuration_id=group.id)
            return updated
        raise ConflictError(configuration_key(configuration_id), -1)

    def _users(self, group: Configuration) -> builtins.list[Instance]:
        """The instances of the group's project that use it."""
        found = []
        for instance_id in self._records.ids_of_project(group.project_id):
            instance = self._records.find(instance_id)
            if instance is not None and instance.configuration_id == group.id:
                found.append(instance)
        return found

    def _project_instance(self, project_id: str, instance_id: str) -> Instance:
        instance = self._records.find(_canonical_id(instance_id, "instance"))
        if instance is None or instance.project_id != project_id:
            raise NotFoundError(instance_id, "instance")
        return instance

    def _update_instance(
        self, instance_id: str, change: Callable[[Instance], Instance | None]
    ) -> Instance:
        """Apply `change` (None: no change) to the instance record by compare-and-swap."""
        updated = self._records.update(instance_id, change) or self._records.find(instance_id)
        if updated is None:
            raise NotFoundError(instance_id, "instance")
        return updated

    def _begin_apply(
        self,
        instance_id: str,
        *,
        configuration_id: str | None,
        expected: tuple[str | None, ...],
    ) -> tuple[Instance, str | None]:
        """Claim the instance for the apply flow (task UPDATING), or ActionInProgressError.
        `expected`: the groups the instance may use now (checked in the same write, so a
        concurrent attach or detach is never silently overwritten). Returns the claimed
        instance and the group it used before."""
        previous: list[str | None] = [None]

        def begin(instance: Instance) -> Instance:
            if instance.task is not InstanceTask.NONE:
                raise ActionInProgressError(instance.id, instance.task.value.lower())
            if instance.configuration_id not in expected:
                raise RequestError(
                    "configuration",
                    f"instance {instance.id} now uses configuration "
                    f"{instance.configuration_id or '(none)'}; detach it first",
                )
            if instance.status not in _APPLICABLE:
                raise RequestError(
                    "instance",
                    f"must be ACTIVE to change its configuration (it is {instance.status.value})",
                    status=422,
                )
            previous[0] = instance.configuration_id
            return instance.replace(
                task=InstanceTask.UPDATING,
                task_execution_arn=None,
                configuration_id=configuration_id,
                fault=None,
                updated=self._clock.now(),
            )

        return self._update_instance(instance_id, begin), previous[0]

    def _idle(self, instance: Instance, status: InstanceStatus) -> Instance:
        return instance.replace(
            status=status,
            task=InstanceTask.NONE,
            task_execution_arn=None,
            updated=self._clock.now(),
        )

    def _start_flow(
        self,
        instance: Instance,
        configuration_id: str | None,
        values: Mapping[str, ConfigValue],
        *,
        previous_configuration_id: str | None,
    ) -> None:
        flow_input = {
            "instance_id": instance.id,
            "configuration_id": configuration_id,
            "previous_configuration_id": previous_configuration_id,
            "previous_status": instance.status.value,
            "values": dict(values),
        }
        try:
            arn = self._workflows.start(STATE_MACHINE, flow_input)
        except Exception as exc:
            # Nothing will end the task: give the instance back as it was.
            self.fail_apply(
                instance.id,
                configuration_id=configuration_id,
                previous_configuration_id=previous_configuration_id,
                previous_status=instance.status.value,
                error="the apply flow did not start",
                cause=str(exc),
            )
            raise

        def record_arn(current: Instance) -> Instance | None:
            if current.task is not InstanceTask.UPDATING or current.task_execution_arn:
                return None  # the flow already ended (or another one runs)
            return current.replace(task_execution_arn=arn)

        self._update_instance(instance.id, record_arn)
        log.info(
            "configuration apply started",
            extra={"instance_id": instance.id, "configuration_id": configuration_id, "arn": arn},
        )
