"""Physical backups and restores of the instance's datastore, streamed to and from the BlobStore.

`stream` is the object format and the pipelines; `mariadb`, `postgresql` and `redis` drive each
datastore's own tools; `common` holds the restore frame. `backup_datastore` and
`restore_datastore` pick the module for a manager's datastore.
"""

from __future__ import annotations

import importlib
from typing import Any

from guest_agent.backup.common import BackupOutcome, BackupRequest, ChainLink
from guest_agent.datastores.base import DatastoreManager
from shared.ports import BlobStore

_MODULES = {
    "mariadb": "guest_agent.backup.mariadb",
    "postgresql": "guest_agent.backup.postgresql",
    "redis": "guest_agent.backup.redis",
}


def _module(manager: DatastoreManager) -> Any:
    return importlib.import_module(_MODULES[manager.datastore])


def backup_datastore(
    manager: DatastoreManager, blobs: BlobStore, request: BackupRequest
) -> BackupOutcome:
    """Stream a physical backup of the running datastore into the BlobStore."""
    outcome: BackupOutcome = _module(manager).backup(manager, blobs, request)
    return outcome


def restore_datastore(
    manager: DatastoreManager,
    blobs: BlobStore,
    chain: list[ChainLink],
    *,
    admin_password: str,
    overrides: dict[str, Any],
) -> None:
    """Fill an unprepared volume from `chain` (full backup first) and start the datastore."""
    _module(manager).restore(
        manager, blobs, chain, admin_password=admin_password, overrides=overrides
    )


__all__ = ["BackupOutcome", "BackupRequest", "ChainLink", "backup_datastore", "restore_datastore"]
