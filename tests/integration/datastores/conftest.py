"""Fixtures for the datastore manager tests: real mariadbd, postgres and redis-server processes.

Each server gets its own volume directory under /tmp (pytest's tmp_path lives under a 0700
directory the datastore user cannot traverse) and its own loopback address in 127.20.0.0/16, so
tests, parallel runs and other suites (127.10.x.x) never collide on the standard ports. Every
server's process group is killed and every directory removed at teardown, even after a failure.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from guest_agent.datastores.base import (
    DatastoreError,
    DatastoreManager,
    find_binary,
    kill_process_group,
    process_group_members,
)
from guest_agent.datastores.postgresql import postgres_bin_dirs

RUN_AS = "troveless-db"
ADMIN_PASSWORD = "admin-Secret-42"
RAM_MB = 128  # small memory settings: several servers share a 2-core test machine
_USERADD_NAME_IN_USE = 9

_addresses = itertools.count()
SERVER_BINARIES = {
    "mariadb": ("mariadbd", ()),
    "postgresql": ("postgres", postgres_bin_dirs()),
    "redis": ("redis-server", ()),
}


def ensure_run_as_user() -> str | None:
    """The unprivileged user datastores run as when tests run as root (created once)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(RUN_AS)
    except KeyError:
        result = subprocess.run(
            ["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
             "--shell", "/usr/sbin/nologin", RUN_AS],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if result.returncode not in (0, _USERADD_NAME_IN_USE):
            pytest.fail(f"cannot create {RUN_AS}: {result.stderr}")
    return RUN_AS


def unique_address(port: int) -> str:
    """A loopback address in 127.20.0.0/16 where nothing listens on `port`."""
    base = os.getpid() % 200
    for _ in range(250):
        n = next(_addresses)
        address = f"127.20.{(base + n // 250) % 250 + 1}.{n % 250 + 1}"
        with socket.socket() as probe:
            probe.settimeout(0.2)
            if probe.connect_ex((address, port)) != 0:
                return address
    raise RuntimeError("no free loopback address in 127.20.0.0/16")


def listening(address: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.2)
        return probe.connect_ex((address, port)) == 0


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.fixture(scope="session")
def run_as() -> str | None:
    return ensure_run_as_user()


class ManagerFactory:
    """Builds managers on fresh volume directories; `cleanup()` kills and removes everything."""

    def __init__(self, run_as: str | None) -> None:
        self.run_as = run_as
        self.made: list[tuple[DatastoreManager, Path]] = []

    def __call__(self, cls: type[DatastoreManager], **kwargs: Any) -> Any:
        binary, preferred = SERVER_BINARIES[cls.datastore]
        try:
            find_binary(binary, preferred)
        except DatastoreError:
            pytest.skip(f"{binary} is not installed")
        volume = Path(tempfile.mkdtemp(prefix=f"tl-{cls.datastore[:5]}-", dir="/tmp"))
        os.chmod(volume, 0o755)
        address = kwargs.pop("address", None) or unique_address(cls.default_port)
        ram_mb = kwargs.pop("ram_mb", RAM_MB)
        manager = cls(volume, address, run_as=self.run_as, ram_mb=ram_mb, **kwargs)
        self.made.append((manager, volume))
        return manager

    def cleanup(self) -> None:
        for manager, volume in self.made:
            record = volume / "run" / "server.pid"
            pgid = int(record.read_text().split()[0]) if record.exists() else None
            with contextlib.suppress(Exception):
                manager.stop()
            if pgid is not None:
                kill_process_group(pgid)
            shutil.rmtree(volume, ignore_errors=True)


@pytest.fixture
def make_manager(run_as: str | None) -> Iterator[ManagerFactory]:
    factory = ManagerFactory(run_as)
    try:
        yield factory
    finally:
        factory.cleanup()


@pytest.fixture(scope="module")
def make_module_manager(run_as: str | None) -> Iterator[ManagerFactory]:
    """Like make_manager, for servers shared by the tests of one module."""
    factory = ManagerFactory(run_as)
    try:
        yield factory
    finally:
        factory.cleanup()


def assert_no_process_left(pgid: int) -> None:
    assert wait_for(lambda: not process_group_members(pgid), 5), process_group_members(pgid)


def assert_no_plaintext(volume: Path, captured_output: str, passwords: list[str]) -> None:
    """No password appears in clear on the volume (data, WAL, logs, configs) or in our logs."""
    for password in passwords:
        assert password not in captured_output
    for path in volume.rglob("*"):
        if path.is_file() and not path.is_socket():
            content = path.read_bytes()
            for password in passwords:
                assert password.encode() not in content, f"{password!r} in clear in {path}"
