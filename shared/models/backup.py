"""Backups: full or incremental, as a chain of parents back to a full backup.

Two sizes matter: `size_bytes` is what the object store holds (compressed, encrypted), and
`data_size_bytes` is the datastore's data the backup restores to, which a restore checks
against the target volume (DESIGN §7). Trove's API shows `size` in GB; the API does that
conversion.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from typing import Annotated

from pydantic import Field, model_validator

from shared.errors import TrovelessError
from shared.models.base import DomainModel, EncryptedBlob, Name, ProjectId, UtcDatetime, Uuid
from shared.models.datastore import DatastoreRef


class BackupStatus(StrEnum):
    """Trove's backup states."""

    NEW = "NEW"
    BUILDING = "BUILDING"
    SAVING = "SAVING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    DELETE_FAILED = "DELETE_FAILED"
    RESTORED = "RESTORED"

    @property
    def is_running(self) -> bool:
        return self in (BackupStatus.NEW, BackupStatus.BUILDING, BackupStatus.SAVING)


class BackupChainError(TrovelessError, ValueError):
    """An incremental backup's chain is broken: a parent is missing or the chain loops."""

    def __init__(self, backup_id: str, reason: str) -> None:
        self.backup_id = backup_id
        self.reason = reason
        super().__init__(f"backup chain of {backup_id!r} is broken: {reason}")


Sha256Hex = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class Backup(DomainModel):
    """A backup of an instance.

    `location` is the blob key of the object; `checksum` its sha256 (lower-case hex);
    `replication_position` the datastore's position when the backup was consistent (a
    MariaDB GTID set, a PostgreSQL LSN, a Redis offset), from which a replica can be built.
    The object is encrypted with a per-backup data key, stored here only wrapped
    (`encrypted_data_key`) by the master key named `encryption_key_id`.
    A COMPLETED backup has been verified, so it must have its location, sizes and checksum.
    """

    id: Uuid
    project_id: ProjectId
    name: Name
    description: str | None = None
    instance_id: Uuid | None = None
    parent_id: Uuid | None = None
    incremental: bool = False
    status: BackupStatus = BackupStatus.NEW
    datastore: DatastoreRef
    location: str | None = None
    size_bytes: Annotated[int, Field(ge=0)] | None = None
    data_size_bytes: Annotated[int, Field(ge=0)] | None = None
    checksum: Sha256Hex | None = None
    replication_position: str | None = None
    lsn: str | None = None  # the datastore's log position, an incremental child's start
    encryption_key_id: str | None = None
    encrypted_data_key: EncryptedBlob | None = None
    fail_reason: str | None = None
    created: UtcDatetime
    updated: UtcDatetime

    @model_validator(mode="after")
    def _consistent(self) -> Backup:
        if self.incremental and self.parent_id is None:
            raise ValueError("parent_id: an incremental backup needs a parent")
        if not self.incremental and self.parent_id is not None:
            raise ValueError("parent_id: a full backup has no parent (incremental is false)")
        if self.parent_id == self.id:
            raise ValueError("parent_id: a backup cannot be its own parent")
        if self.status is BackupStatus.COMPLETED:
            missing = [
                name
                for name in ("location", "size_bytes", "data_size_bytes", "checksum")
                if getattr(self, name) is None
            ]
            if missing:
                raise ValueError(f"{', '.join(missing)}: required once a backup is COMPLETED")
        return self

    def chain(self, lookup: Callable[[str], Backup | None]) -> list[Backup]:
        """This backup's chain, oldest (the full backup) first and this backup last.

        `lookup(id)` returns a backup or None. Raises BackupChainError when a parent is
        missing or the chain loops.
        """
        chain = [self]
        seen = {self.id}
        current = self
        while current.parent_id is not None:
            parent = lookup(current.parent_id)
            if parent is None:
                raise BackupChainError(
                    self.id, f"parent {current.parent_id!r} of {current.id!r} does not exist"
                )
            if parent.id != current.parent_id:
                raise BackupChainError(
                    self.id, f"looked up {current.parent_id!r} but got {parent.id!r}"
                )
            if parent.id in seen:
                raise BackupChainError(self.id, f"{parent.id!r} appears twice (a loop)")
            seen.add(parent.id)
            chain.append(parent)
            current = parent
        chain.reverse()
        return chain
