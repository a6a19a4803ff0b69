"""The local compute driver with real loop mounts, real processes and real cgroups.

Each test runs in its own sandbox (tests/contract/compute_adapters.py): a root under /tmp, the
address pool 127.10.200.0/24, a cgroup parent of its own, and a stand-in guest agent that writes
a heartbeat on its volume and runs a child "datastore" in a session of its own.
"""

from __future__ import annotations

import inspect
import json
import multiprocessing
import os
import signal
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from shared.adapters.local import volumes
from shared.adapters.local.compute import LocalCompute
from shared.adapters.local.system_user import ensure_system_user
from shared.errors import ComputeError
from shared.ports import FlavorSpec, ServerInfo, ServerStatus
from tests.contract.compute_adapters import (
    LocalComputeSandbox,
    local_compute_sandbox,
    wait_for,
)

SMALL = FlavorSpec(ram_mb=256, vcpus=1)
GIB = 1 << 30


@pytest.fixture
def sandbox() -> Iterator[LocalComputeSandbox]:
    with local_compute_sandbox() as box:
        yield box


@pytest.fixture
def compute(sandbox: LocalComputeSandbox) -> LocalCompute:
    compute = sandbox.open()
    if compute.volume_support()[0] != volumes.LOOP:
        pytest.skip(f"loop mounts impossible here: {compute.volume_support()[1]}")
    return compute


def heartbeat(info: ServerInfo, newer_than: int = 0) -> dict[str, Any] | None:
    path = Path(info.volume_path, "heartbeat.json")
    try:
        beat = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
    return beat if beat["beat"] > newer_than else None


def wait_heartbeat(info: ServerInfo, agent_pid: int | None = None) -> dict[str, Any]:
    """The next heartbeat written by `agent_pid` (default: the server's current agent)."""
    pid = agent_pid or info.agent_pid

    def fresh() -> dict[str, Any] | None:
        beat = heartbeat(info)
        return beat if beat and beat["pid"] == pid else None

    result: dict[str, Any] = wait_for(fresh, 10, f"a heartbeat from agent {pid}")
    return result


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def mount_entry(path: str) -> list[str] | None:
    with open("/proc/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            if fields[1] == path:
                return fields
    return None


def uids(pid: int) -> list[int]:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return [int(x) for x in line.split()[1:]]
    raise AssertionError("no Uid line")


def cgroup_procs(info: ServerInfo) -> set[int]:
    pids: set[int] = set()
    for directory in info.details["cgroups"].split(","):
        pids |= {int(p) for p in Path(directory, "cgroup.procs").read_text().split()}
    return pids


def test_default_configuration() -> None:
    # No root needed: the defaults the brief fixes, before anything is created.
    defaults = inspect.signature(LocalCompute).parameters
    assert defaults["zones"].default == ("az1",)
    assert defaults["address_pool"].default == "127.10.0.0/16"
    assert defaults["guest_user"].default == "troveless-guest"


def test_volume_is_a_loop_mounted_ext4_image_of_the_asked_size_owned_by_the_guest(
    compute: LocalCompute,
) -> None:
    info = compute.create_server("inst-a", SMALL, 1, None, {})
    entry = mount_entry(info.volume_path)
    assert entry is not None, "volume not in /proc/mounts"
    assert entry[0].startswith("/dev/loop") and entry[2] == "ext4"
    assert {"nosuid", "nodev"} <= set(entry[3].split(","))
    losetup = subprocess.run(
        ["losetup", "-j", info.details["image"]], capture_output=True, text=True, check=True
    )
    assert losetup.stdout.startswith(entry[0] + ":")
    total, _ = volumes.filesystem_bytes(Path(info.volume_path))
    assert 0.9 * GIB < total <= GIB
    guest = ensure_system_user()
    st = os.stat(info.volume_path)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (guest.uid, guest.gid, 0o700)


def test_agent_runs_as_the_guest_in_its_own_session_inside_the_server_cgroup(
    compute: LocalCompute,
) -> None:
    info = compute.create_server("inst-a", SMALL, 1, None, {"marker": "from-user-data"})
    assert info.agent_pid is not None
    beat = wait_heartbeat(info)
    guest = ensure_system_user()

    assert uids(info.agent_pid) == [guest.uid] * 4
    assert os.getsid(info.agent_pid) == info.agent_pid
    assert beat["user_data_marker"] == "from-user-data"
    assert beat["address"] == info.address
    datastore = beat["datastore_pid"]
    assert os.getsid(datastore) == datastore != info.agent_pid  # a session of its own
    assert {info.agent_pid, datastore} <= cgroup_procs(info)
    user_data = os.stat(info.details["user_data"])
    assert (user_data.st_uid, stat.S_IMODE(user_data.st_mode)) == (guest.uid, 0o600)
    meta = json.loads(Path(info.details["meta_data"]).read_text())
    assert meta["address"] == info.address and meta["flavor"] == {"ram_mb": 256, "vcpus": 1}


def test_cgroup_limits_follow_the_flavor(compute: LocalCompute) -> None:
    info = compute.create_server("inst-a", SMALL, 1, None, {})
    if not info.limits_enforced:
        assert info.limits_note
        pytest.skip(f"limits cannot be enforced here: {info.limits_note}")
    memory_dir, cpu_dir = info.details["cgroups"].split(",")[:2]
    if info.details["cgroup_version"] == "v1":
        assert Path(memory_dir, "memory.limit_in_bytes").read_text().strip() == str(256 << 20)
        assert Path(cpu_dir, "cpu.cfs_quota_us").read_text().strip() == "100000"
    else:
        assert Path(memory_dir, "memory.max").read_text().strip() == str(256 << 20)

    resized = compute.resize_flavor("inst-a", FlavorSpec(ram_mb=512, vcpus=2))
    assert resized.limits_enforced
    if info.details["cgroup_version"] == "v1":
        assert Path(memory_dir, "memory.limit_in_bytes").read_text().strip() == str(512 << 20)
        assert Path(cpu_dir, "cpu.cfs_quota_us").read_text().strip() == "200000"
    assert resized.agent_pid == info.agent_pid  # a live change, no restart


def test_stop_start_and_reboot_replace_every_process_and_keep_the_volume(
    compute: LocalCompute,
) -> None:
    info = compute.create_server("inst-a", SMALL, 1, None, {})
    first = wait_heartbeat(info)

    stopped = compute.stop_server("inst-a")
    assert stopped.agent_pid is None and stopped.agent_alive is False
    assert not alive(first["pid"]) and not alive(first["datastore_pid"])
    assert mount_entry(info.volume_path) is not None  # a stopped server keeps its volume

    started = compute.start_server("inst-a")
    assert started.agent_pid not in (None, first["pid"])
    second = wait_heartbeat(started)

    rebooted = compute.reboot_server("inst-a")
    wait_heartbeat(rebooted)
    assert not alive(second["pid"]) and not alive(second["datastore_pid"])
    assert rebooted.status == ServerStatus.ACTIVE


def test_stop_kills_an_agent_that_ignores_sigterm_and_an_abandoned_datastore(
    sandbox: LocalComputeSandbox,
) -> None:
    compute = sandbox.open(stop_grace_seconds=0.3, kill_grace_seconds=0.3)
    stubborn = compute.create_server("inst-a", SMALL, 1, None, {"ignore_sigterm": True})
    abandoning = compute.create_server("inst-b", SMALL, 1, None, {"orphan_datastore": True})
    beats = [wait_heartbeat(stubborn), wait_heartbeat(abandoning)]

    compute.stop_server("inst-a")
    compute.stop_server("inst-b")

    for beat in beats:
        assert not alive(beat["pid"]) and not alive(beat["datastore_pid"])


def test_a_dead_agent_is_reported_and_start_replaces_what_it_left(compute: LocalCompute) -> None:
    info = compute.create_server("inst-a", SMALL, 1, None, {})
    beat = wait_heartbeat(info)
    os.kill(beat["pid"], signal.SIGKILL)

    down = wait_for(
        lambda: (s := compute.get_server("inst-a")) and not s.agent_alive and s,
        5,
        "the driver to notice the dead agent",
    )
    assert down.status == ServerStatus.SHUTOFF and down.status_reason
    assert alive(beat["datastore_pid"])  # its datastore lives on, orphaned

    restarted = compute.start_server("inst-a")
    wait_heartbeat(restarted)
    assert not alive(beat["datastore_pid"])


def test_resize_volume_grows_the_filesystem_and_keeps_the_data(compute: LocalCompute) -> None:
    info = compute.create_server("inst-a", SMALL, 1, None, {})
    wait_heartbeat(info)
    payload = os.urandom(1 << 20)
    Path(info.volume_path, "data.bin").write_bytes(payload)
    before, _ = volumes.filesystem_bytes(Path(info.volume_path))

    grown = compute.resize_volume("inst-a", 2)

    after, _ = volumes.filesystem_bytes(Path(info.volume_path))
    assert after > 1.9 * before and after <= 2 * GIB
    assert Path(info.volume_path, "data.bin").read_bytes() == payload
    assert grown.status == ServerStatus.ACTIVE and grown.agent_pid != info.agent_pid
    wait_heartbeat(grown)


def test_delete_leaves_no_process_mount_loop_device_cgroup_or_file(
    sandbox: LocalComputeSandbox, compute: LocalCompute
) -> None:
    info = compute.create_server("inst-a", SMALL, 1, None, {})
    beat = wait_heartbeat(info)
    device = info.details["device"]
    cgroup_dirs = info.details["cgroups"].split(",")

    compute.delete_server("inst-a")

    assert not alive(beat["pid"]) and not alive(beat["datastore_pid"])
    assert mount_entry(info.volume_path) is None
    losetup = subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=True)
    assert info.details["image"] not in losetup.stdout
    assert not any(line.startswith(device + ":") for line in losetup.stdout.splitlines())
    assert not any(Path(d).exists() for d in cgroup_dirs)
    assert not Path(info.volume_path).parent.exists()
    assert compute.addresses.claims() == {}
    assert not list((sandbox.root / "volumes").iterdir())
    assert not list((sandbox.root / "locks").iterdir())
    assert not any(sandbox.leftovers().values())


def test_kept_volume_keeps_its_data_for_the_next_server(compute: LocalCompute) -> None:
    info = compute.create_server("inst-a", SMALL, 1, None, {})
    Path(info.volume_path, "kept.txt").write_text("still here")
    compute.delete_server("inst-a", keep_volume=True)
    assert mount_entry(info.volume_path) is None

    again = compute.create_server("inst-b", SMALL, 1, None, {}, volume_from=info.volume_id)
    assert Path(again.volume_path, "kept.txt").read_text() == "still here"


def test_busy_volume_is_detached_lazily_and_its_loop_device_freed_when_released(
    compute: LocalCompute,
) -> None:
    info = compute.create_server("inst-a", SMALL, 1, None, {})
    holder = open(Path(info.volume_path, "held-open"), "w")  # noqa: SIM115 - held across delete
    try:
        compute.delete_server("inst-a")
        assert mount_entry(info.volume_path) is None
    finally:
        holder.close()
    image = info.details["image"]
    wait_for(
        lambda: (
            image
            not in subprocess.run(
                ["losetup", "-a"], capture_output=True, text=True, check=True
            ).stdout
        ),
        5,
        "the lazily detached loop device to be freed",
    )


def test_a_fresh_driver_adopts_running_servers_and_controls_them(
    sandbox: LocalComputeSandbox, compute: LocalCompute
) -> None:
    info = compute.create_server("inst-a", SMALL, 1, None, {})
    beat = wait_heartbeat(info)

    restarted = sandbox.open()
    (adopted,) = restarted.adopt()

    assert adopted.agent_alive is True and adopted.agent_pid == beat["pid"]
    assert adopted.address == info.address
    restarted.stop_server("inst-a")
    assert not alive(beat["pid"]) and not alive(beat["datastore_pid"])


def test_orphans_are_reaped_completely(sandbox: LocalComputeSandbox, compute: LocalCompute) -> None:
    compute.create_server("inst-known", SMALL, 1, None, {})
    orphan = compute.create_server("inst-orphan", SMALL, 1, None, {})
    beat = wait_heartbeat(orphan)

    restarted = sandbox.open()
    assert [s.instance_id for s in restarted.orphans({"inst-known"})] == ["inst-orphan"]
    restarted.reap("inst-orphan")

    assert not alive(beat["pid"]) and not alive(beat["datastore_pid"])
    assert mount_entry(orphan.volume_path) is None
    assert [s.instance_id for s in restarted.list_servers()] == ["inst-known"]


def _pretend_create_crashed(sandbox: LocalComputeSandbox, instance_id: str) -> None:
    record = sandbox.root / "servers" / instance_id / "server.json"
    data = json.loads(record.read_text())
    data["status"] = "BUILD"  # as left by a control plane that died before finishing
    record.write_text(json.dumps(data))


def test_create_again_after_a_crashed_create_rebuilds_from_scratch(
    sandbox: LocalComputeSandbox, compute: LocalCompute
) -> None:
    first = compute.create_server("inst-a", SMALL, 1, None, {})
    beat = wait_heartbeat(first)
    _pretend_create_crashed(sandbox, "inst-a")

    rebuilt = sandbox.open().create_server("inst-a", SMALL, 1, None, {})

    assert rebuilt.status == ServerStatus.ACTIVE and rebuilt.server_id != first.server_id
    assert not alive(beat["pid"]) and not alive(beat["datastore_pid"])
    wait_heartbeat(rebuilt)


def test_adopt_marks_an_interrupted_build_as_error(
    sandbox: LocalComputeSandbox, compute: LocalCompute
) -> None:
    compute.create_server("inst-a", SMALL, 1, None, {})
    _pretend_create_crashed(sandbox, "inst-a")

    (adopted,) = sandbox.open().adopt()

    assert adopted.status == ServerStatus.ERROR
    assert adopted.status_reason is not None and "building" in adopted.status_reason


def test_a_failed_create_leaves_nothing(sandbox: LocalComputeSandbox) -> None:
    compute = sandbox.open(agent_command=["/nonexistent/agent", "--user-data", "{user_data}"])
    with pytest.raises(ComputeError, match="cannot start the guest agent"):
        compute.create_server("inst-a", SMALL, 1, None, {})
    assert compute.get_server("inst-a") is None
    assert compute.addresses.claims() == {}
    assert not any(sandbox.leftovers().values())


def _create_servers(root: str, cgroup_parent: str, instance_ids: list[str]) -> list[str]:
    box = LocalComputeSandbox(root=Path(root), cgroup_parent=cgroup_parent)
    compute = box.open()
    return [compute.create_server(i, SMALL, 1, None, {}).address for i in instance_ids]


def test_two_control_planes_creating_at_once_never_share_an_address(
    sandbox: LocalComputeSandbox,
) -> None:
    spawn = multiprocessing.get_context("spawn")
    batches = [[f"inst-{p}-{n}" for n in range(3)] for p in range(2)]
    with spawn.Pool(2) as pool:
        results = pool.starmap(
            _create_servers, [(str(sandbox.root), sandbox.cgroup_parent, b) for b in batches]
        )
    addresses = [a for batch in results for a in batch]
    assert len(addresses) == len(set(addresses)) == 6
    listed = {s.instance_id: s.address for s in sandbox.open().list_servers()}
    assert sorted(listed.values()) == sorted(addresses)


def test_directory_volumes_when_forced(sandbox: LocalComputeSandbox) -> None:
    compute = sandbox.open(force_directory_volumes=True)
    assert compute.volume_support() == (volumes.DIRECTORY, "directory volumes forced by config")
    info = compute.create_server("inst-a", SMALL, 3, None, {})
    wait_heartbeat(info)

    assert info.volume_kind == "directory" and info.volume_gb == 3
    assert mount_entry(info.volume_path) is None
    guest = ensure_system_user()
    st = os.stat(info.volume_path)
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (guest.uid, 0o700)
    meta = json.loads(Path(info.details["meta_data"]).read_text())
    assert meta["volume"] == {
        "id": info.volume_id,
        "kind": "directory",
        "size_gb": 3,
        "mount_point": info.volume_path,
        "soft_quota": True,
    }
    assert compute.resize_volume("inst-a", 5).volume_gb == 5
    assert json.loads(Path(info.details["meta_data"]).read_text())["volume"]["size_gb"] == 5

    compute.delete_server("inst-a")
    assert not Path(info.volume_path).exists()
