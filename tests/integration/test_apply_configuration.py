"""Configuration groups applied for real: the local runtime (directory store, SQLite queue, the
durable engine, local compute), a real guest agent and a real MariaDB / Redis.

The engine and the guest-events consumer run in threads, as `troveless up` runs them. The
instance record is written directly (ACTIVE, with its sealed guest secret) and its server
prepared with a signed command, so this test does not depend on the provisioning flow.

MariaDB: a group with live parameters is applied without a restart (SHOW GLOBAL VARIABLES shows
the values, the instance is ACTIVE); detaching removes them; a group with a restart-only key
leaves the instance RESTART_REQUIRED with the live keys already in effect, and the restart flow
clears it and brings the restart-only value into effect. Redis: CONFIG GET shows the values.
Invalid values are refused through the HTTP API with 422 naming the key.
"""

from __future__ import annotations

import json
import secrets
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pymysql
import pytest
import redis

from functions import api
from functions.runtime import Runtime
from infra.local.cloud import LocalCloud
from shared.crypto import new_instance_secret
from shared.models.datastore import DatastoreRef
from shared.models.instance import Instance, InstanceStatus, InstanceTask
from shared.models.volume import Volume, VolumeKind
from shared.ports import FlavorSpec
from shared.services.catalog import CatalogService
from shared.services.configurations import ConfigurationService, CreateConfiguration
from shared.services.guest_channel import GuestClient
from shared.services.instance_secrets import seal_guest_secret
from shared.services.instances import InstanceRecords, InstanceService
from shared.services.tokens import TokenService
from tests.integration.embedded_cloud import running_cloud

pytestmark = [pytest.mark.slow, pytest.mark.datastore]

PROJECT = "0123456789abcdef0123456789abcdef"
PASSWORD = "Pw-" + secrets.token_urlsafe(12)
COMMAND_TIMEOUT = 120.0
FLOW_TIMEOUT = 60.0


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll `condition` until it returns something truthy, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


@dataclass
class Cloud:
    runtime: Runtime
    cloud: LocalCloud
    configurations: ConfigurationService
    tokens: TokenService

    def records(self) -> InstanceRecords:
        return InstanceRecords(self.runtime.store)

    def call_api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """One request through the API's Lambda handler (as API Gateway would send it)."""
        token, _ = self.tokens.issue(
            user_id="u1",
            user_name="alice",
            project_id=PROJECT,
            project_name="p",
            roles=("member",),
        )
        headers = {"Host": "api.test", "Content-Type": "application/json", "X-Auth-Token": token}
        event = {
            "httpMethod": method,
            "path": path,
            "resource": "/{proxy+}",
            "headers": headers,
            "multiValueHeaders": {k: [v] for k, v in headers.items()},
            "queryStringParameters": None,
            "multiValueQueryStringParameters": None,
            "pathParameters": None,
            "requestContext": {"stage": "$default", "path": path, "httpMethod": method},
            "body": json.dumps(body) if body is not None else None,
            "isBase64Encoded": False,
        }
        response = api.handler(event, None)
        text = response.get("body") or ""
        return response["statusCode"], json.loads(text) if text else None

    def instance(self, instance_id: str) -> Instance:
        return self.records().get(instance_id)

    def settled(self, instance_id: str) -> Instance:
        """The instance once its current action (task) has ended."""
        settled: Instance = wait_for(
            lambda: (i := self.instance(instance_id)).task is InstanceTask.NONE and i,
            FLOW_TIMEOUT,
            f"instance {instance_id} to finish its action",
        )
        return settled


@pytest.fixture
def local_cloud() -> Iterator[Cloud]:
    with running_cloud(prefix="tl-cfg-") as env:
        runtime = env.runtime
        yield Cloud(
            runtime,
            env.cloud,
            ConfigurationService(
                runtime.store,
                runtime.workflows,
                runtime.clock,
                catalog=CatalogService(env.settings),
            ),
            TokenService(runtime.master_key, runtime.clock, 3600),
        )


def guest_call(world: Cloud, client: GuestClient, name: str, args: dict[str, Any]) -> Any:
    """Send a signed command and wait for its verified result (stored by the events consumer)."""
    command = client.send(name, args, timeout=COMMAND_TIMEOUT)
    key = f"guests/{client.instance_id}/results/{command.id}"
    stored = wait_for(lambda: world.runtime.store.get(key), COMMAND_TIMEOUT, f"{name} result")
    assert stored.data["ok"], stored.data
    return stored.data["result"]


def prepared_instance(
    world: Cloud, datastore: str, version: str
) -> tuple[Instance, str, GuestClient]:
    """An ACTIVE instance whose guest has prepared its datastore with user `app`; returns it,
    its address and a client for its guest."""
    instance_id = str(uuid.uuid4())
    secret = new_instance_secret()
    now = world.runtime.clock.now()
    instance = Instance(
        id=instance_id,
        project_id=PROJECT,
        name=f"{datastore}-cfg",
        status=InstanceStatus.ACTIVE,
        flavor_id="small",
        volume=Volume(kind=VolumeKind.DIRECTORY, size_gb=1),
        datastore=DatastoreRef(type=datastore, version=version),
        encrypted_guest_secret=seal_guest_secret(instance_id, secret, world.runtime.master_key),
        created=now,
        updated=now,
    )
    world.records().create(instance)
    user_data = world.cloud.guest_user_data(instance_id, datastore, version, secret)
    server = world.cloud.compute.create_server(
        instance_id, FlavorSpec(ram_mb=512, vcpus=1), 1, None, user_data
    )
    client = GuestClient(world.runtime.queue, world.runtime.clock, instance_id, secret)
    user: dict[str, Any] = {"name": "app", "encrypted_password": client.seal_password(PASSWORD)}
    if datastore == "mariadb":
        user["databases"] = ["shop"]
    databases = [{"name": "shop"}] if datastore == "mariadb" else []
    guest_call(world, client, "prepare", {"databases": databases, "users": [user]})
    return instance, server.address, client


def mariadb_variables(address: str, *names: str) -> dict[str, str]:
    conn = pymysql.connect(
        host=address, port=3306, user="app", password=PASSWORD, connect_timeout=5
    )
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SHOW GLOBAL VARIABLES WHERE Variable_name IN ("
                + ", ".join(["%s"] * len(names))
                + ")",
                names,
            )
            return {str(k): str(v) for k, v in cur.fetchall()}
    finally:
        conn.close()


def test_mariadb_live_values_restart_required_and_bad_values(local_cloud: Cloud) -> None:
    world = local_cloud
    instance, address, _guest = prepared_instance(world, "mariadb", "10.11")
    before = mariadb_variables(
        address, "max_connections", "performance_schema", "character_set_server"
    )
    assert before["performance_schema"] == "OFF"

    # Bad values never get stored: 422 naming the key, through the API.
    status, body = world.call_api(
        "POST",
        f"/v1.0/{PROJECT}/configurations",
        {"configuration": {"name": "bad", "values": {"max_connections": "lots"}}},
    )
    assert status == 422, body
    assert "values.max_connections" in json.dumps(body)
    status, body = world.call_api(
        "POST",
        f"/v1.0/{PROJECT}/configurations",
        {"configuration": {"name": "bad", "values": {"max_connections": True}}},
    )
    assert status == 422 and "values.max_connections" in json.dumps(body)
    assert world.configurations.list(PROJECT) == []

    # Live values: applied without a restart.
    status, body = world.call_api(
        "POST",
        f"/v1.0/{PROJECT}/configurations",
        {
            "configuration": {
                "name": "live",
                "values": {
                    "max_connections": 321,
                    "wait_timeout": 77,
                    "slow_query_log": True,
                    "character_set_server": "latin1",
                    "collation_server": "latin1_bin",
                },
                "datastore": {"type": "mariadb", "version": "10.11"},
            }
        },
    )
    assert status == 200, body
    live_id = body["configuration"]["id"]
    assert body["configuration"]["datastore_version_name"] == "10.11"
    world.configurations.attach(PROJECT, instance.id, live_id)
    done = world.settled(instance.id)
    assert (done.status, done.configuration_id, done.fault) == (
        InstanceStatus.ACTIVE,
        live_id,
        None,
    )
    assert mariadb_variables(
        address,
        "max_connections",
        "wait_timeout",
        "slow_query_log",
        "character_set_server",
        "collation_server",
    ) == {
        "max_connections": "321",
        "wait_timeout": "77",
        "slow_query_log": "ON",
        "character_set_server": "latin1",
        "collation_server": "latin1_bin",
    }
    status, body = world.call_api("GET", f"/v1.0/{PROJECT}/configurations/{live_id}/instances")
    assert (status, body) == (200, {"instances": [{"id": instance.id, "name": instance.name}]})
    status, body = world.call_api("DELETE", f"/v1.0/{PROJECT}/configurations/{live_id}")
    assert status == 400, body  # still attached

    # Detach: the overrides are gone from the server too.
    world.configurations.detach(PROJECT, instance.id)
    done = world.settled(instance.id)
    assert (done.status, done.configuration_id) == (InstanceStatus.ACTIVE, None)
    assert mariadb_variables(address, "max_connections", "character_set_server") == {
        "max_connections": before["max_connections"],
        "character_set_server": before["character_set_server"],
    }

    # A restart-only key: RESTART_REQUIRED, live keys already in effect...
    restart_group = world.configurations.create(
        PROJECT,
        CreateConfiguration(
            name="needs-restart",
            values={"performance_schema": True, "max_connections": 123},
            datastore_type="mariadb",
            datastore_version="10.11",
        ),
    )
    world.configurations.attach(PROJECT, instance.id, restart_group.id)
    done = world.settled(instance.id)
    assert done.status is InstanceStatus.RESTART_REQUIRED
    assert mariadb_variables(address, "max_connections", "performance_schema") == {
        "max_connections": "123",
        "performance_schema": "OFF",
    }

    # ... until the restart flow, which clears it and brings the value into effect.
    InstanceService.from_runtime(world.runtime).restart(PROJECT, instance.id)
    done = world.settled(instance.id)
    assert done.status is InstanceStatus.ACTIVE, done.fault
    assert mariadb_variables(address, "performance_schema") == {"performance_schema": "ON"}


def test_redis_values_are_in_effect(local_cloud: Cloud) -> None:
    world = local_cloud
    instance, address, guest = prepared_instance(world, "redis", "7.0")
    group = world.configurations.create(
        PROJECT,
        CreateConfiguration(
            name="cache",
            values={"maxmemory-policy": "allkeys-lru", "timeout": 30, "hz": 20},
            datastore_type="redis",
            datastore_version="7.0",
        ),
    )
    world.configurations.attach(PROJECT, instance.id, group.id)
    done = world.settled(instance.id)
    assert (done.status, done.fault) == (InstanceStatus.ACTIVE, None)
    # CONFIG is a dangerous command: tenants' users lack it, root has it.
    root_password = guest.open_password(
        guest_call(world, guest, "enable_root", {})["encrypted_password"]
    )
    client = redis.Redis(
        host=address, port=6379, username="default", password=root_password, decode_responses=True
    )
    try:
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "allkeys-lru"}
        assert client.config_get("timeout") == {"timeout": "30"}
        assert client.config_get("hz") == {"hz": "20"}
    finally:
        client.close()
