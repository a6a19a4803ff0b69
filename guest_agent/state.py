"""What the agent keeps on its instance's volume, so a restarted agent carries on where the last
one stopped (the volume outlives the agent, and moves with the instance).

`<volume>/agent/` (mode 0700), beside the datastore manager's own directories:

    state.json              the replay window of accepted commands, the command journal,
                            the rejection counters, whether the datastore should be running
    admin-password.sealed   the datastore's admin password, sealed with the instance's volume key
    reserve                 1 MiB kept for the agent: when the datastore has filled the volume,
                            the agent deletes it to go on recording commands (delete_database
                            may be what frees space); made again at the next boot

The journal records each accepted command before it runs ("running") and its outcome after
("done"): a command id seen again is answered from the journal instead of running twice, and a
"running" entry found at boot is a command the previous agent died in. Every change is written
atomically (temporary file, fsync, rename, fsync of the directory) before the agent acts on it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import threading
from collections import Counter, OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import JsonValue

from shared.crypto import open_sealed, seal
from shared.errors import CorruptDataError
from shared.models.guest import GuestCommandName, GuestError
from shared.services.replay_guard import ReplayWindow

STATE_DIR = "agent"
STATE_FILE = "state.json"
ADMIN_PASSWORD_FILE = "admin-password.sealed"
RESERVE_FILE = "reserve"
RESERVE_BYTES = 1 << 20
JOURNAL_ENTRIES = 256
_SCHEMA = 1


@dataclass(frozen=True)
class Outcome:
    """How a command ended: its result, or why it failed."""

    ok: bool
    result: JsonValue = None
    error: GuestError | None = None

    @classmethod
    def failure(cls, error_type: str, message: str) -> Outcome:
        return cls(ok=False, error=GuestError(type=error_type, message=message))

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "result": self.result,
            "error": self.error.model_dump(mode="json") if self.error else None,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Outcome:
        error = data.get("error")
        return cls(
            ok=bool(data["ok"]),
            result=data.get("result"),
            error=GuestError.model_validate(error) if error else None,
        )


@dataclass(frozen=True)
class JournalEntry:
    command_id: str
    command: GuestCommandName
    task_token: str | None
    outcome: Outcome | None  # None while the command runs

    def to_json(self) -> dict[str, Any]:
        return {
            "command_id": self.command_id,
            "command": self.command.value,
            "task_token": self.task_token,
            "outcome": self.outcome.to_json() if self.outcome else None,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JournalEntry:
        outcome = data.get("outcome")
        return cls(
            command_id=str(data["command_id"]),
            command=GuestCommandName(data["command"]),
            task_token=data.get("task_token"),
            outcome=Outcome.from_json(outcome) if outcome else None,
        )


def write_atomically(path: Path, payload: bytes, mode: int = 0o600) -> None:
    """Replace `path` with `payload` so that a crash leaves either the old or the new file."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class AgentState:
    """The agent's on-volume state (see the module docstring). Thread-safe."""

    def __init__(self, volume_path: Path, volume_key: bytes, instance_id: str) -> None:
        self.directory = volume_path / STATE_DIR
        self._key = volume_key
        self._aad = f"troveless/instance/{instance_id}/admin-password".encode()
        self._lock = threading.RLock()
        self.window = ReplayWindow()
        self._journal: OrderedDict[str, JournalEntry] = OrderedDict()
        self._rejected: Counter[str] = Counter()
        self._datastore_wanted = False

    # ------------------------------------------------------------------ persistence
    def load(self) -> None:
        """Create the directory or read what an earlier agent left. CorruptDataError if the
        state file does not parse (the agent must not guess its replay window)."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._make_reserve()
        path = self.directory / STATE_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return
        except ValueError as exc:
            raise CorruptDataError(str(path), f"not JSON: {exc}") from None
        try:
            with self._lock:
                self.window = ReplayWindow.from_json(data["window"])
                self._journal = OrderedDict(
                    (e.command_id, e) for e in map(JournalEntry.from_json, data["journal"])
                )
                self._rejected = Counter({str(k): int(v) for k, v in data["rejected"].items()})
                self._datastore_wanted = bool(data["datastore_wanted"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptDataError(str(path), f"unexpected content: {exc}") from None

    def save(self) -> None:
        with self._lock:
            data = {
                "schema": _SCHEMA,
                "window": self.window.to_json(),
                "journal": [e.to_json() for e in self._journal.values()],
                "rejected": dict(self._rejected),
                "datastore_wanted": self._datastore_wanted,
            }
            self._write(self.directory / STATE_FILE, json.dumps(data).encode())

    def _write(self, path: Path, payload: bytes) -> None:
        try:
            write_atomically(path, payload)
        except OSError as exc:
            if exc.errno != errno.ENOSPC or not self._release_reserve():
                raise
            write_atomically(path, payload)

    def _make_reserve(self) -> None:
        path = self.directory / RESERVE_FILE
        if path.exists():
            return
        # Real blocks (zeros written), not a sparse file: freeing it must free space.
        with contextlib.suppress(OSError):
            write_atomically(path, bytes(RESERVE_BYTES))

    def _release_reserve(self) -> bool:
        try:
            (self.directory / RESERVE_FILE).unlink()
        except FileNotFoundError:
            return False
        return True

    # ------------------------------------------------------------------ journal
    def journal_entry(self, command_id: str) -> JournalEntry | None:
        with self._lock:
            return self._journal.get(command_id)

    def interrupted(self) -> list[JournalEntry]:
        """Commands that were running when the previous agent stopped."""
        with self._lock:
            return [e for e in self._journal.values() if e.outcome is None]

    def begin(self, entry: JournalEntry) -> None:
        """Record a command as running (caller saves together with the window)."""
        with self._lock:
            self._journal[entry.command_id] = entry
            while len(self._journal) > JOURNAL_ENTRIES:
                self._journal.popitem(last=False)

    def finish(self, command_id: str, outcome: Outcome) -> JournalEntry:
        with self._lock:
            entry = self._journal[command_id]
            done = JournalEntry(entry.command_id, entry.command, entry.task_token, outcome)
            self._journal[command_id] = done
            self.save()
            return done

    # ------------------------------------------------------------------ counters, intent
    def count_rejection(self, reason: str) -> None:
        with self._lock:
            self._rejected[reason] += 1
            self.save()

    def rejected(self) -> dict[str, int]:
        with self._lock:
            return dict(self._rejected)

    @property
    def datastore_wanted(self) -> bool:
        """Whether the datastore should run (prepared and not stopped by a command)."""
        with self._lock:
            return self._datastore_wanted

    def want_datastore(self, running: bool) -> None:
        with self._lock:
            if self._datastore_wanted != running:
                self._datastore_wanted = running
                self.save()

    # ------------------------------------------------------------------ admin password
    def store_admin_password(self, password: str) -> None:
        sealed = seal(self._key, password.encode(), self._aad)
        self._write(self.directory / ADMIN_PASSWORD_FILE, sealed.encode())

    def admin_password(self) -> str | None:
        """The stored admin password, or None. SealedDataError if it does not open."""
        path = self.directory / ADMIN_PASSWORD_FILE
        with contextlib.suppress(FileNotFoundError):
            return open_sealed(self._key, path.read_text().strip(), self._aad).decode()
        return None
