"""Heartbeats (status, disk, counters, signature), the serving loop, boot and shutdown, with
in-memory fakes."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from guest_agent.agent import GuestAgent
from guest_agent.datastores.base import DatastoreHealth, DatastoreStatus
from guest_agent.state import STATE_DIR, STATE_FILE
from guest_agent.user_data import AgentConfig, resolve_config
from shared.clock import ManualClock
from shared.errors import CorruptDataError
from shared.models import GuestResult, Heartbeat, ReplicationRole, ServiceStatus
from shared.models.guest import parse_guest_message
from shared.services.guest_channel import EVENTS_QUEUE, GuestClient, GuestEventVerifier
from tests.unit.guest_agent.conftest import INSTANCE_ID, make_user_data
from tests.unit.guest_agent.fakes import FakeManager, InMemoryQueue, InMemoryStateStore


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def heartbeats(queue: InMemoryQueue) -> list[Heartbeat]:
    return [
        m for m in map(parse_guest_message, queue.bodies(EVENTS_QUEUE)) if isinstance(m, Heartbeat)
    ]


def prepare(agent: GuestAgent, client: GuestClient, queue: InMemoryQueue) -> None:
    client.send("prepare", {"databases": [{"name": "shop"}]})
    agent.poll_once()
    queue.drain(EVENTS_QUEUE)


# --------------------------------------------------------------------------- status
def test_status_follows_the_datastore_through_its_life(
    agent: GuestAgent, client: GuestClient, queue: InMemoryQueue, manager: FakeManager
) -> None:
    assert agent.heartbeat().datastore_status is ServiceStatus.NEW
    seen_during: list[ServiceStatus] = []
    manager.during_prepare = lambda: seen_during.append(agent.heartbeat().datastore_status)
    prepare(agent, client, queue)
    assert seen_during == [ServiceStatus.BUILDING]
    beat = agent.heartbeat()
    assert (beat.datastore_status, beat.datastore_detail) == (
        ServiceStatus.RUNNING,
        "answered a query",
    )
    manager.crash()
    crashed = agent.heartbeat()
    assert crashed.datastore_status is ServiceStatus.CRASHED
    assert crashed.datastore_detail == "process exited"
    client.send("start")
    agent.poll_once()
    manager.restart_pending = True
    assert agent.heartbeat().datastore_status is ServiceStatus.RESTART_REQUIRED
    client.send("stop")
    agent.poll_once()
    assert agent.heartbeat().datastore_status is ServiceStatus.SHUTDOWN


def test_a_failed_prepare_reports_failed_until_one_succeeds(
    agent: GuestAgent, client: GuestClient, queue: InMemoryQueue, manager: FakeManager
) -> None:
    manager.fail_next = RuntimeError("disk on fire")
    prepare(agent, client, queue)
    beat = agent.heartbeat()
    assert beat.datastore_status is ServiceStatus.FAILED
    assert beat.datastore_detail is not None and "disk on fire" in beat.datastore_detail
    prepare(agent, client, queue)
    assert agent.heartbeat().datastore_status is ServiceStatus.RUNNING


def test_the_admin_password_of_a_failed_prepare_is_reused(
    agent: GuestAgent, client: GuestClient, queue: InMemoryQueue, manager: FakeManager
) -> None:
    manager.fail_next = RuntimeError("try again")
    prepare(agent, client, queue)
    first = agent.state.admin_password()
    prepare(agent, client, queue)
    assert first is not None and manager.admin_password == first


def test_an_unresponsive_datastore_is_blocked_and_a_broken_probe_unknown(
    agent: GuestAgent, monkeypatch: pytest.MonkeyPatch, manager: FakeManager
) -> None:
    manager.prepared = True

    def unresponsive(timeout: float = 2.0) -> DatastoreHealth:
        return DatastoreHealth("mariadb", DatastoreStatus.UNRESPONSIVE, "timed out")

    monkeypatch.setattr(manager, "probe", unresponsive)
    assert agent.heartbeat().datastore_status is ServiceStatus.BLOCKED

    def broken(timeout: float = 2.0) -> DatastoreHealth:
        raise OSError("no /proc")

    monkeypatch.setattr(manager, "probe", broken)
    beat = agent.heartbeat()
    assert beat.datastore_status is ServiceStatus.UNKNOWN
    assert beat.datastore_detail is not None and "no /proc" in beat.datastore_detail


# --------------------------------------------------------------------------- contents
def test_heartbeat_is_signed_fresh_and_accepted_by_the_control_plane(
    agent: GuestAgent, clock: ManualClock, secret: bytes
) -> None:
    verifier = GuestEventVerifier(InMemoryStateStore(), clock, {INSTANCE_ID: secret}.get)
    first, second = agent.send_heartbeat(), agent.send_heartbeat()
    assert second.sequence > first.sequence
    assert first.timestamp == clock.now()
    assert first.replication.role is ReplicationRole.STANDALONE
    assert first.agent_version == "0.1.0"
    assert first.rejected_commands == {}
    for beat in (first, second):
        assert verifier.verify(beat.model_dump(mode="json")).accepted


def test_disk_use_is_the_volume_filesystems(agent: GuestAgent, volume: Path) -> None:
    import os

    beat = agent.heartbeat()
    st = os.statvfs(volume)
    assert beat.disk_total_bytes == st.f_blocks * st.f_frsize
    assert 0 < beat.disk_used_bytes <= beat.disk_total_bytes


def test_a_plain_directory_volume_is_measured_against_its_nominal_size(
    secret: bytes, tmp_path: Path, volume: Path, queue: InMemoryQueue, clock: ManualClock
) -> None:
    from guest_agent.user_data import MetaData

    meta = MetaData.model_validate(
        {"volume": {"mount_point": str(volume), "size_gb": 1, "soft_quota": True}}
    )
    config = resolve_config(make_user_data(secret, tmp_path), meta)
    (volume / "blob").write_bytes(b"x" * (3 << 20))
    agent = GuestAgent(config, queue, FakeManager(volume), clock)  # type: ignore[arg-type]
    agent.boot()
    beat = agent.heartbeat()
    assert beat.disk_total_bytes == 1 << 30
    assert (3 << 20) <= beat.disk_used_bytes < (5 << 20)  # the file + the agent's reserve
    assert agent.volume_info()["soft_quota"] is True


# --------------------------------------------------------------------------- serving
@pytest.fixture
def fast_config(secret: bytes, tmp_path: Path, volume: Path) -> AgentConfig:
    return resolve_config(
        make_user_data(secret, tmp_path, volume_path=volume, heartbeat_interval=0.05), None
    )


@pytest.fixture
def running(
    fast_config: AgentConfig, queue: InMemoryQueue, manager: FakeManager, clock: ManualClock
) -> Iterator[tuple[GuestAgent, threading.Event]]:
    agent = GuestAgent(fast_config, queue, manager, clock)  # type: ignore[arg-type]
    agent.boot()
    stop = threading.Event()
    thread = threading.Thread(target=agent.run, args=(stop, 0.05))
    thread.start()
    try:
        yield agent, stop
    finally:
        stop.set()
        thread.join(timeout=10)
        assert not thread.is_alive()


def test_the_agent_serves_commands_and_beats_until_stopped(
    running: tuple[GuestAgent, threading.Event],
    queue: InMemoryQueue,
    client: GuestClient,
    manager: FakeManager,
) -> None:
    agent, stop = running
    wait_for(lambda: len(heartbeats(queue)) >= 3)
    command = client.send("prepare", {"databases": [{"name": "shop"}]})

    def answered() -> list[GuestResult]:
        return [
            m
            for m in map(parse_guest_message, queue.bodies(EVENTS_QUEUE))
            if isinstance(m, GuestResult) and m.command_id == command.id
        ]

    wait_for(lambda: bool(answered()))
    assert answered()[0].ok
    # The crash shows in the next heartbeat, not only through silence.
    manager.crash()
    wait_for(lambda: heartbeats(queue)[-1].datastore_status is ServiceStatus.CRASHED, 1.0)
    stop.set()
    heartbeat_thread = agent._heartbeat_thread
    assert heartbeat_thread is not None
    heartbeat_thread.join(timeout=5)
    assert not heartbeat_thread.is_alive()


def test_heartbeats_survive_a_queue_outage(
    running: tuple[GuestAgent, threading.Event], queue: InMemoryQueue
) -> None:
    wait_for(lambda: len(heartbeats(queue)) >= 1)
    queue.fail_sends = True
    wait_for(lambda: queue.failed_sends >= 3)
    queue.fail_sends = False
    before = len(heartbeats(queue))
    wait_for(lambda: len(heartbeats(queue)) > before)


# --------------------------------------------------------------------------- boot, shutdown
@pytest.mark.parametrize(
    ("prepared", "running", "wanted", "expect_start"),
    [
        (True, True, True, False),  # re-attach: the datastore outlived the agent
        (True, False, True, True),  # the server was stopped or rebooted: start it
        (True, False, False, False),  # stopped by a command: stays stopped
        (False, False, True, False),  # never prepared: nothing to start
    ],
)
def test_boot_reattaches_or_starts_the_datastore(
    *,
    config: AgentConfig,
    queue: InMemoryQueue,
    clock: ManualClock,
    volume: Path,
    prepared: bool,
    running: bool,
    wanted: bool,
    expect_start: bool,
) -> None:
    first = GuestAgent(config, queue, FakeManager(volume), clock)  # type: ignore[arg-type]
    first.boot()
    first.state.want_datastore(wanted)
    manager = FakeManager(volume, prepared=prepared, running=running)
    agent = GuestAgent(config, queue, manager, clock)  # type: ignore[arg-type]
    agent.boot()
    assert manager.calls == []
    agent.resume_datastore()
    assert ("start" in manager.calls) is expect_start


def test_a_datastore_that_fails_to_start_at_boot_leaves_the_agent_up(
    config: AgentConfig, queue: InMemoryQueue, clock: ManualClock, volume: Path
) -> None:
    first = GuestAgent(config, queue, FakeManager(volume), clock)  # type: ignore[arg-type]
    first.boot()
    first.state.want_datastore(True)
    manager = FakeManager(volume, prepared=True, fail_next=RuntimeError("no binary"))
    agent = GuestAgent(config, queue, manager, clock)  # type: ignore[arg-type]
    agent.boot()
    agent.resume_datastore()
    assert manager.calls == ["start"]
    manager.intent = "running"
    assert agent.heartbeat().datastore_status is ServiceStatus.CRASHED


def test_shutdown_stops_the_datastore_and_the_next_boot_starts_it(
    *,
    agent: GuestAgent,
    client: GuestClient,
    queue: InMemoryQueue,
    manager: FakeManager,
    config: AgentConfig,
    clock: ManualClock,
) -> None:
    prepare(agent, client, queue)
    agent.shutdown()
    assert manager.calls[-1] == "stop" and not manager.running
    assert heartbeats(queue)[-1].datastore_status is ServiceStatus.SHUTDOWN
    reborn = GuestAgent(config, queue, manager, clock)  # type: ignore[arg-type]
    reborn.boot()
    reborn.resume_datastore()
    assert manager.calls[-1] == "start" and manager.running


def test_shutdown_can_leave_the_datastore_running(
    secret: bytes, tmp_path: Path, volume: Path, queue: InMemoryQueue, clock: ManualClock
) -> None:
    config = resolve_config(
        make_user_data(secret, tmp_path, volume_path=volume, stop_datastore_on_exit=False), None
    )
    manager = FakeManager(volume, prepared=True, running=True, intent="running")
    agent = GuestAgent(config, queue, manager, clock)  # type: ignore[arg-type]
    agent.boot()
    agent.shutdown()
    assert "stop" not in manager.calls and manager.running


def test_a_corrupt_state_file_stops_the_boot(agent: GuestAgent, volume: Path) -> None:
    (volume / STATE_DIR / STATE_FILE).write_text("{not json")
    with pytest.raises(CorruptDataError, match=r"state\.json"):
        agent.boot()
    (volume / STATE_DIR / STATE_FILE).write_text('{"window": {}}')
    with pytest.raises(CorruptDataError, match="unexpected content"):
        agent.boot()


def test_state_directory_is_private(agent: GuestAgent, volume: Path) -> None:
    agent.state.save()
    assert (volume / STATE_DIR).stat().st_mode & 0o777 == 0o700
    assert (volume / STATE_DIR / STATE_FILE).stat().st_mode & 0o777 == 0o600


def test_logs_carry_the_instance_and_never_a_password(
    agent: GuestAgent,
    client: GuestClient,
    queue: InMemoryQueue,
    manager: FakeManager,
    caplog: pytest.LogCaptureFixture,
) -> None:
    user = {"name": "app", "encrypted_password": client.seal_password("app-password-1")}
    client.send("prepare", {"databases": [{"name": "shop"}], "users": [user]})
    agent.poll_once()
    client.send("enable_root")
    agent.poll_once()
    done = [r for r in caplog.records if r.getMessage() == "command done"]
    assert len(done) == 2 and all(r.__dict__["instance_id"] == INSTANCE_ID for r in done)
    everything = repr([r.__dict__ for r in caplog.records])
    for secret_text in ("app-password-1", manager.admin_password, manager.root_password):
        assert secret_text and secret_text not in everything


def test_heartbeats_say_restarting_while_the_datastore_starts_at_boot(
    *,
    config: AgentConfig,
    queue: InMemoryQueue,
    clock: ManualClock,
    volume: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first = GuestAgent(config, queue, FakeManager(volume), clock)  # type: ignore[arg-type]
    first.boot()
    first.state.want_datastore(True)
    manager = FakeManager(volume, prepared=True)
    agent = GuestAgent(config, queue, manager, clock)  # type: ignore[arg-type]
    agent.boot()
    seen: list[ServiceStatus] = []
    real_start = manager.start

    def start() -> None:
        seen.append(agent.heartbeat().datastore_status)
        real_start()

    monkeypatch.setattr(manager, "start", start)
    agent.resume_datastore()
    assert seen == [ServiceStatus.RESTARTING]
    assert agent.heartbeat().datastore_status is ServiceStatus.RUNNING
