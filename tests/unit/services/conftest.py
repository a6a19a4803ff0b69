"""In-memory fakes for the instance services' unit tests: a Compute that can be told to fail,
a Workflows that runs the real state-machine definitions in memory (through the real task
functions), and a fake guest that answers commands with signed results."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from functions import guest_events as guest_events_fn
from functions.runtime import Runtime, set_runtime
from infra.wiring import FunctionsInvoker
from shared.clock import ManualClock
from shared.crypto import InstanceKeys
from shared.engine import core
from shared.engine.memory import InMemoryExecution
from shared.errors import ComputeRequestError, NotFoundError
from shared.models.guest import GuestCommand, GuestError, GuestResult, Heartbeat
from shared.models.instance import ServiceStatus
from shared.ports import JSON, FlavorLike, FlavorSpec, ServerInfo, ServerStatus
from shared.services.catalog import CatalogService, InstalledVersion
from shared.services.guest_channel import EVENTS_QUEUE, command_queue_name
from shared.services.instance_secrets import guest_secret
from shared.services.instances import InstanceRecords, InstanceService
from shared.settings import Settings, load_settings
from tests.unit.engine.fakes import MemoryQueue, MemoryStateStore

MASTER_KEY = bytes(range(32))
INSTALLED = (
    InstalledVersion("mariadb", "10.11", "10.11.6", "/usr/sbin/mariadbd"),
    InstalledVersion("postgresql", "15", "15.8", "/usr/lib/postgresql/15/bin/postgres"),
    InstalledVersion("redis", "7.0", "7.0.15", "/usr/bin/redis-server"),
)


class FakeCompute:
    """Servers as dict entries. `create_failures` are raised by the next create calls, in
    order; `on_create` runs inside create_server (to interleave a concurrent delete)."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.servers: dict[str, ServerInfo] = {}
        self.create_failures: list[Exception] = []
        self.create_calls = 0
        self.on_create: Callable[[str], None] | None = None
        self._addresses = itertools.count(2)

    def zones(self) -> list[str]:
        return ["az1", "az2"]

    def create_server(
        self,
        instance_id: str,
        flavor: FlavorLike,
        volume_gb: int,
        zone: str | None,
        user_data: JSON,
        *,
        volume_from: str | None = None,
    ) -> ServerInfo:
        self.create_calls += 1
        if self.create_failures:
            raise self.create_failures.pop(0)
        if instance_id in self.servers:
            return self.servers[instance_id]
        server = ServerInfo(
            server_id=f"srv-{instance_id[:8]}",
            instance_id=instance_id,
            status=ServerStatus.ACTIVE,
            address=f"127.10.0.{next(self._addresses)}",
            zone=zone or "az1",
            flavor=FlavorSpec.of(flavor),
            volume_id=f"vol-{instance_id[:8]}",
            volume_gb=volume_gb,
            volume_kind="directory",
            volume_path=f"/volumes/{instance_id}",
            limits_enforced=False,
            limits_note="fake",
            agent_pid=None,
            agent_alive=None,
            created_at=self.clock.now(),
            details={"user_data_keys": ",".join(sorted(user_data))},
        )
        self.servers[instance_id] = server
        if self.on_create is not None:
            hook, self.on_create = self.on_create, None
            hook(instance_id)
        return server

    def get_server(self, instance_id: str) -> ServerInfo | None:
        return self.servers.get(instance_id)

    def list_servers(self) -> list[ServerInfo]:
        return list(self.servers.values())

    def _require(self, instance_id: str) -> ServerInfo:
        if instance_id not in self.servers:
            raise NotFoundError(instance_id, "server")
        return self.servers[instance_id]

    def stop_server(self, instance_id: str) -> ServerInfo:
        return self._require(instance_id)

    def start_server(self, instance_id: str) -> ServerInfo:
        return self._require(instance_id)

    def reboot_server(self, instance_id: str) -> ServerInfo:
        return self._require(instance_id)

    def delete_server(self, instance_id: str, *, keep_volume: bool = False) -> None:
        self.servers.pop(instance_id, None)

    def resize_volume(self, instance_id: str, new_gb: int) -> ServerInfo:
        server = self._require(instance_id)
        if new_gb < server.volume_gb:
            raise ComputeRequestError(instance_id, "volumes only grow")
        self.servers[instance_id] = _with(server, volume_gb=new_gb)
        return self.servers[instance_id]

    def resize_flavor(self, instance_id: str, flavor: FlavorLike) -> ServerInfo:
        server = self._require(instance_id)
        self.servers[instance_id] = _with(server, flavor=FlavorSpec.of(flavor))
        return self.servers[instance_id]

    def adopt(self) -> list[ServerInfo]:
        return self.list_servers()

    def orphans(self, known_instance_ids: Any) -> list[ServerInfo]:
        known = set(known_instance_ids)
        return [s for s in self.servers.values() if s.instance_id not in known]

    def reap(self, instance_id: str) -> None:
        self.servers.pop(instance_id, None)


def _with(server: ServerInfo, **changes: Any) -> ServerInfo:
    from dataclasses import replace

    return replace(server, **changes)


class MemoryWorkflows:
    """The Workflows port over in-memory executions of the real definitions.

    Executions run as far as they can on `start` (unless `paused`), stopping at a callback
    wait; retry timers fire at once (virtual time); timeouts fire only on `expire_waits`."""

    def __init__(self, definitions_dir: Path, clock: ManualClock) -> None:
        self.definitions_dir = definitions_dir
        self.clock = clock
        self.invoker = FunctionsInvoker()
        self.executions: dict[str, InMemoryExecution] = {}
        self.machines: dict[str, str] = {}
        self.paused = False

    def start(self, state_machine: str, input_value: JSON, *, name: str | None = None) -> str:
        name = name or f"run-{len(self.executions)}"
        for arn, execution in self.executions.items():
            if execution.state.name == name and self.machines[arn] == state_machine:
                return arn
        path = self.definitions_dir / f"{state_machine}.asl.json"
        execution = InMemoryExecution(
            path.read_text(),
            input_value,
            self.invoker,
            name=name,
            state_machine_name=state_machine,
            clock=self.clock,
        )
        arn = execution.state.arn
        self.executions[arn] = execution
        self.machines[arn] = state_machine
        if not self.paused:
            self.settle(arn)
        return arn

    def settle(self, arn: str) -> None:
        """Run until the execution ends or waits for a callback."""
        execution = self.executions[arn]
        while True:
            execution.run(until_idle=True)
            if execution.state.status != core.RUNNING or execution.pending_tokens():
                return
            timers = execution._timers  # retry backoffs: fire them now (virtual time)
            if not timers:
                return
            moment, _seq, event = heapq.heappop(timers)
            execution._advance_to(moment)
            execution._handle(execution.interpreter.apply(execution.state, event, execution.now()))

    def settle_all(self) -> None:
        for arn in list(self.executions):
            self.settle(arn)

    def expire_waits(self, arn: str) -> None:
        """Let the execution's timers (callback timeouts) fire."""
        self.executions[arn].run()

    def describe(self, execution_arn: str) -> JSON:
        result = self.executions[execution_arn].result()
        return {"status": result.status, "error": result.error, "cause": result.cause}

    def _owner(self, token: str) -> str:
        for arn, execution in self.executions.items():
            if token in execution.pending_tokens():
                return arn
        from shared.engine.errors import TaskDoesNotExistError

        raise TaskDoesNotExistError("no execution waits on this token")

    def send_task_success(self, task_token: str, output: JSON) -> None:
        arn = self._owner(task_token)
        self.executions[arn].send_task_success(task_token, output)
        self.settle(arn)

    def send_task_failure(self, task_token: str, error: str, cause: str) -> None:
        arn = self._owner(task_token)
        self.executions[arn].send_task_failure(task_token, error, cause)
        self.settle(arn)

    def send_task_heartbeat(self, task_token: str) -> None:
        self.executions[self._owner(task_token)].send_task_heartbeat(task_token)

    def status(self, machine: str, instance_id: str) -> str | None:
        for arn, execution in self.executions.items():
            if self.machines[arn] == machine and instance_id in execution.state.name:
                return str(execution.state.status)
        return None


@dataclass
class FakeGuest:
    """Answers the commands in an instance's queue with signed results (through the real
    guest-events consumer). `fail` maps a command name to (error type, message)."""

    world: World
    fail: dict[str, tuple[str, str]] = field(default_factory=dict)
    seen: list[GuestCommand] = field(default_factory=list)
    sequence: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def answer(self, instance_id: str) -> int:
        queue = self.world.queue
        name = command_queue_name(instance_id)
        if name not in queue.queues:
            return 0
        answered = 0
        for message in queue.receive(name, 10, 30):
            keys = self._keys(instance_id)
            queue.ack(name, message.receipt)
            command = GuestCommand.model_validate(message.body)
            assert command.verify(keys.signing)
            self.seen.append(command)
            failure = self.fail.get(command.name.value)
            result = GuestResult(
                instance_id=instance_id,
                sequence=next(self.sequence),
                timestamp=self.world.clock.now(),
                command_id=command.id,
                command=command.name,
                ok=failure is None,
                result=None if failure else {"done": command.name.value},
                error=GuestError(type=failure[0], message=failure[1]) if failure else None,
                task_token=command.task_token,
            ).sign(keys.signing)
            queue.send(EVENTS_QUEUE, result.model_dump(mode="json"))
            answered += 1
        self.world.pump_events()
        return answered

    def heartbeat(self, instance_id: str, status: ServiceStatus) -> None:
        beat = Heartbeat(
            instance_id=instance_id,
            sequence=next(self.sequence),
            timestamp=self.world.clock.now(),
            agent_version="test",
            datastore_status=status,
            disk_used_bytes=1,
            disk_total_bytes=10,
        ).sign(self._keys(instance_id).signing)
        self.world.queue.send(EVENTS_QUEUE, beat.model_dump(mode="json"))

    def _keys(self, instance_id: str) -> InstanceKeys:
        instance = InstanceRecords(self.world.store).get(instance_id)
        return InstanceKeys.from_secret(guest_secret(instance, MASTER_KEY))


@dataclass
class World:
    settings: Settings
    clock: ManualClock
    store: MemoryStateStore
    queue: MemoryQueue
    compute: FakeCompute
    workflows: MemoryWorkflows
    runtime: Runtime
    service: InstanceService
    guest: FakeGuest = field(init=False)

    def __post_init__(self) -> None:
        self.guest = FakeGuest(self)

    def pump_events(self) -> None:
        while True:
            messages = self.queue.receive(EVENTS_QUEUE, 10, 30)
            if not messages:
                return
            guest_events_fn.consume(messages, self.runtime)

    def instance_keys(self) -> list[str]:
        return [k for k in self.store.records if k.startswith("instances/")]


def make_world(tmp_path: Path, **overrides: Any) -> World:
    settings = load_settings(data_dir=tmp_path, **overrides)
    clock = ManualClock(datetime(2026, 1, 1, tzinfo=UTC).timestamp())
    store = MemoryStateStore(clock)
    queue = MemoryQueue(clock)
    queue.ensure_queue(EVENTS_QUEUE)
    compute = FakeCompute(clock)
    workflows = MemoryWorkflows(settings.state_machines_dir, clock)
    runtime = Runtime(
        settings=settings,
        clock=clock,
        store=store,
        blobs=None,  # type: ignore[arg-type]  # no blob use in these flows
        queue=queue,
        compute=compute,
        workflows=workflows,
        master_key=MASTER_KEY,
    )
    service = InstanceService.from_runtime(
        runtime, catalog=CatalogService(settings, probe=lambda: INSTALLED)
    )
    return World(settings, clock, store, queue, compute, workflows, runtime, service)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    built = make_world(tmp_path)
    set_runtime(built.runtime)
    try:
        yield built
    finally:
        set_runtime(None)
