"""Backup records, their data keys, and the checks a restore passes before anything is made.

Records (StateStore):

    backups/<id>                       the Backup (compare-and-swap writes)
    project-backups/<project>/<id>     index for listing a project's backups

Each backup's object is encrypted with its own random data key. The key is stored only
sealed by the runtime master key (bound to the backup id), and reaches a guest only sealed
again under that guest's instance key (`GuestClient.seal_password`).

This module imports no other service, so both the backup service and the instance service
(restore on create) can use it.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from shared.crypto import (
    KEY_BYTES,
    InstanceKeys,
    encode_secret,
    open_sealed,
    password_context,
    seal,
)
from shared.errors import ConflictError, NotFoundError, RequestError
from shared.models.backup import Backup, BackupChainError, BackupStatus
from shared.models.instance import Instance
from shared.ports import JSON, BlobStore, StateStore
from shared.services.instance_secrets import guest_secret

GIB = 1 << 30
_CAS_ATTEMPTS = 20
RESTORE_FIELD = "restorePoint.backupRef"


def backup_key(backup_id: str) -> str:
    return f"backups/{backup_id}"


def backup_index_key(project_id: str, backup_id: str) -> str:
    return f"project-backups/{project_id}/{backup_id}"


def data_key_context(backup_id: str) -> bytes:
    return f"troveless/backup/{backup_id}/data-key".encode()


def master_key_id(master_key: bytes) -> str:
    """A name for the master key that says nothing about it (which key wrapped a data key)."""
    return "master-" + hashlib.sha256(b"troveless/key-id/" + master_key).hexdigest()[:16]


def new_data_key() -> bytes:
    return secrets.token_bytes(KEY_BYTES)


def seal_data_key(backup_id: str, data_key: bytes, master_key: bytes) -> str:
    return seal(master_key, data_key, data_key_context(backup_id))


def open_data_key(backup: Backup, master_key: bytes) -> bytes:
    if backup.encrypted_data_key is None:
        raise RequestError(RESTORE_FIELD, f"backup {backup.id} has no data key", status=422)
    return open_sealed(master_key, backup.encrypted_data_key, data_key_context(backup.id))


def seal_for_guest(instance: Instance, master_key: bytes, data_key: bytes) -> str:
    """`encrypted_data_key` for a command to `instance`'s guest: sealed like a password
    (`GuestClient.seal_password`), so only that guest opens it."""
    keys = InstanceKeys.from_secret(guest_secret(instance, master_key))
    return seal(keys.passwords, data_key_text(data_key), password_context(instance.id))


def data_key_text(data_key: bytes) -> bytes:
    """What a guest's sealed data key opens to: the key's standard base64 text (the guest
    opens it like a password, as text)."""
    return encode_secret(data_key).encode("ascii")


class BackupRecords:
    """Backup records with compare-and-swap updates."""

    def __init__(self, store: StateStore) -> None:
        self._store = store

    def find(self, backup_id: str) -> Backup | None:
        record = self._store.get(backup_key(backup_id))
        return Backup.model_validate(record.data) if record is not None else None

    def get(self, backup_id: str) -> Backup:
        found = self.find(backup_id)
        if found is None:
            raise NotFoundError(backup_id, "backup")
        return found

    def create(self, backup: Backup) -> None:
        # Index first: a listing skips an index entry whose record is missing.
        self._store.put(backup_index_key(backup.project_id, backup.id), {}, 0)
        self._store.put(backup_key(backup.id), backup.model_dump(mode="json"), 0)

    def update(self, backup_id: str, change: Callable[[Backup], Backup | None]) -> Backup | None:
        """Apply `change` to the latest revision (retrying lost races); None writes nothing."""
        key = backup_key(backup_id)
        for _ in range(_CAS_ATTEMPTS):
            record = self._store.get(key)
            if record is None:
                return None
            changed = change(Backup.model_validate(record.data))
            if changed is None:
                return None
            try:
                self._store.put(key, changed.model_dump(mode="json"), record.revision)
                return changed
            except ConflictError:
                continue
        raise ConflictError(key, 0)

    def of_project(self, project_id: str) -> list[Backup]:
        prefix = f"project-backups/{project_id}/"
        found = []
        for key in self._store.list(prefix):
            backup = self.find(key[len(prefix) :])
            if backup is not None and backup.project_id == project_id:
                found.append(backup)
        found.sort(key=lambda b: (b.created, b.id))
        return found

    def remove(self, backup: Backup) -> None:
        self._store.delete(backup_key(backup.id))
        self._store.delete(backup_index_key(backup.project_id, backup.id))


@dataclass(frozen=True)
class RestorePlan:
    """A checked restore: the chain to apply, full backup first."""

    backup: Backup
    chain: list[Backup]

    def guest_chain(self, master_key: bytes, seal_for_guest: Callable[[bytes], str]) -> list[JSON]:
        """The `prepare` command's `restore.chain`: each link's data key re-sealed for the
        new instance's guest (`seal_for_guest`, e.g. `GuestClient.seal_password`)."""
        links: list[JSON] = []
        for link in self.chain:
            links.append(
                {
                    "backup_id": link.id,
                    "location": link.location,
                    "sha256": link.checksum,
                    "size_bytes": link.size_bytes,
                    "encrypted_data_key": seal_for_guest(
                        data_key_text(open_data_key(link, master_key))
                    ),
                    "incremental": link.incremental,
                }
            )
        return links


def plan_restore(
    records: BackupRecords,
    blobs: BlobStore | None,
    project_id: str,
    backup_id: str,
    *,
    volume_size_gb: int,
    datastore_type: str,
    datastore_version: str,
) -> RestorePlan:
    """Check everything a restore needs before anything is made; RequestError (422) naming
    the problem otherwise, NotFoundError for another project's or a missing backup."""
    try:
        backup = records.find(str(uuid.UUID(backup_id)))
    except ValueError:
        backup = None  # not a backup id: as missing
    if backup is None or backup.project_id != project_id:
        raise NotFoundError(backup_id, "backup")
    if backup.status is not BackupStatus.COMPLETED:
        raise RequestError(
            RESTORE_FIELD,
            f"backup {backup.id} is {backup.status.value}; only a COMPLETED backup restores",
            status=422,
        )
    if (backup.datastore.type, backup.datastore.version) != (datastore_type, datastore_version):
        raise RequestError(
            RESTORE_FIELD,
            f"backup {backup.id} is of {backup.datastore.type} {backup.datastore.version}, "
            f"not {datastore_type} {datastore_version}",
            status=422,
        )
    data_size = backup.data_size_bytes or 0
    volume_bytes = volume_size_gb * GIB
    if volume_bytes < data_size:
        raise RequestError(
            "volume.size",
            f"a volume of {volume_size_gb} GB ({volume_bytes} bytes) is smaller than the data "
            f"of backup {backup.id}: {data_size} bytes ({data_size / GIB:.2f} GB)",
            status=422,
        )
    try:
        chain = backup.chain(records.find)
    except BackupChainError as exc:
        raise RequestError(RESTORE_FIELD, str(exc), status=422) from None
    for link in chain:
        if link.status is not BackupStatus.COMPLETED or link.location is None:
            raise RequestError(
                RESTORE_FIELD,
                f"backup {link.id} in the chain of {backup.id} is {link.status.value}",
                status=422,
            )
        if blobs is None:
            raise RequestError(RESTORE_FIELD, "no object store is configured", status=422)
        try:
            info = blobs.head(link.location)
        except NotFoundError:
            raise RequestError(
                RESTORE_FIELD,
                f"the object of backup {link.id} ({link.location}) is missing",
                status=422,
            ) from None
        if info.size != link.size_bytes or info.sha256 != link.checksum:
            raise RequestError(
                RESTORE_FIELD,
                f"the object of backup {link.id} does not match its record "
                f"(size {info.size}, expected {link.size_bytes}; or checksum differs)",
                status=422,
            )
    return RestorePlan(backup=backup, chain=chain)
