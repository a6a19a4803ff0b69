"""Cgroup placement and limits, on fake cgroup trees (the real v1 tree is used by the
integration tests; this machine has no v2 controllers, so v2 is only exercised here)."""

from __future__ import annotations

from pathlib import Path

from shared.adapters.local.cgroups import CgroupHierarchies, CgroupManager
from shared.ports import FlavorSpec

FLAVOR = FlavorSpec(ram_mb=512, vcpus=2)


def mounts_file(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "mounts"
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_detect_reads_v1_controllers_and_the_v2_mount(tmp_path: Path) -> None:
    mounts = mounts_file(
        tmp_path,
        [
            "/dev/vda / ext4 rw,relatime 0 0",
            "cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,nosuid,cpu,cpuacct 0 0",
            "cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0",
            "cgroup /sys/fs/cgroup/systemd cgroup rw,xattr,name=systemd 0 0",
            "cgroup2 /sys/fs/cgroup/un\\040ified cgroup2 rw 0 0",
        ],
    )
    h = CgroupHierarchies.detect(mounts)
    assert h.v1 == {
        "cpu": Path("/sys/fs/cgroup/cpu,cpuacct"),
        "cpuacct": Path("/sys/fs/cgroup/cpu,cpuacct"),
        "memory": Path("/sys/fs/cgroup/memory"),
    }
    assert h.v2 == Path("/sys/fs/cgroup/un ified")


def test_v2_with_controllers_delegates_them_and_writes_memory_max_and_cpu_max(
    tmp_path: Path,
) -> None:
    root = tmp_path / "cg2"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    manager = CgroupManager("troveless/servers", CgroupHierarchies(v1={}, v2=root))

    cgroups = manager.create("inst-a")
    report = cgroups.apply_limits(FLAVOR)

    leaf = root / "troveless" / "servers" / "inst-a"
    assert (cgroups.version, cgroups.memory_dir, cgroups.cpu_dir) == ("v2", str(leaf), str(leaf))
    assert cgroups.tracking_dirs == (str(leaf),)
    for ancestor in (root, root / "troveless", root / "troveless" / "servers"):
        assert (ancestor / "cgroup.subtree_control").read_text() == "+memory +cpu"
    assert (leaf / "memory.max").read_text() == str(512 << 20)
    assert (leaf / "cpu.max").read_text() == "200000 100000"
    assert (report.enforced, report.note) == (True, None)
    assert manager.describe().startswith("cgroup v2")


def test_v1_writes_limit_in_bytes_and_cfs_quota(tmp_path: Path) -> None:
    memory, cpu = tmp_path / "memory", tmp_path / "cpu"
    memory.mkdir()
    cpu.mkdir()
    manager = CgroupManager(
        "troveless", CgroupHierarchies(v1={"memory": memory, "cpu": cpu}, v2=None)
    )

    cgroups = manager.create("inst-a")
    report = cgroups.apply_limits(FLAVOR)

    assert cgroups.version == "v1"
    assert (memory / "troveless/inst-a/memory.limit_in_bytes").read_text() == str(512 << 20)
    assert (cpu / "troveless/inst-a/cpu.cfs_period_us").read_text() == "100000"
    assert (cpu / "troveless/inst-a/cpu.cfs_quota_us").read_text() == "200000"
    assert report.enforced
    assert cgroups.procs_files() == [
        str(memory / "troveless/inst-a/cgroup.procs").encode(),
        str(cpu / "troveless/inst-a/cgroup.procs").encode(),
    ]
    (memory / "troveless/inst-a/cgroup.procs").write_text("12\n34\n")
    assert cgroups.member_pids() == {12, 34}


def test_missing_cpu_controller_is_reported_not_raised(tmp_path: Path) -> None:
    memory = tmp_path / "memory"
    memory.mkdir()
    manager = CgroupManager("troveless", CgroupHierarchies(v1={"memory": memory}, v2=None))
    report = manager.create("inst-a").apply_limits(FLAVOR)
    assert not report.enforced
    assert report.note is not None and "CPU not limited" in report.note
    assert (memory / "troveless/inst-a/memory.limit_in_bytes").exists()


def test_unwritable_v1_falls_back_to_v2_tracking_without_limits(tmp_path: Path) -> None:
    blocked = tmp_path / "memory"
    blocked.write_text("not a directory: mkdir below it fails")
    root = tmp_path / "cg2"
    root.mkdir()
    (root / "cgroup.controllers").write_text("")  # hybrid mode: controllers bound to v1
    manager = CgroupManager("troveless", CgroupHierarchies(v1={"memory": blocked}, v2=root))

    cgroups = manager.create("inst-a")
    report = cgroups.apply_limits(FLAVOR)

    assert cgroups.tracking_dirs == (str(root / "troveless" / "inst-a"),)
    assert not report.enforced
    assert report.note is not None and "RAM not limited" in report.note


def test_no_cgroup_filesystem_means_no_limits_and_says_so(tmp_path: Path) -> None:
    manager = CgroupManager("troveless", CgroupHierarchies(v1={}, v2=None))
    cgroups = manager.create("inst-a")
    report = cgroups.apply_limits(FLAVOR)
    assert (cgroups.version, cgroups.tracking_dirs) == ("none", ())
    assert not report.enforced
    assert report.note is not None and "no cgroup filesystem" in report.note
    assert cgroups.member_pids() == set()


def test_record_round_trip(tmp_path: Path) -> None:
    memory = tmp_path / "memory"
    memory.mkdir()
    cgroups = CgroupManager("t", CgroupHierarchies(v1={"memory": memory}, v2=None)).create("i")
    assert type(cgroups).from_json(cgroups.to_json()) == cgroups
