"""`troveless up --profile openstack`: what only the openstack profile has to show.

The lifecycle and error paths through troveclient and openstacksdk run on both profiles in
test_up_and_clients.py; here, on the same kind of process (tests/e2e/up_process.py), what is
particular to Swift and Zaqar: the Swift key is never printed; a MariaDB instance gets a
database and a user, takes a row over PyMySQL and is backed up, and the backup object is then
read back from Swift by a client of our own; the instance's records are objects in the state
container; after the delete nothing of the instance runs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymysql
import pytest
from troveclient.v1 import client as trove_client

from shared.adapters.local.compute import LocalCompute
from shared.adapters.openstack.swift_blob_store import SwiftBlobStore
from tests.e2e.up_process import Up, running_up, wait_until
from tests.integration.embedded_cloud import servers_for

pytestmark = [pytest.mark.slow, pytest.mark.datastore]

if shutil.which("mariadbd", path="/usr/sbin:/usr/bin") is None:
    pytest.skip("mariadb-server is not installed", allow_module_level=True)
if os.geteuid() != 0:
    pytest.skip("loop mounts and cgroups need root", allow_module_level=True)

STEP_TIMEOUT = 90.0
POOL = "127.10.59.0/24"
PASSWORD = "Maria-pass-123"


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


@pytest.fixture(scope="module")
def openstack_up(request: pytest.FixtureRequest) -> Iterator[Up]:
    """`troveless up --profile openstack` on containers and a Zaqar project of its own."""
    with running_up(servers_for(request, "openstack"), POOL, "--stop-servers") as running:
        yield running


def test_instance_lifecycle_and_backup_on_swift_and_zaqar(openstack_up: Up) -> None:
    up = openstack_up
    assert up.place is not None
    assert "profile: openstack" in up.output()
    assert up.place.servers.swift.key not in up.output()  # the Swift key is never printed
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
        # The guest wrote the backup into Swift: read it back there, by a client of our own.
        object_store = up.place.swift_object_store()
        blobs = SwiftBlobStore(object_store, up.place.backups_container, create_container=False)
        info = blobs.head(done.locationRef)
        assert info.size > 0
        assert info.size == sum(len(chunk) for chunk in blobs.get(done.locationRef))
        state_objects = object_store.request(
            up.place.state_container, "GET", params={"format": "json"}
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
