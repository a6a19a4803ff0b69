"""The local compute driver: the embedded cloud's "virtual machines".

A server here is, for one database instance:
- a **volume**: an ext4 image loop-mounted at `<root>/servers/<instance>/data` (or a plain
  directory with a soft quota where loop mounts are impossible);
- an **address** of its own in 127.0.0.0/8, so its datastore listens on the standard port;
- a **zone** from the configured list;
- **limits** from the flavor, through a cgroup that also tracks every process of the server;
- the **guest agent** process, run as an unprivileged system user in a session of its own,
  configured by a user-data file only that user can read (as cloud-init would hand it over),
  with the server's facts in a meta-data file beside it (as a config drive would).

Servers outlive the control plane: each server's bookkeeping lives in its own directory
(`server.json`, like a hypervisor's records), so a new `LocalCompute` re-adopts what runs.
Two control-plane processes may share a root: per-instance file locks serialise changes to one
server, and address claims are O_EXCL files.

Layout of `root`:
    servers/<instance>/server.json   the record (root-owned)
    servers/<instance>/user-data.json   0600, owned by the guest user
    servers/<instance>/meta-data.json   0644: address, zone, flavor, volume
    servers/<instance>/agent.log    the agent's stdout/stderr
    servers/<instance>/volume.img   the volume image (loop kind)
    servers/<instance>/data/        the mounted volume, the guest's own (0700)
    volumes/<volume_id>.img|.dir    volumes kept by delete_server(keep_volume=True)
    addresses/<ip>                  address claims
    locks/<instance>.lock           per-instance locks
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil

from shared.adapters.guest_sections import with_guest_sections
from shared.adapters.local import volumes
from shared.adapters.local.addresses import DEFAULT_ADDRESS_POOL, AddressPool
from shared.adapters.local.cgroups import DEFAULT_CGROUP_PARENT, CgroupManager, ServerCgroups
from shared.adapters.local.system_user import (
    DEFAULT_GUEST_USER,
    SystemUser,
    SystemUserError,
    ensure_system_user,
)
from shared.clock import SystemClock
from shared.errors import ComputeError, ComputeRequestError, NotFoundError, TrovelessError
from shared.observability import get_logger
from shared.ports import JSON, Clock, FlavorLike, FlavorSpec, ServerInfo, ServerStatus
from shared.settings import Settings

log = get_logger("local-compute")

SERVER_RECORD = "server.json"
USER_DATA_FILE = "user-data.json"
META_DATA_FILE = "meta-data.json"
AGENT_LOG = "agent.log"
VOLUME_IMAGE = "volume.img"
DATA_DIR = "data"
# Every process of a server inherits this variable: the fallback to find them without cgroups.
INSTANCE_ENV = "TROVELESS_INSTANCE_ID"
META_DATA_ENV = "TROVELESS_META_DATA"
USER_DATA_PLACEHOLDER = "{user_data}"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_RECORD_SCHEMA = 1
_POLL = 0.02


def default_agent_command() -> list[str]:
    return [sys.executable, "-m", "guest_agent", "--user-data", USER_DATA_PLACEHOLDER]


# Agents started by this process, so their exit is reaped (no zombies) and seen at once.
_children: dict[int, subprocess.Popen[bytes]] = {}
_children_lock = threading.Lock()


@dataclass
class _ServerRecord:
    """What server.json holds."""

    server_id: str
    instance_id: str
    status: ServerStatus
    status_reason: str | None
    address: str
    zone: str
    flavor: FlavorSpec
    volume_id: str
    volume_gb: int
    volume_kind: str
    user: str
    created_at: datetime
    cgroups: ServerCgroups | None = None
    limits_enforced: bool = False
    limits_note: str | None = "not booted yet"
    agent_pid: int | None = None
    agent_started: float | None = None  # the agent's process start time, against pid reuse

    def to_json(self) -> JSON:
        return {
            "schema": _RECORD_SCHEMA,
            "server_id": self.server_id,
            "instance_id": self.instance_id,
            "status": self.status.value,
            "status_reason": self.status_reason,
            "address": self.address,
            "zone": self.zone,
            "flavor": {"ram_mb": self.flavor.ram_mb, "vcpus": self.flavor.vcpus},
            "volume": {"id": self.volume_id, "gb": self.volume_gb, "kind": self.volume_kind},
            "user": self.user,
            "created_at": self.created_at.isoformat(),
            "cgroups": self.cgroups.to_json() if self.cgroups else None,
            "limits": {"enforced": self.limits_enforced, "note": self.limits_note},
            "agent": {"pid": self.agent_pid, "started": self.agent_started},
        }

    @classmethod
    def from_json(cls, data: JSON) -> _ServerRecord:
        return cls(
            server_id=data["server_id"],
            instance_id=data["instance_id"],
            status=ServerStatus(data["status"]),
            status_reason=data.get("status_reason"),
            address=data["address"],
            zone=data["zone"],
            flavor=FlavorSpec(**data["flavor"]),
            volume_id=data["volume"]["id"],
            volume_gb=int(data["volume"]["gb"]),
            volume_kind=data["volume"]["kind"],
            user=data["user"],
            created_at=datetime.fromisoformat(data["created_at"]),
            cgroups=ServerCgroups.from_json(data["cgroups"]) if data.get("cgroups") else None,
            limits_enforced=bool(data["limits"]["enforced"]),
            limits_note=data["limits"]["note"],
            agent_pid=data["agent"]["pid"],
            agent_started=data["agent"]["started"],
        )


class LocalCompute:
    """The Compute port on this machine (needs root: mounts, cgroups, switching users).

    `force_directory_volumes` skips loop mounts even where they work (tests, or hosts where
    the operator prefers it). `agent_command` is an argv in which "{user_data}" is replaced by
    the user-data file's path; the agent also finds the meta-data file beside it (and in
    $TROVELESS_META_DATA). `stop_grace_seconds` is how long a stopping agent gets to shut its
    datastore down before everything left in the server is killed. `guest_sections` are
    user-data sections added to every guest's (how it reaches its queues and blobs).
    """

    def __init__(
        self,
        root: Path,
        *,
        zones: Sequence[str] = ("az1",),
        address_pool: str = DEFAULT_ADDRESS_POOL,
        guest_user: str = DEFAULT_GUEST_USER,
        agent_command: Sequence[str] | None = None,
        agent_env: Mapping[str, str] | None = None,
        cgroup_parent: str = DEFAULT_CGROUP_PARENT,
        cgroups: CgroupManager | None = None,
        force_directory_volumes: bool = False,
        stop_grace_seconds: float = 10.0,
        kill_grace_seconds: float = 2.0,
        busy_unmount_timeout: float = 5.0,
        clock: Clock | None = None,
        guest_sections: Mapping[str, JSON] | None = None,
    ) -> None:
        if not zones or len(set(zones)) != len(zones) or not all(_NAME.fullmatch(z) for z in zones):
            raise ValueError(f"zones must be distinct names, got {list(zones)}")
        self.root = Path(root).resolve()
        self._zones = list(zones)
        self.guest_user = guest_user
        self.agent_command = list(agent_command or default_agent_command())
        self.agent_env = dict(agent_env or {})
        self.cgroups = cgroups if cgroups is not None else CgroupManager(cgroup_parent)
        self.force_directory_volumes = force_directory_volumes
        self.stop_grace_seconds = stop_grace_seconds
        self.kill_grace_seconds = kill_grace_seconds
        self.busy_unmount_timeout = busy_unmount_timeout
        self.clock: Clock = clock or SystemClock()
        self.guest_sections = dict(guest_sections or {})
        for sub in ("servers", "volumes", "locks"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        os.chmod(self.root / "servers", 0o755)
        os.chmod(self.root / "volumes", 0o700)
        _require_traversable(self.root / "servers")
        self.addresses = AddressPool(
            self.root / "addresses", address_pool, owner_exists=self._server_dir_exists
        )
        self._volume_support: tuple[str, str | None] | None = None

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> LocalCompute:
        options: dict[str, Any] = {
            "zones": settings.availability_zones,
            "address_pool": settings.address_pool,
        }
        options.update(overrides)
        return cls(settings.data_dir / "compute", **options)

    # ------------------------------------------------------------------ the port
    def zones(self) -> list[str]:
        return list(self._zones)

    def describe(self) -> dict[str, str]:
        """What this host gives servers, for startup logs and `troveless up`."""
        kind, why_not_loop = self.volume_support()
        return {
            "root": str(self.root),
            "volumes": kind if why_not_loop is None else f"{kind} ({why_not_loop})",
            "limits": self.cgroups.describe(),
            "address_pool": str(self.addresses.network),
            "zones": ",".join(self._zones),
            "guest_user": self.guest_user,
        }

    def volume_support(self) -> tuple[str, str | None]:
        """(volume kind in use, why not loop) — probed once with a real loop mount."""
        if self._volume_support is None:
            if self.force_directory_volumes:
                self._volume_support = (volumes.DIRECTORY, "directory volumes forced by config")
            else:
                why_not = volumes.probe_loop_mounts(self.root / "volumes")
                kind = volumes.LOOP if why_not is None else volumes.DIRECTORY
                self._volume_support = (kind, why_not)
                log.info(
                    "volume support probed",
                    extra={"volume_kind": kind, "why_not_loop": why_not},
                )
        return self._volume_support

    def create_server(
        self,
        instance_id: str,
        flavor: FlavorLike,
        volume_gb: int,
        zone: str | None,
        user_data: JSON,
        *,
        volume_from: str | None = None,
    ) -> ServerInfo:
        user_data = with_guest_sections(user_data, self.guest_sections)
        _check_name(instance_id, "instance id")
        spec = _flavor_spec(instance_id, flavor)
        if isinstance(volume_gb, bool) or not isinstance(volume_gb, int) or volume_gb < 1:
            raise ComputeRequestError(
                instance_id, f"volume_gb must be an integer >= 1, got {volume_gb!r}"
            )
        if volume_from is not None:
            _check_name(volume_from, "volume id")
        try:
            user_data_bytes = json.dumps(user_data, sort_keys=True).encode()
        except (TypeError, ValueError) as exc:
            raise ComputeRequestError(instance_id, f"user_data is not JSON: {exc}") from None
        with self._instance_lock(instance_id):
            existing = self._load(instance_id)
            if existing is not None and existing.status != ServerStatus.BUILD:
                return self._info(existing)
            if existing is not None:  # a create that crashed half-way: start again
                self._teardown(existing, keep_volume=existing.volume_id == volume_from)
            zone_name = self._pick_zone(instance_id, zone)
            user = self._guest_user(instance_id)
            kept = self._kept_volume(instance_id, volume_from) if volume_from else None
            kind = self.volume_support()[0] if kept is None else _kept_kind(kept)
            server_id = str(uuid.uuid4())
            rec = _ServerRecord(
                server_id=server_id,
                instance_id=instance_id,
                status=ServerStatus.BUILD,
                status_reason=None,
                address="",
                zone=zone_name,
                flavor=spec,
                volume_id=volume_from or f"vol-{server_id}",
                volume_gb=volume_gb,
                volume_kind=kind,
                user=user.name,
                created_at=self.clock.now(),
            )
            server_dir = self._server_dir(instance_id)
            server_dir.mkdir(exist_ok=True)
            os.chmod(server_dir, 0o755)
            self._save(rec)
            try:
                rec.address = self.addresses.allocate(instance_id)
                self._save(rec)
                self._make_volume(rec, user, kept)
                self._write_user_data(rec, user, user_data_bytes)
                self._boot(rec, user)
            except BaseException as exc:
                try:
                    self._teardown(rec, keep_volume=kept is not None)
                except Exception as cleanup_exc:  # report the first failure, log the second
                    log.error(
                        "cleanup after failed create failed",
                        extra={"instance_id": instance_id, "error": str(cleanup_exc)},
                    )
                if isinstance(exc, ComputeError) or not isinstance(exc, Exception):
                    raise
                raise ComputeError(instance_id, f"create failed: {exc}") from exc
            log.info(
                "server created",
                extra={
                    "instance_id": instance_id,
                    "address": rec.address,
                    "zone": rec.zone,
                    "volume_kind": rec.volume_kind,
                    "limits_enforced": rec.limits_enforced,
                },
            )
            return self._info(rec)

    def get_server(self, instance_id: str) -> ServerInfo | None:
        if not _NAME.fullmatch(instance_id):
            return None
        rec = self._load(instance_id)
        return self._info(rec) if rec is not None else None

    def list_servers(self) -> list[ServerInfo]:
        return [self._info(rec) for rec in self._records()]

    def stop_server(self, instance_id: str) -> ServerInfo:
        with self._instance_lock(instance_id):
            rec = self._require(instance_id)
            self._stop_processes(rec, graceful=True)
            rec.status, rec.status_reason = ServerStatus.SHUTOFF, None
            self._save(rec)
            return self._info(rec)

    def start_server(self, instance_id: str) -> ServerInfo:
        with self._instance_lock(instance_id):
            rec = self._require(instance_id)
            if rec.status == ServerStatus.ACTIVE and self._agent_alive(rec):
                return self._info(rec)
            # A crashed agent may have left datastores running: a boot starts from nothing.
            self._stop_processes(rec, graceful=False)
            self._boot(rec, self._guest_user(instance_id, rec.user))
            return self._info(rec)

    def reboot_server(self, instance_id: str) -> ServerInfo:
        with self._instance_lock(instance_id):
            rec = self._require(instance_id)
            self._stop_processes(rec, graceful=True)
            self._boot(rec, self._guest_user(instance_id, rec.user))
            return self._info(rec)

    def delete_server(self, instance_id: str, *, keep_volume: bool = False) -> None:
        if not _NAME.fullmatch(instance_id):
            return
        with self._instance_lock(instance_id):
            rec = self._load(instance_id)
            if rec is None:
                # Nothing recorded: at most an address claim or an empty directory from a crash.
                self.addresses.release_owner(instance_id)
                shutil.rmtree(self._server_dir(instance_id), ignore_errors=True)
            else:
                self._teardown(rec, keep_volume=keep_volume)
                log.info(
                    "server deleted",
                    extra={"instance_id": instance_id, "kept_volume": keep_volume},
                )

    def resize_volume(self, instance_id: str, new_gb: int) -> ServerInfo:
        if isinstance(new_gb, bool) or not isinstance(new_gb, int) or new_gb < 1:
            raise ComputeRequestError(
                instance_id, f"new size must be an integer >= 1, got {new_gb!r}"
            )
        with self._instance_lock(instance_id):
            rec = self._require(instance_id)
            if new_gb < rec.volume_gb:
                raise ComputeRequestError(
                    instance_id,
                    f"volumes only grow: {new_gb} GB < the current {rec.volume_gb} GB",
                )
            if new_gb == rec.volume_gb:
                return self._info(rec)
            user = self._guest_user(instance_id, rec.user)
            was_running = rec.status == ServerStatus.ACTIVE
            if rec.volume_kind == volumes.LOOP:
                self._stop_processes(rec, graceful=True)
                image, mount_point = self._image(rec), self._mount_point(rec)
                try:
                    volumes.unmount(mount_point, image, self.busy_unmount_timeout, allow_lazy=False)
                    volumes.grow_loop_image(image, new_gb)
                except volumes.VolumeError as exc:
                    self._recover_after_failed_resize(rec, user, was_running)
                    raise ComputeError(instance_id, f"resize of volume failed: {exc}") from exc
                rec.volume_gb = new_gb
                volumes.mount_loop_image(image, mount_point, *_ids(user))
                if was_running:
                    self._boot(rec, user)
                else:
                    self._save(rec)
                    self._write_meta_data(rec)
            else:
                # A directory's size is a soft quota the agent reads from its meta-data.
                rec.volume_gb = new_gb
                self._save(rec)
                self._write_meta_data(rec)
            log.info("volume resized", extra={"instance_id": instance_id, "volume_gb": new_gb})
            return self._info(rec)

    def resize_flavor(self, instance_id: str, flavor: FlavorLike) -> ServerInfo:
        spec = _flavor_spec(instance_id, flavor)
        with self._instance_lock(instance_id):
            rec = self._require(instance_id)
            rec.flavor = spec
            if rec.cgroups is not None and not rec.cgroups.missing_dirs():
                report = rec.cgroups.apply_limits(spec)
                rec.limits_enforced, rec.limits_note = report.enforced, report.note
            else:
                rec.limits_enforced, rec.limits_note = False, "applied at the next start"
            self._save(rec)
            self._write_meta_data(rec)
            return self._info(rec)

    def adopt(self) -> list[ServerInfo]:
        adopted: list[ServerInfo] = []
        for found in self._records():
            rec = found
            if found.status == ServerStatus.BUILD:
                self._mark_interrupted_build(found.instance_id)
                rec = self._load(found.instance_id) or found
            info = self._info(rec)
            adopted.append(info)
            log.info(
                "server adopted",
                extra={
                    "instance_id": info.instance_id,
                    "status": info.status.value,
                    "agent_alive": info.agent_alive,
                },
            )
        return adopted

    def orphans(self, known_instance_ids: Iterable[str]) -> list[ServerInfo]:
        known = set(known_instance_ids)
        return [info for info in self.list_servers() if info.instance_id not in known]

    def reap(self, instance_id: str) -> None:
        self.delete_server(instance_id, keep_volume=False)

    # ------------------------------------------------------------------ records and paths
    def _server_dir(self, instance_id: str) -> Path:
        return self.root / "servers" / instance_id

    def _server_dir_exists(self, instance_id: str) -> bool:
        return _NAME.fullmatch(instance_id) is not None and self._server_dir(instance_id).is_dir()

    def _mount_point(self, rec: _ServerRecord) -> Path:
        return self._server_dir(rec.instance_id) / DATA_DIR

    def _image(self, rec: _ServerRecord) -> Path:
        return self._server_dir(rec.instance_id) / VOLUME_IMAGE

    def _load(self, instance_id: str) -> _ServerRecord | None:
        path = self._server_dir(instance_id) / SERVER_RECORD
        try:
            return _ServerRecord.from_json(json.loads(path.read_text()))
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as exc:
            raise ComputeError(instance_id, f"server record {path} is corrupt: {exc}") from exc

    def _require(self, instance_id: str) -> _ServerRecord:
        rec = self._load(instance_id) if _NAME.fullmatch(instance_id) else None
        if rec is None:
            raise NotFoundError(instance_id, "server")
        return rec

    def _records(self) -> list[_ServerRecord]:
        out: list[_ServerRecord] = []
        for entry in sorted(os.scandir(self.root / "servers"), key=lambda e: e.name):
            if not entry.is_dir() or not _NAME.fullmatch(entry.name):
                continue
            try:
                rec = self._load(entry.name)
            except ComputeError as exc:
                log.error("unreadable server record", extra={"error": str(exc)})
                continue
            if rec is not None:
                out.append(rec)
        return out

    def _save(self, rec: _ServerRecord) -> None:
        _write_atomically(
            self._server_dir(rec.instance_id) / SERVER_RECORD,
            json.dumps(rec.to_json(), indent=2).encode(),
            mode=0o644,
        )

    @contextmanager
    def _instance_lock(self, instance_id: str, *, blocking: bool = True) -> Iterator[None]:
        """Exclusive hold on one server across processes. The lock file is removed when the
        server is deleted, so after locking, check the file is still the one at the path."""
        _check_name(instance_id, "instance id")
        path = self.root / "locks" / f"{instance_id}.lock"
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
                current = os.stat(path).st_ino
            except FileNotFoundError:
                os.close(fd)
                continue
            except BaseException:
                os.close(fd)
                raise
            if current == os.fstat(fd).st_ino:
                break
            os.close(fd)
        try:
            yield
        finally:
            # No server (deleted, or a refused create): drop the lock file while still holding
            # it; waiters notice the inode change and take the new file.
            if not self._server_dir(instance_id).exists():
                with suppress(FileNotFoundError):
                    path.unlink()
            os.close(fd)

    def _mark_interrupted_build(self, instance_id: str) -> None:
        try:
            with self._instance_lock(instance_id, blocking=False):
                rec = self._load(instance_id)
                if rec is not None and rec.status == ServerStatus.BUILD:
                    rec.status = ServerStatus.ERROR
                    rec.status_reason = "the control plane stopped while building this server"
                    self._save(rec)
        except BlockingIOError:
            pass  # another process is building it right now

    # ------------------------------------------------------------------ building blocks
    def _pick_zone(self, instance_id: str, zone: str | None) -> str:
        if zone is not None:
            if zone not in self._zones:
                raise ComputeRequestError(
                    instance_id, f"unknown availability zone {zone!r} (have {self._zones})"
                )
            return zone
        used = {z: 0 for z in self._zones}
        for rec in self._records():
            if rec.zone in used:
                used[rec.zone] += 1
        return min(self._zones, key=lambda z: used[z])

    def _guest_user(self, instance_id: str, name: str | None = None) -> SystemUser:
        try:
            return ensure_system_user(name or self.guest_user)
        except SystemUserError as exc:
            raise ComputeError(instance_id, str(exc)) from exc

    def _kept_volume(self, instance_id: str, volume_id: str) -> Path:
        for suffix in (".img", ".dir"):
            path = self.root / "volumes" / f"{volume_id}{suffix}"
            if path.exists():
                return path
        raise ComputeRequestError(instance_id, f"no detached volume {volume_id!r} to attach")

    def _make_volume(self, rec: _ServerRecord, user: SystemUser, kept: Path | None) -> None:
        mount_point = self._mount_point(rec)
        if rec.volume_kind == volumes.DIRECTORY:
            if kept is not None:
                os.replace(kept, mount_point)
            volumes.make_directory_volume(mount_point, *_ids(user))
            return
        if self.volume_support()[0] != volumes.LOOP:
            raise ComputeRequestError(
                rec.instance_id, "this host cannot loop-mount the kept volume image"
            )
        image = self._image(rec)
        if kept is not None:
            os.replace(kept, image)
            if volumes.image_size_gb(image) < rec.volume_gb:
                volumes.grow_loop_image(image, rec.volume_gb)
            rec.volume_gb = volumes.image_size_gb(image)
            self._save(rec)
        else:
            volumes.make_loop_image(image, rec.volume_gb, *_ids(user))
        volumes.mount_loop_image(image, mount_point, *_ids(user))

    def _write_user_data(self, rec: _ServerRecord, user: SystemUser, data: bytes) -> None:
        _write_atomically(
            self._server_dir(rec.instance_id) / USER_DATA_FILE, data, mode=0o600, owner=user
        )

    def _write_meta_data(self, rec: _ServerRecord) -> None:
        server_dir = self._server_dir(rec.instance_id)
        meta = {
            "instance_id": rec.instance_id,
            "server_id": rec.server_id,
            "address": rec.address,
            "zone": rec.zone,
            "flavor": {"ram_mb": rec.flavor.ram_mb, "vcpus": rec.flavor.vcpus},
            "volume": {
                "id": rec.volume_id,
                "kind": rec.volume_kind,
                "size_gb": rec.volume_gb,
                "mount_point": str(self._mount_point(rec)),
                # Only a directory needs the agent to police its size.
                "soft_quota": rec.volume_kind == volumes.DIRECTORY,
            },
            "limits": {"enforced": rec.limits_enforced, "note": rec.limits_note},
            "user_data": str(server_dir / USER_DATA_FILE),
        }
        _write_atomically(
            server_dir / META_DATA_FILE, json.dumps(meta, indent=2).encode(), mode=0o644
        )

    def _boot(self, rec: _ServerRecord, user: SystemUser) -> None:
        """Volume mounted, cgroup in place with the flavor's limits, agent started: ACTIVE."""
        if rec.volume_kind == volumes.LOOP:
            volumes.mount_loop_image(self._image(rec), self._mount_point(rec), *_ids(user))
        else:
            volumes.make_directory_volume(self._mount_point(rec), *_ids(user))
        if rec.cgroups is None or rec.cgroups.missing_dirs():
            rec.cgroups = self.cgroups.create(rec.instance_id)
        report = rec.cgroups.apply_limits(rec.flavor)
        rec.limits_enforced, rec.limits_note = report.enforced, report.note
        self._write_meta_data(rec)
        rec.agent_pid, rec.agent_started = self._spawn_agent(rec, user)
        rec.status, rec.status_reason = ServerStatus.ACTIVE, None
        self._save(rec)

    def _spawn_agent(self, rec: _ServerRecord, user: SystemUser) -> tuple[int, float | None]:
        server_dir = self._server_dir(rec.instance_id)
        user_data = str(server_dir / USER_DATA_FILE)
        argv = [part.replace(USER_DATA_PLACEHOLDER, user_data) for part in self.agent_command]
        mount_point = self._mount_point(rec)
        env = {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "HOME": str(mount_point),
            INSTANCE_ENV: rec.instance_id,
            META_DATA_ENV: str(server_dir / META_DATA_FILE),
            **self.agent_env,
        }
        procs_files = rec.cgroups.procs_files() if rec.cgroups else []
        uid, gid = _ids(user)

        def enter_server() -> None:
            # Runs in the child between fork and exec, as root: join the server's cgroups
            # first (so every later child is tracked), then drop to the guest user for good.
            pid = str(os.getpid()).encode()
            for procs in procs_files:
                fd = os.open(procs, os.O_WRONLY)
                try:
                    os.write(fd, pid)
                finally:
                    os.close(fd)
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            os.umask(0o077)

        log_fd = os.open(server_dir / AGENT_LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        try:
            proc = subprocess.Popen(
                argv,
                cwd=mount_point,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_fd,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                # Joining the cgroups must happen as root before the drop, which Popen's
                # user= cannot order; enter_server only makes raw system calls.
                preexec_fn=enter_server,  # noqa: PLW1509
                close_fds=True,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise ComputeError(
                rec.instance_id, f"cannot start the guest agent {argv[0]!r} as {user.name}: {exc}"
            ) from exc
        finally:
            os.close(log_fd)
        with _children_lock:
            _children[proc.pid] = proc
        try:
            started: float | None = psutil.Process(proc.pid).create_time()
        except psutil.Error:
            started = None
        log.info("guest agent started", extra={"instance_id": rec.instance_id, "pid": proc.pid})
        return proc.pid, started

    def _recover_after_failed_resize(
        self, rec: _ServerRecord, user: SystemUser, was_running: bool
    ) -> None:
        try:
            if was_running:
                self._boot(rec, user)
            else:
                volumes.mount_loop_image(self._image(rec), self._mount_point(rec), *_ids(user))
        except TrovelessError as exc:
            rec.status, rec.status_reason = ServerStatus.ERROR, f"resize failed: {exc}"
            self._save(rec)

    # ------------------------------------------------------------------ processes
    def _agent_alive(self, rec: _ServerRecord) -> bool:
        if rec.agent_pid is None:
            return False
        return _process_alive(rec.agent_pid, rec.agent_started)

    def _server_pids(self, rec: _ServerRecord) -> set[int]:
        """Every live process of the server: cgroup members, the agent's process group, and
        anything carrying the server's environment marker (when there is no cgroup)."""
        pids = rec.cgroups.member_pids() if rec.cgroups else set()
        agent = rec.agent_pid if self._agent_alive(rec) else None
        for proc in psutil.process_iter(["pid"]):
            if proc.pid in pids:
                continue
            try:
                in_agent_group = agent is not None and os.getpgid(proc.pid) == agent
                if in_agent_group or proc.environ().get(INSTANCE_ENV) == rec.instance_id:
                    pids.add(proc.pid)
            except (psutil.Error, ProcessLookupError, PermissionError):
                continue
        pids.discard(os.getpid())
        return {p for p in pids if _process_alive(p, None)}

    def _stop_processes(self, rec: _ServerRecord, *, graceful: bool) -> None:
        """Leave no process of the server running. Graceful: SIGTERM the agent's process group
        and give it `stop_grace_seconds` to stop its datastore; then SIGTERM what is left, and
        SIGKILL after `kill_grace_seconds`."""
        if graceful and rec.agent_pid is not None and self._agent_alive(rec):
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(rec.agent_pid, signal.SIGTERM)
            _wait_gone({rec.agent_pid}, self.stop_grace_seconds)
        pids = self._server_pids(rec)
        if pids and graceful:
            _signal_all(pids, signal.SIGTERM)
            pids = _wait_gone(pids, self.kill_grace_seconds)
        deadline = time.monotonic() + 5.0
        while True:
            pids |= self._server_pids(rec)
            if not pids:
                break
            if time.monotonic() > deadline:
                reason = f"processes {sorted(pids)} survive SIGKILL"
                rec.status, rec.status_reason = ServerStatus.ERROR, reason
                self._save(rec)
                raise ComputeError(rec.instance_id, reason)
            _signal_all(pids, signal.SIGKILL)
            pids = _wait_gone(pids, 1.0)
        rec.agent_pid, rec.agent_started = None, None

    # ------------------------------------------------------------------ teardown
    def _teardown(self, rec: _ServerRecord, *, keep_volume: bool) -> None:
        """Undo everything a server holds, in reverse order of making it. The record goes last,
        so a crash half-way leaves something to retry from."""
        self._stop_processes(rec, graceful=keep_volume)
        mount_point, image = self._mount_point(rec), self._image(rec)
        if rec.volume_kind == volumes.LOOP:
            report = volumes.unmount(mount_point, image, self.busy_unmount_timeout)
            if report.lazy or report.loop_devices_left:
                log.warning(
                    "volume was busy: detached lazily",
                    extra={
                        "instance_id": rec.instance_id,
                        "lazy": report.lazy,
                        "loop_devices_left": list(report.loop_devices_left),
                    },
                )
        if rec.cgroups is not None:
            left = rec.cgroups.remove()
            if left:
                log.warning(
                    "cgroups left behind", extra={"instance_id": rec.instance_id, "dirs": left}
                )
        kept = self.root / "volumes" / rec.volume_id
        if rec.volume_kind == volumes.LOOP and image.exists():
            if keep_volume:
                os.replace(image, kept.with_name(kept.name + ".img"))
            else:
                image.unlink()
        elif rec.volume_kind == volumes.DIRECTORY and mount_point.exists() and keep_volume:
            os.replace(mount_point, kept.with_name(kept.name + ".dir"))
        self.addresses.release_owner(rec.instance_id)
        server_dir = self._server_dir(rec.instance_id)
        for entry in server_dir.iterdir():
            if entry.name == SERVER_RECORD:
                continue
            if entry.is_dir() and not entry.is_symlink():
                if volumes.mounted_at(entry) is None:
                    shutil.rmtree(entry)
            else:
                entry.unlink()
        (server_dir / SERVER_RECORD).unlink(missing_ok=True)
        with suppress(OSError):  # a lazily detached mount point may still be there
            server_dir.rmdir()

    # ------------------------------------------------------------------ reporting
    def _info(self, rec: _ServerRecord) -> ServerInfo:
        alive = self._agent_alive(rec)
        status, reason = rec.status, rec.status_reason
        if status == ServerStatus.ACTIVE and not alive:
            status, reason = ServerStatus.SHUTOFF, "the guest agent is not running"
        server_dir = self._server_dir(rec.instance_id)
        mount_point = self._mount_point(rec)
        details = {
            "user": rec.user,
            "user_data": str(server_dir / USER_DATA_FILE),
            "meta_data": str(server_dir / META_DATA_FILE),
            "agent_log": str(server_dir / AGENT_LOG),
        }
        if rec.volume_kind == volumes.LOOP:
            details["image"] = str(self._image(rec))
            details["device"] = volumes.mounted_at(mount_point) or ""
        if rec.cgroups is not None:
            details["cgroup_version"] = rec.cgroups.version
            details["cgroups"] = ",".join(rec.cgroups.all_dirs())
        return ServerInfo(
            server_id=rec.server_id,
            instance_id=rec.instance_id,
            status=status,
            address=rec.address,
            zone=rec.zone,
            flavor=rec.flavor,
            volume_id=rec.volume_id,
            volume_gb=rec.volume_gb,
            volume_kind=rec.volume_kind,
            volume_path=str(mount_point),
            limits_enforced=rec.limits_enforced,
            limits_note=rec.limits_note,
            agent_pid=rec.agent_pid if alive else None,
            agent_alive=alive,
            created_at=rec.created_at,
            status_reason=reason,
            details=details,
        )


# ---------------------------------------------------------------------- helpers
def _check_name(value: str, what: str) -> None:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise ComputeRequestError(str(value), f"invalid {what} (want {_NAME.pattern})")


def _flavor_spec(instance_id: str, flavor: FlavorLike) -> FlavorSpec:
    try:
        return FlavorSpec.of(flavor)
    except (ValueError, TypeError, AttributeError) as exc:
        raise ComputeRequestError(instance_id, f"invalid flavor: {exc}") from None


def _kept_kind(path: Path) -> str:
    return volumes.LOOP if path.suffix == ".img" else volumes.DIRECTORY


def _ids(user: SystemUser) -> tuple[int, int]:
    return user.uid, user.gid


def _require_traversable(path: Path) -> None:
    """The guest user reads its user-data below `path`: every ancestor must let others pass."""
    for directory in [path, *path.parents]:
        if not os.stat(directory).st_mode & 0o001:
            raise ValueError(
                f"{directory} is not traversable by other users (mode "
                f"{oct(os.stat(directory).st_mode & 0o777)}); the guest user could not reach "
                f"its files below {path}"
            )


def _write_atomically(
    path: Path, data: bytes, *, mode: int, owner: SystemUser | None = None
) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        if owner is not None:
            os.fchown(fd, owner.uid, owner.gid)
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)


def _process_alive(pid: int, started: float | None) -> bool:
    """Whether `pid` runs (zombies are dead) and, given `started`, is still the same process."""
    with _children_lock:
        child = _children.get(pid)
    if child is not None:
        if child.poll() is None:
            return True
        with _children_lock:
            _children.pop(pid, None)
        return False
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return started is None or abs(proc.create_time() - started) < 0.05
    except psutil.Error:
        return False


def _signal_all(pids: Iterable[int], sig: signal.Signals) -> None:
    for pid in pids:
        with suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _wait_gone(pids: set[int], timeout: float) -> set[int]:
    """Wait until none of `pids` is alive or `timeout` passes; returns those still alive."""
    deadline = time.monotonic() + timeout
    alive = {p for p in pids if _process_alive(p, None)}
    while alive and time.monotonic() < deadline:
        time.sleep(_POLL)
        alive = {p for p in alive if _process_alive(p, None)}
    return alive
