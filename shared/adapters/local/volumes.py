"""Data volumes for local servers: an ext4 image file loop-mounted at the server's data directory.

A loop-mounted image gives the datastore a hard size limit (a full volume is a real ENOSPC) and
can be grown offline. Where loop mounts are impossible (no loop devices, no CAP_SYS_ADMIN) a
plain directory stands in, and the size becomes a soft quota the guest agent enforces.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from shared.errors import TrovelessError

LOOP = "loop"  # shared.models.volume.VolumeKind.LOOP
DIRECTORY = "directory"  # shared.models.volume.VolumeKind.DIRECTORY
GIB = 1 << 30
MOUNT_OPTIONS = "loop,nosuid,nodev"
# e2fsck exit status: 0 clean, 1 errors corrected, 2 corrected but wants a reboot (not us).
_E2FSCK_OK = (0, 1, 2)
_PROBE_IMAGE_BYTES = 16 << 20


class VolumeError(TrovelessError):
    """A volume could not be made, mounted, grown or removed."""


@dataclass(frozen=True)
class UnmountReport:
    lazy: bool  # the filesystem stayed busy and was detached with `umount -l`
    loop_devices_left: tuple[str, ...]


def _run(cmd: list[str], what: str, ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess[str]:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise VolumeError(f"{what}: cannot run {cmd[0]}: {exc}") from exc
    if done.returncode not in ok:
        detail = (done.stderr or done.stdout).strip()
        raise VolumeError(f"{what}: {' '.join(cmd)} exited {done.returncode}: {detail}")
    return done


def _unescape(field: str) -> str:
    return (field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n")).replace(
        "\\134", "\\"
    )


def mounted_at(mount_point: Path) -> str | None:
    """The source (e.g. /dev/loop3) of what is mounted at `mount_point`, or None."""
    target = os.path.realpath(mount_point)
    source = None
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) >= 2 and _unescape(fields[1]) == target:
                source = _unescape(fields[0])  # the last one wins: it is what is visible
    return source


def loop_devices_for(image: Path) -> list[str]:
    """Loop devices backed by `image` (`losetup -j`)."""
    done = _run(["losetup", "-j", str(image)], "list loop devices")
    return [line.split(":", 1)[0] for line in done.stdout.splitlines() if line.strip()]


def detach_loop_devices(image: Path) -> list[str]:
    """Detach every loop device still backed by `image`; returns those that stay attached."""
    for device in loop_devices_for(image):
        subprocess.run(["losetup", "-d", device], capture_output=True, check=False)
    # `losetup -d` on a device still in use only marks it for autoclear: look again.
    return loop_devices_for(image)


def probe_loop_mounts(work_dir: Path) -> str | None:
    """Try a real loop mount of a tiny image under `work_dir`: None if it works, else why not."""
    work_dir.mkdir(parents=True, exist_ok=True)
    probe = Path(tempfile.mkdtemp(prefix=".loop-probe-", dir=work_dir))
    image, mount_point = probe / "probe.img", probe / "mnt"
    try:
        mount_point.mkdir()
        with open(image, "wb") as f:
            f.truncate(_PROBE_IMAGE_BYTES)
        _run(["mkfs.ext4", "-q", "-F", "-m", "0", str(image)], "probe mkfs")
        _run(["mount", "-o", MOUNT_OPTIONS, str(image), str(mount_point)], "probe mount")
        unmount(mount_point, image, busy_timeout=2.0)
        return None
    except VolumeError as exc:
        return str(exc)
    finally:
        if mounted_at(mount_point) is not None:
            subprocess.run(["umount", "-l", str(mount_point)], capture_output=True, check=False)
        if image.exists():
            detach_loop_devices(image)
        shutil.rmtree(probe, ignore_errors=True)


def make_loop_image(image: Path, size_gb: int, owner_uid: int, owner_gid: int) -> None:
    """A sparse ext4 image of `size_gb` GiB whose root directory belongs to the owner."""
    with open(image, "xb") as f:
        f.truncate(size_gb * GIB)
    os.chmod(image, 0o600)
    _run(
        [
            "mkfs.ext4",
            "-q",
            "-F",
            "-m",
            "0",
            "-E",
            f"root_owner={owner_uid}:{owner_gid}",
            str(image),
        ],
        "make filesystem",
    )


def mount_loop_image(image: Path, mount_point: Path, owner_uid: int, owner_gid: int) -> str:
    """Mount `image` at `mount_point` (idempotent); the volume root is the owner's, mode 0700.
    Returns the loop device."""
    mount_point.mkdir(parents=True, exist_ok=True)
    source = mounted_at(mount_point)
    if source is None:
        _run(["mount", "-o", MOUNT_OPTIONS, str(image), str(mount_point)], "mount volume")
        source = mounted_at(mount_point)
        if source is None:
            raise VolumeError(f"mount of {image} at {mount_point} did not show in /proc/mounts")
    os.chown(mount_point, owner_uid, owner_gid)
    os.chmod(mount_point, 0o700)
    return source


def unmount(
    mount_point: Path, image: Path | None, busy_timeout: float = 5.0, *, allow_lazy: bool = True
) -> UnmountReport:
    """Unmount (retrying while busy), then make sure no loop device still holds `image`.

    After `busy_timeout` a still-busy filesystem is detached lazily when `allow_lazy`, else
    VolumeError is raised and the volume stays mounted.
    """
    lazy = False
    deadline = time.monotonic() + busy_timeout
    while mounted_at(mount_point) is not None:
        done = subprocess.run(
            ["umount", str(mount_point)], capture_output=True, text=True, check=False
        )
        if done.returncode == 0:
            continue
        if time.monotonic() < deadline:
            time.sleep(0.05)
            continue
        if not allow_lazy:
            raise VolumeError(f"unmount {mount_point}: still busy: {done.stderr.strip()}")
        _run(["umount", "-l", str(mount_point)], "lazy unmount")
        lazy = True
        break
    left: tuple[str, ...] = ()
    if image is not None and image.exists():
        left = tuple(detach_loop_devices(image))
    return UnmountReport(lazy=lazy, loop_devices_left=left)


def grow_loop_image(image: Path, new_gb: int) -> None:
    """Grow an unmounted image and its filesystem to `new_gb` GiB (online resize2fs is refused
    without CAP_SYS_RESOURCE, so this is done offline)."""
    if loop_devices_for(image):
        raise VolumeError(f"grow {image}: still attached to a loop device")
    size = image.stat().st_size
    if new_gb * GIB < size:
        raise VolumeError(f"grow {image}: {new_gb} GiB is smaller than {size / GIB:.2f} GiB")
    with open(image, "r+b") as f:
        f.truncate(new_gb * GIB)
    _run(["e2fsck", "-f", "-y", str(image)], "check filesystem", ok=_E2FSCK_OK)
    _run(["resize2fs", str(image)], "resize filesystem")


def image_size_gb(image: Path) -> int:
    return image.stat().st_size // GIB


def make_directory_volume(path: Path, owner_uid: int, owner_gid: int) -> None:
    """The stand-in volume where loop mounts are impossible: a private directory."""
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, owner_uid, owner_gid)
    os.chmod(path, 0o700)


def filesystem_bytes(path: Path) -> tuple[int, int]:
    """(total, free) bytes of the filesystem holding `path`."""
    st = os.statvfs(path)
    return st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
