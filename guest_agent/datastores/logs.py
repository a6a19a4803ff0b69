"""Guest logs (Trove's `/instances/<id>/log`): which logs a datastore has, and publishing them.

Each manager names its logs in `guest_logs`: SYS logs (the server's error log) are always on;
USER logs (MariaDB's slow query and general logs, PostgreSQL's statement log) are switched on
and off by the manager. Every log is a file under the volume's `log/` directory.

Publishing copies what was written since the last publish into the BlobStore as one new object
`<prefix>/<UTC timestamp>`, streamed in chunks (a log can be large). How far each log was
published (byte offset, and the file's inode to notice rotation) is kept in
`conf/published_logs.json` on the volume, so it survives agent restarts. Discarding deletes
every published object of the log and starts over from the beginning of the file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.errors import NotFoundError
from shared.ports import BlobStore

if TYPE_CHECKING:
    from guest_agent.datastores.base import DatastoreManager

PUBLISH_STATE_FILE = "published_logs.json"
CHUNK_BYTES = 1 << 20


class LogType(StrEnum):
    USER = "USER"  # the tenant switches it on and off
    SYS = "SYS"  # always on


@dataclass(frozen=True)
class GuestLogSpec:
    name: str
    type: LogType
    file: str  # under the volume's log/ directory
    description: str


def _spec(manager: DatastoreManager, name: str) -> GuestLogSpec:
    spec = manager.guest_logs.get(name)
    if spec is None:
        raise NotFoundError(name, "log")
    return spec


def _state_path(manager: DatastoreManager) -> Path:
    return manager.layout.conf / PUBLISH_STATE_FILE


def _read_state(manager: DatastoreManager) -> dict[str, dict[str, int]]:
    try:
        data = json.loads(_state_path(manager).read_text())
    except FileNotFoundError:
        return {}
    return data if isinstance(data, dict) else {}


def _write_state(manager: DatastoreManager, state: dict[str, dict[str, int]]) -> None:
    path = _state_path(manager)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, sort_keys=True))
    os.replace(tmp, path)


def _file_facts(path: Path) -> tuple[int, int]:
    """(size, inode) of a log file; (0, 0) when it does not exist yet."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return 0, 0
    return st.st_size, st.st_ino


def _offset(entry: dict[str, int] | None, size: int, inode: int) -> int:
    """Where the next publish starts: 0 after a rotation (new inode) or truncation."""
    if not entry or entry.get("inode") != inode or entry.get("offset", 0) > size:
        return 0
    return int(entry.get("offset", 0))


def describe(manager: DatastoreManager, name: str) -> dict[str, Any]:
    """One log's state: type, enabled, size, bytes published and pending."""
    spec = _spec(manager, name)
    size, inode = _file_facts(manager.layout.log / spec.file)
    entry = _read_state(manager).get(name)
    published = _offset(entry, size, inode)
    enabled = True if spec.type is LogType.SYS else manager.log_enabled(name)
    return {
        "name": name,
        "type": spec.type.value,
        "enabled": enabled,
        "size": size,
        "published": published,
        "pending": size - published,
        "description": spec.description,
    }


def list_logs(manager: DatastoreManager) -> list[dict[str, Any]]:
    return [describe(manager, name) for name in manager.guest_logs]


def set_enabled(manager: DatastoreManager, name: str, enabled: bool) -> None:
    spec = _spec(manager, name)
    if spec.type is LogType.SYS:
        raise ValueError(f"name: the {name} log is a system log and is always on")
    manager.log_enabled(name)  # fails early when the server is not running
    manager.set_log_enabled(name, enabled)


def _chunks(path: Path, start: int, end: int) -> Iterator[bytes]:
    with path.open("rb") as f:
        f.seek(start)
        left = end - start
        while left > 0:
            chunk = f.read(min(CHUNK_BYTES, left))
            if not chunk:
                return
            left -= len(chunk)
            yield chunk


def publish(
    manager: DatastoreManager, blobs: BlobStore, name: str, prefix: str, now: float
) -> str | None:
    """Upload what `name` gained since its last publish; the new object's key, or None if
    there was nothing new."""
    spec = _spec(manager, name)
    path = manager.layout.log / spec.file
    size, inode = _file_facts(path)
    state = _read_state(manager)
    start = _offset(state.get(name), size, inode)
    if size <= start:
        return None
    stamp = datetime.fromtimestamp(now, UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    key = f"{prefix}/{stamp}"
    blobs.put(
        key,
        _chunks(path, start, size),
        metadata={"log": name, "first-byte": str(start), "bytes": str(size - start)},
    )
    state[name] = {"offset": size, "inode": inode}
    _write_state(manager, state)
    return key


def discard(manager: DatastoreManager, blobs: BlobStore, name: str, prefix: str) -> int:
    """Delete every published object of `name`; the next publish starts from the file's
    beginning. Returns how many objects were deleted."""
    _spec(manager, name)
    keys = [info.key for info in blobs.list(prefix + "/")]
    for key in keys:
        blobs.delete(key)
    state = _read_state(manager)
    if state.pop(name, None) is not None:
        _write_state(manager, state)
    return len(keys)
