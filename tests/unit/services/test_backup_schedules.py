"""Backup schedules and the scheduler over in-memory ports with a ManualClock: due schedules
fire exactly once even with two schedulers racing, missed runs fire once, retention never
deletes a parent of a kept backup, cron expressions are validated."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from functions import backup_scheduler
from infra.local.server import TIMER_FUNCTIONS
from shared.adapters.local.state_store import DirectoryStateStore
from shared.clock import ManualClock
from shared.errors import NotFoundError, RequestError
from shared.models.backup import Backup, BackupStatus
from shared.models.datastore import DatastoreRef
from shared.ports import Record
from shared.services.backup_schedules import (
    BackupSchedule,
    BackupScheduler,
    BackupScheduleService,
    CreateSchedule,
    validate_cron,
)
from shared.services.backups import BackupService, CreateBackup
from tests.unit.services.backup_fakes import PROJECT, Env, active_instance, backup_env
from tests.unit.services.conftest import World

HOUR = 3600.0


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    yield from backup_env(tmp_path)


def schedules(env: Env) -> BackupScheduleService:
    world, backups, _guest = env
    return BackupScheduleService(world.store, world.clock, backups)


def scheduler(env: Env) -> BackupScheduler:
    world, backups, _guest = env
    return BackupScheduler(world.store, world.clock, backups)


def hourly(env: Env, instance_id: str, **changes: object) -> str:
    fields: dict[str, object] = {"name": "hourly", "cron": "0 * * * *"}
    fields.update(changes)
    return schedules(env).create(PROJECT, instance_id, CreateSchedule.model_validate(fields)).id


def to_next_hour(world: World) -> None:
    now = world.clock.time()
    world.clock.advance(HOUR - now % HOUR + 1)


@pytest.mark.parametrize(
    "cron", ["61 * * * *", "every day", "* * * *", "* * * * * *", "", "0 0 31 2 * x"]
)
def test_a_bad_cron_expression_is_a_400_naming_cron(env: Env, cron: str) -> None:
    world, _backups, guest = env
    instance_id = active_instance(world, guest)
    with pytest.raises(RequestError) as refused:
        schedules(env).create(PROJECT, instance_id, CreateSchedule(name="s", cron=cron))
    assert (refused.value.field, refused.value.status) == ("cron", 400)
    assert schedules(env).list(PROJECT, instance_id) == []
    assert validate_cron("  */15  2 * * 1-5 ") == "*/15 2 * * 1-5"


def test_schedules_are_per_instance_and_project(env: Env) -> None:
    world, _backups, guest = env
    instance_id = active_instance(world, guest)
    schedule_id = hourly(env, instance_id, keep_last=3)
    service = schedules(env)
    assert [s.id for s in service.list(PROJECT, instance_id)] == [schedule_id]
    assert service.get(PROJECT, instance_id, schedule_id).keep_last == 3
    with pytest.raises(NotFoundError):
        service.list("other", instance_id)
    with pytest.raises(NotFoundError):
        service.get("other", instance_id, schedule_id)
    with pytest.raises(RequestError) as refused:
        hourly(
            env,
            active_instance(world, guest, datastore_type="redis", databases=[], users=[]),
            incremental=True,
        )
    assert refused.value.field == "incremental"
    service.delete(PROJECT, instance_id, schedule_id)
    assert service.list(PROJECT, instance_id) == []


class InterleavingStore:
    """A store through which one scheduler reads a schedule; right after that read (before
    the scheduler writes its claim) `between` runs: the other scheduler's whole tick."""

    def __init__(self, store: object, between: object) -> None:
        self._store = store
        self.between = between

    def get(self, key: str) -> Record | None:
        record: Record | None = self._store.get(key)  # type: ignore[attr-defined]
        if key.startswith("backup-schedules/") and self.between is not None:
            run, self.between = self.between, None
            run()  # type: ignore[operator]
        return record

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)


def test_a_due_schedule_fires_once_with_two_schedulers_racing(env: Env) -> None:
    world, backups, guest = env
    instance_id = active_instance(world, guest)
    hourly(env, instance_id)
    to_next_hour(world)
    other = scheduler(env)
    fired_by_other: list[str] = []
    racing_store = InterleavingStore(world.store, lambda: fired_by_other.extend(other.tick()))
    racing_backups = BackupService.from_runtime(
        world.runtime, backups._blobs, instances=world.service
    )
    first = BackupScheduler(racing_store, world.clock, racing_backups)  # type: ignore[arg-type]
    fired_by_first = first.tick()
    assert len(fired_by_other) == 1 and fired_by_first == []
    assert len(backups.list(PROJECT)) == 1
    # The loser did not even try (a try would have met the busy instance and said so).
    (schedule,) = schedules(env).list(PROJECT, instance_id)
    assert schedule.last_error is None and schedule.last_backup_id == fired_by_other[0]
    guest.answer(instance_id)
    assert backups.list(PROJECT)[0].status is BackupStatus.COMPLETED
    # Both again at the same moment: nothing is due any more.
    assert other.tick() == [] and first.tick() == []
    assert len(backups.list(PROJECT)) == 1


def test_missed_runs_fire_once_on_return(env: Env) -> None:
    world, backups, guest = env
    instance_id = active_instance(world, guest)
    schedule_id = hourly(env, instance_id)
    world.clock.advance(5 * HOUR + 60)  # the control plane was down for five slots
    ticker = scheduler(env)
    assert len(ticker.tick()) == 1
    assert ticker.tick() == []
    guest.answer(instance_id)
    schedule = schedules(env).get(PROJECT, instance_id, schedule_id)
    assert schedule.next_run > world.clock.now()
    assert schedule.next_run - world.clock.now() <= timedelta(hours=1)
    assert schedule.last_backup_id == backups.list(PROJECT)[0].id
    to_next_hour(world)
    assert len(ticker.tick()) == 1  # the next slot fires as usual


def test_a_busy_instance_skips_the_run_and_says_why(env: Env) -> None:
    world, backups, guest = env
    instance_id = active_instance(world, guest)
    schedule_id = hourly(env, instance_id)
    world.service.restart(PROJECT, instance_id)  # an action under way: the backup gets 409
    to_next_hour(world)
    assert scheduler(env).tick() == []
    schedule = schedules(env).get(PROJECT, instance_id, schedule_id)
    assert schedule.last_error and "busy" in schedule.last_error
    assert backups.list(PROJECT) == []


def run_slots(env: Env, ticker: BackupScheduler, instance_id: str, slots: int) -> list[str]:
    world, _backups, guest = env
    made = []
    for _ in range(slots):
        to_next_hour(world)
        made.extend(ticker.tick())
        guest.answer(instance_id)
    return made


def test_retention_keeps_the_last_n_full_backups(env: Env) -> None:
    world, backups, guest = env
    instance_id = active_instance(world, guest)
    hourly(env, instance_id, keep_last=2)
    manual = backups.create(
        PROJECT,
        CreateBackup(name="m", instance_id=instance_id),
    )
    guest.answer(instance_id)
    made = run_slots(env, scheduler(env), instance_id, 4)
    left = {b.id for b in backups.list(PROJECT)}
    # Only the schedule's own backups are pruned: the manual one stays.
    assert left == {made[-2], made[-1], manual.id}
    objects = {info.key for info in guest.blobs.list("backups/")}
    assert {backups.get(PROJECT, i).location for i in left} == objects


def test_retention_never_deletes_a_parent_of_a_kept_backup(env: Env) -> None:
    world, backups, guest = env
    instance_id = active_instance(world, guest)
    hourly(env, instance_id, keep_last=1, incremental=True)
    ticker = scheduler(env)
    made = run_slots(env, ticker, instance_id, 4)
    chain = [backups.get(PROJECT, i) for i in made]
    assert chain[0].parent_id is None
    assert [b.parent_id for b in chain[1:]] == [b.id for b in chain[:-1]]
    to_next_hour(world)
    ticker.tick()  # prunes with all four COMPLETED; the newest is built on all the others
    assert {b.id for b in backups.list(PROJECT)} >= set(made)


def test_retention_by_age(env: Env) -> None:
    world, backups, guest = env
    instance_id = active_instance(world, guest)
    daily = schedules(env).create(
        PROJECT, instance_id, CreateSchedule(name="d", cron="0 3 * * *", max_age_days=2)
    )
    ticker = scheduler(env)
    made = []
    for _ in range(5):
        world.clock.advance(24 * HOUR)
        made.extend(ticker.tick())
        guest.answer(instance_id)
    assert len(made) == 5
    ticker.tick()
    left = [b.id for b in backups.list(PROJECT)]
    assert left == made[-3:]  # 0, 1 and exactly 2 days old stay; 3 and 4 days old go
    assert schedules(env).get(PROJECT, instance_id, daily.id).last_error is None


def test_the_timer_function_ticks_the_scheduler(env: Env) -> None:
    world, backups, guest = env
    instance_id = active_instance(world, guest)
    hourly(env, instance_id)
    to_next_hour(world)
    assert backup_scheduler.run in [timer.run for timer in TIMER_FUNCTIONS]
    backup_scheduler.run(world.runtime)
    assert len(backups.list(PROJECT)) == 1
    assert backup_scheduler.handler({}, None) == {"started": []}  # nothing due any more


class CountingBackups:
    """Stands in for BackupService: counts the backups each schedule asks for."""

    def __init__(self) -> None:
        self.created: list[str] = []
        self._lock = threading.Lock()

    def create(self, project_id: str, request: CreateBackup) -> Backup:
        with self._lock:
            self.created.append(request.instance_id)
        now = datetime(2026, 1, 1, tzinfo=UTC)
        return Backup(
            id=str(uuid.uuid4()),
            project_id=project_id,
            name=request.name,
            instance_id=request.instance_id,
            datastore=DatastoreRef(type="mariadb", version="10.11"),
            created=now,
            updated=now,
        )

    def list(self, project_id: str, **_filters: object) -> list[Backup]:
        return []


def test_two_schedulers_in_threads_on_a_real_store_fire_each_run_once(tmp_path: Path) -> None:
    clock = ManualClock(datetime(2026, 1, 1, 0, 30, tzinfo=UTC).timestamp())
    store = DirectoryStateStore(tmp_path / "state", clock, durability="none")
    counting = CountingBackups()
    instance_ids = [str(uuid.uuid4()) for _ in range(20)]
    for instance_id in instance_ids:
        schedule = BackupSchedule(
            id=str(uuid.uuid4()),
            project_id=PROJECT,
            instance_id=instance_id,
            name="hourly",
            cron="0 * * * *",
            next_run=datetime(2026, 1, 1, 1, 0, tzinfo=UTC),
            created=clock.now(),
            updated=clock.now(),
        )
        store.put(f"backup-schedules/{schedule.id}", schedule.model_dump(mode="json"), 0)
    tickers = [BackupScheduler(store, clock, counting) for _ in range(2)]  # type: ignore[arg-type]
    for _slot in range(3):
        clock.advance(HOUR)
        barrier = threading.Barrier(len(tickers))

        def tick(ticker: BackupScheduler, barrier: threading.Barrier = barrier) -> None:
            barrier.wait(timeout=10)
            ticker.tick()

        threads = [threading.Thread(target=tick, args=(t,)) for t in tickers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
    assert sorted(counting.created) == sorted(instance_ids * 3)
