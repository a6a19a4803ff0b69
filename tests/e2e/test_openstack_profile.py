"""`troveless up --profile openstack`: the embedded cloud on a real Swift and a real Zaqar.

The session's Swift all-in-one (tempauth) and Zaqar (noauth, Redis) hold every record, backup
and queue message; local compute still makes the servers, whose guest agents reach Zaqar and
Swift themselves from their user-data. Through python-troveclient: a MariaDB instance goes
ACTIVE, gets a database and a user, takes a row over PyMySQL, is backed up (the object is then
read back from Swift directly), and is deleted with nothing left running. Containers and the
Zaqar project are this test's own; the process, the servers and the data directory are
removed whatever happens.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pymysql
import pytest
import yaml
from keystoneauth1 import loading, session
from troveclient.v1 import client as trove_client

from shared.adapters.local.compute import LocalCompute
from shared.adapters.openstack.swift_blob_store import SwiftBlobStore
from shared.adapters.openstack.swift_client import tempauth_connection
from tests.servers.swift import SwiftEndpoint

pytestmark = [pytest.mark.slow, pytest.mark.datastore]

if shutil.which("mariadbd") is None:
    pytest.skip("mariadb-server is not installed", allow_module_level=True)
if os.geteuid() != 0:
    pytest.skip("loop mounts and cgroups need root", allow_module_level=True)

REPO = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT = 60.0
STEP_TIMEOUT = 90.0
POOL = "127.10.57.0/24"
PASSWORD = "Maria-pass-123"


def wait_until(condition: Callable[[], Any], what: str, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class OpenStackUp:
    process: subprocess.Popen[bytes]
    data_dir: Path
    log: Path
    env: dict[str, str]
    state_container: str
    backups_container: str

    def session(self) -> session.Session:
        clouds = yaml.safe_load((self.data_dir / "clouds.yaml").read_text())
        auth = clouds["clouds"]["troveless"]["auth"]
        plugin: Any = loading.get_plugin_loader("password").load_from_options(
            auth_url=auth["auth_url"],
            username=auth["username"],
            password=auth["password"],
            project_name=auth["project_name"],
            user_domain_name="Default",
            project_domain_name="Default",
        )
        return session.Session(auth=plugin)

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def processes_naming(text: str, *, besides: int) -> list[str]:
    """Command lines of live processes (but `besides`) that mention `text`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in (besides, os.getpid()):
            continue
        with contextlib.suppress(OSError):
            argv = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if text in argv:
                found.append(f"{entry.name}: {argv}")
    return found


@pytest.fixture
def openstack_up(swift_endpoint: SwiftEndpoint, zaqar_endpoint: str) -> Iterator[OpenStackUp]:
    """`troveless up --profile openstack` on containers and a Zaqar project of its own."""
    data_dir = Path(tempfile.mkdtemp(prefix="tl-e2e-os-", dir="/tmp"))
    log = data_dir.parent / f"{data_dir.name}.log"
    tag = uuid.uuid4().hex[:10]
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("TROVELESS_")}
    env = {
        **inherited,
        "TROVELESS_HEARTBEAT_INTERVAL": "0.5",
        "TROVELESS_ADDRESS_POOL": POOL,
        "TROVELESS_OPENSTACK_SWIFT_AUTH_URL": swift_endpoint.auth_url,
        "TROVELESS_OPENSTACK_SWIFT_USER": swift_endpoint.user,
        "TROVELESS_OPENSTACK_SWIFT_KEY": swift_endpoint.key,
        "TROVELESS_OPENSTACK_ZAQAR_URL": zaqar_endpoint,
        "TROVELESS_OPENSTACK_ZAQAR_PROJECT_ID": f"tl-e2e-{tag}",
        "TROVELESS_OPENSTACK_STATE_CONTAINER": f"tl-e2e-state-{tag}",
        "TROVELESS_OPENSTACK_BACKUPS_CONTAINER": f"tl-e2e-backups-{tag}",
    }
    port = free_port()
    command = [sys.executable, "-m", "infra.cli.main", "up", "--profile", "openstack"]
    command += ["--data-dir", str(data_dir), "--port", str(port), "--stop-servers"]
    process: subprocess.Popen[bytes] | None = None
    try:
        with log.open("wb") as out:
            process = subprocess.Popen(
                command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT
            )
        running = OpenStackUp(
            process,
            data_dir,
            log,
            env,
            env["TROVELESS_OPENSTACK_STATE_CONTAINER"],
            env["TROVELESS_OPENSTACK_BACKUPS_CONTAINER"],
        )
        wait_until(
            lambda: process.poll() is not None or "OS_CLIENT_CONFIG_FILE=" in running.output(),
            "troveless up --profile openstack to start",
            STARTUP_TIMEOUT,
        )
        assert process.poll() is None, running.output()
        yield running
    finally:
        if process is not None:
            stop_process(process)
        compute = LocalCompute(data_dir / "compute", address_pool=POOL)
        for server in compute.list_servers():
            with contextlib.suppress(Exception):
                compute.delete_server(server.instance_id)
        shutil.rmtree(data_dir, ignore_errors=True)
        log.unlink(missing_ok=True)


def test_instance_lifecycle_and_backup_on_swift_and_zaqar(
    openstack_up: OpenStackUp, swift_endpoint: SwiftEndpoint
) -> None:
    up = openstack_up
    assert "profile: openstack" in up.output()
    assert swift_endpoint.key not in up.output()  # the Swift key is never printed
    trove = trove_client.Client(session=up.session(), region_name="RegionOne")
    timings: dict[str, float] = {}

    def status_of(instance_id: str, wanted: str) -> Any:
        found = trove.instances.get(instance_id)
        assert found.status != "ERROR", f"{getattr(found, 'fault', None)}\n{up.output()}"
        return found if found.status == wanted else None

    started = time.monotonic()
    created = trove.instances.create("os-maria", "2", volume={"size": 1}, datastore="mariadb")
    try:
        active = wait_until(
            lambda: status_of(created.id, "ACTIVE"), "the instance to be ACTIVE", STEP_TIMEOUT
        )
        timings["create -> ACTIVE"] = time.monotonic() - started

        mark = time.monotonic()
        trove.databases.create(created.id, [{"name": "shop"}])
        timings["database"] = time.monotonic() - mark
        mark = time.monotonic()
        trove.users.create(
            created.id, [{"name": "app", "password": PASSWORD, "databases": [{"name": "shop"}]}]
        )
        timings["user"] = time.monotonic() - mark
        mark = time.monotonic()
        wait_until(
            lambda: "app" in [u.name for u in trove.users.list(created.id)],
            "the user to be listed",
            STEP_TIMEOUT,
        )
        timings["user listed"] = time.monotonic() - mark
        assert "shop" in [d.name for d in trove.databases.list(created.id)]
        connection = pymysql.connect(
            host=active.ip[0], port=3306, user="app", password=PASSWORD, database="shop"
        )
        try:
            with connection.cursor() as cursor:
                cursor.execute("CREATE TABLE items (id INT PRIMARY KEY, name VARCHAR(20))")
                cursor.execute("INSERT INTO items VALUES (1, 'kept in swift')")
                connection.commit()
                cursor.execute("SELECT name FROM items WHERE id = 1")
                assert cursor.fetchone() == ("kept in swift",)
        finally:
            connection.close()

        mark = time.monotonic()
        backup = trove.backups.create("os-full", created.id)
        done = wait_until(
            lambda: (b := trove.backups.get(backup.id)).status in ("COMPLETED", "FAILED") and b,
            "the backup to finish",
            STEP_TIMEOUT,
        )
        timings["backup -> COMPLETED"] = time.monotonic() - mark
        assert done.status == "COMPLETED", up.output()
        # The guest wrote the backup into Swift: read it back there, by its own client.
        swift = tempauth_connection(
            swift_endpoint.auth_url, swift_endpoint.user, swift_endpoint.key
        )
        blobs = SwiftBlobStore(swift.object_store, up.backups_container, create_container=False)
        info = blobs.head(done.locationRef)
        assert info.size > 0
        assert info.size == sum(len(chunk) for chunk in blobs.get(done.locationRef))
        state_objects = swift.object_store.request(
            up.state_container, "GET", params={"format": "json"}
        ).json()
        assert any(created.id in entry["name"] for entry in state_objects)
    finally:
        mark = time.monotonic()
        trove.instances.delete(created.id)
        wait_until(
            lambda: created.id not in [i.id for i in trove.instances.list()],
            "the instance to be deleted",
            STEP_TIMEOUT,
        )
        timings["delete -> gone"] = time.monotonic() - mark
    wait_until(
        lambda: not processes_naming(str(up.data_dir / "compute"), besides=up.process.pid),
        "the instance's processes to end",
        30.0,
    )
    assert LocalCompute(up.data_dir / "compute", address_pool=POOL).list_servers() == []
    print("\n" + "; ".join(f"{k}: {v:.1f} s" for k, v in timings.items()))
