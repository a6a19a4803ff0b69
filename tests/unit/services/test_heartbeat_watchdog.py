"""The heartbeat watchdog over in-memory ports and virtual time: the real backup flow and task
functions, the real guest-events consumer writing liveness records, a fake guest that sends
signed heartbeats (or stops), and a lease-capable in-memory store."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from functions import heartbeat_watchdog as watchdog_fn
from infra.local.server import TIMER_FUNCTIONS
from shared.adapters.revision_leases import RevisionLeases
from shared.models.backup import BackupStatus
from shared.models.guest import Heartbeat
from shared.models.instance import InstanceStatus, InstanceTask, ServiceStatus
from shared.ports import JSON, Record
from shared.services.backups import CreateBackup
from shared.services.guest_channel import EVENTS_QUEUE
from shared.services.guest_liveness import liveness_key, liveness_refresh_seconds
from shared.services.heartbeat_watchdog import HeartbeatWatchdog
from shared.services.instances import wait_key
from tests.unit.engine.fakes import MemoryStateStore
from tests.unit.services.backup_fakes import (
    PROJECT,
    BackupGuest,
    Env,
    active_instance,
    backup_env,
    create_request,
)
from tests.unit.services.conftest import World

EXPIRY = 5.0  # pinned for these tests (interval 1 s: the figures below assume both)


class _LeaseLog:
    """A revision log for RevisionLeases over a second in-memory store."""

    def __init__(self, store: MemoryStateStore) -> None:
        self._store = store

    def read(self, key: str) -> Record | None:
        return self._store.get(key)

    def write(self, key: str, data: JSON, expected_revision: int) -> Record:
        return self._store.put(key, data, expected_revision)


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    for built in backup_env(tmp_path, heartbeat_expiry=EXPIRY):
        world = built[0]
        leases = RevisionLeases(_LeaseLog(MemoryStateStore(world.clock)), world.clock, str)
        monkeypatch.setattr(world.store, "acquire_lease", leases.acquire)
        monkeypatch.setattr(world.store, "renew_lease", leases.renew)
        monkeypatch.setattr(world.store, "release_lease", leases.release)
        yield built


class Beats:
    """Signed heartbeats from an instance's guest, numbered from the virtual clock (as the
    real agent's SequenceSource does), delivered through the real consumer."""

    def __init__(self, world: World, guest: BackupGuest) -> None:
        self.world = world
        self.guest = guest
        self._extra = itertools.count()

    def send(self, instance_id: str, status: ServiceStatus = ServiceStatus.RUNNING) -> None:
        beat = Heartbeat(
            instance_id=instance_id,
            sequence=int(self.world.clock.time() * 1_000_000) + next(self._extra),
            timestamp=self.world.clock.now(),
            agent_version="test",
            datastore_status=status,
            disk_used_bytes=1,
            disk_total_bytes=10,
        ).sign(self.guest.keys(instance_id).signing)
        self.world.queue.send(EVENTS_QUEUE, beat.model_dump(mode="json"))
        self.world.pump_events()

    def for_seconds(self, instance_id: str, seconds: float, interval: float = 1.0) -> None:
        """Heartbeats every `interval` while virtual time moves on by `seconds`."""
        elapsed = 0.0
        while elapsed < seconds:
            self.send(instance_id)
            self.world.clock.advance(interval)
            elapsed += interval


def watchdog(world: World, **kw: object) -> HeartbeatWatchdog:
    return HeartbeatWatchdog(
        world.store,
        world.clock,
        world.workflows,
        heartbeat_expiry=world.settings.heartbeat_expiry,
        heartbeat_interval=world.settings.heartbeat_interval,
        queue=world.queue,
        **kw,  # type: ignore[arg-type]
    )


def test_steady_heartbeats_cost_few_writes_and_wake_no_watchdog(env: Env) -> None:
    world, _backups, guest = env
    assert world.settings.heartbeat_expiry == EXPIRY
    instance_id = active_instance(world, guest)
    beats = Beats(world, guest)
    beats.send(instance_id)
    assert world.service.get(PROJECT, instance_id).operating_status is ServiceStatus.RUNNING

    def revisions() -> tuple[int, int]:
        live = world.store.get(liveness_key(instance_id))
        record = world.store.get(f"instances/{instance_id}")
        assert live is not None and record is not None
        return live.revision, record.revision

    liveness_before, instance_before = revisions()
    beats.for_seconds(instance_id, 60)
    # 60 heartbeats: one liveness write per refresh period (5/3 s: every second beat), and
    # no instance write at all (the status did not change).
    refresh = liveness_refresh_seconds(EXPIRY, world.settings.heartbeat_interval)
    liveness_after, instance_after = revisions()
    writes = liveness_after - liveness_before
    assert 60 / (refresh + 1) - 1 <= writes <= 60 / refresh + 1, writes
    assert instance_after == instance_before
    report = watchdog(world).tick()
    assert (report.skipped, report.lost) == (False, [])
    assert world.service.get(PROJECT, instance_id).operating_status is ServiceStatus.RUNNING


def test_a_silent_agent_fails_the_running_backup_and_shows_shutdown(env: Env) -> None:
    world, backups, guest = env
    instance_id = active_instance(world, guest)
    beats = Beats(world, guest)
    beats.for_seconds(instance_id, 3)
    guest.hold_backups = True  # the agent takes the command... and dies with it
    backup = backups.create(PROJECT, CreateBackup(name="nightly", instance_id=instance_id))
    guest.answer(instance_id)
    assert backups.get(PROJECT, backup.id).status is BackupStatus.BUILDING
    assert world.store.get(wait_key(instance_id)) is not None

    # Within the deadline: nothing happens.
    world.clock.advance(EXPIRY - 0.5)
    assert watchdog(world).tick().lost == []
    assert backups.get(PROJECT, backup.id).status is BackupStatus.BUILDING

    world.clock.advance(1.0)
    report = watchdog(world).tick()
    assert report.lost == [instance_id]
    assert report.waits_failed == [instance_id] and report.marked_shutdown == [instance_id]
    failed = backups.get(PROJECT, backup.id)
    assert failed.status is BackupStatus.FAILED
    assert "the guest agent stopped sending heartbeats" in (failed.fail_reason or "")
    assert "no heartbeat from the guest agent" in (failed.fail_reason or "")
    assert list(guest.blobs.list("")) == []
    after = world.service.get(PROJECT, instance_id)
    assert (after.status, after.task) == (InstanceStatus.ACTIVE, InstanceTask.NONE)
    assert after.operating_status is ServiceStatus.SHUTDOWN
    assert after.operating_status.api_status == "SHUTDOWN"
    assert world.store.get(wait_key(instance_id)) is None

    # Later ticks change nothing more (no wait left, already SHUTDOWN).
    world.clock.advance(EXPIRY * 3)
    again = watchdog(world).tick()
    assert again.lost == [instance_id]
    assert again.waits_failed == [] and again.marked_shutdown == []

    # The agent comes back: the first heartbeat shows it running again.
    beats.send(instance_id)
    back = world.service.get(PROJECT, instance_id)
    assert back.operating_status is ServiceStatus.RUNNING
    assert back.operating_status.api_status == "ACTIVE"
    assert watchdog(world).tick().lost == []


def test_an_idle_silent_agent_is_marked_shutdown_once(env: Env) -> None:
    world, _backups, guest = env
    instance_id = active_instance(world, guest)
    Beats(world, guest).send(instance_id)
    world.clock.advance(EXPIRY + 0.1)
    report = watchdog(world).tick()
    assert report.marked_shutdown == [instance_id] and report.waits_failed == []
    assert world.service.get(PROJECT, instance_id).operating_status is ServiceStatus.SHUTDOWN


def test_building_and_deleting_instances_are_left_alone(env: Env) -> None:
    world, _backups, guest = env
    # Before its first heartbeat: no liveness record, however long the build takes.
    building = world.service.create(PROJECT, create_request())
    world.clock.advance(EXPIRY * 20)
    assert watchdog(world).tick().lost == []
    still = world.service.get(PROJECT, building.id)
    assert still.status is InstanceStatus.BUILD
    assert world.store.get(wait_key(building.id)) is not None  # the prepare wait is untouched

    # Being deleted: its flow owns it.
    deleting = active_instance(world, guest, name="other")
    Beats(world, guest).send(deleting)
    world.service.records.update(deleting, lambda i: i.replace(task=InstanceTask.DELETING))
    world.clock.advance(EXPIRY * 2)
    assert watchdog(world).tick().lost == []
    assert world.service.get(PROJECT, deleting).operating_status is ServiceStatus.RUNNING


def test_a_fresh_action_gets_a_full_deadline(env: Env) -> None:
    """An instance that was silent for long but just started an action is judged from the
    action's start (the record's update), not from its last heartbeat."""
    world, backups, guest = env
    instance_id = active_instance(world, guest)
    Beats(world, guest).send(instance_id)
    world.clock.advance(EXPIRY * 10)
    guest.hold_backups = True
    backup = backups.create(PROJECT, CreateBackup(name="b", instance_id=instance_id))
    world.clock.advance(EXPIRY - 1)
    assert watchdog(world).tick().lost == []
    assert backups.get(PROJECT, backup.id).status is BackupStatus.BUILDING
    world.clock.advance(2)
    assert watchdog(world).tick().waits_failed == [instance_id]
    assert backups.get(PROJECT, backup.id).status is BackupStatus.FAILED


def test_only_one_watchdog_acts_at_a_time_and_vanished_instances_are_forgotten(
    env: Env,
) -> None:
    world, _backups, guest = env
    instance_id = active_instance(world, guest)
    Beats(world, guest).send(instance_id)
    world.clock.advance(EXPIRY + 1)
    holder = watchdog(world, owner="a")
    lease = world.store.acquire_lease("heartbeat-watchdog", "a", 60)
    other = watchdog(world, owner="b")
    assert other.tick().skipped
    assert world.service.get(PROJECT, instance_id).operating_status is ServiceStatus.RUNNING
    world.store.release_lease(lease)
    assert holder.tick().marked_shutdown == [instance_id]
    # A holder that died: its lease expires and another watchdog takes over.
    world.store.acquire_lease("heartbeat-watchdog", "a", 60)
    world.clock.advance(61)
    assert not other.tick().skipped

    world.service.records.remove(PROJECT, instance_id)
    assert world.store.get(liveness_key(instance_id)) is not None
    assert other.tick().forgotten == [instance_id]
    assert world.store.get(liveness_key(instance_id)) is None


def test_the_timer_function_is_registered_and_answers(env: Env) -> None:
    world, _backups, guest = env
    assert watchdog_fn.run in [timer.run for timer in TIMER_FUNCTIONS]
    instance_id = active_instance(world, guest)
    Beats(world, guest).send(instance_id)
    world.clock.advance(EXPIRY + 1)
    answer = watchdog_fn.handler({}, None)
    assert answer == {
        "skipped": False,
        "consumer_behind": False,
        "lost": [instance_id],
        "waits_failed": [],
        "marked_shutdown": [instance_id],
    }


def test_a_backed_up_events_queue_blames_no_agent(env: Env) -> None:
    """The consumer writes the liveness records: when it is behind, agents only look silent."""
    world, _backups, guest = env
    first = active_instance(world, guest)
    second = active_instance(world, guest, name="second")
    beats = Beats(world, guest)
    beats.send(first)
    beats.send(second)
    world.clock.advance(EXPIRY + 1)
    # Heartbeats of both waiting unconsumed: 2.5 per instance is half an expiry's worth.
    for _ in range(5):
        world.queue.send(EVENTS_QUEUE, {"kind": "heartbeat", "waiting": True})
    report = watchdog(world).tick()
    assert report.consumer_behind and report.lost == []
    assert world.service.get(PROJECT, first).operating_status is ServiceStatus.RUNNING
    world.queue.purge(EVENTS_QUEUE)  # the consumer caught up (and the agents stayed silent)
    report = watchdog(world).tick()
    assert not report.consumer_behind
    assert sorted(report.marked_shutdown) == sorted([first, second])


def test_liveness_refresh_stays_inside_the_expiry() -> None:
    assert liveness_refresh_seconds(5.0, 1.0) == pytest.approx(5 / 3)
    assert liveness_refresh_seconds(3.0, 0.5) == pytest.approx(1.0)
    assert liveness_refresh_seconds(5.0, 2.4) == pytest.approx(0.2)
    assert liveness_refresh_seconds(5.0, 4.0) == 0.0
