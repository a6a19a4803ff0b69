"""The interface every datastore manager implements, and what they share.

A manager drives one datastore server living on one instance volume (`data_dir`, the volume's
mount point). It owns this layout inside it:

    data/   the datastore's own files (mode 0700)
    conf/   rendered configuration, `overrides.json` (the persisted overrides), `prepared.json`
            (prepare finished) or `preparing.json` (a prepare started and did not finish)
    run/    sockets, the server's pid record `server.pid`, `intent` (running|stopped) and
            `restart_required` (override keys waiting for a restart)
    log/    the server's logs and the output of init commands

Processes. The server runs as `run_as` when the agent is root (datastores refuse to run as root),
otherwise as the agent's own user. It is started in a new session, with no pipe to the agent, so it
survives the agent: a restarted agent re-attaches through `run/server.pid` (pid + kernel start time,
so a reused pid is never mistaken for the server). `run/intent` records whether we want it running,
which is how `probe()` tells CRASHED (we did not stop it, it is gone) from SHUTDOWN; while this
manager prepares, starts or restarts the server, `probe()` says STARTING.

Admin password. The agent passes it to `prepare()` (or the constructor / `set_admin_password()`
after an agent restart; the agent keeps it encrypted in its own state). The manager holds it only
in memory, as a `SecretStr`, and never logs it. Passwords are sent to the datastores already
hashed (MariaDB native hash, PostgreSQL SCRAM verifier, Redis SHA-256), so no plaintext password
reaches a server, its logs or its replication stream.

Database, user, access and lifecycle commands are safe to repeat (a redelivered command finds its
work done); prepare() refuses a prepared volume (DatastoreAlreadyPreparedError). Names are checked
with `shared.rules.names` before anything reaches a server; overrides with the manager's
`parameters`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar

from pydantic import SecretStr

from guest_agent.datastores.logs import GuestLogSpec
from shared.errors import TrovelessError
from shared.models.configuration import ParameterType
from shared.observability import get_logger
from shared.rules.config_parameters import ParameterRule
from shared.rules.names import validate_password, validate_prepare_request

log = get_logger("guest_agent.datastores")

# Unix socket paths are limited by sun_path (108 bytes including the NUL).
MAX_SOCKET_PATH = 107
ACCEPT_POLL_SECONDS = 0.01
_UNSAFE_PATH = re.compile(r"[\s'\"#\\=]")


# --------------------------------------------------------------------------- errors
class DatastoreError(TrovelessError):
    """Something the datastore or its manager could not do; the message says what and why."""


class DatastoreStartError(DatastoreError):
    """The server exited, or did not accept connections, before its start deadline."""


class DatastoreCommandError(DatastoreError):
    """An init or maintenance command (mariadb-install-db, initdb...) failed."""


class DatastoreNotRunningError(DatastoreError):
    """The operation needs the server running and it is not."""


class DatastoreNotPreparedError(DatastoreError):
    """The volume holds no prepared datastore (prepare() never finished)."""


class DatastoreAlreadyPreparedError(DatastoreError):
    """prepare() was called on a volume that already holds a prepared datastore."""


class AdminPasswordMissingError(DatastoreError):
    """The manager has no admin password: the agent must pass it (set_admin_password)."""


class DatastoreOperationError(DatastoreError):
    """The server refused an operation (its message, never a secret, is kept)."""


class UnsupportedOperationError(DatastoreError):
    """The datastore has no such concept (e.g. per-database grants in Redis)."""


class OverrideRuleError(DatastoreError, ValueError):
    """A configuration override has an unknown key or a bad value; `key` names it."""

    def __init__(self, key: str, rule: str) -> None:
        self.key = key
        self.rule = rule
        super().__init__(f"overrides.{key}: {rule}")


# --------------------------------------------------------------------------- health
class DatastoreStatus(StrEnum):
    RUNNING = "RUNNING"  # a real connection and a trivial query succeeded
    SHUTDOWN = "SHUTDOWN"  # not running, and that is what we asked for (or never prepared)
    CRASHED = "CRASHED"  # not running although we did not stop it
    UNRESPONSIVE = "UNRESPONSIVE"  # the process is alive but a connection or query failed
    STARTING = "STARTING"  # this manager is preparing, starting or restarting it right now


@dataclass(frozen=True)
class DatastoreHealth:
    datastore: str
    status: DatastoreStatus
    detail: str
    pid: int | None = None
    restart_required: bool = False
    latency_ms: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "datastore": self.datastore,
            "status": self.status.value,
            "detail": self.detail,
            "pid": self.pid,
            "restart_required": self.restart_required,
            "latency_ms": self.latency_ms,
        }


# --------------------------------------------------------------------------- overrides
class ParameterKind(StrEnum):
    INT = "int"
    FLOAT = "float"
    BOOL = "bool"
    SIZE = "size"  # bytes; accepts 1024, "64M", "64MB", "512kB", "1G"
    ENUM = "enum"
    STRING = "string"  # free text that must fully match `pattern`


_SIZE = re.compile(r"\s*(\d+)\s*([kKmMgGtT]?)[bB]?\s*")
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_TRUE = {"1", "on", "true", "yes"}
_FALSE = {"0", "off", "false", "no"}

OverrideValue = int | float | bool | str


@dataclass(frozen=True)
class ConfigParameter:
    """One configuration key a tenant may override, with its type and range.

    `restart_required` says whether a new value needs a server restart; `default` is what a
    removed override reverts to when the datastore cannot reset a key to its default by itself.
    """

    name: str
    kind: ParameterKind
    restart_required: bool
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    default: OverrideValue | None = None
    pattern: str | None = None

    def coerce(self, value: object) -> OverrideValue:
        """The value in canonical form (int bytes for sizes...), or OverrideRuleError."""
        result: OverrideValue
        if self.kind is ParameterKind.BOOL:
            result = self._bool(value)
        elif self.kind is ParameterKind.ENUM:
            text = str(value).lower() if isinstance(value, str) else None
            if text not in self.choices:
                raise OverrideRuleError(self.name, f"must be one of {', '.join(self.choices)}")
            return text
        elif self.kind is ParameterKind.STRING:
            if not isinstance(value, str) or not re.fullmatch(self.pattern or "", value):
                raise OverrideRuleError(self.name, f"must match {self.pattern}")
            return value
        elif self.kind is ParameterKind.SIZE:
            result = self._size(value)
        elif self.kind is ParameterKind.INT:
            result = self._int(value)
        else:
            result = self._float(value)
        if not isinstance(result, bool) and isinstance(result, (int, float)):
            if self.minimum is not None and result < self.minimum:
                raise OverrideRuleError(self.name, f"must be at least {self.minimum:g}")
            if self.maximum is not None and result > self.maximum:
                raise OverrideRuleError(self.name, f"must be at most {self.maximum:g}")
        return result

    def _bool(self, value: object) -> bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise OverrideRuleError(self.name, "must be a boolean (true/false, on/off, 1/0)")

    def _int(self, value: object) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
            return int(value)
        raise OverrideRuleError(self.name, "must be an integer")

    def _float(self, value: object) -> float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                return float(value)
        raise OverrideRuleError(self.name, "must be a number")

    def _size(self, value: object) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        match = _SIZE.fullmatch(value) if isinstance(value, str) else None
        if match is None:
            raise OverrideRuleError(self.name, "must be a size in bytes, or with a unit: 64M, 1G")
        return int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]


def parameters_from_rules(rules: Mapping[str, ParameterRule]) -> dict[str, ConfigParameter]:
    """The guest's override table built from the control plane's rules, so both accept the
    same keys: integers in bytes become sizes, strings with a fixed list become enums."""
    table: dict[str, ConfigParameter] = {}
    for name, rule in rules.items():
        kind = {
            ParameterType.INTEGER: ParameterKind.SIZE
            if rule.unit == "bytes"
            else ParameterKind.INT,
            ParameterType.FLOAT: ParameterKind.FLOAT,
            ParameterType.BOOLEAN: ParameterKind.BOOL,
            ParameterType.STRING: ParameterKind.ENUM
            if rule.allowed_values
            else ParameterKind.STRING,
        }[rule.type]
        table[name] = ConfigParameter(
            name,
            kind,
            rule.restart_required,
            None if rule.min is None else float(rule.min),
            None if rule.max is None else float(rule.max),
            choices=rule.allowed_values or (),
            default=rule.default,
            pattern=rule.pattern,
        )
    return table


def validate_overrides(
    parameters: Mapping[str, ConfigParameter], overrides: object
) -> dict[str, OverrideValue]:
    """Check every key against `parameters`; return the values in canonical form."""
    if overrides is None:
        return {}
    if not isinstance(overrides, Mapping):
        raise OverrideRuleError("*", "overrides must be an object of key: value")
    out: dict[str, OverrideValue] = {}
    for key, value in overrides.items():
        parameter = parameters.get(key) if isinstance(key, str) else None
        if parameter is None:
            raise OverrideRuleError(str(key), "is not a configuration parameter we manage")
        out[key] = parameter.coerce(value)
    return out


# --------------------------------------------------------------------------- processes
@dataclass(frozen=True)
class RunAs:
    """The unix identity the datastore's processes run as."""

    name: str
    uid: int
    gid: int
    switch: bool  # True when we are root and must setuid to this user for every child

    @classmethod
    def resolve(cls, run_as: str | None) -> RunAs:
        euid = os.geteuid()
        if run_as is None:
            if euid == 0:
                raise DatastoreError(
                    "datastores refuse to run as root: pass run_as=<unprivileged user>"
                )
            entry = pwd.getpwuid(euid)
            return cls(entry.pw_name, entry.pw_uid, entry.pw_gid, switch=False)
        try:
            entry = pwd.getpwnam(run_as)
        except KeyError:
            raise DatastoreError(f"run_as user {run_as!r} does not exist") from None
        if entry.pw_uid == 0:
            raise DatastoreError("run_as must be an unprivileged user, not root")
        if euid not in (entry.pw_uid, 0):
            raise DatastoreError(f"only root can run datastores as another user ({run_as!r})")
        return cls(entry.pw_name, entry.pw_uid, entry.pw_gid, switch=entry.pw_uid != euid)

    def chown(self, path: Path) -> None:
        if self.switch:
            os.chown(path, self.uid, self.gid)

    def can_traverse(self, path: Path) -> bool:
        st = path.stat()
        if st.st_uid == self.uid:
            return bool(st.st_mode & stat.S_IXUSR)
        if st.st_gid == self.gid:
            return bool(st.st_mode & stat.S_IXGRP)
        return bool(st.st_mode & stat.S_IXOTH)


def process_start_time(pid: int) -> int | None:
    """The kernel start time (clock ticks since boot) of a live, non-zombie process, else None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = raw[raw.rindex(")") + 2 :].split()
    state, start_time = fields[0], int(fields[19])
    if state in ("Z", "X"):
        return None
    return start_time


def process_group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group `pgid`."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            raw = Path(entry.path, "stat").read_text()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        fields = raw[raw.rindex(")") + 2 :].split()
        if fields[0] not in ("Z", "X") and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def kill_process_group(pgid: int, timeout: float = 5.0) -> bool:
    """SIGKILL every process of group `pgid` and wait until none is left (True) or `timeout`."""
    if not process_group_members(pgid):
        return True
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    return wait_until(lambda: not process_group_members(pgid), time.monotonic() + timeout)


def wait_child(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """Wait for a child to exit (True); at `timeout`, SIGKILL its process group and reap it (False).

    A blocking wait returns the moment the child exits, where Popen.wait(timeout=...) polls with
    sleeps growing to 50 ms.
    """
    fired = threading.Event()

    def kill() -> None:
        fired.set()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)

    timer = threading.Timer(timeout, kill)
    timer.daemon = True
    timer.start()
    try:
        proc.wait()
    finally:
        timer.cancel()
    return not fired.is_set()


def wait_for_accept(
    target: Path | tuple[str, int],
    deadline: float,
    *,
    still_alive: Callable[[], bool] = lambda: True,
    ready: Callable[[], bool] = lambda: True,
) -> None:
    """Poll until `target` (a unix socket path or (host, port)) accepts a connection and
    `ready()` holds, before the monotonic `deadline`.

    Raises DatastoreStartError as soon as `still_alive()` turns False, or at the deadline.
    """
    while True:
        family = socket.AF_UNIX if isinstance(target, Path) else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(max(0.05, min(1.0, deadline - time.monotonic())))
            try:
                sock.connect(str(target) if isinstance(target, Path) else target)
                accepted = True
            except OSError:
                accepted = False
        if accepted and ready():
            return
        if not still_alive():
            raise DatastoreStartError(f"the server exited before accepting connections on {target}")
        if time.monotonic() >= deadline:
            raise DatastoreStartError(f"the server did not accept connections on {target} in time")
        time.sleep(ACCEPT_POLL_SECONDS)


def wait_until(condition: Callable[[], bool], deadline: float, interval: float = 0.01) -> bool:
    """Poll `condition` until it holds (True) or the monotonic `deadline` passes (False)."""
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def tail(path: Path, max_bytes: int = 2000) -> str:
    """The end of a log file, for error messages ('' when absent)."""
    try:
        with path.open("rb") as f:
            f.seek(max(0, path.stat().st_size - max_bytes))
            return f.read().decode(errors="replace").strip()
    except FileNotFoundError:
        return ""


def find_binary(name: str, preferred_dirs: tuple[str, ...] = ()) -> str:
    """Absolute path of a datastore binary: `preferred_dirs` first, then PATH and sbin."""
    search = [*preferred_dirs, os.environ.get("PATH", ""), "/usr/local/sbin:/usr/sbin:/sbin"]
    found = shutil.which(name, path=os.pathsep.join(p for p in search if p))
    if found is None:
        raise DatastoreError(f"{name} is not installed (looked in {', '.join(search)})")
    return found


def generate_password() -> str:
    """32 random characters from [A-Za-z0-9_-], which every datastore and client accepts as is."""
    return secrets.token_urlsafe(24)


# --------------------------------------------------------------------------- the manager
@dataclass
class _PidRecord:
    pid: int
    start_time: int


@dataclass
class _Layout:
    root: Path
    data: Path = field(init=False)
    conf: Path = field(init=False)
    run: Path = field(init=False)
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.data = self.root / "data"
        self.conf = self.root / "conf"
        self.run = self.root / "run"
        self.log = self.root / "log"


class DatastoreManager(ABC):
    """One datastore server on one instance volume. Subclasses: MariaDB, PostgreSQL, Redis."""

    datastore: ClassVar[str]
    default_port: ClassVar[int]
    parameters: ClassVar[Mapping[str, ConfigParameter]]  # overridable configuration keys
    stop_signal: ClassVar[signal.Signals] = signal.SIGTERM
    start_timeout: ClassVar[float] = 60.0  # crash recovery of a big volume can take a while
    stop_timeout: ClassVar[float] = 60.0

    def __init__(
        self,
        data_dir: Path,
        address: str,
        *,
        run_as: str | None = None,
        ram_mb: int = 1024,
        port: int | None = None,
        admin_password: str | None = None,
    ) -> None:
        if ram_mb < 16:
            raise DatastoreError(f"ram_mb must be at least 16 (got {ram_mb})")
        self.data_dir = Path(data_dir).absolute()
        if _UNSAFE_PATH.search(str(self.data_dir)):
            # The path is written into configuration files, unquoted where formats allow no quotes.
            raise DatastoreError(
                f"volume path {str(self.data_dir)!r} has whitespace, quotes, '#', '=' or '\\'"
            )
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise DatastoreError(f"address {address!r} is not an IP address") from None
        self.address = address
        self.port = port if port is not None else self.default_port
        self.ram_mb = ram_mb
        self.run_as = RunAs.resolve(run_as)
        self.layout = _Layout(self.data_dir)
        self._admin_password: SecretStr | None = None
        if admin_password is not None:
            self.set_admin_password(admin_password)
        self._process: subprocess.Popen[bytes] | None = None
        self._transition: str | None = None  # "preparing", "starting", "restarting"
        self._transitions_begun = 0  # lets a probe notice a transition that overlapped it
        self._lock = threading.RLock()
        socket_path = self.socket_path
        if len(os.fsencode(socket_path)) > MAX_SOCKET_PATH:
            raise DatastoreError(
                f"socket path {socket_path} is longer than {MAX_SOCKET_PATH} bytes: "
                "mount the volume at a shorter path"
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(data_dir={str(self.data_dir)!r}, address={self.address!r})"

    # ----------------------------------------------------------------- credentials
    def set_admin_password(self, password: str) -> None:
        """Give the manager the admin password (after an agent restart). Held in memory only."""
        validate_password(self.datastore, password, field="admin_password")
        self._admin_password = SecretStr(password)

    def _admin_secret(self) -> str:
        if self._admin_password is None:
            raise AdminPasswordMissingError(
                f"{self.datastore}: no admin password; the agent must call set_admin_password()"
            )
        return self._admin_password.get_secret_value()

    # ----------------------------------------------------------------- what subclasses provide
    @property
    @abstractmethod
    def socket_path(self) -> Path:
        """The server's unix socket (for PostgreSQL: the socket file inside its directory)."""

    @abstractmethod
    def memory_settings(self) -> dict[str, OverrideValue]:
        """Configuration derived from `ram_mb` (buffer pool, shared buffers, maxmemory)."""

    @abstractmethod
    def _render_config(self, settings: Mapping[str, OverrideValue]) -> None:
        """Write the configuration files for memory settings + overrides (`settings`)."""

    @abstractmethod
    def _initialize(self, admin_password: str) -> None:
        """Create the datastore's files in data/ with the admin account (server not running)."""

    @abstractmethod
    def _server_command(self) -> list[str]: ...

    @abstractmethod
    def _after_first_start(self, admin_password: str) -> None:
        """Finish securing the fresh server (drop default accounts...)."""

    @abstractmethod
    def _probe_query(self, timeout: float) -> None:
        """Connect as admin and run a trivial query; raise on any failure."""

    @abstractmethod
    def _apply_live(self, changed: Mapping[str, OverrideValue | None]) -> set[str]:
        """Apply changed settings (None: back to default) to the running server.

        Returns the keys that only take effect after a restart.
        """

    def _is_ready(self) -> bool:
        """Extra readiness check once the socket accepts (PostgreSQL reads its pid file)."""
        return True

    # ----------------------------------------------------------------- files
    def _write_file(
        self, path: Path, text: str, mode: int = 0o600, *, durable: bool = True
    ) -> None:
        """Atomically replace `path`, owned by the datastore's user. `durable=False` skips the
        fsync, for run/ state that means nothing after a host crash anyway."""
        tmp = path.with_name(f".{path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            os.write(fd, text.encode())
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, mode)
        self.run_as.chown(tmp)
        os.replace(tmp, path)

    def _make_layout(self) -> None:
        if not self.data_dir.is_dir():
            raise DatastoreError(f"volume directory {self.data_dir} does not exist")
        if self.run_as.switch:
            for parent in [self.data_dir, *self.data_dir.parents]:
                if not self.run_as.can_traverse(parent):
                    raise DatastoreError(
                        f"{parent} is not traversable by {self.run_as.name}: "
                        "every parent of the volume must allow it (mode 0755)"
                    )
        for directory in (self.layout.data, self.layout.conf, self.layout.run, self.layout.log):
            directory.mkdir(mode=0o700, exist_ok=True)
            os.chmod(directory, 0o700)
            self.run_as.chown(directory)

    def _read_json(self, path: Path, default: Any) -> Any:
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return default

    @property
    def _prepared_marker(self) -> Path:
        return self.layout.conf / "prepared.json"

    def is_prepared(self) -> bool:
        marker = self._read_json(self._prepared_marker, None)
        if marker is None:
            return False
        if marker.get("datastore") != self.datastore:
            raise DatastoreError(
                f"{self.data_dir} holds a {marker.get('datastore')} datastore, not {self.datastore}"
            )
        return True

    def _require_prepared(self) -> None:
        if not self.is_prepared():
            raise DatastoreNotPreparedError(f"{self.data_dir} holds no prepared {self.datastore}")

    def overrides(self) -> dict[str, OverrideValue]:
        """The persisted overrides."""
        stored: dict[str, OverrideValue] = self._read_json(self.layout.conf / "overrides.json", {})
        return stored

    def effective_settings(self) -> dict[str, OverrideValue]:
        """Memory settings from the flavor, then the overrides on top."""
        return {**self.memory_settings(), **self.overrides()}

    def _save_overrides(self, overrides: Mapping[str, OverrideValue]) -> None:
        self._write_file(self.layout.conf / "overrides.json", json.dumps(dict(overrides), indent=1))

    def _pending_restart(self) -> set[str]:
        return set(self._read_json(self.layout.run / "restart_required", []))

    def _set_pending_restart(self, keys: set[str]) -> None:
        path = self.layout.run / "restart_required"
        if keys:
            self._write_file(path, json.dumps(sorted(keys)), durable=False)
        else:
            path.unlink(missing_ok=True)

    def _intent(self) -> str:
        try:
            return (self.layout.run / "intent").read_text().strip()
        except FileNotFoundError:
            return "stopped"

    def _set_intent(self, intent: str) -> None:
        self._write_file(self.layout.run / "intent", intent, durable=False)

    # ----------------------------------------------------------------- process tracking
    def _read_pid_record(self) -> _PidRecord | None:
        try:
            pid, start_time = (self.layout.run / "server.pid").read_text().split()
            return _PidRecord(int(pid), int(start_time))
        except (FileNotFoundError, ValueError):
            return None

    def server_pid(self) -> int | None:
        """The pid of the live server process, or None."""
        record = self._read_pid_record()
        if record is None:
            return None
        if self._process is not None and self._process.pid == record.pid:
            return record.pid if self._process.poll() is None else None
        return record.pid if process_start_time(record.pid) == record.start_time else None

    def is_running(self) -> bool:
        """Whether the server process is alive (a pid check; probe() makes a real connection)."""
        return self.server_pid() is not None

    def _spawn(self, command: list[str], log_name: str) -> subprocess.Popen[bytes]:
        with (self.layout.log / log_name).open("ab") as out:
            self.run_as.chown(self.layout.log / log_name)
            return subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.layout.run,
                env=self._child_env(),
                start_new_session=True,  # survive the agent; one group to kill
                close_fds=True,
                user=self.run_as.uid if self.run_as.switch else None,
                group=self.run_as.gid if self.run_as.switch else None,
                extra_groups=[] if self.run_as.switch else None,
            )

    def _child_env(self) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "LANG": "C.UTF-8",
            "HOME": str(self.layout.run),
            "TZ": "UTC",
        }

    def _run_command(self, command: list[str], log_name: str, timeout: float = 300) -> None:
        """Run an init/maintenance command as the datastore's user; raise with its output's tail."""
        proc = self._spawn(command, log_name)
        if not wait_child(proc, timeout):
            raise DatastoreCommandError(f"{command[0]} did not finish in {timeout:g}s")
        code = proc.returncode
        if code != 0:
            raise DatastoreCommandError(
                f"{Path(command[0]).name} failed with exit code {code}: "
                f"{tail(self.layout.log / log_name, 800)}"
            )

    @staticmethod
    def _kill_group(pgid: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)

    # ----------------------------------------------------------------- lifecycle
    def prepare(
        self,
        *,
        admin_password: str,
        databases: list[dict[str, Any]],
        users: list[dict[str, Any]],
        overrides: dict[str, Any],
    ) -> None:
        """Initialise the datastore on the volume, start it, create databases and users.

        Everything is validated first. A failed prepare stops the server again; calling prepare
        again wipes what the failed attempt left in data/ and starts over (files in data/ that no
        prepare of ours left are never wiped: DatastoreError).
        """
        started = time.monotonic()
        with self._lock, self._in_transition("preparing"):
            validate_password(self.datastore, admin_password, field="admin_password")
            checked_overrides = validate_overrides(self.parameters, overrides)
            dbs, checked_users = self._validate_prepare_request(databases, users)
            if self.is_prepared():
                raise DatastoreAlreadyPreparedError(
                    f"{self.data_dir} already holds a prepared {self.datastore}"
                )
            self._admin_password = SecretStr(admin_password)
            self._make_layout()
            attempt = self.layout.conf / "preparing.json"
            if any(self.layout.data.iterdir()) and not attempt.exists():
                raise DatastoreError(
                    f"{self.layout.data} holds files no prepare of ours left: refusing to wipe them"
                )
            self._write_file(attempt, json.dumps({"datastore": self.datastore}))
            self._discard_failed_attempt()
            try:
                self._save_overrides(checked_overrides)
                self._render_config(self.effective_settings())
                self._initialize(admin_password)
                self._start_server()
                self._after_first_start(admin_password)
                for db in dbs:
                    self.create_database(db["name"], db["character_set"], db["collate"])
                for user in checked_users:
                    self.create_user(
                        user["name"], user["password"], user["host"], user["databases"]
                    )
            except BaseException:
                self._stop_server()
                raise
            self._write_file(
                self._prepared_marker,
                json.dumps({"datastore": self.datastore, "prepared_at": time.time()}),
            )
            attempt.unlink()
        log.info(
            "datastore prepared",
            extra={
                "datastore": self.datastore,
                "data_dir": str(self.data_dir),
                "seconds": round(time.monotonic() - started, 3),
                "databases": len(dbs),
                "users": len(checked_users),
            },
        )

    def _validate_prepare_request(
        self, databases: object, users: object
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        return validate_prepare_request(self.datastore, databases, users)

    def _discard_failed_attempt(self) -> None:
        """Stop a server a failed prepare left behind and empty data/ and run/."""
        self._stop_server()
        for directory in (self.layout.data, self.layout.run):
            for child in directory.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()

    @contextlib.contextmanager
    def _in_transition(self, what: str) -> Iterator[None]:
        """Let probe() report STARTING instead of the in-between states of a lifecycle step."""
        outer = self._transition
        self._transition = outer or what
        self._transitions_begun += 1
        try:
            yield
        finally:
            self._transition = outer

    def start(self) -> None:
        """Start the server (re-rendering its configuration) and wait until it accepts."""
        with self._lock, self._in_transition("starting"):
            self._require_prepared()
            if self.is_running():
                self._set_intent("running")
                return
            record = self._read_pid_record()
            if record is not None:
                # A crashed server may leave children (PostgreSQL backends) holding its resources.
                kill_process_group(record.pid)
            self._render_config(self.effective_settings())
            self._start_server()
            self._set_pending_restart(set())

    def _start_server(self) -> None:
        started = time.monotonic()
        proc = self._spawn(self._server_command(), f"{self.datastore}.out")
        self._process = proc
        start_time = process_start_time(proc.pid)
        record = f"{proc.pid} {start_time or 0}\n"
        self._write_file(self.layout.run / "server.pid", record, durable=False)
        self._set_intent("running")
        try:
            wait_for_accept(
                self.socket_path,
                time.monotonic() + self.start_timeout,
                still_alive=lambda: proc.poll() is None,
                ready=self._is_ready,
            )
        except DatastoreStartError as exc:
            self._kill_group(proc.pid)
            proc.wait()
            raise DatastoreStartError(f"{self.datastore}: {exc}: {self._log_tail()}") from None
        log.info(
            "datastore started",
            extra={
                "datastore": self.datastore,
                "pid": proc.pid,
                "seconds": round(time.monotonic() - started, 3),
            },
        )

    def _log_tail(self) -> str:
        return tail(self.layout.log / f"{self.datastore}.out", 800)

    def stop(self) -> None:
        """Stop the server cleanly (escalating to SIGKILL after stop_timeout)."""
        with self._lock:
            self._stop_server()

    def _stop_server(self) -> None:
        if self.layout.run.is_dir():
            self._set_intent("stopped")
        record = self._read_pid_record()
        pid = self.server_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, self.stop_signal)
            if not self._wait_exit(pid, self.stop_timeout):
                log.warning(
                    "datastore did not stop in time; killed it",
                    extra={"datastore": self.datastore, "pid": pid},
                )
        if record is not None:
            # Children (PostgreSQL backends, Redis forks) must not outlive their server.
            if not kill_process_group(record.pid):
                log.warning(
                    "processes of the datastore's group survived SIGKILL",
                    extra={"datastore": self.datastore, "pgid": record.pid},
                )
            (self.layout.run / "server.pid").unlink(missing_ok=True)
            log.info("datastore stopped", extra={"datastore": self.datastore, "pid": record.pid})
        if self._process is not None:
            self._process.poll()
            self._process = None

    def _wait_exit(self, pid: int, timeout: float) -> bool:
        """Wait for the server to exit; after `timeout`, SIGKILL its group (and return False)."""
        proc = self._process
        if proc is not None and proc.pid == pid:
            return wait_child(proc, timeout)
        # Not our child (started by an agent before a restart): all we can do is look.
        if wait_until(lambda: process_start_time(pid) is None, time.monotonic() + timeout):
            return True
        self._kill_group(pid)
        wait_until(lambda: process_start_time(pid) is None, time.monotonic() + 10)
        return False

    def restart(self) -> None:
        with self._lock, self._in_transition("restarting"):
            self._stop_server()
            self.start()

    def probe(self, timeout: float = 2.0) -> DatastoreHealth:
        """Health from a real connection and a trivial query (within `timeout` seconds).

        RUNNING: it answered. UNRESPONSIVE: the process lives but did not answer. CRASHED: the
        process is gone although nobody stopped it. SHUTDOWN: stopped (or never prepared).
        STARTING: this manager is preparing, starting or restarting it right now. Safe to call
        from another thread while a command runs.
        """
        pending = bool(self._pending_restart()) if self.layout.run.is_dir() else False

        def health(status: DatastoreStatus, detail: str, **kw: Any) -> DatastoreHealth:
            return DatastoreHealth(self.datastore, status, detail, restart_required=pending, **kw)

        transition = self._transition
        if transition is not None:
            return health(DatastoreStatus.STARTING, transition, pid=self.server_pid())
        if not self._prepared_marker.exists():
            return health(DatastoreStatus.SHUTDOWN, "not prepared")
        record = self._read_pid_record()
        pid = self.server_pid()
        intent = self._intent()
        if pid is None:
            if intent == "running":
                exit_code = self._process.poll() if self._process is not None else None
                how = f" (exit code {exit_code})" if exit_code is not None else ""
                gone = f"process {record.pid}" if record else "the server process"
                return health(DatastoreStatus.CRASHED, f"{gone} exited without being stopped{how}")
            return health(DatastoreStatus.SHUTDOWN, "stopped")
        if intent != "running":
            return health(DatastoreStatus.SHUTDOWN, "stopping", pid=pid)
        if self._admin_password is None:
            return health(
                DatastoreStatus.RUNNING, "process alive; no admin password to query with", pid=pid
            )
        started = time.monotonic()
        transitions = self._transitions_begun
        try:
            self._probe_query(timeout)
        except Exception as exc:  # any failure to answer is the finding, not an error
            if self._transitions_begun != transitions or self._transition is not None:
                # A restart began while we asked: its doing, not the server's failure.
                return health(DatastoreStatus.STARTING, self._transition or "restarted", pid=pid)
            if self._intent() != "running":
                return health(DatastoreStatus.SHUTDOWN, "stopping", pid=pid)  # stop() overlapped
            return health(
                DatastoreStatus.UNRESPONSIVE, f"{type(exc).__name__}: {exc}"[:500], pid=pid
            )
        latency = round((time.monotonic() - started) * 1000, 1)
        return health(DatastoreStatus.RUNNING, "answered a query", pid=pid, latency_ms=latency)

    # ----------------------------------------------------------------- overrides
    def update_overrides(self, overrides: dict[str, Any]) -> bool:
        """Replace the persisted overrides with `overrides` (a configuration group: the whole set;
        `{}` removes them all) and apply what can be applied live.

        Returns True when some change only takes effect after restart() (also reported by
        probe().restart_required until then).
        """
        with self._lock:
            new = validate_overrides(self.parameters, overrides)
            old = self.overrides()
            before = self.effective_settings()
            self._save_overrides(new)
            after = self.effective_settings()
            changed = {
                key: after.get(key)
                for key in sorted(set(before) | set(after))
                if before.get(key) != after.get(key)
            }
            if not self.is_prepared():
                return False
            self._render_config(after)
            if not changed or not self.is_running():
                return bool(self._pending_restart()) and self.is_running()
            try:
                needs_restart = self._apply_live(changed) | self._pending_restart()
            except Exception:
                # The server refused a value: keep the old configuration, on disk and live.
                self._save_overrides(old)
                self._render_config(before)
                with contextlib.suppress(Exception):
                    self._apply_live({key: before.get(key) for key in changed})
                raise
            self._set_pending_restart(needs_restart)
            log.info(
                "overrides updated",
                extra={
                    "datastore": self.datastore,
                    "changed": sorted(changed),
                    "restart_required": sorted(needs_restart),
                },
            )
            return bool(needs_restart)

    # ----------------------------------------------------------------- volume
    def volume_info(self) -> dict[str, Any]:
        """Size and use of the filesystem holding the volume, in bytes."""
        st = os.statvfs(self.data_dir)
        total = st.f_blocks * st.f_frsize
        used = (st.f_blocks - st.f_bfree) * st.f_frsize
        return {
            "path": str(self.data_dir),
            "total_bytes": total,
            "used_bytes": used,
            "free_bytes": st.f_bavail * st.f_frsize,
        }

    @abstractmethod
    def admin_connection_info(self) -> dict[str, Any]:
        """How the agent reaches the server as admin (socket, address, port, user; no password)."""

    # ----------------------------------------------------------------- databases and users
    @abstractmethod
    def create_database(
        self, name: str, character_set: str | None = None, collate: str | None = None
    ) -> None: ...

    @abstractmethod
    def delete_database(self, name: str) -> None: ...

    @abstractmethod
    def list_databases(self) -> list[dict[str, Any]]: ...

    @abstractmethod
    def create_user(
        self, name: str, password: str, host: str = "%", databases: list[str] | None = None
    ) -> None: ...

    @abstractmethod
    def delete_user(self, name: str, host: str = "%") -> None: ...

    @abstractmethod
    def list_users(self) -> list[dict[str, Any]]: ...

    @abstractmethod
    def change_password(self, name: str, password: str, host: str = "%") -> None: ...

    @abstractmethod
    def grant_access(self, user: str, databases: list[str], host: str = "%") -> None: ...

    @abstractmethod
    def revoke_access(self, user: str, database: str, host: str = "%") -> None: ...

    @abstractmethod
    def list_access(self, user: str, host: str = "%") -> list[str]: ...

    @abstractmethod
    def enable_root(self) -> str:
        """Enable the datastore's root account with a new generated password, returned once."""

    @abstractmethod
    def root_enabled(self) -> bool: ...

    def disable_root(self) -> None:
        """Disable the root account enable_root() made (safe to repeat)."""
        raise UnsupportedOperationError(f"{self.datastore} cannot disable root")

    # ----------------------------------------------------------------- guest logs
    # The logs a tenant can list, switch and publish (see `guest_agent.datastores.logs`).
    guest_logs: ClassVar[Mapping[str, GuestLogSpec]] = {}

    def log_enabled(self, name: str) -> bool:
        """Whether the USER log `name` is on (SYS logs always are)."""
        raise UnsupportedOperationError(f"{self.datastore} has no switchable log {name!r}")

    def set_log_enabled(self, name: str, enabled: bool) -> None:
        """Switch the USER log `name` on or off, live."""
        raise UnsupportedOperationError(f"{self.datastore} has no switchable log {name!r}")

    def _require_running(self) -> None:
        if not self.is_running():
            raise DatastoreNotRunningError(f"{self.datastore} is not running")
