"""ConfigurationService with in-memory ports: CRUD, project scoping, attach/detach and the ends
of the apply flow (the guest side is covered by tests/integration/test_apply_configuration.py)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from functions.configuration_tasks import _restart_required
from shared.clock import ManualClock
from shared.crypto import InstanceKeys, new_instance_secret
from shared.engine.errors import TaskError
from shared.errors import ActionInProgressError, NotFoundError, RequestError
from shared.models.datastore import DatastoreRef
from shared.models.guest import GuestCommand, GuestCommandName, GuestError, GuestResult
from shared.models.instance import Instance, InstanceStatus, InstanceTask
from shared.models.volume import Volume, VolumeKind
from shared.ports import JSON
from shared.services.configurations import (
    ConfigurationService,
    CreateConfiguration,
    configuration_key,
)
from shared.services.guest_channel import EVENTS_QUEUE, command_queue_name
from shared.services.instance_secrets import guest_secret, seal_guest_secret
from shared.services.instances import InstanceRecords, instance_key
from tests.unit.engine.fakes import MemoryStateStore
from tests.unit.services.conftest import MASTER_KEY, World

GuestResultShape = dict[str, Any] | GuestError

PROJECT = "project-a"
OTHER = "project-b"


class RecordingWorkflows:
    """Workflows that only remember what was started."""

    def __init__(self) -> None:
        self.started: list[tuple[str, JSON]] = []
        self.fail_next = False

    def start(self, state_machine: str, input_value: JSON, *, name: str | None = None) -> str:
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("engine unavailable")
        self.started.append((state_machine, input_value))
        return f"arn:troveless:execution:{state_machine}:{len(self.started)}"

    def describe(self, execution_arn: str) -> JSON:
        raise NotImplementedError

    def send_task_success(self, task_token: str, output: JSON) -> None:
        raise NotImplementedError

    def send_task_failure(self, task_token: str, error: str, cause: str) -> None:
        raise NotImplementedError

    def send_task_heartbeat(self, task_token: str) -> None:
        raise NotImplementedError


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def store(clock: ManualClock) -> MemoryStateStore:
    return MemoryStateStore(clock)


@pytest.fixture
def workflows() -> RecordingWorkflows:
    return RecordingWorkflows()


@pytest.fixture
def service(store, workflows, clock) -> ConfigurationService:
    return ConfigurationService(store, workflows, clock)


def add_instance(
    store: MemoryStateStore,
    clock: ManualClock,
    *,
    project: str = PROJECT,
    datastore: str = "mariadb",
    version: str = "10.11",
    status: InstanceStatus = InstanceStatus.ACTIVE,
    task: InstanceTask = InstanceTask.NONE,
) -> Instance:
    instance = Instance(
        id=str(uuid.uuid4()),
        project_id=project,
        name="db1",
        status=status,
        task=task,
        flavor_id="small",
        volume=Volume(kind=VolumeKind.DIRECTORY, size_gb=1),
        datastore=DatastoreRef(type=datastore, version=version),
        created=clock.now(),
        updated=clock.now(),
    )
    InstanceRecords(store).create(instance)
    return instance


def load(store: MemoryStateStore, instance_id: str) -> Instance:
    record = store.get(instance_key(instance_id))
    assert record is not None
    return Instance.model_validate(record.data)


def create(
    service: ConfigurationService,
    values: dict[str, Any] | None = None,
    *,
    project: str = PROJECT,
    datastore: str = "mariadb",
    version: str = "10.11",
):
    return service.create(
        project,
        CreateConfiguration(
            name="tuned",
            values=values or {},
            datastore_type=datastore,
            datastore_version=version,
        ),
    )


# ---------------------------------------------------------------------- groups
def test_create_get_list_are_project_scoped(service):
    group = create(service, {"max_connections": 200})
    assert group.values == {"max_connections": 200}
    assert group.datastore == DatastoreRef(type="mariadb", version="10.11")
    other = create(service, {"timeout": 5}, project=OTHER, datastore="redis", version="7.0")
    assert service.get(PROJECT, group.id) == group
    assert [g.id for g in service.list(PROJECT)] == [group.id]
    assert [g.id for g in service.list(OTHER)] == [other.id]
    with pytest.raises(NotFoundError):
        service.get(OTHER, group.id)
    with pytest.raises(NotFoundError):
        service.get(PROJECT, "not-a-uuid")


def test_create_refuses_bad_values_and_unknown_versions(service, store):
    with pytest.raises(RequestError) as caught:
        create(service, {"max_connections": "lots"})
    assert (caught.value.field, caught.value.status) == ("values.max_connections", 422)
    with pytest.raises(NotFoundError):
        create(service, {}, version="5.5")
    with pytest.raises(RequestError) as missing:
        service.create(PROJECT, CreateConfiguration(name="x", datastore_type="mariadb"))
    assert missing.value.field == "datastore.version"
    assert list(store.list("configurations/")) == []


def test_put_replaces_and_patch_merges(service, clock):
    group = create(service, {"max_connections": 200, "wait_timeout": 60})
    clock.advance(5)
    replaced = service.replace(PROJECT, group.id, {"slow_query_log": True}, name="renamed")
    assert replaced.values == {"slow_query_log": True}
    assert replaced.name == "renamed"
    assert replaced.updated > group.updated
    patched = service.patch(PROJECT, group.id, {"wait_timeout": 30, "slow_query_log": False})
    assert patched.values == {"slow_query_log": False, "wait_timeout": 30}
    with pytest.raises(RequestError) as caught:
        service.patch(PROJECT, group.id, {"wait_timeout": 0})
    assert caught.value.field == "values.wait_timeout"
    assert service.get(PROJECT, group.id).values == patched.values  # the refused patch left it
    with pytest.raises(NotFoundError):
        service.patch(OTHER, group.id, {"wait_timeout": 30})


def test_delete_is_refused_while_attached(service, store, clock):
    group = create(service, {"max_connections": 200})
    instance = add_instance(store, clock)
    service.attach(PROJECT, instance.id, group.id)
    with pytest.raises(RequestError, match="detach it first"):
        service.delete(PROJECT, group.id)
    with pytest.raises(NotFoundError):
        service.delete(OTHER, group.id)
    service.finish_apply(instance.id, restart_required=False)
    service.detach(PROJECT, instance.id)
    service.delete(PROJECT, group.id)
    assert store.get(configuration_key(group.id)) is None


# ---------------------------------------------------------------------- attach / detach
def test_attach_marks_the_instance_and_starts_the_flow(service, store, clock, workflows):
    group = create(service, {"max_connections": 200})
    instance = add_instance(store, clock)
    service.attach(PROJECT, instance.id, group.id)
    stored = load(store, instance.id)
    assert stored.configuration_id == group.id
    assert stored.task is InstanceTask.UPDATING
    assert stored.task_execution_arn == "arn:troveless:execution:apply_configuration:1"
    assert workflows.started == [
        (
            "apply_configuration",
            {
                "instance_id": instance.id,
                "configuration_id": group.id,
                "previous_configuration_id": None,
                "previous_status": "ACTIVE",
                "values": {"max_connections": 200},
            },
        )
    ]
    assert [i.id for i in service.instances(PROJECT, group.id)] == [instance.id]
    # Another action meanwhile is refused.
    with pytest.raises(ActionInProgressError):
        service.detach(PROJECT, instance.id)


def test_finish_apply_sets_active_or_restart_required(service, store, clock):
    live = create(service, {"max_connections": 200})
    first = add_instance(store, clock)
    service.attach(PROJECT, first.id, live.id)
    done = service.finish_apply(first.id, restart_required=False)
    assert (done.status, done.task, done.task_execution_arn) == (
        InstanceStatus.ACTIVE,
        InstanceTask.NONE,
        None,
    )
    needs_restart = create(service, {"performance_schema": True})
    second = add_instance(store, clock)
    service.attach(PROJECT, second.id, needs_restart.id)
    assert service.finish_apply(second.id, True).status is InstanceStatus.RESTART_REQUIRED
    # A later live change does not hide a restart that is still pending.
    service.patch(PROJECT, needs_restart.id, {"max_connections": 300})
    assert load(store, second.id).task is InstanceTask.UPDATING
    assert service.finish_apply(second.id, False).status is InstanceStatus.RESTART_REQUIRED


def test_attach_refusals(service, store, clock):
    maria = create(service, {"max_connections": 200})
    redis_group = create(service, {"timeout": 5}, datastore="redis", version="7.0")
    instance = add_instance(store, clock)
    with pytest.raises(RequestError, match=r"is for redis 7\.0"):
        service.attach(PROJECT, instance.id, redis_group.id)
    with pytest.raises(NotFoundError):  # another project's instance
        service.attach(OTHER, instance.id, maria.id)
    theirs = create(service, {}, project=OTHER)
    with pytest.raises(NotFoundError):  # another project's group
        service.attach(PROJECT, instance.id, theirs.id)
    building = add_instance(store, clock, status=InstanceStatus.BUILD, task=InstanceTask.BUILDING)
    with pytest.raises(ActionInProgressError):
        service.attach(PROJECT, building.id, maria.id)
    assert service.instances(PROJECT, maria.id) == []  # the refused attach left no link
    broken = add_instance(store, clock, status=InstanceStatus.ERROR)
    with pytest.raises(RequestError) as caught:
        service.attach(PROJECT, broken.id, maria.id)
    assert caught.value.status == 422
    service.attach(PROJECT, instance.id, maria.id)
    service.finish_apply(instance.id, False)
    other_group = create(service, {"wait_timeout": 10})
    with pytest.raises(RequestError, match="already uses configuration"):
        service.attach(PROJECT, instance.id, other_group.id)
    with pytest.raises(RequestError, match="has none attached"):
        service.detach(PROJECT, add_instance(store, clock).id)


def test_a_concurrent_attach_is_never_overwritten(service, store, clock, monkeypatch):
    first = create(service, {"max_connections": 200})
    second = create(service, {"max_connections": 300})
    instance = add_instance(store, clock)
    stale = load(store, instance.id)  # what a second caller read before the first attached
    service.attach(PROJECT, instance.id, first.id)
    service.finish_apply(instance.id, False)
    monkeypatch.setattr(service, "_project_instance", lambda _project, _id: stale)
    with pytest.raises(RequestError, match="now uses configuration"):
        service.attach(PROJECT, instance.id, second.id)
    assert load(store, instance.id).configuration_id == first.id


def test_detach_sends_no_values(service, store, clock, workflows):
    group = create(service, {"max_connections": 200})
    instance = add_instance(store, clock)
    service.attach(PROJECT, instance.id, group.id)
    service.finish_apply(instance.id, False)
    service.detach(PROJECT, instance.id)
    assert workflows.started[-1][1]["values"] == {}
    assert workflows.started[-1][1]["previous_configuration_id"] == group.id
    assert load(store, instance.id).configuration_id is None
    assert service.instances(PROJECT, group.id) == []


def test_changing_an_attached_group_applies_it_again(service, store, clock, workflows):
    group = create(service, {"max_connections": 200})
    instance = add_instance(store, clock)
    service.attach(PROJECT, instance.id, group.id)
    with pytest.raises(ActionInProgressError):  # still applying the first values
        service.patch(PROJECT, group.id, {"max_connections": 300})
    service.finish_apply(instance.id, False)
    service.replace(PROJECT, group.id, {"max_connections": 300})
    assert workflows.started[-1][1]["values"] == {"max_connections": 300}
    assert load(store, instance.id).task is InstanceTask.UPDATING


def test_a_refused_apply_records_a_fault_and_restores_the_previous_group(service, store, clock):
    group = create(service, {"max_connections": 200})
    instance = add_instance(store, clock)
    service.attach(PROJECT, instance.id, group.id)
    failed = service.fail_apply(
        instance.id,
        configuration_id=group.id,
        previous_configuration_id=None,
        previous_status="ACTIVE",
        error="OverrideRuleError",
        cause="overrides.max_connections: refused",
    )
    assert failed.status is InstanceStatus.ACTIVE
    assert failed.task is InstanceTask.NONE
    assert failed.configuration_id is None
    assert failed.fault is not None and "OverrideRuleError" in failed.fault.message
    assert service.instances(PROJECT, group.id) == []
    service.delete(PROJECT, group.id)  # no longer attached


def test_a_flow_that_cannot_start_leaves_the_instance_as_it_was(service, store, clock, workflows):
    group = create(service, {"max_connections": 200})
    instance = add_instance(store, clock)
    workflows.fail_next = True
    with pytest.raises(RuntimeError):
        service.attach(PROJECT, instance.id, group.id)
    stored = load(store, instance.id)
    assert (stored.task, stored.configuration_id) == (InstanceTask.NONE, None)
    assert service.instances(PROJECT, group.id) == []


# ---------------------------------------------------------------------- parameters and flow
def test_parameters_without_a_catalog_use_the_names_given(service):
    names = [p.name for p in service.parameters("redis", "7.0")]
    assert "maxmemory-policy" in names
    assert service.parameter("mariadb", "10.11", "max_connections").min == 10
    with pytest.raises(NotFoundError):
        service.datastore_of_version(str(uuid.uuid4()))


def test_restart_required_read_from_either_result_shape():
    assert _restart_required({"restart_required": True}) is True
    assert _restart_required({"kind": "result", "result": {"restart_required": False}}) is False
    with pytest.raises(TaskError):
        _restart_required({"ok": True})


# ---------------------------------------------------------------------- the flow, in memory
def answer_update_overrides(world: World, instance_id: str, result: GuestResultShape) -> int:
    """Answer the instance's update_overrides commands with signed results, as its guest would,
    through the real guest-events consumer. Returns how many commands were answered."""
    instance = InstanceRecords(world.store).get(instance_id)
    keys = InstanceKeys.from_secret(guest_secret(instance, MASTER_KEY))
    name = command_queue_name(instance_id)
    answered = 0
    for message in world.queue.receive(name, 10, 30):
        world.queue.ack(name, message.receipt)
        command = GuestCommand.model_validate(message.body)
        assert command.name is GuestCommandName.UPDATE_OVERRIDES
        assert command.task_token is not None
        answered += 1
        signed = GuestResult(
            instance_id=instance_id,
            sequence=answered,
            timestamp=world.clock.now(),
            command_id=command.id,
            command=command.name,
            ok=isinstance(result, dict),
            result=result if isinstance(result, dict) else None,
            error=None if isinstance(result, dict) else result,
            task_token=command.task_token,
        ).sign(keys.signing)
        world.queue.send(EVENTS_QUEUE, signed.model_dump(mode="json"))
    world.pump_events()
    return answered


def active_instance(world: World) -> Instance:
    instance = Instance(
        id=str(uuid.uuid4()),
        project_id=PROJECT,
        name="db1",
        status=InstanceStatus.ACTIVE,
        flavor_id="small",
        volume=Volume(kind=VolumeKind.DIRECTORY, size_gb=1),
        datastore=DatastoreRef(type="mariadb", version="10.11"),
        created=world.clock.now(),
        updated=world.clock.now(),
    )
    sealed = seal_guest_secret(instance.id, new_instance_secret(), MASTER_KEY)
    instance = instance.replace(encrypted_guest_secret=sealed)
    InstanceRecords(world.store).create(instance)
    world.queue.ensure_queue(command_queue_name(instance.id))  # provisioning makes it
    return instance


@pytest.mark.parametrize(
    ("answer", "status"),
    [
        ({"restart_required": False}, InstanceStatus.ACTIVE),
        ({"restart_required": True}, InstanceStatus.RESTART_REQUIRED),
    ],
)
def test_the_apply_flow_ends_as_the_guest_says(world, answer, status):
    service = ConfigurationService(world.store, world.workflows, world.clock)
    group = create(service, {"max_connections": 200})
    instance = active_instance(world)
    service.attach(PROJECT, instance.id, group.id)
    waiting = InstanceRecords(world.store).get(instance.id)
    assert waiting.task is InstanceTask.UPDATING
    assert world.workflows.describe(waiting.task_execution_arn or "")["status"] == "RUNNING"
    assert answer_update_overrides(world, instance.id, answer) == 1
    done = InstanceRecords(world.store).get(instance.id)
    assert (done.status, done.task, done.configuration_id) == (status, InstanceTask.NONE, group.id)
    assert world.workflows.describe(waiting.task_execution_arn or "")["status"] == "SUCCEEDED"


def test_the_apply_flow_records_a_guest_refusal(world):
    service = ConfigurationService(world.store, world.workflows, world.clock)
    group = create(service, {"max_connections": 200})
    instance = active_instance(world)
    service.attach(PROJECT, instance.id, group.id)
    arn = InstanceRecords(world.store).get(instance.id).task_execution_arn or ""
    refusal = GuestError(type="DatastoreOperationError", message="the server said no")
    assert answer_update_overrides(world, instance.id, refusal) == 1
    failed = InstanceRecords(world.store).get(instance.id)
    assert (failed.status, failed.task, failed.configuration_id) == (
        InstanceStatus.ACTIVE,
        InstanceTask.NONE,
        None,
    )
    assert failed.fault is not None
    assert "DatastoreOperationError" in failed.fault.message
    assert failed.fault.details == "the server said no"
    assert world.workflows.describe(arn)["error"] == "ConfigurationNotApplied"
