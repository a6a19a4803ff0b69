"""The Compute adapters the contract suite runs against, and the local sandbox they use.

To put another adapter under the suite, write a factory: a context manager taking the pytest
request (so it can ask for a server fixture) that yields a `ComputeUnderTest` and cleans up
after, and add it to `COMPUTE_FACTORIES`. EC2 + EBS runs here on moto; Nova + Cinder cannot
(its tests replay recorded exchanges, which fit one scripted scenario, not a generic suite).

The local sandbox gives each test its own root directory, address pool file space and cgroup
parent, runs a stand-in guest agent (stand_in_guest_agent.py) with the system Python, and on
exit removes every process, mount, loop device, cgroup and file it made, even when the test
failed. It then reports what the driver itself had left behind, so leaks fail loudly.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from shared.adapters.aws.ec2_compute import TAG_INSTANCE, TAG_KEPT, Ec2Compute, make_ec2_client
from shared.adapters.local import volumes
from shared.adapters.local.cgroups import CgroupHierarchies
from shared.adapters.local.compute import META_DATA_ENV, LocalCompute
from shared.ports import Compute, FlavorSpec
from tests.contract import moto_server

STAND_IN_AGENT = Path(__file__).with_name("stand_in_guest_agent.py")
# The guest user cannot reach the venv's interpreter here (it lives under /root, mode 0700).
SYSTEM_PYTHON = "/usr/bin/python3"
TEST_ADDRESS_POOL = "127.10.200.0/24"
TEST_ZONES = ("az1", "az2")


def stand_in_agent_command() -> list[str]:
    return [SYSTEM_PYTHON, str(STAND_IN_AGENT), "--user-data", "{user_data}"]


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll `predicate` until it returns something truthy; fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def require_local_compute_host() -> None:
    if os.geteuid() != 0:
        pytest.skip("the local compute driver needs root (mounts, cgroups, users)")
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        pytest.skip(f"{SYSTEM_PYTHON} (for the stand-in agent) is missing")


@dataclass
class LocalComputeSandbox:
    root: Path
    cgroup_parent: str
    opened: list[LocalCompute] = field(default_factory=list)

    def open(self, **overrides: Any) -> LocalCompute:
        """A LocalCompute on this sandbox's root: a second call is a control-plane restart."""
        options: dict[str, Any] = {
            "zones": TEST_ZONES,
            "address_pool": TEST_ADDRESS_POOL,
            "cgroup_parent": self.cgroup_parent,
            "agent_command": stand_in_agent_command(),
            "stop_grace_seconds": 3.0,
            "kill_grace_seconds": 1.0,
            "busy_unmount_timeout": 1.0,
        }
        options.update(overrides)
        compute = LocalCompute(self.root, **options)
        self.opened.append(compute)
        return compute

    def processes(self) -> list[psutil.Process]:
        """Live processes started for a server of this sandbox (they carry its meta-data path)."""
        found = []
        for proc in psutil.process_iter(["pid"]):
            try:
                ours = proc.environ().get(META_DATA_ENV, "").startswith(f"{self.root}/")
                if ours and proc.status() != psutil.STATUS_ZOMBIE:
                    found.append(proc)
            except psutil.Error:
                continue
        return found

    def mounts(self) -> list[str]:
        out = []
        with open("/proc/self/mounts") as f:
            for line in f:
                target = line.split()[1]
                if target.startswith(f"{self.root}/"):
                    out.append(target)
        return out

    def loop_devices(self) -> list[str]:
        done = subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=True)
        return [line for line in done.stdout.splitlines() if f"{self.root}/" in line]

    def cgroup_dirs(self) -> list[Path]:
        h = CgroupHierarchies.detect()
        parents = {mount / self.cgroup_parent for mount in h.v1.values()}
        if h.v2 is not None:
            parents.add(h.v2 / self.cgroup_parent)
        return sorted(d for p in parents if p.is_dir() for d in p.iterdir() if d.is_dir())

    def leftovers(self) -> dict[str, list[str]]:
        return {
            "processes": [f"{p.pid} {p.name()}" for p in self.processes()],
            "mounts": self.mounts(),
            "loop devices": self.loop_devices(),
            "cgroups": [str(d) for d in self.cgroup_dirs()],
            "server files": [str(p) for p in (self.root / "servers").glob("*")],
            "lock files": [str(p) for p in (self.root / "locks").glob("*")],
            "address claims": [p.name for p in (self.root / "addresses").glob("[0-9]*")],
        }


def _force_cleanup(sandbox: LocalComputeSandbox) -> None:
    """Remove whatever is left, without trusting the driver."""
    for proc in sandbox.processes():
        with suppress(psutil.Error):
            proc.send_signal(signal.SIGKILL)
    for target in sandbox.mounts():
        subprocess.run(["umount", "-l", target], capture_output=True, check=False)
    for line in sandbox.loop_devices():
        subprocess.run(["losetup", "-d", line.split(":", 1)[0]], capture_output=True, check=False)
    for directory in sandbox.cgroup_dirs():
        deadline = time.monotonic() + 5
        while directory.exists() and time.monotonic() < deadline:
            with suppress(OSError):
                for pid in (directory / "cgroup.procs").read_text().split():
                    with suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
                directory.rmdir()
            time.sleep(0.02)
    h = CgroupHierarchies.detect()
    mounts = [*h.v1.values(), *([h.v2] if h.v2 else [])]
    for mount in mounts:
        with suppress(OSError):
            (mount / sandbox.cgroup_parent).rmdir()
    shutil.rmtree(sandbox.root, ignore_errors=True)


@contextmanager
def local_compute_sandbox() -> Iterator[LocalComputeSandbox]:
    require_local_compute_host()
    # Not under pytest's tmp_path: that is 0700, and the guest user must reach its files.
    root = Path(tempfile.mkdtemp(prefix="tl-compute-", dir="/tmp"))
    os.chmod(root, 0o755)
    sandbox = LocalComputeSandbox(root=root, cgroup_parent=f"troveless-test-{uuid.uuid4().hex[:8]}")
    leaks: dict[str, list[str]] = {}
    try:
        yield sandbox
    finally:
        try:
            if (root / "servers").exists():
                compute = sandbox.open()
                for info in compute.list_servers():
                    compute.delete_server(info.instance_id)
            leaks = {k: v for k, v in sandbox.leftovers().items() if v}
        finally:
            _force_cleanup(sandbox)
    assert not leaks, f"the driver left these behind after deleting every server: {leaks}"


# ---------------------------------------------------------------------- the contract's view
@dataclass
class ComputeUnderTest:
    """What a contract test works with: the adapter, and `reopen` for a control-plane restart
    (a new adapter object on the same cloud)."""

    name: str
    compute: Compute
    reopen: Callable[[], Compute]
    user_data: dict[str, Any] = field(default_factory=dict)
    # Capability flags: what a cloud does not promise. A freed address is handed out again
    # by the local pool; EC2 (moto included) picks private addresses at random.
    reuses_addresses: bool = True


@contextmanager
def local_loop_compute(request: pytest.FixtureRequest) -> Iterator[ComputeUnderTest]:
    with local_compute_sandbox() as sandbox:
        compute = sandbox.open()
        if compute.volume_support()[0] != volumes.LOOP:
            pytest.skip(f"loop mounts impossible here: {compute.volume_support()[1]}")
        yield ComputeUnderTest("local-loop", compute, sandbox.open)


@contextmanager
def local_directory_compute(request: pytest.FixtureRequest) -> Iterator[ComputeUnderTest]:
    with local_compute_sandbox() as sandbox:
        compute = sandbox.open(force_directory_volumes=True)
        yield ComputeUnderTest(
            "local-directory", compute, lambda: sandbox.open(force_directory_volumes=True)
        )


@contextmanager
def ec2_moto_compute(request: pytest.FixtureRequest) -> Iterator[ComputeUnderTest]:
    """Ec2Compute on the session's moto server (EC2 + EBS; its first EC2 call costs seconds, so
    it is shared). Each test starts with no troveless instance or volume and leaves none: what
    the adapter's deletes leave behind fails the test."""
    endpoint: str = request.getfixturevalue("moto_endpoint")
    client = make_ec2_client(
        endpoint,
        region=moto_server.REGION,
        access_key=moto_server.ACCESS_KEY,
        secret_key=moto_server.SECRET_KEY,
    )

    def open_adapter() -> Ec2Compute:
        return Ec2Compute(
            client,
            images={"mariadb": "ami-0a1b2c3d4e5f60001"},
            instance_types={
                FlavorSpec(ram_mb=256, vcpus=1): "t3.nano",
                FlavorSpec(ram_mb=512, vcpus=2): "t3.micro",
            },
            zones=("us-east-1a", "us-east-1b", "us-east-1c"),
            poll_interval=0.05,
            timeout=30,
        )

    def troveless_volumes() -> list[str]:
        found = client.describe_volumes(Filters=[{"Name": "tag-key", "Values": [TAG_INSTANCE]}])
        return [v["VolumeId"] for v in found["Volumes"]]

    compute = open_adapter()
    assert compute.list_servers() == [] and troveless_volumes() == [], "EC2 not empty"
    leaks: list[str] = []
    try:
        yield ComputeUnderTest(
            "ec2-moto",
            compute,
            open_adapter,
            user_data={"datastore_type": "mariadb", "datastore_version": "11.4"},
            reuses_addresses=False,
        )
    finally:
        for server in compute.list_servers():
            compute.delete_server(server.instance_id)
        # Kept volumes are the tests' to leave; anything else left is a leak.
        for volume_id in troveless_volumes():
            kept = client.describe_volumes(VolumeIds=[volume_id])["Volumes"][0]
            if {"Key": TAG_KEPT, "Value": "true"} not in kept.get("Tags", []):
                leaks.append(volume_id)
            client.delete_volume(VolumeId=volume_id)
    assert not leaks, f"volumes left behind after deleting every server: {leaks}"


COMPUTE_FACTORIES: dict[str, Callable[[pytest.FixtureRequest], Any]] = {
    "local-loop": local_loop_compute,
    "local-directory": local_directory_compute,
    "ec2-moto": ec2_moto_compute,
}
