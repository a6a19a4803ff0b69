"""What every datastore's backup and restore share: requests, results, and the restore frame.

Restore frame. A restore is a prepare that fills data/ from backups instead of initialising it:
the volume must not hold a prepared datastore; `conf/preparing.json` marks the attempt (a retry
wipes what it left). The chain is extracted into `restore/` on the volume (same filesystem), each
link verified to its last byte before anything is prepared from it; only then does the prepared
directory replace data/ (a rename) and the server start. A failure at any point leaves no
server running and no data in data/: nothing half-restored is ever served.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from guest_agent.backup.process import ToolProcess
from guest_agent.backup.stream import StoredBackup, download_backup, upload_backup
from guest_agent.datastores.base import (
    DatastoreAlreadyPreparedError,
    DatastoreManager,
    validate_overrides,
)
from shared.observability import get_logger
from shared.ports import BlobStore

log = get_logger("guest_agent.backup")

STAGING_DIR = "restore"


@dataclass(frozen=True)
class BackupRequest:
    backup_id: str
    location: str
    data_key: bytes
    incremental: bool = False
    parent_lsn: str | None = None  # MariaDB: the parent's to_lsn, for --incremental-lsn


@dataclass(frozen=True)
class BackupOutcome:
    stored: StoredBackup
    lsn: str | None
    position: str | None
    datastore_version: str

    def to_result(self) -> dict[str, Any]:
        return {
            "location": self.stored.location,
            "size_bytes": self.stored.size_bytes,
            "data_size_bytes": self.stored.data_size_bytes,
            "sha256": self.stored.sha256,
            "lsn": self.lsn,
            "position": self.position,
            "datastore_version": self.datastore_version,
        }


@dataclass(frozen=True)
class ChainLink:
    """One backup of a restore chain, with its data key already opened."""

    backup_id: str
    location: str
    sha256: str
    size_bytes: int
    data_key: bytes
    incremental: bool = False


def upload_tool_output(
    blobs: BlobStore,
    tool: ToolProcess,
    request: BackupRequest,
    *,
    datastore: str,
    stream_format: str,
    report: list[str] | None = None,
) -> StoredBackup:
    """Stream a backup tool's stdout into the request's object. The tool must exit cleanly
    before the object commits; its stderr goes into `report` when given."""

    def source_done() -> None:
        stderr = tool.finish()
        if report is not None:
            report.append(stderr)

    assert tool.stdout is not None
    return upload_backup(
        blobs,
        tool.stdout,
        backup_id=request.backup_id,
        location=request.location,
        data_key=request.data_key,
        on_end=source_done,
        metadata={"datastore": datastore, "format": stream_format},
    )


def make_private_dir(manager: DatastoreManager, path: Path) -> Path:
    """A fresh 0700 directory owned by the datastore's user (an old one is removed first)."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(mode=0o700)
    os.chmod(path, 0o700)
    manager.run_as.chown(path)
    return path


def remove_stale_backup_files(manager: DatastoreManager) -> None:
    """Credentials files and work directories an earlier backup left in run/ when its agent
    died (commands run one at a time, so none is in use)."""
    for leftover in manager.layout.run.glob("backup-*"):
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


def download_into_tool(
    manager: DatastoreManager, blobs: BlobStore, link: ChainLink, command: list[str], cwd: Path
) -> int:
    """Stream one verified backup into an extractor's stdin; raises (after killing the extractor)
    when the object does not verify or the extractor fails. Returns the logical bytes."""
    with ToolProcess(manager, command, stdin_pipe=True, cwd=cwd) as tool:
        try:
            written = download_backup(
                blobs,
                tool.stdin,
                backup_id=link.backup_id,
                location=link.location,
                sha256=link.sha256,
                size_bytes=link.size_bytes,
                data_key=link.data_key,
            )
        except BrokenPipeError:
            tool.finish(60)  # the extractor quit early: its error says why
            raise
        tool.finish()
    return written


def restore_volume(
    manager: DatastoreManager,
    *,
    admin_password: str,
    overrides: Mapping[str, Any],
    build_data: Callable[[Path], Path],
    start: Callable[[], None],
) -> None:
    """The restore frame (module docstring). `build_data(staging)` extracts and prepares the
    chain under `staging` and returns the directory that becomes data/; `start()` starts the
    server on it (and re-keys the admin account)."""
    started = time.monotonic()
    with manager._lock, manager._in_transition("restoring"):
        checked = validate_overrides(manager.parameters, overrides)
        if manager.is_prepared():
            raise DatastoreAlreadyPreparedError(
                f"{manager.data_dir} already holds a prepared {manager.datastore}"
            )
        manager.set_admin_password(admin_password)
        manager._make_layout()
        attempt = manager.layout.conf / "preparing.json"
        if any(manager.layout.data.iterdir()) and not attempt.exists():
            raise DatastoreAlreadyPreparedError(
                f"{manager.layout.data} holds files no prepare of ours left: refusing to wipe them"
            )
        manager._write_file(attempt, json.dumps({"datastore": manager.datastore}))
        manager._discard_failed_attempt()
        staging = manager.layout.root / STAGING_DIR
        try:
            manager._save_overrides(checked)
            manager._render_config(manager.effective_settings())
            make_private_dir(manager, staging)
            ready = build_data(staging)
            # data/ is empty (discarded above): the verified, prepared tree takes its place.
            os.rmdir(manager.layout.data)
            os.rename(ready, manager.layout.data)
            os.chmod(manager.layout.data, 0o700)
            start()
        except BaseException:
            manager._stop_server()
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(staging)
            manager.layout.data.mkdir(mode=0o700, exist_ok=True)
            manager.run_as.chown(manager.layout.data)
            manager._discard_failed_attempt()
            raise
        shutil.rmtree(staging, ignore_errors=True)
        manager._write_file(
            manager._prepared_marker,
            json.dumps(
                {"datastore": manager.datastore, "prepared_at": time.time(), "restored": True}
            ),
        )
        attempt.unlink()
    log.info(
        "datastore restored",
        extra={
            "datastore": manager.datastore,
            "data_dir": str(manager.data_dir),
            "seconds": round(time.monotonic() - started, 3),
        },
    )
