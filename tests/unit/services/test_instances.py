"""InstanceService and the instance flows over in-memory ports: the real state-machine
definitions and task functions run in memory against a fake compute and a fake guest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import SecretStr

from functions.runtime import set_runtime
from shared.errors import (
    ActionInProgressError,
    ComputeError,
    ComputeRequestError,
    NotFoundError,
    QuotaExceededError,
    RequestError,
)
from shared.models.database import Database, User
from shared.models.instance import InstanceStatus, InstanceTask, ServiceStatus
from shared.services.guest_liveness import liveness_key
from shared.services.instances import CreateInstance, wait_key
from tests.unit.services.conftest import World, make_world

PASSWORD = "Sup3r-secret-pw"


def request(**changes: object) -> CreateInstance:
    fields: dict[str, object] = {
        "name": "shop",
        "flavor_id": "2",
        "volume_size_gb": 2,
        "datastore_type": "mariadb",
        "databases": [Database(name="shop")],
        "users": [User(name="app", password=SecretStr(PASSWORD), databases=["shop"])],
    }
    fields.update(changes)
    return CreateInstance.model_validate(fields)


def provisioned(world: World, project: str = "p1", **changes: object) -> str:
    instance = world.service.create(project, request(**changes))
    world.guest.answer(instance.id)
    assert world.service.get(project, instance.id).status is InstanceStatus.ACTIVE
    return instance.id


def nothing_left(world: World, project: str = "p1") -> None:
    assert world.compute.servers == {}
    assert world.instance_keys() == []
    assert world.service.list(project) == []
    assert world.service.quotas.usage(project) == {"instances": 0, "volumes": 0, "backups": 0}
    assert not [k for k in world.store.records if k.startswith("instance-waits/")]


# --------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("changes", "field", "status"),
    [
        ({"volume_size_gb": 0}, "volume.size", 422),
        ({"volume_size_gb": 101}, "volume.size", 422),
        ({"availability_zone": "moon"}, "availability_zone", 400),
        ({"name": "  "}, "name", 400),
        (
            {"users": [User(name="root", password=SecretStr(PASSWORD))], "databases": []},
            "users[0].name",
            400,
        ),
        (
            {"users": [User(name="app", password=SecretStr("short"))], "databases": []},
            "users[0].password",
            400,
        ),
        ({"users": [User(name="app")], "databases": []}, "users[0].password", 400),
        ({"databases": [Database(name="mysql")], "users": []}, "databases[0].name", 400),
        (
            {
                "databases": [Database(name="a")],
                "users": [User(name="u", password=SecretStr(PASSWORD), databases=["b"])],
            },
            "users[0].databases[0]",
            400,
        ),
    ],
)
def test_invalid_requests_name_the_field_and_make_nothing(
    world: World, changes: dict[str, object], field: str, status: int
) -> None:
    with pytest.raises(RequestError) as caught:
        world.service.create("p1", request(**changes))
    assert caught.value.field == field
    assert caught.value.status == status
    assert world.instance_keys() == []
    assert world.workflows.executions == {}
    assert world.service.quotas.usage("p1")["instances"] == 0


@pytest.mark.parametrize(
    "changes",
    [{"flavor_id": "99"}, {"datastore_type": "oracle"}, {"datastore_version": "3.0"}],
)
def test_unknown_flavor_or_datastore_is_not_found(world: World, changes: dict[str, object]) -> None:
    with pytest.raises(NotFoundError):
        world.service.create("p1", request(**changes))
    assert world.instance_keys() == []


# --------------------------------------------------------------------------- provisioning
def test_create_provisions_to_active_without_plaintext_secrets(world: World) -> None:
    instance = world.service.create("p1", request())
    assert instance.status is InstanceStatus.BUILD
    assert instance.task is InstanceTask.BUILDING
    assert instance.task_execution_arn is not None
    assert instance.datastore.version == "10.11"

    # The guest was asked to prepare with the user's password sealed, never in plaintext.
    world.guest.answer(instance.id)
    prepare = world.guest.seen[0]
    assert prepare.name.value == "prepare"
    assert prepare.args["databases"] == [{"name": "shop"}]
    users = prepare.args["users"]
    assert isinstance(users, list) and len(users) == 1
    user = users[0]
    assert isinstance(user, dict)
    assert "encrypted_password" in user and "password" not in user
    everything = json.dumps([r.data for r in world.store.records.values()])
    everything += json.dumps([e.state.input for e in world.workflows.executions.values()])
    assert PASSWORD not in everything

    active = world.service.get("p1", instance.id)
    assert active.status is InstanceStatus.ACTIVE
    assert active.task is InstanceTask.NONE
    assert [a.address for a in active.addresses] == [world.compute.servers[instance.id].address]
    assert active.port == 3306
    assert active.server_id is not None
    assert world.service.quotas.usage("p1") == {"instances": 1, "volumes": 2, "backups": 0}
    assert world.store.get(wait_key(instance.id)) is None
    # The result the guest sent is stored for synchronous callers.
    assert world.store.get(f"guests/{instance.id}/results/{prepare.id}") is not None


def test_another_projects_instance_is_not_found(world: World) -> None:
    instance_id = provisioned(world)
    with pytest.raises(NotFoundError):
        world.service.get("p2", instance_id)
    with pytest.raises(NotFoundError):
        world.service.delete("p2", instance_id)
    with pytest.raises(NotFoundError):
        world.service.get("p1", "shop")  # a name, not an id: 404 so clients fall back to listing
    assert world.service.list("p2") == []
    assert [i.id for i in world.service.list("p1")] == [instance_id]


def test_transient_compute_failures_are_retried(world: World) -> None:
    world.compute.create_failures = [ComputeError("x", "cloud hiccup")] * 2
    instance = world.service.create("p1", request())
    world.guest.answer(instance.id)
    assert world.compute.create_calls == 3
    assert world.service.get("p1", instance.id).status is InstanceStatus.ACTIVE


def test_compute_failure_compensates_and_ends_in_error(world: World) -> None:
    world.compute.create_failures = [ComputeError("x", "no space left on host")] * 10
    instance = world.service.create("p1", request())
    failed = world.service.get("p1", instance.id)
    assert failed.status is InstanceStatus.ERROR
    assert failed.fault is not None and "no space left on host" in failed.fault.message
    assert world.compute.create_calls == 4  # first try + 3 retries
    assert world.compute.servers == {}
    assert world.service.quotas.usage("p1")["instances"] == 0
    assert world.workflows.status("provision_instance", instance.id) == "FAILED"
    # An ERROR instance can still be deleted, and then nothing is left.
    world.service.delete("p1", instance.id)
    nothing_left(world)


def test_request_the_compute_refuses_is_not_retried(world: World) -> None:
    world.compute.create_failures = [ComputeRequestError("x", "no loop device for 90 GB")]
    instance = world.service.create("p1", request())
    failed = world.service.get("p1", instance.id)
    assert failed.status is InstanceStatus.ERROR
    assert failed.fault is not None and "no loop device" in failed.fault.message
    assert world.compute.create_calls == 1


def test_failed_prepare_deletes_the_server(world: World) -> None:
    world.guest.fail["prepare"] = ("DatastoreError", "mariadbd would not start")
    instance = world.service.create("p1", request())
    assert instance.id in world.compute.servers
    world.guest.answer(instance.id)
    failed = world.service.get("p1", instance.id)
    assert failed.status is InstanceStatus.ERROR
    assert failed.fault is not None
    assert "DatastoreError" in failed.fault.message
    assert "mariadbd would not start" in failed.fault.message
    assert world.compute.servers == {}
    assert world.service.quotas.usage("p1")["volumes"] == 0


def test_guest_that_never_answers_times_out_into_error(world: World) -> None:
    instance = world.service.create("p1", request())
    arn = world.service.get("p1", instance.id).task_execution_arn
    assert arn is not None
    world.workflows.expire_waits(arn)
    failed = world.service.get("p1", instance.id)
    assert failed.status is InstanceStatus.ERROR
    assert failed.fault is not None and "did not answer in time" in failed.fault.message
    assert world.compute.servers == {}


# --------------------------------------------------------------------------- quotas
def test_quota_exhaustion_refuses_before_making_anything(tmp_path: Path) -> None:
    world = make_world(tmp_path, quota_instances=2, quota_volumes_gb=5)
    set_runtime(world.runtime)
    try:
        provisioned(world, volume_size_gb=2)
        provisioned(world, volume_size_gb=2)
        with pytest.raises(QuotaExceededError) as caught:
            world.service.create("p1", request(volume_size_gb=1))
        assert (caught.value.resource, caught.value.limit, caught.value.in_use) == (
            "instances",
            2,
            2,
        )
        assert len(world.instance_keys()) == 2
        # Another project has its own quota.
        provisioned(world, project="p2", volume_size_gb=5)
        with pytest.raises(QuotaExceededError) as caught:
            world.service.create("p3", request(volume_size_gb=6))
        assert caught.value.resource == "volumes"
    finally:
        set_runtime(None)


# --------------------------------------------------------------------------- actions
def test_actions_are_refused_while_another_runs(world: World) -> None:
    instance = world.service.create("p1", request())
    with pytest.raises(ActionInProgressError):  # still BUILDING
        world.service.restart("p1", instance.id)
    world.guest.answer(instance.id)
    world.service.restart("p1", instance.id)  # waits for the guest's answer
    rebooting = world.service.get("p1", instance.id)
    assert (rebooting.status, rebooting.task) == (InstanceStatus.REBOOT, InstanceTask.REBOOTING)
    with pytest.raises(ActionInProgressError):
        world.service.resize_volume("p1", instance.id, 3)
    with pytest.raises(ActionInProgressError):
        world.service.begin_action("p1", instance.id, InstanceTask.UPDATING, InstanceStatus.ACTIVE)
    assert world.service.quotas.usage("p1")["volumes"] == 2  # the refused resize holds nothing
    world.guest.answer(instance.id)
    assert world.service.get("p1", instance.id).status is InstanceStatus.ACTIVE
    assert [c.name.value for c in world.guest.seen] == ["prepare", "restart"]


def test_resize_volume_grows_and_counts_against_quota(world: World) -> None:
    instance_id = provisioned(world)
    with pytest.raises(RequestError) as caught:
        world.service.resize_volume("p1", instance_id, 2)
    assert caught.value.field == "volume.size"
    world.service.resize_volume("p1", instance_id, 5)
    assert world.service.quotas.usage("p1")["volumes"] == 5
    world.guest.answer(instance_id)
    grown = world.service.get("p1", instance_id)
    assert (grown.status, grown.volume.size_gb) == (InstanceStatus.ACTIVE, 5)
    assert world.compute.servers[instance_id].volume_gb == 5
    with pytest.raises(QuotaExceededError):
        world.service.resize_volume("p1", instance_id, 41)
    assert world.service.get("p1", instance_id).task is InstanceTask.NONE


def test_failed_resize_volume_gives_the_quota_back(world: World) -> None:
    instance_id = provisioned(world)
    world.guest.fail["get_volume_info"] = ("VolumeError", "filesystem did not grow")
    world.service.resize_volume("p1", instance_id, 6)
    world.guest.answer(instance_id)
    failed = world.service.get("p1", instance_id)
    assert failed.status is InstanceStatus.ERROR
    assert failed.fault is not None and "filesystem did not grow" in failed.fault.message
    assert world.service.quotas.usage("p1")["volumes"] == 2


def test_resize_flavor_changes_limits_and_restarts_the_guest(world: World) -> None:
    instance_id = provisioned(world)
    world.service.resize_flavor("p1", instance_id, "3")
    assert world.compute.servers[instance_id].flavor.ram_mb == 1024
    world.guest.answer(instance_id)
    resized = world.service.get("p1", instance_id)
    assert (resized.status, resized.flavor_id) == (InstanceStatus.ACTIVE, "3")
    assert world.guest.seen[-1].name.value == "start"
    with pytest.raises(NotFoundError):
        world.service.resize_flavor("p1", instance_id, "nope")


def test_reset_status_ends_a_stuck_action_in_error(world: World) -> None:
    instance = world.service.create("p1", request())
    world.service.reset_status("p1", instance.id)
    reset = world.service.get("p1", instance.id)
    assert (reset.status, reset.task) == (InstanceStatus.ERROR, InstanceTask.NONE)


def test_update_renames(world: World) -> None:
    instance_id = provisioned(world)
    assert world.service.update("p1", instance_id, name="orders").name == "orders"
    with pytest.raises(RequestError):
        world.service.update("p1", instance_id, name="")


# --------------------------------------------------------------------------- delete
def test_delete_removes_everything_and_is_idempotent(world: World) -> None:
    instance_id = provisioned(world)
    world.store.put(liveness_key(instance_id), {"at": 1.0}, 0)  # as a heartbeat would leave it
    world.workflows.paused = True
    world.service.delete("p1", instance_id)
    deleting = world.service.get("p1", instance_id)
    assert deleting.task is InstanceTask.DELETING
    world.service.delete("p1", instance_id)  # again while deleting: no error, one flow
    deletes = [m for m in world.workflows.machines.values() if m == "delete_instance"]
    assert len(deletes) == 1
    world.workflows.paused = False
    world.workflows.settle_all()
    nothing_left(world)
    assert not [k for k in world.store.records if k.startswith(f"guests/{instance_id}")]
    assert world.store.get(liveness_key(instance_id)) is None
    with pytest.raises(NotFoundError):
        world.service.delete("p1", instance_id)


def test_delete_before_the_server_is_made_leaves_nothing(world: World) -> None:
    world.workflows.paused = True
    instance = world.service.create("p1", request())
    world.service.delete("p1", instance.id)
    world.workflows.paused = False
    # The delete flow runs first, then the provision flow notices and stops.
    for arn, machine in list(world.workflows.machines.items()):
        if machine == "delete_instance":
            world.workflows.settle(arn)
    world.workflows.settle_all()
    nothing_left(world)
    assert world.compute.create_calls == 0


def test_delete_while_the_guest_prepares_leaves_nothing(world: World) -> None:
    instance = world.service.create("p1", request())
    assert instance.id in world.compute.servers  # waiting for prepare
    world.service.delete("p1", instance.id)
    assert world.workflows.status("provision_instance", instance.id) == "FAILED"
    world.guest.answer(instance.id)  # a late prepare result answers no one
    nothing_left(world)


def test_delete_racing_server_creation_leaves_no_orphan(world: World) -> None:
    def delete_now(instance_id: str) -> None:
        # The delete runs to the end while create_server is between "server made" and
        # "server recorded": it finds no server to delete yet.
        world.service.delete("p1", instance_id)

    world.compute.on_create = delete_now
    instance = world.service.create("p1", request())
    world.workflows.settle_all()
    nothing_left(world)
    assert world.workflows.status("provision_instance", instance.id) == "FAILED"


def test_concurrent_creates_cannot_exceed_the_instance_quota(tmp_path: Path) -> None:
    import threading

    from shared.adapters.local.state_store import DirectoryStateStore
    from shared.clock import SystemClock
    from shared.services.quotas import QuotaService

    store = DirectoryStateStore(tmp_path / "state", SystemClock())
    quotas = QuotaService(store)
    won: list[str] = []
    refused: list[str] = []
    barrier = threading.Barrier(16)

    def reserve(n: int) -> None:
        barrier.wait()
        try:
            quotas.reserve("p1", f"i{n}", {"instances": 1, "volumes": 1})
            won.append(f"i{n}")
        except QuotaExceededError:
            refused.append(f"i{n}")

    threads = [threading.Thread(target=reserve, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 10 and len(refused) == 6
    assert quotas.usage("p1") == {"instances": 10, "volumes": 10, "backups": 0}
    quotas.release("p1", won[0])
    quotas.release("p1", won[0])  # twice: no change
    assert quotas.usage("p1")["instances"] == 9


def test_heartbeats_update_operating_status_only_when_it_changes(world: World) -> None:
    instance_id = provisioned(world)
    key = f"instances/{instance_id}"
    before = world.store.records[key].revision
    world.guest.heartbeat(instance_id, ServiceStatus.RUNNING)
    world.pump_events()
    running = world.service.get("p1", instance_id)
    assert running.operating_status is ServiceStatus.RUNNING
    assert running.operating_status_updated is not None
    changed = world.store.records[key].revision
    assert changed == before + 1
    for _ in range(3):
        world.guest.heartbeat(instance_id, ServiceStatus.RUNNING)
    world.pump_events()
    assert world.store.records[key].revision == changed  # no write for unchanged heartbeats
    world.guest.heartbeat(instance_id, ServiceStatus.CRASHED)
    world.pump_events()
    assert world.service.get("p1", instance_id).operating_status is ServiceStatus.CRASHED


def test_delete_during_a_resize_leaves_no_quota_hold(world: World) -> None:
    instance_id = provisioned(world)
    world.service.resize_volume("p1", instance_id, 8)  # waits for the guest
    assert world.service.quotas.usage("p1")["volumes"] == 8
    world.service.delete("p1", instance_id)
    world.workflows.settle_all()
    nothing_left(world)
    assert world.workflows.status("resize_volume", instance_id) == "FAILED"


def test_actions_on_an_instance_in_error_are_unprocessable(world: World) -> None:
    world.guest.fail["prepare"] = ("DatastoreError", "no")
    instance = world.service.create("p1", request())
    world.guest.answer(instance.id)
    with pytest.raises(RequestError) as caught:
        world.service.restart("p1", instance.id)
    assert (caught.value.field, caught.value.status) == ("instance", 422)
