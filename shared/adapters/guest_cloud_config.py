"""The cloud-init user-data that makes a cloud VM (Nova server, EC2 instance) a troveless guest.

The local compute driver writes the control plane's user-data JSON to a 0600 file only the guest
user can read, and a meta-data file beside it. On a VM, cloud-init does the same from this
document: it creates the `troveless` system user, writes the very same user-data JSON (0600, owned
by that user), and installs a boot script and a systemd unit that, at every boot,

- waits for the data volume (named by its cloud volume id, so the attach order does not matter),
  makes an ext4 filesystem on it if it is blank, mounts it and grows the filesystem to the
  volume's size (so a volume grown while the server was stopped is picked up at the next boot);
- writes the meta-data file the agent reads: its address, its RAM (from /proc/meminfo, so a
  resized flavor is seen), and the volume's mount point and size;
- starts the guest agent as the `troveless` user.

The document is `#cloud-config` followed by JSON, which YAML parsers read as YAML. The image must
have python3 with the troveless package installed (the datastore images do), and cloud-init.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence

from shared.ports import JSON

GUEST_USER = "troveless"
CONFIG_DIR = "/etc/troveless"
USER_DATA_PATH = f"{CONFIG_DIR}/user-data.json"
META_DATA_PATH = f"{CONFIG_DIR}/meta-data.json"
MOUNT_POINT = "/var/lib/troveless/data"
BOOT_SCRIPT_PATH = "/usr/local/libexec/troveless-guest-boot"
UNIT_NAME = "troveless-guest.service"
# Nova and EC2 both cap user-data (EC2 at 16 KiB before base64).
MAX_USER_DATA_BYTES = 16 * 1024

_BOOT_SCRIPT = """#!/bin/sh
# Prepares the data volume and the agent's meta-data at every boot (see troveless docs).
set -eu
mnt={mount_point}
dev=""
waited=0
while [ -z "$dev" ]; do
  for candidate in {candidates}; do
    if [ -b "$candidate" ]; then dev=$(readlink -f "$candidate"); break; fi
  done
  if [ -z "$dev" ]; then
    if [ "$waited" -ge 600 ]; then echo "data volume {volume_id} not attached" >&2; exit 1; fi
    sleep 1; waited=$((waited + 1))
  fi
done
# blkid -p exits 2 only when the device holds no filesystem: never format on any other answer.
set +e; blkid -p "$dev" >/dev/null 2>&1; probe=$?; set -e
if [ "$probe" -eq 2 ]; then mkfs.ext4 -q -L troveless-data "$dev"
elif [ "$probe" -ne 0 ]; then echo "cannot probe $dev (blkid: $probe)" >&2; exit 1; fi
mkdir -p "$mnt"
if ! mountpoint -q "$mnt"; then
  # A volume grown while the server was stopped: grow the filesystem offline, before the
  # datastore starts (resize2fs wants a fresh e2fsck; exit 1 means errors were corrected).
  fs_bytes=$(dumpe2fs -h "$dev" 2>/dev/null |
    awk -F: '/^Block count/ {{c = $2}} /^Block size/ {{s = $2}} END {{printf "%.0f", c * s}}')
  if [ "$(blockdev --getsize64 "$dev")" -gt "$fs_bytes" ]; then
    e2fsck -f -p "$dev" || [ $? -le 1 ]
    resize2fs "$dev"
  fi
  mount -o noatime "$dev" "$mnt"
fi
chown {user}:{user} "$mnt"
chmod 0700 "$mnt"
addr=$(ip -4 route get 1.1.1.1 2>/dev/null | sed -n 's/.* src \\([0-9.]*\\).*/\\1/p')
# No default route (an isolated network): the first global address.
[ -n "$addr" ] ||
  addr=$(ip -4 -o addr show scope global | awk '{{split($4, a, "/"); print a[1]; exit}}')
if [ -z "$addr" ]; then echo "no IPv4 address for the datastore" >&2; exit 1; fi
ram_mb=$(awk '/^MemTotal:/ {{print int($2 / 1024)}}' /proc/meminfo)
size_gb=$(( $(blockdev --getsize64 "$dev") / 1073741824 ))
umask 022
cat > {meta_data}.tmp <<EOF
{{"instance_id": "{instance_id}", "address": "$addr", "zone": "{zone}",
 "flavor": {{"ram_mb": $ram_mb}},
 "volume": {{"id": "{volume_id}", "kind": "{volume_kind}", "size_gb": $size_gb,
  "mount_point": "$mnt", "soft_quota": false}}}}
EOF
mv {meta_data}.tmp {meta_data}
"""

_UNIT = """[Unit]
Description=troveless guest agent
After=network-online.target
Wants=network-online.target

[Service]
ExecStartPre=+{boot_script}
ExecStart=/usr/bin/python3 -m guest_agent --user-data {user_data} --meta-data {meta_data}
User={user}
Restart=on-failure
RestartSec=5
KillSignal=SIGTERM
TimeoutStopSec=120

[Install]
WantedBy=multi-user.target
"""


def boot_script(
    *,
    instance_id: str,
    zone: str,
    volume_id: str,
    volume_kind: str,
    device_candidates: Sequence[str],
    mount_point: str = MOUNT_POINT,
    meta_data_path: str = META_DATA_PATH,
    user: str = GUEST_USER,
) -> str:
    """The guest's boot script (POSIX sh, run as root before the agent at every boot); the
    paths and user are parameters so tests can run it in a sandbox."""
    return _BOOT_SCRIPT.format(
        mount_point=mount_point,
        candidates=" ".join(device_candidates),
        volume_id=volume_id,
        volume_kind=volume_kind,
        user=user,
        meta_data=meta_data_path,
        instance_id=instance_id,
        zone=zone,
    )


class UserDataTooLargeError(ValueError):
    """The cloud-config would exceed what the cloud accepts as user-data."""


def guest_cloud_config(
    user_data: JSON,
    *,
    instance_id: str,
    zone: str,
    volume_id: str,
    volume_kind: str,
    device_candidates: Sequence[str],
) -> str:
    """The cloud-config for one server; `device_candidates` are the paths under which the
    guest may see its data volume (the first that exists is used)."""
    user_data_json = json.dumps(user_data, sort_keys=True)
    script = boot_script(
        instance_id=instance_id,
        zone=zone,
        volume_id=volume_id,
        volume_kind=volume_kind,
        device_candidates=device_candidates,
    )
    unit = _UNIT.format(
        boot_script=BOOT_SCRIPT_PATH,
        user_data=USER_DATA_PATH,
        meta_data=META_DATA_PATH,
        user=GUEST_USER,
    )
    document = {
        "users": [
            "default",
            {"name": GUEST_USER, "system": True, "shell": "/usr/sbin/nologin"},
        ],
        # Deferred: written in the final stage, once the guest user exists to own them.
        "write_files": [
            {
                "path": USER_DATA_PATH,
                "owner": f"{GUEST_USER}:{GUEST_USER}",
                "permissions": "0600",
                "encoding": "b64",
                "content": base64.b64encode(user_data_json.encode()).decode(),
                "defer": True,
            },
            {
                "path": BOOT_SCRIPT_PATH,
                "permissions": "0755",
                "content": script,
                "defer": True,
            },
            {
                "path": f"/etc/systemd/system/{UNIT_NAME}",
                "permissions": "0644",
                "content": unit,
                "defer": True,
            },
        ],
        "runcmd": [
            ["systemctl", "daemon-reload"],
            ["systemctl", "enable", "--now", UNIT_NAME],
        ],
    }
    text = "#cloud-config\n" + json.dumps(document, indent=1) + "\n"
    if len(text.encode()) > MAX_USER_DATA_BYTES:
        raise UserDataTooLargeError(
            f"cloud-config is {len(text.encode())} bytes, over {MAX_USER_DATA_BYTES}"
        )
    return text


def boot_script_from_cloud_config(text: str) -> str:
    """The boot script inside a cloud-config made by `guest_cloud_config`."""
    return str(_file_entry(text, BOOT_SCRIPT_PATH)["content"])


def _file_entry(text: str, path: str) -> JSON:
    header = "#cloud-config\n"
    if not text.startswith(header):
        raise ValueError("not a cloud-config document")
    document = json.loads(text[len(header) :])
    for entry in document["write_files"]:
        if entry["path"] == path:
            found: JSON = entry
            return found
    raise ValueError(f"the cloud-config writes no {path}")


def user_data_from_cloud_config(text: str) -> JSON:
    """The control plane's user-data inside a cloud-config made by `guest_cloud_config` (tests
    and operators use it to check what a server was given)."""
    entry = _file_entry(text, USER_DATA_PATH)
    decoded: JSON = json.loads(base64.b64decode(entry["content"]))
    return decoded
