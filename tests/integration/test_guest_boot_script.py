"""The cloud guests' boot script (shared/adapters/guest_cloud_config.py), run for real as root on
a loop device standing in for the Cinder/EBS data volume, in a private mount namespace (its
mounts vanish with it). Nothing else tests the guest side of the cloud adapters: moto and the
Nova replay never boot a VM.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from guest_agent.user_data import parse_meta_data
from shared.adapters.guest_cloud_config import boot_script

INSTANCE_ID = "5f0c1c38-0a4e-4d55-9f0e-6f8b4b0a1a11"
GIB = 1 << 30
TOOLS = (
    "unshare",
    "losetup",
    "mkfs.ext4",
    "blkid",
    "dumpe2fs",
    "e2fsck",
    "resize2fs",
    "blockdev",
    "ip",
)

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(t) for t in TOOLS),
    reason="needs root and util-linux/e2fsprogs/iproute2 (loop devices, mounts)",
)


@pytest.fixture
def loop_volume(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A sparse 1 GiB image on a loop device, detached after the test."""
    image = tmp_path / "volume.img"
    with image.open("wb") as f:
        f.truncate(GIB)
    device = subprocess.run(
        ["losetup", "--find", "--show", str(image)], capture_output=True, text=True, check=True
    ).stdout.strip()
    try:
        yield image, device
    finally:
        subprocess.run(["losetup", "-d", device], capture_output=True, check=False)


def _boot(script: Path, then: str) -> subprocess.CompletedProcess[str]:
    """Run the boot script, then `then`, in a mount namespace of their own."""
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", f"sh {script} && {then}"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_boot_formats_mounts_and_describes_the_volume_then_grows_it_keeping_data(
    tmp_path: Path, loop_volume: tuple[Path, str]
) -> None:
    image, device = loop_volume
    mount_point = tmp_path / "data"
    meta_path = tmp_path / "meta-data.json"
    script = tmp_path / "boot.sh"
    script.write_text(
        boot_script(
            instance_id=INSTANCE_ID,
            zone="az1",
            volume_id="vol-0123",
            volume_kind="ebs",
            # The first candidate never appears: the script takes the first that exists.
            device_candidates=[str(tmp_path / "no-such-device"), device],
            mount_point=str(mount_point),
            meta_data_path=str(meta_path),
            user="root",
        )
    )

    first = _boot(script, f"echo kept > {mount_point}/marker && stat -c %a {mount_point}")
    assert first.returncode == 0, first.stderr
    assert first.stdout.split()[-1:] == ["700"]
    fs_type = subprocess.run(
        ["blkid", "-p", "-s", "TYPE", "-o", "value", device],
        capture_output=True,
        text=True,
        check=False,
    )
    assert fs_type.stdout.strip() == "ext4"
    meta = parse_meta_data(json.loads(meta_path.read_text()))
    assert meta.instance_id == INSTANCE_ID
    assert meta.volume is not None and meta.volume.size_gb == 1
    assert meta.volume.mount_point == mount_point and not meta.volume.soft_quota
    assert meta.address and meta.flavor is not None and meta.flavor.ram_mb > 0

    # The cloud grew the volume while the server was stopped; the next boot grows the
    # filesystem and keeps what was written.
    with image.open("r+b") as f:
        f.truncate(2 * GIB)
    subprocess.run(["losetup", "-c", device], check=True)
    second = _boot(
        script, f"cat {mount_point}/marker && df -B1 --output=size {mount_point} | tail -n 1"
    )
    assert second.returncode == 0, second.stderr
    marker, size = second.stdout.split()[-2:]  # after e2fsck and resize2fs output
    assert marker == "kept"
    assert int(size) > 1.5 * GIB
    grown = parse_meta_data(json.loads(meta_path.read_text()))
    assert grown.volume is not None and grown.volume.size_gb == 2
