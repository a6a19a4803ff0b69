"""`troveless up` as a process, for the end-to-end suites: start it on either profile, wait
until it says it is up, stop it, and leave nothing behind.

`running_up` is the whole life of one process: a fresh data directory under /tmp (guests must
traverse it), on the openstack profile containers and a Zaqar project of its own on the
session's Swift and Zaqar (tests/integration/embedded_cloud.py `OpenStackPlace`); at the end
the process is stopped, every server it made is deleted, the data directory and log removed
and the Swift/Zaqar place emptied, whatever happened.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from keystoneauth1 import loading, session

from shared.adapters.local.compute import LocalCompute
from tests.integration.embedded_cloud import OpenStackPlace, OpenStackServers, openstack_place
from tests.servers.processes import free_port

REPO = Path(__file__).resolve().parents[2]
# Swift and Zaqar answer the openstack profile's first requests a little slower.
STARTUP_TIMEOUT = 60.0
STARTED_MARK = "OS_CLIENT_CONFIG_FILE="


def wait_until(condition: Callable[[], Any], what: str, timeout: float) -> Any:
    """Poll `condition` until it returns something true, and return that; AssertionError
    naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


@dataclass
class Up:
    """One running `troveless up`."""

    process: subprocess.Popen[bytes]
    data_dir: Path
    url: str
    clouds: Path
    log: Path
    place: OpenStackPlace | None = None  # the openstack profile's containers and Zaqar project

    @property
    def profile(self) -> str:
        return "local" if self.place is None else "openstack"

    def auth(self) -> dict[str, str]:
        return dict(yaml.safe_load(self.clouds.read_text())["clouds"]["troveless"]["auth"])

    def session(self) -> session.Session:
        auth = self.auth()
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
        """The end of what the process printed (for failure messages)."""
        return self.log.read_text(errors="replace")[-4000:]


def stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def delete_leftover_servers(data_dir: Path, pool: str) -> None:
    compute = LocalCompute(data_dir / "compute", address_pool=pool)
    for server in compute.list_servers():
        compute.delete_server(server.instance_id)


def start_up(
    data_dir: Path, port: int, pool: str, *extra: str, place: OpenStackPlace | None = None
) -> Up:
    """Start `troveless up` and wait until it says it is up (its output goes to a log file).
    `pool`: an address pool of its own, so parallel tests never hand out the same address.
    With `place`, the openstack profile on that place's containers and Zaqar project."""
    log = data_dir.parent / f"{data_dir.name}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TROVELESS_")}
    env.update(TROVELESS_HEARTBEAT_INTERVAL="0.5", TROVELESS_ADDRESS_POOL=pool)
    command = [sys.executable, "-m", "infra.cli.main", "up", "--data-dir", str(data_dir)]
    command += ["--port", str(port), *extra]
    if place is not None:
        env.update(place.variables())
        command += ["--profile", "openstack"]
    with log.open("ab") as out:
        start = out.tell()
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)

    def started() -> bool:
        with log.open("rb") as f:
            f.seek(start)
            return STARTED_MARK.encode() in f.read()

    try:
        wait_until(
            lambda: process.poll() is not None or started(),
            "troveless up to start",
            STARTUP_TIMEOUT,
        )
        assert process.poll() is None, log.read_text(errors="replace")[-3000:]
    except BaseException:
        stop_process(process)
        raise
    url = f"http://127.0.0.1:{port}"
    return Up(process, data_dir, url, data_dir / "clouds.yaml", log, place)


@contextlib.contextmanager
def fresh_data_dir(pool: str) -> Iterator[Path]:
    """A data directory under /tmp (guests must traverse it); emptied of servers at the end."""
    data_dir = Path(tempfile.mkdtemp(prefix="tl-e2e-up-", dir="/tmp"))
    try:
        yield data_dir
    finally:
        try:
            delete_leftover_servers(data_dir, pool)
        finally:
            shutil.rmtree(data_dir, ignore_errors=True)
            (data_dir.parent / f"{data_dir.name}.log").unlink(missing_ok=True)


@contextlib.contextmanager
def running_up(openstack: OpenStackServers | None, pool: str, *extra: str) -> Iterator[Up]:
    """`troveless up` (openstack profile on `openstack`'s servers when given) from start to a
    clean stop; see the module docstring."""
    with contextlib.ExitStack() as stack:
        place = None if openstack is None else stack.enter_context(openstack_place(openstack))
        data_dir = stack.enter_context(fresh_data_dir(pool))
        running = start_up(data_dir, free_port(), pool, *extra, place=place)
        try:
            yield running
        finally:
            stop_process(running.process)
