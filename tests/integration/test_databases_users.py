"""Databases, users, root and logs of a real MariaDB instance, through the real guest path.

The embedded cloud (`infra.wiring.build_local`) in a temporary data directory: a real server
(loop volume, guest agent, MariaDB) created and prepared directly, as `infra/local/demo.py`
does, with its instance record written ACTIVE; the guest-events consumer
(`functions.guest_events.work`) runs in a thread and stores verified results where
`GuestCalls` waits for them. Then, through `DatabaseService` and `InstanceLogService`:
create a database and a user with access, connect as that user with PyMySQL, change the
password, revoke the access, enable root and connect as root, publish the general log and
read it back from the blob store; injection attempts are refused with 400 naming the field.
"""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pymysql
import pytest
import redis

from functions.guest_events import work
from functions.runtime import Runtime
from infra.local.cloud import LocalCloud
from infra.wiring import build_local
from shared.crypto import new_instance_secret
from shared.errors import ConflictError, RequestError
from shared.models import Instance, InstanceStatus
from shared.models.datastore import DatastoreRef
from shared.models.instance import Address
from shared.models.volume import Volume, VolumeKind
from shared.ports import FlavorSpec
from shared.services.databases import DatabaseService, instance_key
from shared.services.guest_calls import GuestCalls
from shared.services.instance_logs import InstanceLogService
from shared.services.instance_secrets import seal_guest_secret
from shared.settings import load_settings
from tests.contract.compute_adapters import require_local_compute_host

pytestmark = [pytest.mark.slow, pytest.mark.datastore]

PROJECT = "5a1d0c3e4f5a46b7c8d9e0f1a2b3c4d5"
PREPARE_TIMEOUT = 120.0
MARIADB_PORT = 3306
POSTGRESQL_PORT = 5432
REDIS_PORT = 6379


@dataclass
class LocalRuntime:
    runtime: Runtime
    cloud: LocalCloud


@dataclass
class LiveInstance:
    runtime: Runtime
    instance: Instance
    address: str
    databases: DatabaseService
    logs: InstanceLogService


@pytest.fixture(scope="module")
def local() -> Iterator[LocalRuntime]:
    """The embedded cloud with its guest-events consumer running."""
    require_local_compute_host()
    root = Path(tempfile.mkdtemp(prefix="tl-dbusers-", dir="/tmp"))
    settings = load_settings(
        data_dir=root,
        heartbeat_interval=0.5,
        heartbeat_expiry=5,
        address_pool="127.10.77.0/24",
    )
    runtime, cloud, _driver = build_local(settings)
    stop = threading.Event()
    consumer = threading.Thread(
        target=work, args=(stop.is_set,), kwargs={"runtime": runtime, "wait_seconds": 0.2}
    )
    consumer.start()
    try:
        yield LocalRuntime(runtime, cloud)
    finally:
        stop.set()
        consumer.join(timeout=10)
        try:
            for server in cloud.compute.list_servers():
                cloud.compute.delete_server(server.instance_id)
        finally:
            cloud.close()
            shutil.rmtree(root, ignore_errors=True)


def start_instance(local: LocalRuntime, datastore: str, version: str, port: int) -> LiveInstance:
    """A server created and prepared directly, its instance record written ACTIVE."""
    runtime, cloud = local.runtime, local.cloud
    instance_id = str(uuid.uuid4())
    secret = new_instance_secret()
    now = runtime.clock.now()
    instance = Instance(
        id=instance_id,
        project_id=PROJECT,
        name=datastore,
        status=InstanceStatus.BUILD,
        flavor_id="2",
        volume=Volume(kind=VolumeKind.LOOP, size_gb=1),
        datastore=DatastoreRef(type=datastore, version=version),
        encrypted_guest_secret=seal_guest_secret(instance_id, secret, runtime.master_key),
        created=now,
        updated=now,
    )
    runtime.store.put(instance_key(instance_id), instance.model_dump(mode="json"), 0)
    user_data = cloud.guest_user_data(instance_id, datastore, "default", secret)
    server = cloud.compute.create_server(
        instance_id, FlavorSpec(ram_mb=512, vcpus=1), 1, None, user_data
    )
    calls = GuestCalls(runtime.store, runtime.queue, runtime.clock, runtime.master_key)
    calls.call(instance, "prepare", {}, timeout=PREPARE_TIMEOUT)
    # The consumer updates the record from heartbeats too: compare-and-swap our change.
    for _ in range(50):
        record = runtime.store.get(instance_key(instance_id))
        assert record is not None
        active = Instance.model_validate(record.data).replace(
            status=InstanceStatus.ACTIVE, addresses=[Address(address=server.address)], port=port
        )
        try:
            runtime.store.put(
                instance_key(instance_id), active.model_dump(mode="json"), record.revision
            )
            break
        except ConflictError:
            continue
    else:
        raise AssertionError("could not mark the instance ACTIVE")
    args = (runtime.store, runtime.queue, runtime.clock, runtime.master_key)
    return LiveInstance(
        runtime,
        active,
        server.address,
        DatabaseService(*args, timeout=60),
        InstanceLogService(*args, runtime.blobs, timeout=60),
    )


@pytest.fixture(scope="module")
def live(local: LocalRuntime) -> LiveInstance:
    if shutil.which("mariadbd") is None and not os.path.exists("/usr/sbin/mariadbd"):
        pytest.skip("mariadbd is not installed")
    return start_instance(local, "mariadb", "10.11", MARIADB_PORT)


@pytest.fixture(scope="module")
def pg(local: LocalRuntime) -> LiveInstance:
    if not glob.glob("/usr/lib/postgresql/*/bin/postgres"):
        pytest.skip("postgresql is not installed")
    return start_instance(local, "postgresql", "15", POSTGRESQL_PORT)


def connect(live: LiveInstance, user: str, password: str, database: str | None = None) -> Any:
    return pymysql.connect(
        host=live.address,
        port=MARIADB_PORT,
        user=user,
        password=password,
        database=database,
        connect_timeout=5,
    )


def test_database_user_access_and_passwords(live: LiveInstance) -> None:
    sid = live.instance.id
    service = live.databases
    service.create_databases(PROJECT, sid, [{"name": "shop"}, {"name": "crm_2"}])
    assert {"shop", "crm_2"} <= {db.name for db in service.list_databases(PROJECT, sid)}

    first = "First-" + secrets.token_urlsafe(10)
    service.create_users(
        PROJECT, sid, [{"name": "app", "password": first, "databases": [{"name": "shop"}]}]
    )
    conn = connect(live, "app", first, "shop")
    with conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE items (name VARCHAR(40))")
        cur.execute("INSERT INTO items VALUES ('apples')")
        conn.commit()
        cur.execute("SELECT name FROM items")
        assert cur.fetchall() == (("apples",),)
    assert service.get_user(PROJECT, sid, "app").databases == ["shop"]

    second = "Second-" + secrets.token_urlsafe(10)
    service.change_passwords(PROJECT, sid, [{"name": "app", "password": second}])
    with pytest.raises(pymysql.err.OperationalError):
        connect(live, "app", first, "shop")
    connect(live, "app", second, "shop").close()

    service.grant_access(PROJECT, sid, "app", [{"name": "crm_2"}])
    assert sorted(service.list_access(PROJECT, sid, "app")) == ["crm_2", "shop"]
    service.revoke_access(PROJECT, sid, "app", "shop")
    assert service.list_access(PROJECT, sid, "app") == ["crm_2"]
    with pytest.raises(pymysql.err.OperationalError) as denied:
        connect(live, "app", second, "shop")
    assert denied.value.args[0] == 1044  # access denied to that database

    service.delete_user(PROJECT, sid, "app")
    assert "app" not in {u.name for u in service.list_users(PROJECT, sid)}


def test_enable_root_and_connect_as_root(live: LiveInstance) -> None:
    sid = live.instance.id
    assert live.databases.root_enabled(PROJECT, sid) is False
    root = live.databases.enable_root(PROJECT, sid)
    assert root.name == "root"
    password = root.password
    assert live.databases.root_enabled(PROJECT, sid) is True
    conn = connect(live, "root", password)
    with conn, conn.cursor() as cur:
        cur.execute("SELECT CURRENT_USER()")
        assert cur.fetchone() == ("root@%",)
    # The password went nowhere it could be read again.
    for key in live.runtime.store.list():
        record = live.runtime.store.get(key)
        assert record is None or password not in str(record.data)
    live.databases.disable_root(PROJECT, sid)
    assert live.databases.root_enabled(PROJECT, sid) is False
    with pytest.raises(pymysql.err.OperationalError):
        connect(live, "root", password)


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda s, i: s.create_databases(PROJECT, i, [{"name": "x`; DROP DATABASE shop; --"}]),
         "databases[0].name"),
        (lambda s, i: s.create_users(
            PROJECT, i, [{"name": "a' OR '1'='1", "password": "Password-123"}]),
         "users[0].name"),
        (lambda s, i: s.create_users(
            PROJECT, i, [{"name": "ok", "password": "Password-123", "host": "%' --"}]),
         "users[0].host"),
        (lambda s, i: s.delete_database(PROJECT, i, "shop; DROP TABLE x"), "name"),
    ],
)  # fmt: skip
def test_injection_names_are_refused_naming_the_field(
    live: LiveInstance, call: Callable[[DatabaseService, str], object], field: str
) -> None:
    with pytest.raises(RequestError) as caught:
        call(live.databases, live.instance.id)
    assert (caught.value.field, caught.value.status) == (field, 400)


def test_publish_the_general_log_to_the_blob_store(live: LiveInstance) -> None:
    sid = live.instance.id
    logs = {entry["name"]: entry for entry in live.logs.list_logs(PROJECT, sid)}
    assert set(logs) == {"error", "slow_query", "general"}
    assert logs["error"]["type"] == "SYS" and logs["error"]["pending"] > 0
    assert logs["general"]["status"] == "Disabled"

    assert live.logs.act(PROJECT, sid, {"name": "general", "enable": 1})["enabled"] is True
    marker = "marker_" + secrets.token_hex(6)
    password = live.databases.enable_root(PROJECT, sid).password
    conn = connect(live, "root", password)
    with conn, conn.cursor() as cur:
        cur.execute(f"SELECT '{marker}'")
    published = live.logs.act(PROJECT, sid, {"name": "general", "publish": 1})
    # The agent's health probes keep writing to the general log: Partial is as good.
    assert published["status"] in {"Published", "Partial"} and published["published"] > 0
    text = live.logs.read_published(PROJECT, sid, "general").decode(errors="replace")
    assert marker in text
    keys = [info.key for info in live.logs.published_objects(PROJECT, sid, "general")]
    assert keys and all(k.startswith(f"logs/{PROJECT}/{sid}/general/") for k in keys)

    live.logs.act(PROJECT, sid, {"name": "general", "disable": 1, "discard": 1})
    assert live.logs.published_objects(PROJECT, sid, "general") == []
    assert live.logs.act(PROJECT, sid, {"name": "general"})["enabled"] is False


def test_postgresql_users_root_and_statement_log(pg: LiveInstance) -> None:
    sid = pg.instance.id
    pg.databases.create_databases(PROJECT, sid, [{"name": "shop"}])
    password = "Pg-" + secrets.token_urlsafe(10)
    pg.databases.create_users(
        PROJECT, sid, [{"name": "app", "password": password, "databases": ["shop"]}]
    )
    with psycopg.connect(
        host=pg.address, port=POSTGRESQL_PORT, user="app", password=password, dbname="shop"
    ) as conn:
        conn.execute("CREATE TABLE items (name text)")
        conn.execute("INSERT INTO items VALUES ('pears')")
        assert conn.execute("SELECT name FROM items").fetchall() == [("pears",)]

    assert pg.logs.act(PROJECT, sid, {"name": "general", "enable": 1})["enabled"] is True
    root = pg.databases.enable_root(PROJECT, sid)
    assert root.name == "postgres"
    root_password = root.password
    marker = "marker_" + secrets.token_hex(6)
    with psycopg.connect(
        host=pg.address, port=POSTGRESQL_PORT, user="postgres", password=root_password,
        dbname="postgres",
    ) as conn:  # fmt: skip
        assert conn.execute(f"SELECT '{marker}'").fetchone() == (marker,)
    pg.logs.act(PROJECT, sid, {"name": "general", "publish": 1})
    assert marker in pg.logs.read_published(PROJECT, sid, "general").decode(errors="replace")
    assert pg.logs.act(PROJECT, sid, {"name": "general", "disable": 1})["enabled"] is False
    pg.databases.disable_root(PROJECT, sid)
    assert pg.databases.root_enabled(PROJECT, sid) is False
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(
            host=pg.address, port=POSTGRESQL_PORT, user="postgres", password=root_password,
            dbname="postgres", connect_timeout=5,
        ).close()  # fmt: skip


@pytest.fixture(scope="module")
def redis_instance(local: LocalRuntime) -> LiveInstance:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    return start_instance(local, "redis", "7.0", REDIS_PORT)


def test_redis_root_and_server_log(redis_instance: LiveInstance) -> None:
    live, sid = redis_instance, redis_instance.instance.id
    root = live.databases.enable_root(PROJECT, sid)
    assert root.name == "default"
    client = redis.Redis(host=live.address, port=REDIS_PORT, password=root.password)
    with contextlib.closing(client):
        assert client.ping() is True
    live.databases.disable_root(PROJECT, sid)
    assert live.databases.root_enabled(PROJECT, sid) is False
    client = redis.Redis(host=live.address, port=REDIS_PORT, password=root.password)
    with contextlib.closing(client), pytest.raises(redis.exceptions.RedisError):
        client.ping()

    logs = live.logs.list_logs(PROJECT, sid)
    assert [(entry["name"], entry["type"]) for entry in logs] == [("redis", "SYS")]
    published = live.logs.act(PROJECT, sid, {"name": "redis", "publish": 1})
    assert published["published"] > 0
    assert b"Ready to accept connections" in live.logs.read_published(PROJECT, sid, "redis")
