"""The instance lifecycle on the real embedded cloud, on both profiles: InstanceService -> the
durable engine (SQLite queue and directory store, or Zaqar and Swift) -> task functions ->
LocalCompute (loop volume, guest agent as the unprivileged guest user) -> a real datastore;
guest results and heartbeats come back through the real guest-events consumer.

create (Redis) -> ACTIVE -> connect as the created user -> grow the volume (data kept) ->
restart -> delete -> nothing left (no server, no loop device, no records). And a provision
whose guest prepare fails ends in ERROR with the server deleted and the quota released.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pymysql
import pytest
import redis
from pydantic import SecretStr

from functions.runtime import Runtime
from infra.local.cloud import EmbeddedCloud
from shared.models.configuration import Configuration
from shared.models.database import Database, User
from shared.models.datastore import DatastoreRef
from shared.models.instance import Instance, InstanceStatus, ServiceStatus
from shared.services.instances import CreateInstance, InstanceService
from tests.integration.embedded_cloud import PROFILES, running_cloud, servers_for, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.datastore]

PROJECT = "project-it"
PASSWORD = "Redis-pass-123"
TIMEOUT = 90.0
MIB = 1 << 20

if shutil.which("redis-server") is None:
    pytest.skip("redis-server is not installed", allow_module_level=True)


@dataclass
class Cloud:
    root: Path
    runtime: Runtime
    cloud: EmbeddedCloud
    service: InstanceService


def loop_devices_under(root: Path) -> list[str]:
    listing = subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=False)
    return [line for line in listing.stdout.splitlines() if str(root) in line]


@pytest.fixture(params=PROFILES)
def cloud(request: pytest.FixtureRequest) -> Iterator[Cloud]:
    """The embedded cloud on the local profile, then on the openstack one (Swift + Zaqar)."""
    with running_cloud(prefix="tl-if-", openstack=servers_for(request, request.param)) as env:
        yield Cloud(env.root, env.runtime, env.cloud, InstanceService.from_runtime(env.runtime))


def instance_now(env: Cloud, instance_id: str) -> Instance | None:
    return env.service.records.find(instance_id)


def wait_status(env: Cloud, instance_id: str, status: InstanceStatus) -> Instance:
    def reached() -> bool:
        current = instance_now(env, instance_id)
        assert (
            current is None
            or current.status is not InstanceStatus.ERROR
            or (status is InstanceStatus.ERROR)
        ), current.fault
        return current is not None and current.status is status

    wait_until(reached, f"instance {instance_id} to be {status.value}")
    found = instance_now(env, instance_id)
    assert found is not None
    return found


def delete_and_wait(env: Cloud, instance_id: str) -> None:
    """Delete the instance and wait for its whole delete flow: the record goes a step before
    the guest's records are forgotten, so "record gone" is not yet "all gone"."""
    env.service.delete(PROJECT, instance_id)
    deleting = instance_now(env, instance_id)
    assert deleting is not None and deleting.task_execution_arn, deleting
    arn = deleting.task_execution_arn
    wait_until(
        lambda: env.runtime.workflows.describe(arn)["status"] != "RUNNING", "the delete flow to end"
    )
    ended = env.runtime.workflows.describe(arn)
    assert ended["status"] == "SUCCEEDED", ended
    assert instance_now(env, instance_id) is None


def redis_round_trip(instance: Instance, key: str, value: str | None) -> str | None:
    client = redis.Redis(
        host=instance.addresses[0].address,
        port=instance.port or 6379,
        username="app",
        password=PASSWORD,
        db=3,
        socket_timeout=5,
    )
    try:
        if value is not None:
            client.set(key, value)
        got = client.get(key)
        return got.decode() if isinstance(got, bytes) else got
    finally:
        client.close()


def redis_maxmemory(env: Cloud, instance_id: str) -> int:
    """maxmemory from the redis.conf the guest wrote on its volume (read as root)."""
    server = env.runtime.compute.get_server(instance_id)
    assert server is not None
    (conf,) = Path(server.volume_path).rglob("redis.conf")
    for line in conf.read_text().splitlines():
        if line.startswith("maxmemory "):
            return int(line.split()[1].strip('"'))
    raise AssertionError(f"no maxmemory in {conf}")


def test_redis_instance_lifecycle(cloud: Cloud) -> None:
    env = cloud
    started = time.monotonic()
    created = env.service.create(
        PROJECT,
        CreateInstance(
            name="cache",
            flavor_id="1",
            volume_size_gb=1,
            datastore_type="redis",
            databases=[],
            users=[User(name="app", password=SecretStr(PASSWORD), databases=["3"])],
        ),
    )
    active = wait_status(env, created.id, InstanceStatus.ACTIVE)
    create_seconds = time.monotonic() - started
    print(f"\ncreate -> ACTIVE: {create_seconds:.2f} s")
    assert active.port == 6379
    assert redis_round_trip(active, "fruit", "plum") == "plum"
    wait_until(
        lambda: (
            (i := instance_now(env, created.id)) is not None
            and i.operating_status is ServiceStatus.RUNNING
        ),
        "a RUNNING heartbeat",
    )
    assert loop_devices_under(env.root) or active.volume.kind.value == "directory"

    env.service.resize_volume(PROJECT, created.id, 2)
    grown = wait_status(env, created.id, InstanceStatus.ACTIVE)
    assert grown.volume.size_gb == 2
    assert env.runtime.compute.get_server(created.id).volume_gb == 2  # type: ignore[union-attr]
    assert redis_round_trip(grown, "fruit", None) == "plum"

    # A bigger flavor: the server reboots and the guest sizes Redis' maxmemory from the new RAM.
    assert redis_maxmemory(env, created.id) == 256 * 3 // 4 * MIB
    env.service.resize_flavor(PROJECT, created.id, "2")
    resized = wait_status(env, created.id, InstanceStatus.ACTIVE)
    assert resized.flavor_id == "2"
    assert env.runtime.compute.get_server(created.id).flavor.ram_mb == 512  # type: ignore[union-attr]
    assert redis_maxmemory(env, created.id) == 512 * 3 // 4 * MIB
    assert redis_round_trip(resized, "fruit", None) == "plum"

    env.service.restart(PROJECT, created.id)
    restarted = wait_status(env, created.id, InstanceStatus.ACTIVE)
    assert redis_round_trip(restarted, "fruit", None) == "plum"

    delete_and_wait(env, created.id)
    assert env.runtime.compute.list_servers() == []
    assert loop_devices_under(env.root) == []
    assert env.service.quotas.usage(PROJECT) == {"instances": 0, "volumes": 0, "backups": 0}
    assert list(env.runtime.store.list(f"guests/{created.id}")) == []


def test_failed_prepare_compensates_into_error(cloud: Cloud) -> None:
    env = cloud
    # A configuration the guest's datastore refuses (written directly, past the API's rules).
    now = env.runtime.clock.now()
    config = Configuration(
        id="0b7c1a8e-3f1e-4c56-9d4e-1a2b3c4d5e6f",
        project_id=PROJECT,
        name="broken",
        datastore=DatastoreRef(type="redis", version="7.0"),
        values={"no-such-redis-parameter": 1},
        created=now,
        updated=now,
    )
    env.runtime.store.put(f"configurations/{config.id}", config.model_dump(mode="json"), 0)
    created = env.service.create(
        PROJECT,
        CreateInstance(
            name="doomed",
            flavor_id="1",
            volume_size_gb=1,
            datastore_type="redis",
            databases=[Database(name="0")],
            configuration_id=config.id,
        ),
    )
    failed = wait_status(env, created.id, InstanceStatus.ERROR)
    assert failed.fault is not None
    print(f"\nfault: {failed.fault.message}")
    assert "no-such-redis-parameter" in failed.fault.message
    wait_until(lambda: env.runtime.compute.list_servers() == [], "the server to be deleted")
    assert loop_devices_under(env.root) == []
    assert env.service.quotas.usage(PROJECT)["instances"] == 0
    delete_and_wait(env, created.id)
    assert list(env.runtime.store.list(f"guests/{created.id}")) == []


@pytest.mark.skipif(
    shutil.which("mariadbd", path="/usr/sbin:/usr/bin") is None, reason="no mariadb"
)
def test_mariadb_instance_serves_its_user_and_deletes_cleanly(cloud: Cloud) -> None:
    env = cloud
    started = time.monotonic()
    created = env.service.create(
        PROJECT,
        CreateInstance(
            name="shop",
            flavor_id="2",
            volume_size_gb=1,
            datastore_type="mariadb",
            databases=[Database(name="shop")],
            users=[User(name="app", password=SecretStr(PASSWORD), databases=["shop"])],
        ),
    )
    active = wait_status(env, created.id, InstanceStatus.ACTIVE)
    print(f"\nmariadb create -> ACTIVE: {time.monotonic() - started:.2f} s")
    assert active.port == 3306
    conn = pymysql.connect(
        host=active.addresses[0].address,
        port=active.port,
        user="app",
        password=PASSWORD,
        database="shop",
        connect_timeout=5,
    )
    with conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE items (name VARCHAR(20))")
        cur.execute("INSERT INTO items VALUES ('apples')")
        conn.commit()
        cur.execute("SELECT name FROM items")
        assert cur.fetchall() == (("apples",),)
    delete_and_wait(env, created.id)
    assert env.runtime.compute.list_servers() == []
    assert loop_devices_under(env.root) == []
    assert list(env.runtime.store.list(f"guests/{created.id}")) == []


def test_delete_right_after_create_leaves_nothing(cloud: Cloud) -> None:
    env = cloud
    created = env.service.create(
        PROJECT,
        CreateInstance(name="brief", flavor_id="1", volume_size_gb=1, datastore_type="redis"),
    )
    env.service.delete(PROJECT, created.id)  # while the provision flow is under way
    wait_until(lambda: instance_now(env, created.id) is None, "the instance record to go")
    # The provision flow ends too (it stops when it sees the delete) and leaves no server.
    wait_until(
        lambda: (
            env.runtime.workflows.describe(created.task_execution_arn or "")["status"] != "RUNNING"
        ),
        "the provision flow to end",
    )
    assert env.runtime.compute.list_servers() == []
    assert loop_devices_under(env.root) == []
    assert env.service.quotas.usage(PROJECT)["instances"] == 0
