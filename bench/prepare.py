"""Prepare time per datastore: manager versus the raw binaries, measured in the same run.

- value: `Manager(volume, address, ...)` + `prepare(admin_password, [], [], {})`, which returns once
  the server accepts connections and the admin account is set; seconds, median of REPEATS.
- floor: a minimal script doing init + start of the same binary as the same user, with the same
  memory setting, until its socket accepts a connection (polled as often as the manager polls):
  MariaDB `mariadb-install-db` + `mariadbd`; PostgreSQL `initdb` + `postgres`; Redis a config file
  + `redis-server`. No admin account, no configuration rendering, no validation.
- goal: value <= 1.25 x floor + 0.15 s (issue #4); ratio = value / floor.

Servers bind loopback addresses in 127.20.250.0/24 on their standard ports; every process group
is killed and every directory removed, even when a run fails. Runs as root (datastores then run as
the unprivileged `troveless-db`, created if missing) or as an ordinary user.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from guest_agent.datastores.base import (
    ACCEPT_POLL_SECONDS,
    DatastoreManager,
    find_binary,
    kill_process_group,
)
from guest_agent.datastores.mariadb import MariaDBManager
from guest_agent.datastores.postgresql import PostgreSQLManager, postgres_bin_dirs
from guest_agent.datastores.redis import RedisManager

REPEATS = 3
RAM_MB = 256
RUN_AS = "troveless-db"
ADMIN_PASSWORD = "bench-admin-pass"
_USERADD_NAME_IN_USE = 9


def _run_as() -> pwd.struct_passwd | None:
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(RUN_AS)
    except KeyError:
        result = subprocess.run(
            ["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
             "--shell", "/usr/sbin/nologin", RUN_AS],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if result.returncode not in (0, _USERADD_NAME_IN_USE):
            raise RuntimeError(f"cannot create {RUN_AS}: {result.stderr.strip()}") from None
        return pwd.getpwnam(RUN_AS)


class _Scratch:
    """Volume directories and process groups of one benchmark run, all removed at the end."""

    def __init__(self, user: pwd.struct_passwd | None) -> None:
        self.user = user
        self.dirs: list[Path] = []
        self.groups: list[int] = []
        self._next_address = 0

    def volume(self) -> Path:
        path = Path(tempfile.mkdtemp(prefix="tl-bench-", dir="/tmp"))
        os.chmod(path, 0o755)
        self.dirs.append(path)
        return path

    def private_dir(self, path: Path) -> Path:
        path.mkdir(mode=0o700)
        if self.user is not None:
            os.chown(path, self.user.pw_uid, self.user.pw_gid)
        return path

    def address(self, port: int) -> str:
        while self._next_address < 250:
            self._next_address += 1
            address = f"127.20.250.{self._next_address}"
            with socket.socket() as probe:
                probe.settimeout(0.2)
                if probe.connect_ex((address, port)) != 0:
                    return address
        raise RuntimeError("no free address in 127.20.250.0/24")

    def popen(self, command: list[str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd="/",
                user=self.user.pw_uid if self.user else None,
                group=self.user.pw_gid if self.user else None,
                extra_groups=[] if self.user else None,
            )
        self.groups.append(proc.pid)
        return proc

    def cleanup(self) -> None:
        for pgid in self.groups:
            kill_process_group(pgid)
        for path in self.dirs:
            shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def _scratch() -> Iterator[_Scratch]:
    scratch = _Scratch(_run_as())
    try:
        yield scratch
    finally:
        scratch.cleanup()


def _wait_accept(path: Path, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with socket.socket(socket.AF_UNIX) as sock, contextlib.suppress(OSError):
            sock.connect(str(path))
            return
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{proc.args!r} did not accept on {path}")
        time.sleep(ACCEPT_POLL_SECONDS)


def _memory(cls: type[DatastoreManager], setting: str, scratch: _Scratch) -> int:
    """The memory setting the manager derives from RAM_MB, so the floor uses the same value."""
    run_as = scratch.user.pw_name if scratch.user else None
    return int(
        cls(Path("/tmp"), "127.0.0.1", run_as=run_as, ram_mb=RAM_MB).memory_settings()[setting]
    )


# --------------------------------------------------------------------------- floors
def _floor_mariadb(scratch: _Scratch) -> float:
    root = scratch.volume()
    data, run = scratch.private_dir(root / "data"), scratch.private_dir(root / "run")
    buffer_pool = _memory(MariaDBManager, "innodb_buffer_pool_size", scratch)
    address = scratch.address(3306)
    started = time.perf_counter()
    cnf = run / "my.cnf"
    cnf.write_text(
        "[mysqld]\n"
        f"datadir={data}\nsocket={run}/mysqld.sock\npid-file={run}/mysqld.pid\n"
        f"log-error={run}/error.log\nport=3306\nbind-address={address}\n"
        f"skip-name-resolve\ninnodb_buffer_pool_size={buffer_pool}\n"
    )
    install = scratch.popen(
        [
            find_binary("mariadb-install-db"),
            f"--defaults-file={cnf}",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
        ],
        run / "install.log",
    )
    if install.wait() != 0:
        raise RuntimeError("mariadb-install-db failed")
    server = scratch.popen([find_binary("mariadbd"), f"--defaults-file={cnf}"], run / "out.log")
    _wait_accept(run / "mysqld.sock", server)
    elapsed = time.perf_counter() - started
    kill_process_group(server.pid)
    server.wait()
    return elapsed


def _floor_postgresql(scratch: _Scratch) -> float:
    root = scratch.volume()
    data, run = scratch.private_dir(root / "data"), scratch.private_dir(root / "run")
    shared_buffers = _memory(PostgreSQLManager, "shared_buffers", scratch) // 1024
    address = scratch.address(5432)
    started = time.perf_counter()
    pwfile = run / "pw"
    pwfile.write_text(ADMIN_PASSWORD + "\n")
    if scratch.user is not None:
        os.chown(pwfile, scratch.user.pw_uid, scratch.user.pw_gid)
    initdb = scratch.popen(
        [
            find_binary("initdb", postgres_bin_dirs()),
            "-D", str(data), "-U", "postgres", f"--pwfile={pwfile}",
            "--auth-local=scram-sha-256", "--auth-host=scram-sha-256",
            "-E", "UTF8", "--locale=C.UTF-8", "-N",
        ],
        run / "initdb.log",
    )  # fmt: skip
    if initdb.wait() != 0:
        raise RuntimeError("initdb failed")
    server = scratch.popen(
        [
            find_binary("postgres", postgres_bin_dirs()),
            "-D", str(data),
            "-c", f"listen_addresses={address}",
            "-c", "port=5432",
            "-c", f"unix_socket_directories={run}",
            "-c", f"shared_buffers={shared_buffers}kB",
        ],
        run / "out.log",
    )  # fmt: skip
    _wait_accept(run / ".s.PGSQL.5432", server)
    elapsed = time.perf_counter() - started
    kill_process_group(server.pid)
    server.wait()
    return elapsed


def _floor_redis(scratch: _Scratch) -> float:
    root = scratch.volume()
    data, run = scratch.private_dir(root / "data"), scratch.private_dir(root / "run")
    maxmemory = _memory(RedisManager, "maxmemory", scratch)
    address = scratch.address(6379)
    started = time.perf_counter()
    conf = run / "redis.conf"
    conf.write_text(
        f"port 6379\nbind {address}\nunixsocket {run}/redis.sock\n"
        f'dir {data}\ndaemonize no\nappendonly yes\nsave ""\nmaxmemory {maxmemory}\n'
    )
    server = scratch.popen([find_binary("redis-server"), str(conf)], run / "out.log")
    _wait_accept(run / "redis.sock", server)
    elapsed = time.perf_counter() - started
    kill_process_group(server.pid)
    server.wait()
    return elapsed


# --------------------------------------------------------------------------- managers
def _manager_prepare(cls: type[DatastoreManager]) -> Callable[[_Scratch], float]:
    def measure(scratch: _Scratch) -> float:
        volume = scratch.volume()
        address = scratch.address(cls.default_port)
        run_as = scratch.user.pw_name if scratch.user else None
        started = time.perf_counter()  # constructor included: it is part of what the agent does
        manager = cls(volume, address, run_as=run_as, ram_mb=RAM_MB)
        manager.prepare(admin_password=ADMIN_PASSWORD, databases=[], users=[], overrides={})
        elapsed = time.perf_counter() - started
        pid = manager.server_pid()
        if pid is not None:
            scratch.groups.append(pid)
        manager.stop()
        return elapsed

    return measure


CASES: list[tuple[str, Callable[[_Scratch], float], Callable[[_Scratch], float]]] = [
    ("mariadb", _manager_prepare(MariaDBManager), _floor_mariadb),
    ("postgresql", _manager_prepare(PostgreSQLManager), _floor_postgresql),
    ("redis", _manager_prepare(RedisManager), _floor_redis),
]


def run() -> list[dict[str, Any]]:
    """Measure the figures; each row has figure, value, unit, goal, floor and ratio."""
    rows = []
    with _scratch() as scratch:
        for datastore, manager, floor in CASES:
            values, floors = [], []
            for _ in range(REPEATS):  # interleaved, so machine noise hits both alike
                floors.append(floor(scratch))
                values.append(manager(scratch))
            value, floor_value = statistics.median(values), statistics.median(floors)
            rows.append(
                {
                    "figure": f"prepare {datastore} (init + start until it accepts)",
                    "value": round(value, 3),
                    "unit": "s",
                    "goal": f"<= {1.25 * floor_value + 0.15:.3f}",
                    "floor": round(floor_value, 3),
                    "ratio": round(value / floor_value, 2),
                }
            )
    return rows


def _print_table(rows: list[dict[str, Any]]) -> None:
    columns = ["figure", "value", "unit", "goal", "floor", "ratio"]
    widths = {c: max(len(c), *(len(str(row[c])) for row in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(str(row[c]).ljust(widths[c]) for c in columns))


if __name__ == "__main__":
    _print_table(run())
