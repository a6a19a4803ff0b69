"""The unprivileged system user that local servers (guest agent and datastores) run as.

initdb, postgres and mariadbd refuse to run as root, and a tenant's database must not hold root's
powers on the host, so every local server runs as one locked-down system account.
"""

from __future__ import annotations

import pwd
import re
import subprocess
from dataclasses import dataclass

from shared.errors import TrovelessError

DEFAULT_GUEST_USER = "troveless-guest"
# What useradd accepts on Debian without --badname, kept short for `ps` columns.
_USER_NAME = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
# useradd's exit status when the name was taken meanwhile (another process created it).
_USERADD_NAME_IN_USE = 9


class SystemUserError(TrovelessError):
    """The guest's system user does not exist and could not be created."""


@dataclass(frozen=True)
class SystemUser:
    name: str
    uid: int
    gid: int


def lookup_system_user(name: str) -> SystemUser | None:
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return None
    return SystemUser(name=entry.pw_name, uid=entry.pw_uid, gid=entry.pw_gid)


def ensure_system_user(name: str = DEFAULT_GUEST_USER) -> SystemUser:
    """The user `name`, created as a no-login system account (own group, no home) if missing."""
    if not _USER_NAME.fullmatch(name):
        raise SystemUserError(f"invalid system user name {name!r} (want {_USER_NAME.pattern})")
    existing = lookup_system_user(name)
    if existing is not None:
        if existing.uid == 0:
            raise SystemUserError(f"system user {name!r} is root; the guest must be unprivileged")
        return existing
    cmd = [
        "useradd",
        "--system",
        "--user-group",
        "--no-create-home",
        "--home-dir",
        "/nonexistent",
        "--shell",
        "/usr/sbin/nologin",
        name,
    ]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise SystemUserError(f"cannot run useradd to create {name!r}: {exc}") from exc
    if done.returncode not in (0, _USERADD_NAME_IN_USE):
        raise SystemUserError(f"useradd {name!r} failed ({done.returncode}): {done.stderr.strip()}")
    created = lookup_system_user(name)
    if created is None:
        raise SystemUserError(f"useradd reported success but {name!r} does not exist")
    return created
