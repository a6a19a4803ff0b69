"""Guest logs of an instance (Trove's `/instances/<id>/log`).

The guest lists its datastore's logs (the MariaDB error, slow query and general logs, the
PostgreSQL server log, the Redis log), switches USER logs on and off, and publishes a log by
streaming what it gained since the last publish into the BlobStore, one object per publish,
under `logs/<project>/<instance>/<log>/<UTC timestamp>`; discard deletes those objects.
Reading a log back is reading those objects in key order (`published_objects`).

The answer has Trove's log shape: `name`, `type` (USER/SYS), `status`, `published` and
`pending` (bytes), and where the objects are: `container` ("logs", the first key segment)
and `prefix` (the rest, ending in '/').
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from shared.errors import NotFoundError, RequestError
from shared.models.guest import GuestCommandName
from shared.ports import BlobInfo, BlobStore, Clock, Queue, StateStore
from shared.services.databases import load_instance, require_usable
from shared.services.guest_calls import (
    DEFAULT_CALL_TIMEOUT,
    GuestCalls,
    GuestCommandFailedError,
)

LOG_CONTAINER = "logs"
ACTIONS = ("enable", "disable", "discard", "publish")
_LOG_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")


def log_prefix(project_id: str, instance_id: str, log_name: str) -> str:
    """The BlobStore key prefix of one log's published objects (no trailing '/')."""
    return f"{LOG_CONTAINER}/{project_id}/{instance_id}/{log_name}"


def _status(entry: Mapping[str, Any]) -> str:
    """Trove's log status words."""
    published, pending = int(entry.get("published", 0)), int(entry.get("pending", 0))
    if entry.get("type") == "USER" and not entry.get("enabled") and published == 0:
        return "Disabled"
    if published == 0:
        return "Enabled" if entry.get("type") == "USER" else "Ready"
    return "Published" if pending == 0 else "Partial"


def _trove_log(project_id: str, instance_id: str, entry: Mapping[str, Any]) -> dict[str, Any]:
    name = str(entry["name"])
    return {
        "name": name,
        "type": entry.get("type", "SYS"),
        "status": _status(entry),
        "enabled": bool(entry.get("enabled")),
        "published": int(entry.get("published", 0)),
        "pending": int(entry.get("pending", 0)),
        "container": LOG_CONTAINER,
        "prefix": f"{project_id}/{instance_id}/{name}/",
        "metafile": None,
    }


def parse_log_action(body: object) -> tuple[str, list[str]]:
    """Trove's `{"name": ..., "enable"|"disable"|"publish"|"discard": 1}` -> (name, actions)."""
    if not isinstance(body, Mapping):
        raise RequestError("body", "must be an object with a log 'name'")
    name = body.get("name")
    if not isinstance(name, str) or not _LOG_NAME.fullmatch(name):
        raise RequestError("name", "must be the name of one of the instance's logs")
    unknown = set(body) - {"name", *ACTIONS}
    if unknown:
        raise RequestError(sorted(unknown)[0], f"is not a log action ({', '.join(ACTIONS)})")
    actions = [action for action in ACTIONS if body.get(action)]
    if "enable" in actions and "disable" in actions:
        raise RequestError("enable", "cannot be combined with disable")
    return name, actions


class InstanceLogService:
    """List, switch, publish and discard an instance's guest logs."""

    def __init__(
        self,
        store: StateStore,
        queue: Queue,
        clock: Clock,
        master_key: bytes,
        blobs: BlobStore,
        *,
        calls: GuestCalls | None = None,
        timeout: float = DEFAULT_CALL_TIMEOUT,
    ) -> None:
        self._store = store
        self._blobs = blobs
        self._calls = calls or GuestCalls(store, queue, clock, master_key)
        self._timeout = timeout

    def list_logs(self, project_id: str, instance_id: str) -> list[dict[str, Any]]:
        instance = require_usable(load_instance(self._store, project_id, instance_id))
        result: Any = self._calls.call(
            instance, GuestCommandName.GUEST_LOG_LIST, {}, timeout=self._timeout
        ).result
        entries = result["logs"] if isinstance(result, Mapping) else []
        return [_trove_log(project_id, instance.id, entry) for entry in entries]

    def show_log(self, project_id: str, instance_id: str, name: str) -> dict[str, Any]:
        """One log (a request naming the log and no action)."""
        return self.act(project_id, instance_id, {"name": name})

    def act(self, project_id: str, instance_id: str, body: object) -> dict[str, Any]:
        """Trove's POST /log: switch, discard and/or publish one log; its new state."""
        name, actions = parse_log_action(body)
        instance = require_usable(load_instance(self._store, project_id, instance_id))
        if not actions:
            for entry in self.list_logs(project_id, instance_id):
                if entry["name"] == name:
                    return entry
            raise NotFoundError(name, "log")
        result: Any = self._calls.call(
            instance,
            GuestCommandName.GUEST_LOG_ACTION,
            {
                "name": name,
                "actions": actions,
                "blob_prefix": log_prefix(project_id, instance.id, name),
            },
            timeout=self._timeout,
        ).result
        if not isinstance(result, Mapping) or not isinstance(result.get("log"), Mapping):
            raise GuestCommandFailedError(
                instance.id, "guest_log_action", "InvalidResult", "the guest returned no log state"
            )
        return _trove_log(project_id, instance.id, result["log"])

    def published_objects(self, project_id: str, instance_id: str, name: str) -> list[BlobInfo]:
        """The published objects of one log, oldest first (keys sort by time)."""
        load_instance(self._store, project_id, instance_id)
        prefix = log_prefix(project_id, instance_id, name) + "/"
        return sorted(self._blobs.list(prefix), key=lambda info: info.key)

    def read_published(self, project_id: str, instance_id: str, name: str) -> bytes:
        """Everything published of one log, concatenated (for tests and small logs)."""
        return b"".join(
            b"".join(self._blobs.get(info.key))
            for info in self.published_objects(project_id, instance_id, name)
        )

    def published_tail(
        self, project_id: str, instance_id: str, name: str, max_bytes: int
    ) -> tuple[bytes, bool]:
        """The last `max_bytes` of what was published of one log, and whether older bytes
        were left out. Only the newest objects that hold those bytes are read."""
        if not _LOG_NAME.fullmatch(name):
            raise RequestError("name", "must be the name of one of the instance's logs")
        objects = self.published_objects(project_id, instance_id, name)
        if not objects:
            raise NotFoundError(name, "published log")
        needed: list[BlobInfo] = []
        total = 0
        for info in reversed(objects):
            if total >= max_bytes:
                break
            needed.insert(0, info)
            total += info.size
        data = b"".join(b"".join(self._blobs.get(info.key)) for info in needed)
        truncated = len(needed) < len(objects) or len(data) > max_bytes
        return data[-max_bytes:] if len(data) > max_bytes else data, truncated
