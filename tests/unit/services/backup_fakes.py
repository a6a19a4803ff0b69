"""A fake guest for the backup tests: answers `prepare`, and `backup` by streaming (or
failing to stream) an object into a real directory blob store."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator
from pathlib import Path

from pydantic import SecretStr

from functions.runtime import set_runtime
from shared.adapters.local.blob_store import DirectoryBlobStore
from shared.crypto import InstanceKeys
from shared.models.backup import BackupStatus
from shared.models.database import Database, User
from shared.models.guest import GuestCommand, GuestError, GuestResult
from shared.models.instance import InstanceStatus
from shared.services.backups import BackupService, CreateBackup
from shared.services.guest_channel import EVENTS_QUEUE, command_queue_name
from shared.services.instance_secrets import guest_secret
from shared.services.instances import CreateInstance, InstanceRecords
from tests.unit.services.conftest import MASTER_KEY, World, make_world

PASSWORD = "Sup3r-secret-pw"
PROJECT = "p1"


class StreamFailedError(Exception):
    pass


class BackupGuest:
    """Answers an instance's commands: `prepare` succeeds (or fails as told); `backup`
    streams `payload` into the blob store at the location given and reports it.

    `fail_after` makes the upload break after that many bytes (the guest then reports the
    error); `lie_about` reports a wrong size or checksum; `extra_result` is merged in."""

    def __init__(self, world: World, blobs: DirectoryBlobStore) -> None:
        self.world = world
        self.blobs = blobs
        self.payload = b"backup-bytes " * 5000
        self.data_size = 7 * 1024 * 1024
        self.fail_after: int | None = None
        self.lie_about: str | None = None
        self.prepare_error: tuple[str, str] | None = None
        self.hold_backups = False
        self.commands: list[GuestCommand] = []
        self._sequence = itertools.count(1)

    def keys(self, instance_id: str) -> InstanceKeys:
        instance = InstanceRecords(self.world.store).get(instance_id)
        return InstanceKeys.from_secret(guest_secret(instance, MASTER_KEY))

    def answer(self, instance_id: str) -> int:
        name = command_queue_name(instance_id)
        if name not in self.world.queue.queues:
            return 0
        answered = 0
        for message in self.world.queue.receive(name, 10, 30):
            command = GuestCommand.model_validate(message.body)
            if command.name.value == "backup" and self.hold_backups:
                continue  # stays in flight (invisible) until the test lets it go
            self.world.queue.ack(name, message.receipt)
            self.commands.append(command)
            ok, result, error = self._run(command)
            reply = GuestResult(
                instance_id=instance_id,
                sequence=next(self._sequence) + 1000,
                timestamp=self.world.clock.now(),
                command_id=command.id,
                command=command.name,
                ok=ok,
                result=result,
                error=error,
                task_token=command.task_token,
            ).sign(self.keys(instance_id).signing)
            self.world.queue.send(EVENTS_QUEUE, reply.model_dump(mode="json"))
            answered += 1
        self.world.pump_events()
        return answered

    def _run(
        self, command: GuestCommand
    ) -> tuple[bool, dict[str, object] | None, GuestError | None]:
        args = dict(command.args)
        if command.name.value == "prepare":
            if self.prepare_error is not None:
                return (
                    False,
                    None,
                    GuestError(type=self.prepare_error[0], message=self.prepare_error[1]),
                )
            return True, {"done": "prepare"}, None
        if command.name.value != "backup":
            return True, {"done": command.name.value}, None
        location = str(args["location"])
        try:
            info = self.blobs.put(location, self._chunks())
        except StreamFailedError as exc:
            return False, None, GuestError(type="BackupUploadError", message=str(exc))
        size, sha = info.size, info.sha256
        if self.lie_about == "size":
            size += 1
        if self.lie_about == "sha256":
            sha = hashlib.sha256(b"something else").hexdigest()
        return (
            True,
            {
                "location": location,
                "size_bytes": size,
                "data_size_bytes": self.data_size,
                "sha256": sha,
                "lsn": "1234567",
                "position": "0-1-42",
                "datastore_version": "10.11",
            },
            None,
        )

    def _chunks(self) -> Iterator[bytes]:
        sent = 0
        for start in range(0, len(self.payload), 4096):
            chunk = self.payload[start : start + 4096]
            if self.fail_after is not None and sent + len(chunk) > self.fail_after:
                raise StreamFailedError(f"object store refused the upload after {sent} bytes")
            sent += len(chunk)
            yield chunk


Env = tuple[World, BackupService, "BackupGuest"]


def backup_env(tmp_path: Path, **settings: object) -> Iterator[Env]:
    """A world with a directory blob store, the backup service and the fake guest (the
    runtime installed for the task functions while it lives); `settings` override defaults."""
    world = make_world(tmp_path, **settings)
    blobs = DirectoryBlobStore(tmp_path / "objects", fsync=False, clock=world.clock)
    world.runtime.blobs = blobs
    world.service._blobs = blobs
    set_runtime(world.runtime)
    try:
        service = BackupService.from_runtime(world.runtime, blobs, instances=world.service)
        yield world, service, BackupGuest(world, blobs)
    finally:
        set_runtime(None)


def create_request(**changes: object) -> CreateInstance:
    fields: dict[str, object] = {
        "name": "shop",
        "flavor_id": "2",
        "volume_size_gb": 2,
        "datastore_type": "mariadb",
        "databases": [Database(name="shop")],
        "users": [User(name="app", password=SecretStr(PASSWORD), databases=["shop"])],
    }
    fields.update(changes)
    return CreateInstance.model_validate(fields)


def active_instance(world: World, guest: BackupGuest, **changes: object) -> str:
    instance = world.service.create(PROJECT, create_request(**changes))
    guest.answer(instance.id)
    assert world.service.get(PROJECT, instance.id).status is InstanceStatus.ACTIVE
    return instance.id


def completed_backup(
    world: World, service: BackupService, guest: BackupGuest, instance_id: str, **kw: object
) -> str:
    request = CreateBackup.model_validate({"name": "b", "instance_id": instance_id, **kw})
    backup = service.create(PROJECT, request)
    guest.answer(instance_id)
    done = service.get(PROJECT, backup.id)
    assert done.status is BackupStatus.COMPLETED, done.fail_reason
    return done.id
