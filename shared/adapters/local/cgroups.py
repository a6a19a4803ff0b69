"""Resource limits and process tracking for local servers through Linux control groups.

A server's flavor becomes a memory limit (memory.limit_in_bytes / memory.max) and a CPU quota
(cpu.cfs_quota_us / cpu.max) on a cgroup of its own, under cgroup v2 when its memory and cpu
controllers are available, else under the v1 hierarchies. The cgroup also tracks every process
of the server: datastores are started by the agent in sessions of their own, so membership
(cgroup.procs) is the reliable way to find them all. Where no cgroup is writable the server
still runs, and the reason limits are not enforced is reported rather than raised.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.ports import FlavorLike

MOUNTS_FILE = Path("/proc/self/mounts")
DEFAULT_CGROUP_PARENT = "troveless"
CPU_PERIOD_US = 100_000
MIB = 1 << 20
LIMIT_CONTROLLERS = ("memory", "cpu")
V1_CONTROLLERS = frozenset(
    {"memory", "cpu", "cpuacct", "cpuset", "pids", "blkio", "devices", "freezer"}
)


def _unescape_mount_field(field: str) -> str:
    # /proc/mounts writes space, tab, newline and backslash as \ooo octal escapes.
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and len(field) >= i + 4 and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


@dataclass(frozen=True)
class CgroupHierarchies:
    """Where the cgroup filesystems are mounted: v1 mount per controller, and the v2 mount."""

    v1: dict[str, Path]
    v2: Path | None

    @classmethod
    def detect(cls, mounts_file: Path = MOUNTS_FILE) -> CgroupHierarchies:
        v1: dict[str, Path] = {}
        v2: Path | None = None
        try:
            lines = mounts_file.read_text().splitlines()
        except OSError:
            lines = []
        for line in lines:
            fields = line.split()
            if len(fields) < 4:
                continue
            mount_point, fstype, options = _unescape_mount_field(fields[1]), fields[2], fields[3]
            if fstype == "cgroup2" and v2 is None:
                v2 = Path(mount_point)
            elif fstype == "cgroup":
                for option in options.split(","):
                    if option in V1_CONTROLLERS:
                        v1.setdefault(option, Path(mount_point))
        return cls(v1=v1, v2=v2)

    def v2_controllers(self) -> frozenset[str]:
        if self.v2 is None:
            return frozenset()
        try:
            return frozenset((self.v2 / "cgroup.controllers").read_text().split())
        except OSError:
            return frozenset()


@dataclass(frozen=True)
class LimitsReport:
    enforced: bool
    note: str | None


@dataclass(frozen=True)
class ServerCgroups:
    """The cgroup directories of one server, as recorded in its server.json.

    `tracking_dirs` are all the directories whose cgroup.procs list the server's processes
    (a process joins each of them); `memory_dir` / `cpu_dir` carry the limits.
    """

    version: str  # "v2", "v1" or "none"
    memory_dir: str | None
    cpu_dir: str | None
    tracking_dirs: tuple[str, ...]
    note: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "memory_dir": self.memory_dir,
            "cpu_dir": self.cpu_dir,
            "tracking_dirs": list(self.tracking_dirs),
            "note": self.note,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ServerCgroups:
        return cls(
            version=str(data["version"]),
            memory_dir=data.get("memory_dir"),
            cpu_dir=data.get("cpu_dir"),
            tracking_dirs=tuple(data.get("tracking_dirs", ())),
            note=data.get("note"),
        )

    def all_dirs(self) -> list[str]:
        dirs = [*self.tracking_dirs, self.memory_dir, self.cpu_dir]
        return list(dict.fromkeys(d for d in dirs if d))

    def missing_dirs(self) -> list[str]:
        """Directories recorded but gone (the host rebooted, or someone removed them)."""
        return [d for d in self.all_dirs() if not os.path.isdir(d)]

    def procs_files(self) -> list[bytes]:
        """The cgroup.procs files a new process writes its pid into, pre-encoded so the child
        between fork and exec only calls os.open/os.write."""
        return [os.fsencode(os.path.join(d, "cgroup.procs")) for d in self.all_dirs()]

    def member_pids(self) -> set[int]:
        pids: set[int] = set()
        for d in self.all_dirs():
            try:
                text = Path(d, "cgroup.procs").read_text()
            except OSError:
                continue
            pids.update(int(p) for p in text.split())
        return pids

    def apply_limits(self, flavor: FlavorLike) -> LimitsReport:
        """Write the flavor's RAM and CPU limits; report what could not be enforced."""
        problems: list[str] = [self.note] if self.note else []
        ram_problem: str | None = "no memory cgroup"
        if self.memory_dir is not None:
            name = "memory.max" if self.version == "v2" else "memory.limit_in_bytes"
            ram_problem = _write_control(self.memory_dir, name, str(int(flavor.ram_mb) * MIB))
        cpu_problem: str | None = "no cpu cgroup"
        quota_us = int(flavor.vcpus) * CPU_PERIOD_US
        if self.cpu_dir is not None and self.version == "v2":
            cpu_problem = _write_control(self.cpu_dir, "cpu.max", f"{quota_us} {CPU_PERIOD_US}")
        elif self.cpu_dir is not None:
            cpu_problem = _write_control(
                self.cpu_dir, "cpu.cfs_period_us", str(CPU_PERIOD_US)
            ) or _write_control(self.cpu_dir, "cpu.cfs_quota_us", str(quota_us))
        if ram_problem:
            problems.append(f"RAM not limited ({ram_problem})")
        if cpu_problem:
            problems.append(f"CPU not limited ({cpu_problem})")
        enforced = ram_problem is None and cpu_problem is None
        return LimitsReport(enforced=enforced, note="; ".join(problems) or None)

    def remove(self, timeout: float = 5.0) -> list[str]:
        """Remove the server's cgroup directories; returns the ones still there.

        rmdir fails with EBUSY while a dying process has not left yet, so retry briefly.
        """
        deadline = time.monotonic() + timeout
        left = [d for d in self.all_dirs() if os.path.isdir(d)]
        while left:
            still: list[str] = []
            for d in left:
                try:
                    os.rmdir(d)
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    if exc.errno != errno.EBUSY:
                        raise
                    still.append(d)
            left = still
            if not left or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        return left


def _write_control(directory: str, name: str, value: str) -> str | None:
    """Write one control file; the reason on failure (read-only, busy, missing), else None."""
    try:
        Path(directory, name).write_text(value)
    except OSError as exc:
        return f"{name}: {exc.strerror or exc}"
    return None


class CgroupManager:
    """Creates per-server cgroups under `parent` in each usable hierarchy."""

    def __init__(
        self,
        parent: str = DEFAULT_CGROUP_PARENT,
        hierarchies: CgroupHierarchies | None = None,
    ) -> None:
        if not parent or parent.startswith("/") or ".." in Path(parent).parts:
            raise ValueError(f"cgroup parent must be a relative path, got {parent!r}")
        self.parent = parent
        self.hierarchies = hierarchies if hierarchies is not None else CgroupHierarchies.detect()

    def describe(self) -> str:
        """Which cgroup version servers would get here, for startup logs."""
        h = self.hierarchies
        v2 = h.v2_controllers()
        if h.v2 is not None and set(LIMIT_CONTROLLERS) <= v2:
            return f"cgroup v2 at {h.v2}"
        if any(c in h.v1 for c in LIMIT_CONTROLLERS):
            return "cgroup v1 (" + ", ".join(f"{c} at {h.v1[c]}" for c in h.v1) + ")"
        if h.v2 is not None:
            return f"cgroup v2 at {h.v2} without memory/cpu controllers (tracking only)"
        return "no cgroup filesystem"

    def create(self, name: str) -> ServerCgroups:
        """Make the cgroups of server `name`. Never raises for permission or support
        problems: the result's `note` says what is missing."""
        if not name or "/" in name or name in {".", ".."}:
            raise ValueError(f"invalid cgroup name {name!r}")
        h = self.hierarchies
        v2_controllers = h.v2_controllers()
        if h.v2 is not None and set(LIMIT_CONTROLLERS) <= v2_controllers:
            return self._create_v2(h.v2, name, v2_controllers)
        if any(c in h.v1 for c in LIMIT_CONTROLLERS):
            made = self._create_v1(name)
            if made.tracking_dirs:
                return made
        if h.v2 is not None:
            return self._create_v2(h.v2, name, v2_controllers)
        return ServerCgroups("none", None, None, (), "no cgroup filesystem is mounted")

    def _create_v1(self, name: str) -> ServerCgroups:
        dirs: dict[str, str] = {}
        problems: list[str] = []
        for controller in LIMIT_CONTROLLERS:
            mount = self.hierarchies.v1.get(controller)
            if mount is None:
                problems.append(f"cgroup v1 {controller} controller is not mounted")
                continue
            path = mount / self.parent / name
            try:
                path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                problems.append(f"cannot create {path}: {exc.strerror or exc}")
                continue
            dirs[controller] = str(path)
        return ServerCgroups(
            version="v1",
            memory_dir=dirs.get("memory"),
            cpu_dir=dirs.get("cpu"),
            tracking_dirs=tuple(dirs.values()),
            note="; ".join(problems) or None,
        )

    def _create_v2(self, root: Path, name: str, available: Iterable[str]) -> ServerCgroups:
        wanted = [c for c in LIMIT_CONTROLLERS if c in set(available)]
        problems = [
            f"cgroup v2 {c} controller unavailable" for c in LIMIT_CONTROLLERS if c not in wanted
        ]
        parent = root / self.parent
        leaf = parent / name
        try:
            leaf.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            return ServerCgroups(
                "none", None, None, (), f"cannot create {leaf}: {exc.strerror or exc}"
            )
        # Controllers reach a cgroup only if every ancestor delegates them (subtree_control).
        enabled = list(wanted)
        if wanted:
            ancestors = [root]
            for part in Path(self.parent).parts:
                ancestors.append(ancestors[-1] / part)
            for ancestor in ancestors:
                problem = _write_control(
                    str(ancestor), "cgroup.subtree_control", " ".join(f"+{c}" for c in wanted)
                )
                if problem:
                    problems.append(
                        f"cannot delegate {', '.join(wanted)} below {ancestor}: {problem}"
                    )
                    enabled = []
                    break
        return ServerCgroups(
            version="v2",
            memory_dir=str(leaf) if "memory" in enabled else None,
            cpu_dir=str(leaf) if "cpu" in enabled else None,
            tracking_dirs=(str(leaf),),
            note="; ".join(problems) or None,
        )
