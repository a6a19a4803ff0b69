"""BackupService, the backup flow and the restore checks over in-memory ports: the real
state-machine definitions and task functions, a fake compute, a real directory blob store,
and a fake guest that streams (or fails to stream) a backup object into it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.crypto import encode_secret, open_sealed, password_context
from shared.errors import (
    ActionInProgressError,
    NotFoundError,
    QuotaExceededError,
    RequestError,
)
from shared.models.backup import BackupStatus
from shared.models.instance import InstanceStatus, InstanceTask
from shared.services.backup_records import GIB, open_data_key
from shared.services.backups import CreateBackup
from shared.services.instances import CreateInstance
from tests.unit.services.backup_fakes import (
    PROJECT,
    Env,
    active_instance,
    backup_env,
    completed_backup,
    create_request,
)
from tests.unit.services.conftest import MASTER_KEY


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    yield from backup_env(tmp_path)


# --------------------------------------------------------------------------- backup
def test_backup_completes_only_after_the_object_is_verified(env: Env) -> None:
    world, service, guest = env
    instance_id = active_instance(world, guest)
    backup = service.create(PROJECT, CreateBackup(name="nightly", instance_id=instance_id))
    assert backup.status is BackupStatus.NEW
    running = world.service.get(PROJECT, instance_id)
    assert (running.status, running.task) == (InstanceStatus.BACKUP, InstanceTask.BACKING_UP)
    assert service.get(PROJECT, backup.id).status is BackupStatus.BUILDING
    assert service.quotas.usage(PROJECT)["backups"] == 1

    guest.answer(instance_id)
    done = service.get(PROJECT, backup.id)
    assert done.status is BackupStatus.COMPLETED
    info = guest.blobs.head(done.location or "")
    assert (done.size_bytes, done.checksum) == (info.size, info.sha256)
    assert done.data_size_bytes == guest.data_size
    assert (done.lsn, done.replication_position) == ("1234567", "0-1-42")
    assert done.location == f"backups/{PROJECT}/{instance_id}/{backup.id}.xbstream.zst.enc"
    after = world.service.get(PROJECT, instance_id)
    assert (after.status, after.task) == (InstanceStatus.ACTIVE, InstanceTask.NONE)

    # The guest got the data key sealed under its own instance key, the record keeps it
    # sealed by the master key, and the plaintext key is nowhere in the store.
    (sent,) = [c for c in guest.commands if c.name.value == "backup"]
    data_key = open_data_key(done, MASTER_KEY)
    opened = open_sealed(
        guest.keys(instance_id).passwords,
        str(sent.args["encrypted_data_key"]),
        password_context(instance_id),
    )
    assert opened == encode_secret(data_key).encode()
    assert sent.args["parent"] is None and sent.args["incremental"] is False
    dumped = json.dumps({k: r.data for k, r in world.store.records.items()})
    for form in (data_key.hex(), encode_secret(data_key), data_key.decode("latin-1")):
        assert form not in dumped


def test_one_backup_per_instance_at_a_time(env: Env) -> None:
    world, service, guest = env
    instance_id = active_instance(world, guest)
    service.create(PROJECT, CreateBackup(name="first", instance_id=instance_id))
    with pytest.raises(ActionInProgressError):
        service.create(PROJECT, CreateBackup(name="second", instance_id=instance_id))
    assert len(service.list(PROJECT)) == 1
    assert service.quotas.usage(PROJECT)["backups"] == 1


@pytest.mark.parametrize("lie", ["size", "sha256"])
def test_a_mismatching_object_fails_the_backup_and_is_deleted(env: Env, lie: str) -> None:
    world, service, guest = env
    instance_id = active_instance(world, guest)
    guest.lie_about = lie
    backup = service.create(PROJECT, CreateBackup(name="b", instance_id=instance_id))
    guest.answer(instance_id)
    failed = service.get(PROJECT, backup.id)
    assert failed.status is BackupStatus.FAILED
    assert failed.fail_reason and lie in failed.fail_reason.replace("holds", "size")
    assert list(guest.blobs.list("backups/")) == []
    assert world.service.get(PROJECT, instance_id).status is InstanceStatus.ACTIVE


def test_an_upload_failing_midway_fails_the_backup_leaving_no_object(env: Env) -> None:
    world, service, guest = env
    instance_id = active_instance(world, guest)
    guest.fail_after = 20_000
    backup = service.create(PROJECT, CreateBackup(name="b", instance_id=instance_id))
    guest.answer(instance_id)
    failed = service.get(PROJECT, backup.id)
    assert failed.status is BackupStatus.FAILED
    assert "after 16384 bytes" in (failed.fail_reason or "")
    assert list(guest.blobs.list("")) == []
    assert not [b for b in service.list(PROJECT) if b.status is BackupStatus.COMPLETED]
    after = world.service.get(PROJECT, instance_id)
    assert (after.status, after.task) == (InstanceStatus.ACTIVE, InstanceTask.NONE)


def test_an_instance_deleted_mid_backup_fails_the_backup(env: Env) -> None:
    world, service, guest = env
    instance_id = active_instance(world, guest)
    backup = service.create(PROJECT, CreateBackup(name="b", instance_id=instance_id))
    world.service.delete(PROJECT, instance_id)
    failed = service.get(PROJECT, backup.id)
    assert failed.status is BackupStatus.FAILED
    assert "deleted" in (failed.fail_reason or "")


def test_backup_needs_an_active_instance_of_the_project(env: Env) -> None:
    world, service, guest = env
    instance_id = active_instance(world, guest)
    with pytest.raises(NotFoundError):
        service.create("other", CreateBackup(name="b", instance_id=instance_id))
    world.service.reset_status(PROJECT, instance_id)  # ACTIVE and settled: nothing to reset
    world.service.records.update(instance_id, lambda i: i.replace(status=InstanceStatus.ERROR))
    with pytest.raises(RequestError) as refused:
        service.create(PROJECT, CreateBackup(name="b", instance_id=instance_id))
    assert refused.value.status == 422
    assert service.list(PROJECT) == []
    assert service.quotas.usage(PROJECT)["backups"] == 0


def test_incremental_backups_chain_on_the_latest_completed_one(env: Env) -> None:
    world, service, guest = env
    instance_id = active_instance(world, guest)
    full = completed_backup(world, service, guest, instance_id)
    inc = completed_backup(world, service, guest, instance_id, incremental=True)
    assert service.get(PROJECT, inc).parent_id == full
    sent = [c for c in guest.commands if c.name.value == "backup"][-1]
    assert sent.args["parent"] == {"backup_id": full, "lsn": "1234567"}
    assert sent.args["incremental"] is True

    redis_id = active_instance(world, guest, datastore_type="redis", databases=[], users=[])
    with pytest.raises(RequestError) as refused:
        service.create(PROJECT, CreateBackup(name="i", instance_id=redis_id, incremental=True))
    assert refused.value.field == "incremental"


def test_delete_removes_descendants_and_is_refused_while_running(env: Env) -> None:
    world, service, guest = env
    instance_id = active_instance(world, guest)
    full = completed_backup(world, service, guest, instance_id)
    child = completed_backup(world, service, guest, instance_id, parent_id=full)
    grandchild = completed_backup(world, service, guest, instance_id, parent_id=child)
    other = completed_backup(world, service, guest, instance_id)
    running = service.create(PROJECT, CreateBackup(name="r", instance_id=instance_id))
    with pytest.raises(ActionInProgressError):
        service.delete(PROJECT, running.id)
    guest.answer(instance_id)

    assert service.delete(PROJECT, child) == [grandchild, child]
    left = {b.id for b in service.list(PROJECT)}
    assert left == {full, other, running.id}
    assert len(list(guest.blobs.list("backups/"))) == 3
    assert service.quotas.usage(PROJECT)["backups"] == 3
    with pytest.raises(NotFoundError):
        service.get(PROJECT, grandchild)


def test_list_filters_by_instance_and_datastore(env: Env) -> None:
    world, service, guest = env
    maria = active_instance(world, guest)
    redis_id = active_instance(world, guest, datastore_type="redis", databases=[], users=[])
    a = completed_backup(world, service, guest, maria)
    b = completed_backup(world, service, guest, redis_id)
    assert [x.id for x in service.list(PROJECT, instance_id=maria)] == [a]
    assert [x.id for x in service.list(PROJECT, datastore="redis")] == [b]
    assert service.list("other") == []


# --------------------------------------------------------------------------- restore
def restore_request(backup_id: str, **changes: object) -> CreateInstance:
    fields: dict[str, object] = {
        "restore_backup_id": backup_id,
        "datastore_type": None,
        "databases": [],
        "users": [],
    }
    fields.update(changes)
    return create_request(**fields)


def test_restore_passes_the_chain_with_keys_sealed_for_the_new_guest(env: Env) -> None:
    world, service, guest = env
    source = active_instance(world, guest)
    full = completed_backup(world, service, guest, source)
    inc = completed_backup(world, service, guest, source, incremental=True)

    restored = world.service.create(PROJECT, restore_request(inc))
    assert restored.datastore == world.service.get(PROJECT, source).datastore
    guest.answer(restored.id)
    assert world.service.get(PROJECT, restored.id).status is InstanceStatus.ACTIVE
    prepare = [c for c in guest.commands if c.name.value == "prepare"][-1]
    chain: list[dict[str, Any]] = json.loads(json.dumps(prepare.args))["restore"]["chain"]
    assert [link["backup_id"] for link in chain] == [full, inc]
    assert [link["incremental"] for link in chain] == [False, True]
    keys = guest.keys(restored.id)
    for link in chain:
        backup = service.get(PROJECT, link["backup_id"])
        assert (link["location"], link["sha256"], link["size_bytes"]) == (
            backup.location,
            backup.checksum,
            backup.size_bytes,
        )
        opened = open_sealed(
            keys.passwords, link["encrypted_data_key"], password_context(restored.id)
        )
        assert opened == encode_secret(open_data_key(backup, MASTER_KEY)).encode()


def test_restore_into_too_small_a_volume_is_refused_naming_both_sizes(env: Env) -> None:
    world, service, guest = env
    source = active_instance(world, guest)
    guest.data_size = 3 * GIB + 5
    big = completed_backup(world, service, guest, source)
    servers_before = dict(world.compute.servers)
    with pytest.raises(RequestError) as refused:
        world.service.create(PROJECT, restore_request(big, volume_size_gb=3))
    assert refused.value.status == 422
    message = str(refused.value)
    assert "3 GB" in message and str(3 * GIB + 5) in message
    assert world.compute.servers == servers_before
    assert len(world.service.list(PROJECT)) == 1
    assert world.service.quotas.usage(PROJECT)["instances"] == 1
    world.service.create(PROJECT, restore_request(big, volume_size_gb=4))  # big enough


def test_restore_refuses_unfinished_foreign_and_missing_backups(env: Env) -> None:
    world, service, guest = env
    source = active_instance(world, guest)
    good = completed_backup(world, service, guest, source)

    running = service.create(PROJECT, CreateBackup(name="r", instance_id=source))
    with pytest.raises(RequestError, match="BUILDING"):
        world.service.create(PROJECT, restore_request(running.id))
    guest.answer(source)

    with pytest.raises(RequestError, match="not redis"):
        world.service.create(
            PROJECT, restore_request(good, datastore_type="redis", databases=[], users=[])
        )
    with pytest.raises(NotFoundError):
        world.service.create("other", restore_request(good))
    for bad in ("../etc", "not-a-backup"):
        with pytest.raises(NotFoundError):
            world.service.create(PROJECT, restore_request(bad, datastore_type="mariadb"))

    backup = service.get(PROJECT, good)
    guest.blobs.delete(backup.location or "")
    with pytest.raises(RequestError, match="missing") as refused:
        world.service.create(PROJECT, restore_request(good))
    assert refused.value.status == 422
    assert len(world.service.list(PROJECT)) == 1


def test_a_failed_restore_ends_the_instance_in_error_with_nothing_served(env: Env) -> None:
    world, service, guest = env
    source = active_instance(world, guest)
    good = completed_backup(world, service, guest, source)
    guest.prepare_error = ("BackupChecksumError", f"backup {good}: sha256 does not match")
    restored = world.service.create(PROJECT, restore_request(good))
    guest.answer(restored.id)
    failed = world.service.get(PROJECT, restored.id)
    assert failed.status is InstanceStatus.ERROR
    assert failed.fault is not None and good in failed.fault.message
    assert restored.id not in world.compute.servers


def test_backups_count_against_the_quota(env: Env) -> None:
    world, service, guest = env
    instance_id = active_instance(world, guest)
    service.quotas.set_limits(PROJECT, {"backups": 1})
    completed_backup(world, service, guest, instance_id)
    with pytest.raises(QuotaExceededError):
        service.create(PROJECT, CreateBackup(name="over", instance_id=instance_id))
    after = world.service.get(PROJECT, instance_id)
    assert (after.status, after.task) == (InstanceStatus.ACTIVE, InstanceTask.NONE)
    assert len(service.list(PROJECT)) == 1


def test_a_guest_that_never_answers_fails_the_backup_at_the_deadline(env: Env) -> None:
    world, service, guest = env
    instance_id = active_instance(world, guest)
    backup = service.create(PROJECT, CreateBackup(name="b", instance_id=instance_id))
    world.clock.advance(world.settings.guest_prepare_timeout + 1)
    arn = world.service.get(PROJECT, instance_id).task_execution_arn
    assert arn is not None
    world.workflows.expire_waits(arn)
    failed = service.get(PROJECT, backup.id)
    assert failed.status is BackupStatus.FAILED
    assert "did not answer in time" in (failed.fail_reason or "")
    after = world.service.get(PROJECT, instance_id)
    assert (after.status, after.task) == (InstanceStatus.ACTIVE, InstanceTask.NONE)
    assert list(guest.blobs.list("backups/")) == []
    guest.answer(instance_id)  # a late answer changes nothing...
    assert service.get(PROJECT, backup.id).status is BackupStatus.FAILED
    # ...but a guest that was only slow may still have written its object: deleting the
    # FAILED backup removes it too.
    service.delete(PROJECT, backup.id)
    assert list(guest.blobs.list("backups/")) == []


def test_a_restore_brings_its_own_users(env: Env) -> None:
    world, service, guest = env
    source = active_instance(world, guest)
    good = completed_backup(world, service, guest, source)
    with pytest.raises(RequestError) as refused:
        world.service.create(PROJECT, create_request(restore_backup_id=good))
    assert (refused.value.field, refused.value.status) == ("restorePoint", 400)


def test_a_vanished_backup_record_still_gives_the_instance_back(env: Env) -> None:
    world, service, guest = env
    instance_id = active_instance(world, guest)
    world.workflows.paused = True
    backup = service.create(PROJECT, CreateBackup(name="b", instance_id=instance_id))
    service.records.remove(backup)
    world.workflows.paused = False
    world.workflows.settle_all()
    after = world.service.get(PROJECT, instance_id)
    assert (after.status, after.task) == (InstanceStatus.ACTIVE, InstanceTask.NONE)
