"""`troveless up` as a real process, used through unchanged OpenStack clients, on the local
profile and on the openstack one (records and backups in a real Swift, queues in a real Zaqar).

python-troveclient and openstacksdk authenticate against the embedded Keystone with the
credentials `up` wrote to clouds.yaml, then drive a real Redis instance through its lifecycle
and every 4xx path. Whatever happens, the process is stopped, every server it made is
deleted, the data directory removed and the openstack profile's containers and Zaqar
project emptied (tests/e2e/up_process.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openstack
import pytest
import redis
from keystoneauth1 import session
from troveclient import utils as trove_utils
from troveclient.apiclient import exceptions as trove_exc
from troveclient.v1 import client as trove_client

from tests.e2e.up_process import (
    Up,
    fresh_data_dir,
    running_up,
    start_up,
    stop_process,
    wait_until,
)
from tests.integration.embedded_cloud import PROFILES, servers_for
from tests.servers.processes import free_port

pytestmark = [pytest.mark.slow, pytest.mark.datastore]

if shutil.which("redis-server") is None:
    pytest.skip("redis-server is not installed", allow_module_level=True)
if os.geteuid() != 0:
    pytest.skip("loop mounts and cgroups need root", allow_module_level=True)

ACTIVE_TIMEOUT = 90.0
PASSWORD = "Redis-pass-123"
# An address pool per process, so that no two hand out the same address.
FIXTURE_POOLS = {"local": "127.10.55.0/24", "openstack": "127.10.58.0/24"}
ADOPT_POOL = "127.10.56.0/24"


@pytest.fixture(scope="module", params=PROFILES)
def up(request: pytest.FixtureRequest) -> Iterator[Up]:
    """`troveless up --stop-servers` on the local profile, then on the openstack one."""
    profile = request.param
    openstack_servers = servers_for(request, profile)
    with running_up(openstack_servers, FIXTURE_POOLS[profile], "--stop-servers") as running:
        yield running


@pytest.fixture(scope="module")
def trove(up: Up) -> trove_client.Client:
    return trove_client.Client(session=up.session(), region_name="RegionOne")


def wait_status(trove: trove_client.Client, instance_id: str, status: str) -> Any:
    def reached() -> Any:
        found = trove.instances.get(instance_id)
        assert found.status != "ERROR" or status == "ERROR", getattr(found, "fault", None)
        return found if found.status == status else None

    return wait_until(reached, f"{instance_id} to be {status}", ACTIVE_TIMEOUT)


def wait_gone(trove: trove_client.Client, instance_id: str) -> None:
    wait_until(
        lambda: instance_id not in [i.id for i in trove.instances.list()],
        f"{instance_id} to be deleted",
        ACTIVE_TIMEOUT,
    )


def test_up_writes_clouds_yaml_and_serves_versions(up: Up) -> None:
    assert oct(up.clouds.stat().st_mode & 0o777) == "0o600"
    out = up.log.read_text()
    assert f"export OS_CLIENT_CONFIG_FILE={up.clouds}" in out
    assert up.auth()["password"] not in out  # the password is in the file, not the output
    plain = session.Session()
    assert plain.get(f"{up.url}/").json()["versions"][0]["id"] == "v1.0"
    assert plain.get(f"{up.url}/v1.0/x/instances", raise_exc=False).status_code == 401


def test_troveclient_lifecycle(up: Up, trove: trove_client.Client) -> None:
    assert "tl.tiny" in [f.name for f in trove.flavors.list()]
    assert "redis" in [d.name for d in trove.datastores.list()]
    started = time.monotonic()
    created = trove.instances.create(
        "e2e-redis",
        "1",
        volume={"size": 1},
        datastore="redis",
        users=[{"name": "app", "password": PASSWORD, "databases": [{"name": "3"}]}],
    )
    try:
        assert created.status == "BUILD"
        active = wait_status(trove, created.id, "ACTIVE")
        create_seconds = time.monotonic() - started
        assert active.ip and active.port == 6379
        assert active.volume["size"] == 1
        # By name, as the CLI looks up: GET /instances/<name> must 404, then it lists.
        assert trove_utils.find_resource(trove.instances, "e2e-redis").id == created.id
        client = redis.Redis(
            host=active.ip[0], port=active.port, username="app", password=PASSWORD, db=3
        )
        try:
            client.set("k", "v")
            assert client.get("k") == b"v"
        finally:
            client.close()

        # An action while another runs is refused with 409.
        trove.instances.resize_volume(created.id, 2)
        with pytest.raises(trove_exc.HttpError) as busy:
            trove.instances.restart(created.id)
        assert busy.value.http_status == 409
        resized = wait_status(trove, created.id, "ACTIVE")
        assert resized.volume["size"] == 2
        print(f"\ncreate -> ACTIVE through the API: {create_seconds:.2f} s")
    finally:
        trove.instances.delete(created.id)
        wait_gone(trove, created.id)


@pytest.mark.parametrize(
    ("kwargs", "status", "words"),
    [
        ({"flavor_id": "999"}, 404, "999"),
        ({"datastore": "cassandra"}, 404, "cassandra"),
        ({"volume": {"size": 5000}}, None, "volume"),
        # Within the 100 GB volume rule, over the project's 40 GB volume quota: 413 overLimit.
        ({"volume": {"size": 41}}, 413, "volumes"),
        ({"name": ""}, 400, "name"),
        ({"databases": [{"name": "not a name!"}], "datastore": "mariadb"}, 400, "databases"),
    ],
)
def test_troveclient_error_paths(
    trove: trove_client.Client, kwargs: dict[str, Any], status: int | None, words: str
) -> None:
    args: dict[str, Any] = {
        "name": "bad",
        "flavor_id": "1",
        "volume": {"size": 1},
        "datastore": "redis",
        **kwargs,
    }
    with pytest.raises(trove_exc.HttpError) as refused:
        trove.instances.create(args.pop("name"), args.pop("flavor_id"), **args)
    assert 400 <= refused.value.http_status < 500
    if status is not None:
        assert refused.value.http_status == status
    assert words in str(refused.value.message)
    assert "bad" not in [i.name for i in trove.instances.list()]


def test_other_projects_and_unknown_ids_are_404(up: Up) -> None:
    sess = up.session()
    endpoint = sess.get_endpoint(service_type="database", interface="public")
    assert endpoint is not None
    other = endpoint.rsplit("/", 1)[0] + "/" + "f" * 32
    for url in (f"{other}/instances", f"{endpoint}/instances/{'0' * 8}-0000-0000-0000-{'0' * 12}"):
        reply = sess.get(url, raise_exc=False)
        assert reply.status_code == 404, url
        assert reply.json()["itemNotFound"]["code"] == 404
    reply = sess.post(f"{endpoint}/instances", data=b"{not json", raise_exc=False)
    assert reply.status_code == 400


def test_openstacksdk_lifecycle(up: Up) -> None:
    conn = openstack.connect(
        auth_url=up.auth()["auth_url"],
        username=up.auth()["username"],
        password=up.auth()["password"],
        project_name=up.auth()["project_name"],
        user_domain_name="Default",
        project_domain_name="Default",
        region_name="RegionOne",
    )
    try:
        assert "tl.small" in [f.name for f in conn.database.flavors()]
        created = conn.database.create_instance(
            name="e2e-sdk", flavor="1", volume={"size": 1}, datastore={"type": "redis"}
        )
        try:
            wait_until(
                lambda: conn.database.get_instance(created.id).status == "ACTIVE",
                "the sdk instance to be ACTIVE",
                ACTIVE_TIMEOUT,
            )
            found = conn.database.find_instance("e2e-sdk")
            assert found is not None and found.id == created.id
            assert found.hostname
        finally:
            conn.database.delete_instance(created.id)
            wait_until(
                lambda: created.id not in [i.id for i in conn.database.instances()],
                "the sdk instance to be deleted",
                ACTIVE_TIMEOUT,
            )
    finally:
        conn.close()


def test_openstack_cli_with_the_written_clouds_yaml(up: Up) -> None:
    """`openstack --os-cloud troveless database ...` works with only the printed export."""
    openstack_cli = Path(sys.executable).parent / "openstack"
    if not openstack_cli.exists():
        pytest.skip("python-openstackclient is not installed")
    env = {**os.environ, "OS_CLIENT_CONFIG_FILE": str(up.clouds)}
    env = {
        k: v for k, v in env.items() if not (k.startswith("OS_") and k != "OS_CLIENT_CONFIG_FILE")
    }
    for command, expected in (
        (["database", "flavor", "list"], "tl.small"),
        (["database", "instance", "list"], "["),
    ):
        done = subprocess.run(
            [str(openstack_cli), "--os-cloud", "troveless", *command, "-f", "json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert expected in done.stdout


def test_restarting_up_adopts_running_servers() -> None:
    """Servers outlive `up` (no --stop-servers) and the next `up` takes charge of them.

    Local profile only: adoption is LocalCompute's, the same on both profiles, and the
    openstack profile's stores play no part in it."""
    with fresh_data_dir(ADOPT_POOL) as data_dir:
        port = free_port()
        first = start_up(data_dir, port, ADOPT_POOL)
        try:
            trove = trove_client.Client(session=first.session(), region_name="RegionOne")
            created = trove.instances.create("kept", "1", volume={"size": 1}, datastore="redis")
            address = wait_status(trove, created.id, "ACTIVE").ip[0]
        finally:
            stop_process(first.process)
        assert first.process.returncode == 0
        # The database kept running while no control plane was up.
        probe = redis.Redis(host=address, port=6379, socket_timeout=5)
        try:
            with pytest.raises(redis.AuthenticationError):
                probe.ping()  # answering (and asking for a password): the server is alive
        finally:
            probe.close()
        second = start_up(data_dir, port, ADOPT_POOL)
        try:
            assert "servers adopted: 1" in second.log.read_text()
            trove = trove_client.Client(session=second.session(), region_name="RegionOne")
            assert wait_status(trove, created.id, "ACTIVE").ip == [address]
            trove.instances.delete(created.id)
            wait_gone(trove, created.id)
        finally:
            stop_process(second.process)
