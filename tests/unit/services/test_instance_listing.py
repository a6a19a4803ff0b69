"""The per-project instance listing: it follows every write through InstanceRecords, never
goes back to an older copy, never resurrects a deleted instance, seeds itself when missing,
and converges under concurrent writers (real directory store, threads)."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from shared.adapters.local.state_store import DirectoryStateStore
from shared.clock import SystemClock
from shared.models.datastore import DatastoreRef
from shared.models.instance import Instance, InstanceStatus
from shared.models.volume import Volume, VolumeKind
from shared.services.instance_listing import ProjectListing, listing_key
from shared.services.instances import InstanceRecords, instance_key

PROJECT = "0123456789abcdef0123456789abcdef"
OTHER = "fedcba9876543210fedcba9876543210"
START = datetime(2026, 1, 1, tzinfo=UTC)


def new_instance(n: int, project: str = PROJECT) -> Instance:
    created = START + timedelta(seconds=n)
    return Instance(
        id=str(uuid.uuid4()),
        project_id=project,
        name=f"db-{n}",
        flavor_id="1",
        volume=Volume(kind=VolumeKind.DIRECTORY, size_gb=1),
        datastore=DatastoreRef(type="redis", version="7.0"),
        task_execution_arn="arn:execution",
        created=created,
        updated=created,
    )


def store_at(tmp_path: Path) -> DirectoryStateStore:
    return DirectoryStateStore(tmp_path / "state", SystemClock())


def test_listing_follows_creates_updates_and_deletes(tmp_path: Path) -> None:
    store = store_at(tmp_path)
    records = InstanceRecords(store)
    first, second, foreign = new_instance(1), new_instance(2), new_instance(3, OTHER)
    for instance in (second, first, foreign):
        records.create(instance)
    assert [i.id for i in records.of_project(PROJECT)] == [first.id, second.id]  # oldest first
    records.update(first.id, lambda i: i.replace(name="renamed", status=InstanceStatus.ACTIVE))
    listed = records.of_project(PROJECT)
    assert (listed[0].name, listed[0].status) == ("renamed", InstanceStatus.ACTIVE)
    assert listed[0].task_execution_arn is None  # listings carry no arn or guest secret
    records.remove(PROJECT, second.id)
    assert [i.id for i in records.of_project(PROJECT)] == [first.id]
    assert [i.id for i in records.of_project(OTHER)] == [foreign.id]


def test_a_late_merge_neither_rolls_back_nor_resurrects(tmp_path: Path) -> None:
    store = store_at(tmp_path)
    records = InstanceRecords(store)
    instance = new_instance(1)
    records.create(instance)
    stale = instance.model_dump(mode="json")
    records.update(instance.id, lambda i: i.replace(name="newer"))
    listing = ProjectListing(store, lambda project: {})
    listing.record_write(PROJECT, instance.id, 1, stale)  # a slow writer's older copy
    assert [i.name for i in records.of_project(PROJECT)] == ["newer"]
    records.remove(PROJECT, instance.id)
    listing.record_write(PROJECT, instance.id, 99, stale)  # lands after the delete's merge
    assert records.of_project(PROJECT) == []


def test_a_missing_listing_is_seeded_from_the_records(tmp_path: Path) -> None:
    store = store_at(tmp_path)
    records = InstanceRecords(store)
    made = [new_instance(n) for n in range(5)]
    for instance in made:
        records.create(instance)
    store.delete(listing_key(PROJECT))
    assert [i.id for i in records.of_project(PROJECT)] == [i.id for i in made]
    assert store.get(listing_key(PROJECT)) is not None  # the read wrote the seed
    # A write while the listing is missing seeds it too, with every instance.
    store.delete(listing_key(PROJECT))
    records.update(made[0].id, lambda i: i.replace(name="changed"))
    listed = records.of_project(PROJECT)
    assert [i.name for i in listed] == ["changed", "db-1", "db-2", "db-3", "db-4"]


def test_concurrent_writers_converge_on_the_records(tmp_path: Path) -> None:
    store = store_at(tmp_path)
    made = [new_instance(n) for n in range(6)]
    for instance in made:
        InstanceRecords(store).create(instance)
    doomed = made[5]
    errors: list[BaseException] = []

    def writer(instance: Instance) -> None:
        try:
            records = InstanceRecords(store)  # each "function" has its own
            for step in range(8):
                records.update(instance.id, lambda i, s=step: i.replace(name=f"{i.name}-{s}"))
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    def deleter() -> None:
        try:
            InstanceRecords(store).remove(PROJECT, doomed.id)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in made]
    threads.append(threading.Thread(target=deleter))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    truth = {}
    for instance in made[:5]:
        record = store.get(instance_key(instance.id))
        assert record is not None
        truth[instance.id] = record.data["name"]
    listed = {i.id: i.name for i in InstanceRecords(store).of_project(PROJECT)}
    assert listed == truth
    assert all(name.endswith("-7") for name in listed.values())
