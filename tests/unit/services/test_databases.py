"""DatabaseService, InstanceLogService and GuestCalls over in-memory ports and a fake guest.

The fake guest is the real command table (`guest_agent.commands.execute`) over the in-memory
FakeManager: it reads signed commands from the instance's command queue, checks their
signature, runs them and stores the signed result where the guest-events consumer would
(`guests/<id>/results/<command_id>`). GuestCalls' `sleep` drives it, so nothing runs in a
thread and the manual clock decides timeouts.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest

from guest_agent import commands
from guest_agent.datastores import logs as guest_logs
from guest_agent.datastores.logs import GuestLogSpec, LogType
from shared.adapters.local.blob_store import DirectoryBlobStore
from shared.clock import ManualClock
from shared.crypto import InstanceKeys, new_instance_secret, open_sealed, password_context, seal
from shared.errors import (
    ActionInProgressError,
    NotFoundError,
    NotSupportedError,
    RequestError,
    TrovelessError,
)
from shared.models import Instance, InstanceStatus, InstanceTask
from shared.models.datastore import DatastoreRef
from shared.models.guest import GuestCommand, GuestError, GuestResult
from shared.models.volume import Volume, VolumeKind
from shared.services.databases import DatabaseService, instance_key, split_user_reference
from shared.services.guest_calls import (
    GuestCalls,
    GuestCommandFailedError,
    GuestTimeoutError,
    result_key,
)
from shared.services.guest_channel import command_queue_name
from shared.services.instance_logs import InstanceLogService, log_prefix, parse_log_action
from shared.services.instance_secrets import seal_guest_secret
from tests.unit.guest_agent.fakes import FakeManager, InMemoryQueue, InMemoryStateStore

PROJECT = "0f5b2c3d4e5f60718293a4b5c6d7e8f9"
OTHER_PROJECT = "aaaabbbbccccddddeeeeffff00001111"
MASTER_KEY = bytes(range(32))


@dataclass
class LogManager(FakeManager):
    """FakeManager with MariaDB-like logs on a temporary directory."""

    log_switches: dict[str, bool] = field(default_factory=lambda: {"general": False})

    guest_logs = {
        "error": GuestLogSpec("error", LogType.SYS, "error.log", "errors"),
        "general": GuestLogSpec("general", LogType.USER, "general.log", "every statement"),
    }

    @property
    def layout(self) -> Any:
        root = self.data_dir
        (root / "log").mkdir(exist_ok=True)
        (root / "conf").mkdir(exist_ok=True)
        return type("Layout", (), {"log": root / "log", "conf": root / "conf"})

    def log_enabled(self, name: str) -> bool:
        return self.log_switches[name]

    def set_log_enabled(self, name: str, enabled: bool) -> None:
        self.log_switches[name] = enabled

    def disable_root(self) -> None:
        self._call("disable_root")
        self.root = False


class FakeGuest:
    """Answers the instance's commands with the real command table over a FakeManager."""

    def __init__(
        self,
        queue: InMemoryQueue,
        store: InMemoryStateStore,
        clock: ManualClock,
        instance_id: str,
        *,
        secret: bytes,
        manager: FakeManager,
        blobs: DirectoryBlobStore | None = None,
    ) -> None:
        self.queue, self.store, self.clock = queue, store, clock
        self.instance_id = instance_id
        self.keys = InstanceKeys.from_secret(secret)
        self.manager = manager
        self.blobs = blobs
        self.answering = True
        self.commands: list[GuestCommand] = []
        queue.ensure_queue(command_queue_name(instance_id))

    def _context(self) -> commands.CommandContext:
        context = password_context(self.instance_id)
        return commands.CommandContext(
            manager=cast(Any, self.manager),
            open_password=lambda s: open_sealed(self.keys.passwords, s, context).decode(),
            seal_password=lambda p: seal(self.keys.passwords, p.encode(), context),
            admin_password_for_prepare=lambda: "Admin-Pass-0123456789",
            volume_info=lambda: {},
            blobs=self.blobs,
            now=self.clock.time,
        )

    def pump(self) -> None:
        if not self.answering:
            return
        queue = command_queue_name(self.instance_id)
        for message in self.queue.receive(queue, 10, 30):
            self.queue.ack(queue, message.receipt)
            command = GuestCommand.model_validate(message.body)
            assert command.verify(self.keys.signing), "the command must be signed"
            self.commands.append(command)
            result: Any = None
            error: GuestError | None = None
            try:
                result = commands.execute(self._context(), command.name, dict(command.args))
            except commands.CommandRefusedError as exc:
                error = GuestError(type=exc.error_type, message=str(exc))
            except (TrovelessError, ValueError, KeyError) as exc:
                error = GuestError(type=type(exc).__name__, message=str(exc))
            answer = GuestResult(
                instance_id=self.instance_id,
                sequence=len(self.commands),
                timestamp=datetime.fromtimestamp(self.clock.time(), UTC),
                command_id=command.id,
                command=command.name,
                ok=error is None,
                result=result if error is None else None,
                error=error,
            ).sign(self.keys.signing)
            self.store.put(
                result_key(self.instance_id, command.id), answer.model_dump(mode="json"), 0
            )


@dataclass
class World:
    store: InMemoryStateStore
    queue: InMemoryQueue
    clock: ManualClock
    instance: Instance
    guest: FakeGuest
    manager: LogManager
    service: DatabaseService
    logs: InstanceLogService
    blobs: DirectoryBlobStore


def save_instance(store: InMemoryStateStore, instance: Instance) -> None:
    existing = store.get(instance_key(instance.id))
    store.put(
        instance_key(instance.id),
        instance.model_dump(mode="json"),
        existing.revision if existing else 0,
    )


@pytest.fixture
def world(tmp_path: Path) -> World:
    clock = ManualClock()
    store = InMemoryStateStore()
    queue = InMemoryQueue(clock)
    secret = new_instance_secret()
    instance_id = str(uuid.uuid4())
    now = clock.now()
    instance = Instance(
        id=instance_id,
        project_id=PROJECT,
        name="shop",
        status=InstanceStatus.ACTIVE,
        flavor_id="2",
        volume=Volume(kind=VolumeKind.DIRECTORY, size_gb=1),
        datastore=DatastoreRef(type="mariadb", version="10.11"),
        encrypted_guest_secret=seal_guest_secret(instance_id, secret, MASTER_KEY),
        created=now,
        updated=now,
    )
    save_instance(store, instance)
    manager = LogManager(tmp_path / "volume", running=True, prepared=True)
    manager.data_dir.mkdir()
    blobs = DirectoryBlobStore(tmp_path / "blobs", fsync=False, clock=clock)
    guest = FakeGuest(queue, store, clock, instance_id, secret=secret, manager=manager, blobs=blobs)

    def sleep(seconds: float) -> None:
        clock.advance(seconds)
        guest.pump()

    calls = GuestCalls(store, queue, clock, MASTER_KEY, sleep=sleep)
    return World(
        store,
        queue,
        clock,
        instance,
        guest,
        manager,
        DatabaseService(store, queue, clock, MASTER_KEY, calls=calls, timeout=5),
        InstanceLogService(store, queue, clock, MASTER_KEY, blobs, calls=calls, timeout=5),
        blobs,
    )


# ------------------------------------------------------------------ databases
def test_create_list_delete_databases(world: World) -> None:
    world.service.create_databases(
        PROJECT, world.instance.id, [{"name": "shop", "character_set": "utf8mb4"}, {"name": "b"}]
    )
    assert world.manager.databases["shop"]["character_set"] == "utf8mb4"
    names = [d.name for d in world.service.list_databases(PROJECT, world.instance.id)]
    assert names == ["b", "shop"]
    world.service.delete_database(PROJECT, world.instance.id, "b")
    assert set(world.manager.databases) == {"shop"}
    # Every result record was consumed: nothing is left for anyone to read later.
    assert list(world.store.list(f"guests/{world.instance.id}/results/")) == []


@pytest.mark.parametrize(
    ("databases", "field"),
    [
        ([{"name": "shop"}, {"name": "x`; DROP DATABASE mysql; --"}], "databases[1].name"),
        ([{"name": "mysql"}], "databases[0].name"),
        ([{"name": "ok", "collate": "x'; --"}], "databases[0].collate"),
        ([{"name": "ok", "owner": "me"}], "databases[0].owner"),
        ([{"name": "ok"}, {"name": "ok"}], "databases[1].name"),
        ([], "databases"),
        ({"name": "ok"}, "databases"),
    ],
)
def test_bad_database_requests_are_400_naming_the_field_and_never_sent(
    world: World, databases: Any, field: str
) -> None:
    with pytest.raises(RequestError) as caught:
        world.service.create_databases(PROJECT, world.instance.id, databases)
    assert caught.value.field == field
    assert caught.value.status == 400
    assert world.guest.commands == []


def test_another_projects_instance_is_not_found(world: World) -> None:
    with pytest.raises(NotFoundError):
        world.service.list_databases(OTHER_PROJECT, world.instance.id)
    with pytest.raises(NotFoundError):
        world.service.list_databases(PROJECT, str(uuid.uuid4()))
    with pytest.raises(NotFoundError):
        world.service.list_databases(PROJECT, "../../etc")


def test_instance_busy_or_broken_is_refused(world: World) -> None:
    save_instance(world.store, world.instance.replace(task=InstanceTask.RESIZING))
    with pytest.raises(ActionInProgressError):
        world.service.list_users(PROJECT, world.instance.id)
    save_instance(world.store, world.instance.replace(status=InstanceStatus.BUILD))
    with pytest.raises(ActionInProgressError):
        world.service.list_users(PROJECT, world.instance.id)
    save_instance(world.store, world.instance.replace(status=InstanceStatus.ERROR))
    with pytest.raises(RequestError) as caught:
        world.service.list_users(PROJECT, world.instance.id)
    assert caught.value.status == 422
    assert world.guest.commands == []


# ------------------------------------------------------------------ users
def test_users_lifecycle_with_sealed_passwords(world: World) -> None:
    sid = world.instance.id
    world.service.create_databases(PROJECT, sid, [{"name": "shop"}, {"name": "crm"}])
    world.service.create_users(
        PROJECT,
        sid,
        [{"name": "app", "password": "Secret-Pass-1", "databases": [{"name": "shop"}]}],
    )
    assert world.manager.users[("app", "%")]["password"] == "Secret-Pass-1"
    create = next(c for c in world.guest.commands if c.name.value == "create_user")
    assert "Secret-Pass-1" not in json.dumps(create.model_dump(mode="json"))
    assert "encrypted_password" in create.args["users"][0]  # type: ignore[index,operator]

    user = world.service.get_user(PROJECT, sid, "app")
    assert (user.name, user.host, user.databases) == ("app", "%", ["shop"])
    world.service.grant_access(PROJECT, sid, "app", [{"name": "crm"}])
    assert world.service.list_access(PROJECT, sid, "app") == ["shop", "crm"]
    world.service.revoke_access(PROJECT, sid, "app", "shop")
    assert world.service.list_access(PROJECT, sid, "app") == ["crm"]

    world.service.change_passwords(PROJECT, sid, [{"name": "app", "password": "Other-Pass-2"}])
    assert world.manager.users[("app", "%")]["password"] == "Other-Pass-2"
    world.service.update_user(PROJECT, sid, "app", password="Third-Pass-3")
    assert world.manager.users[("app", "%")]["password"] == "Third-Pass-3"
    with pytest.raises(NotSupportedError):
        world.service.update_user(PROJECT, sid, "app", new_name="app2", password="Third-Pass-3")

    world.service.delete_user(PROJECT, sid, "app")
    assert world.service.list_users(PROJECT, sid) == []
    with pytest.raises(NotFoundError):
        world.service.get_user(PROJECT, sid, "app")


@pytest.mark.parametrize(
    ("users", "field"),
    [
        ([{"name": "app'@'%", "password": "Secret-Pass-1"}], "users[0].name"),
        ([{"name": "root", "password": "Secret-Pass-1"}], "users[0].name"),
        ([{"name": "app", "password": "short"}], "users[0].password"),
        ([{"name": "app", "password": "Secret-Pass-1", "host": "evil.example"}], "users[0].host"),
        (
            [{"name": "app", "password": "Secret-Pass-1", "databases": [{"name": "a;b"}]}],
            "users[0].databases[0].name",
        ),
    ],
)
def test_bad_user_requests_are_400_naming_the_field(world: World, users: Any, field: str) -> None:
    with pytest.raises(RequestError) as caught:
        world.service.create_users(PROJECT, world.instance.id, users)
    assert caught.value.field == field
    assert "Secret-Pass" not in str(caught.value)
    assert world.guest.commands == []


def test_bulk_password_change_checks_every_entry_first(world: World) -> None:
    sid = world.instance.id
    world.service.create_users(PROJECT, sid, [{"name": "a", "password": "Secret-Pass-1"}])
    sent = len(world.guest.commands)
    with pytest.raises(RequestError) as caught:
        world.service.change_passwords(
            PROJECT,
            sid,
            [{"name": "a", "password": "Secret-Pass-2"}, {"name": "b", "password": "x"}],
        )
    assert caught.value.field == "users[1].password"
    assert len(world.guest.commands) == sent
    assert world.manager.users[("a", "%")]["password"] == "Secret-Pass-1"


def test_guest_errors_map_to_api_errors(world: World) -> None:
    sid = world.instance.id
    # FakeManager raises KeyError for a missing user: an unexpected guest failure.
    with pytest.raises(GuestCommandFailedError) as failed:
        world.service.change_passwords(PROJECT, sid, [{"name": "ghost", "password": "Pass-Pass-1"}])
    assert failed.value.error_type == "KeyError"
    world.manager.fail_next = NotFoundError("ghost@%", "user")
    with pytest.raises(NotFoundError) as missing:
        world.service.delete_user(PROJECT, sid, "ghost")
    assert missing.value.key == "ghost@%"


def test_guest_name_errors_become_400_naming_the_field(world: World) -> None:
    # Sent as is (bypassing the service's own check): the guest's rules answer.
    calls = GuestCalls(world.store, world.queue, world.clock, MASTER_KEY, sleep=world_sleep(world))
    with pytest.raises(RequestError) as caught:
        calls.call(world.instance, "create_database", {"databases": [{"name": "a b"}]})
    assert caught.value.field == "databases[0].name"


def world_sleep(world: World) -> Any:
    def sleep(seconds: float) -> None:
        world.clock.advance(seconds)
        world.guest.pump()

    return sleep


def test_a_silent_guest_times_out(world: World) -> None:
    world.guest.answering = False
    started = world.clock.monotonic()
    with pytest.raises(GuestTimeoutError):
        world.service.list_databases(PROJECT, world.instance.id)
    assert 5 <= world.clock.monotonic() - started < 5.5


# ------------------------------------------------------------------ root
def test_enable_root_returns_the_password_once_and_stores_nothing(world: World) -> None:
    sid = world.instance.id
    assert world.service.root_enabled(PROJECT, sid) is False
    root = world.service.enable_root(PROJECT, sid)
    assert (root.name, root.password) == ("root", world.manager.root_password)
    assert root.password not in repr(root)
    password = root.password
    assert world.service.root_enabled(PROJECT, sid) is True
    for key in world.store.list():
        record = world.store.get(key)
        assert record is not None
        assert password not in json.dumps(record.data)
    world.service.disable_root(PROJECT, sid)
    assert world.service.root_enabled(PROJECT, sid) is False


def test_user_references_in_paths() -> None:
    assert split_user_reference("app") == ("app", "%")
    assert split_user_reference("app@10.0.%") == ("app", "10.0.%")
    assert split_user_reference("app", "127.0.0.1") == ("app", "127.0.0.1")
    assert split_user_reference("@x") == ("@x", "%")


# ------------------------------------------------------------------ logs
def test_parse_log_action_accepts_troveclient_bodies() -> None:
    assert parse_log_action({"name": "general", "enable": 1}) == ("general", ["enable"])
    assert parse_log_action({"name": "general", "publish": 1, "discard": 1}) == (
        "general",
        ["discard", "publish"],
    )
    for bad, expected_field in [
        ({"name": "../x", "publish": 1}, "name"),
        ({"name": "general", "rotate": 1}, "rotate"),
        ({"name": "general", "enable": 1, "disable": 1}, "enable"),
    ]:
        with pytest.raises(RequestError) as caught:
            parse_log_action(bad)
        assert caught.value.field == expected_field


def test_logs_list_enable_publish_discard(world: World) -> None:
    sid = world.instance.id
    logs = {entry["name"]: entry for entry in world.logs.list_logs(PROJECT, sid)}
    assert logs["general"]["status"] == "Disabled"
    assert logs["error"]["type"] == "SYS"
    assert logs["error"]["prefix"] == f"{PROJECT}/{sid}/error/"

    enabled = world.logs.act(PROJECT, sid, {"name": "general", "enable": 1})
    assert enabled["status"] == "Enabled"
    general = world.manager.layout.log / "general.log"
    general.write_bytes(b"SELECT 1;\n" * 3)
    world.clock.advance(1)
    first = world.logs.act(PROJECT, sid, {"name": "general", "publish": 1})
    assert (first["published"], first["pending"], first["status"]) == (30, 0, "Published")
    with general.open("ab") as f:
        f.write(b"SELECT 2;\n")
    assert world.logs.act(PROJECT, sid, {"name": "general"})["status"] == "Partial"
    world.clock.advance(1)
    world.logs.act(PROJECT, sid, {"name": "general", "publish": 1})
    # Nothing new: no empty object.
    world.logs.act(PROJECT, sid, {"name": "general", "publish": 1})
    objects = world.logs.published_objects(PROJECT, sid, "general")
    assert len(objects) == 2
    assert all(o.key.startswith(log_prefix(PROJECT, sid, "general") + "/") for o in objects)
    assert world.logs.read_published(PROJECT, sid, "general") == b"SELECT 1;\n" * 3 + b"SELECT 2;\n"

    tail, truncated = world.logs.published_tail(PROJECT, sid, "general", 15)
    assert (tail, truncated) == (b"T 1;\nSELECT 2;\n", True)
    assert world.logs.published_tail(PROJECT, sid, "general", 1000)[1] is False

    discarded = world.logs.act(PROJECT, sid, {"name": "general", "discard": 1})
    assert (discarded["published"], discarded["pending"]) == (0, 40)
    assert world.logs.published_objects(PROJECT, sid, "general") == []

    with pytest.raises(RequestError) as sys_log:
        world.logs.act(PROJECT, sid, {"name": "error", "disable": 1})
    assert sys_log.value.field == "name"
    with pytest.raises(NotFoundError):
        world.logs.act(PROJECT, sid, {"name": "nosuch", "publish": 1})


def test_publish_after_rotation_starts_from_the_new_file(world: World, tmp_path: Path) -> None:
    manager = world.manager
    path = manager.layout.log / "error.log"
    path.write_bytes(b"first life\n")
    prefix = log_prefix(PROJECT, world.instance.id, "error")
    assert guest_logs.publish(cast(Any, manager), world.blobs, "error", prefix, 1.0) is not None
    path.unlink()
    path.write_bytes(b"second\n")  # a new inode, shorter than what was published
    key = guest_logs.publish(cast(Any, manager), world.blobs, "error", prefix, 2.0)
    assert key is not None
    assert b"".join(world.blobs.get(key)) == b"second\n"
