"""The agent's side of the signed protocol, with in-memory fakes: what it refuses and how it
reports it, idempotent redelivery, replay protection across restarts, sealed passwords."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from guest_agent.agent import COMMAND_INTERRUPTED, REJECTED_COMMAND, GuestAgent
from guest_agent.state import STATE_DIR, AgentState, JournalEntry
from guest_agent.user_data import AgentConfig
from shared.clock import ManualClock
from shared.crypto import InstanceKeys, new_instance_secret, password_context, seal
from shared.models import GuestCommand, GuestCommandName, GuestResult, Heartbeat
from shared.models.guest import parse_guest_message
from shared.services.guest_channel import (
    EVENTS_QUEUE,
    GuestClient,
    GuestEventVerifier,
    command_queue_name,
)
from tests.unit.guest_agent.conftest import INSTANCE_ID
from tests.unit.guest_agent.fakes import FakeManager, InMemoryQueue, InMemoryStateStore

COMMANDS = command_queue_name(INSTANCE_ID)
SEALED_UNDER_ANOTHER_KEY = seal(
    InstanceKeys.from_secret(new_instance_secret()).passwords,
    b"bob-password-1",
    password_context(INSTANCE_ID),
)


def results(queue: InMemoryQueue) -> list[GuestResult]:
    out = []
    for body in queue.drain(EVENTS_QUEUE):
        message = parse_guest_message(body)
        if isinstance(message, GuestResult):
            out.append(message)
    return out


def deliver(agent: GuestAgent, queue: InMemoryQueue, body: dict[str, Any]) -> list[GuestResult]:
    """Put one raw message on the command queue, let the agent handle it, return its results."""
    queue.send(COMMANDS, body)
    assert agent.poll_once() == 1
    assert queue.count(COMMANDS) == 0, "the agent must ack every message it handled"
    return results(queue)


def call(
    agent: GuestAgent,
    queue: InMemoryQueue,
    client: GuestClient,
    name: str,
    args: Any = None,
    **kw: Any,
) -> GuestResult:
    client.send(name, args, **kw)
    assert agent.poll_once() == 1
    [result] = results(queue)
    return result


def prepare_args(client: GuestClient) -> dict[str, Any]:
    return {
        "databases": [{"name": "shop"}],
        "users": [
            {
                "name": "app",
                "encrypted_password": client.seal_password("app-password-1"),
                "databases": ["shop"],
            }
        ],
        "overrides": {"max_connections": 50},
    }


# --------------------------------------------------------------------------- accepted commands
def test_prepare_runs_with_opened_passwords_and_a_sealed_admin_password(
    *,
    agent: GuestAgent,
    queue: InMemoryQueue,
    client: GuestClient,
    manager: FakeManager,
    secret: bytes,
    volume: Path,
) -> None:
    sent = client.send("prepare", prepare_args(client), task_token="tok-prepare")
    agent.poll_once()
    [result] = results(queue)
    assert result.ok, result.error
    assert result.command_id == sent.id and result.command is GuestCommandName.PREPARE
    assert result.task_token == "tok-prepare"
    assert result.verify(InstanceKeys.from_secret(secret).signing)
    assert manager.users[("app", "%")]["password"] == "app-password-1"
    assert manager.admin_password is not None and len(manager.admin_password) >= 16
    # The admin password is on the volume, sealed: never in plaintext anywhere there.
    stored = agent.state.admin_password()
    assert stored == manager.admin_password
    for path in (volume / STATE_DIR).iterdir():
        assert manager.admin_password.encode() not in path.read_bytes()
        assert b"app-password-1" not in path.read_bytes()
    assert "app-password-1" not in json.dumps(result.model_dump(mode="json"))


def test_a_restarted_agent_gets_the_admin_password_back(
    *,
    agent: GuestAgent,
    queue: InMemoryQueue,
    client: GuestClient,
    manager: FakeManager,
    config: AgentConfig,
    clock: ManualClock,
    volume: Path,
) -> None:
    assert call(agent, queue, client, "prepare", prepare_args(client)).ok
    password = manager.admin_password
    reborn = FakeManager(volume, prepared=True, running=True, intent="running")
    again = GuestAgent(config, queue, reborn, clock)  # type: ignore[arg-type]
    again.boot()
    again.resume_datastore()
    assert reborn.admin_password == password
    assert "prepare" not in reborn.calls and "start" not in reborn.calls  # re-attached


def test_enable_root_returns_the_password_sealed(
    agent: GuestAgent, queue: InMemoryQueue, client: GuestClient, manager: FakeManager
) -> None:
    call(agent, queue, client, "prepare", prepare_args(client))
    result = call(agent, queue, client, "enable_root")
    assert result.ok and isinstance(result.result, dict)
    assert set(result.result) == {"encrypted_password"}
    sealed = result.result["encrypted_password"]
    assert isinstance(sealed, str)
    assert client.open_password(sealed) == manager.root_password
    assert manager.root_password not in json.dumps(result.model_dump(mode="json"))
    assert call(agent, queue, client, "is_root_enabled").result == {"enabled": True}


def test_database_user_and_access_commands_reach_the_manager(
    agent: GuestAgent, queue: InMemoryQueue, client: GuestClient, manager: FakeManager
) -> None:
    call(agent, queue, client, "prepare", prepare_args(client))
    created = call(agent, queue, client, "create_database", {"databases": [{"name": "crm"}]})
    assert created.result == {"databases": ["crm"]}
    user = {"name": "bob", "encrypted_password": client.seal_password("bob-password-1")}
    assert call(agent, queue, client, "create_user", {"users": [user]}).result == {
        "users": [{"name": "bob", "host": "%"}]
    }
    assert manager.users[("bob", "%")]["password"] == "bob-password-1"
    assert call(agent, queue, client, "grant_access", {"user": "bob", "databases": ["crm"]}).ok
    assert call(agent, queue, client, "list_access", {"user": "bob"}).result == {
        "databases": ["crm"]
    }
    new_password = client.seal_password("bob-password-2")
    assert call(
        agent, queue, client, "update_user", {"name": "bob", "encrypted_password": new_password}
    ).ok
    assert manager.users[("bob", "%")]["password"] == "bob-password-2"
    assert call(agent, queue, client, "revoke_access", {"user": "bob", "database": "crm"}).ok
    listed = call(agent, queue, client, "list_users").result
    assert (
        isinstance(listed, dict)
        and {"name": "bob", "host": "%", "databases": []} in listed["users"]
    )
    assert call(agent, queue, client, "delete_user", {"name": "bob"}).ok
    assert call(agent, queue, client, "delete_database", {"name": "crm"}).ok
    assert call(agent, queue, client, "list_databases").result == {"databases": [{"name": "shop"}]}


def test_overrides_report_whether_a_restart_is_needed(
    agent: GuestAgent, queue: InMemoryQueue, client: GuestClient
) -> None:
    call(agent, queue, client, "prepare", prepare_args(client))
    live = call(agent, queue, client, "update_overrides", {"overrides": {"max_connections": 80}})
    assert live.result == {"restart_required": False}
    later = call(
        agent, queue, client, "apply_overrides", {"overrides": {"innodb_buffer_pool_size": "1G"}}
    )
    assert later.result == {"restart_required": True}
    bad = call(agent, queue, client, "update_overrides", {"overrides": {"nope": 1}})
    assert not bad.ok and bad.error is not None
    assert bad.error.type == "OverrideRuleError" and "nope" in bad.error.message


@pytest.mark.parametrize(
    ("name", "args", "error_type", "words"),
    [
        ("backup", {}, "InvalidArguments", "args.backup_id"),
        ("promote", {}, "CommandNotImplemented", "promote"),
        ("create_database", {"databases": []}, "InvalidArguments", "args.databases"),
        ("create_database", {"databases": [{"name": "x;drop"}]}, "NameRuleError", "databases[0]"),
        ("delete_user", {"name": "bob", "extra": 1}, "InvalidArguments", "args.extra"),
        ("create_user", {"users": [{"name": "bob"}]}, "InvalidArguments", "encrypted_password"),
        (
            "create_user",
            {"users": [{"name": "bob", "encrypted_password": SEALED_UNDER_ANOTHER_KEY}]},
            "SealedDataError",
            "does not open",
        ),
    ],
)
def test_failures_are_answered_with_a_typed_error(
    *,
    agent: GuestAgent,
    queue: InMemoryQueue,
    client: GuestClient,
    name: str,
    args: dict[str, Any],
    error_type: str,
    words: str,
) -> None:
    call(agent, queue, client, "prepare", prepare_args(client))
    result = call(agent, queue, client, name, args, task_token="tok")
    assert not result.ok and result.error is not None
    assert result.error.type == error_type
    assert words in result.error.message
    assert result.task_token == "tok"


def test_a_manager_error_names_its_type(
    agent: GuestAgent, queue: InMemoryQueue, client: GuestClient, manager: FakeManager
) -> None:
    result = call(agent, queue, client, "create_database", {"databases": [{"name": "shop"}]})
    assert not result.ok and result.error is not None
    assert result.error.type == "DatastoreNotRunningError"
    manager.running = True
    manager.fail_next = RuntimeError("boom")
    crashed = call(agent, queue, client, "create_database", {"databases": [{"name": "shop"}]})
    assert crashed.error is not None and crashed.error.type == "RuntimeError"


# --------------------------------------------------------------------------- redelivery
def test_a_redelivered_command_is_answered_from_the_journal(
    agent: GuestAgent,
    queue: InMemoryQueue,
    client: GuestClient,
    manager: FakeManager,
    secret: bytes,
) -> None:
    call(agent, queue, client, "prepare", prepare_args(client))
    command = client.build("create_database", {"databases": [{"name": "crm"}]}, task_token="t")
    body = command.model_dump(mode="json")
    [first] = deliver(agent, queue, body)
    [second] = deliver(agent, queue, body)
    assert manager.calls.count("create_database") == 1
    assert (second.command_id, second.ok, second.result, second.task_token) == (
        first.command_id,
        first.ok,
        first.result,
        first.task_token,
    )
    assert second.sequence > first.sequence  # re-signed, so the control plane accepts it
    store = InMemoryStateStore()
    verifier = GuestEventVerifier(store, agent._clock, {INSTANCE_ID: secret}.get)
    assert verifier.verify(first.model_dump(mode="json")).accepted
    assert verifier.verify(second.model_dump(mode="json")).accepted


def test_the_same_id_resent_with_a_new_sequence_still_runs_once(
    agent: GuestAgent, queue: InMemoryQueue, client: GuestClient, manager: FakeManager
) -> None:
    call(agent, queue, client, "prepare", prepare_args(client))
    command_id = str(uuid.uuid4())
    for _ in range(3):
        result = call(agent, queue, client, "restart", command_id=command_id)
        assert result.ok and result.command_id == command_id
    assert manager.calls.count("restart") == 1


def test_a_command_interrupted_by_an_agent_death_is_answered_at_boot(
    config: AgentConfig, queue: InMemoryQueue, clock: ManualClock, manager: FakeManager
) -> None:
    keys = InstanceKeys.from_secret(config.user_data.secret_bytes())
    state = AgentState(config.volume_path, keys.volume, INSTANCE_ID)
    state.load()
    command_id = str(uuid.uuid4())
    state.begin(JournalEntry(command_id, GuestCommandName.RESTART, "tok-r", None))
    state.save()
    agent = GuestAgent(config, queue, manager, clock)  # type: ignore[arg-type]
    agent.boot()
    [result] = results(queue)
    assert result.command_id == command_id and result.task_token == "tok-r"
    assert result.error is not None and result.error.type == COMMAND_INTERRUPTED
    assert manager.calls == []


# --------------------------------------------------------------------------- rejections
def rejection_of(result: GuestResult) -> str:
    assert not result.ok and result.error is not None
    assert result.error.type == REJECTED_COMMAND
    return result.error.message.split(":")[0]


def test_unsigned_and_forged_commands_are_rejected_without_echoing_the_token(
    agent: GuestAgent,
    queue: InMemoryQueue,
    client: GuestClient,
    manager: FakeManager,
    clock: ManualClock,
) -> None:
    unsigned = client.build("stop", task_token="victim").model_dump(mode="json")
    unsigned["signature"] = None
    forger = GuestClient(queue, clock, INSTANCE_ID, new_instance_secret())
    forged = forger.build("stop", task_token="victim").model_dump(mode="json")
    tampered = client.build("stop", task_token="victim").model_dump(mode="json")
    tampered["name"] = "restart"
    seen = []
    for body in (unsigned, forged, tampered):
        [result] = deliver(agent, queue, body)
        seen.append(rejection_of(result))
        assert result.task_token is None
        assert result.command_id == body["id"]
    assert seen == ["unsigned", "forged", "forged"]
    assert manager.calls == []
    assert agent.heartbeat().rejected_commands == {"unsigned": 1, "forged": 2}


def test_replayed_stale_future_and_expired_commands_are_rejected(
    *,
    agent: GuestAgent,
    queue: InMemoryQueue,
    client: GuestClient,
    manager: FakeManager,
    clock: ManualClock,
    secret: bytes,
) -> None:
    keys = InstanceKeys.from_secret(secret)
    accepted = client.build("start")
    deliver(agent, queue, accepted.model_dump(mode="json"))
    # Same sequence, another id: only someone holding the key can make it, and it is refused.
    replay = accepted.replace(id=str(uuid.uuid4()), signature=None).sign(keys.signing)
    now = clock.now()
    stale = (
        client.build("stop")
        .replace(timestamp=now - timedelta(seconds=601), deadline=None, signature=None)
        .sign(keys.signing)
    )
    future = (
        client.build("stop")
        .replace(timestamp=now + timedelta(seconds=70), deadline=None, signature=None)
        .sign(keys.signing)
    )
    expiring = client.build("stop", timeout=5, task_token="tok-exp")
    clock.advance(5)
    reasons = []
    for command in (replay, stale, future, expiring):
        [result] = deliver(agent, queue, command.model_dump(mode="json"))
        reasons.append(rejection_of(result))
        assert result.task_token == command.task_token  # verified: the waiting task learns now
    assert reasons == ["replayed", "stale", "from_future", "expired"]
    assert manager.calls == ["start"]
    counters = agent.heartbeat().rejected_commands
    assert counters == {"replayed": 1, "stale": 1, "from_future": 1, "expired": 1}


def test_commands_that_overtook_each_other_both_run(
    agent: GuestAgent, queue: InMemoryQueue, client: GuestClient, manager: FakeManager
) -> None:
    first, second = client.build("start"), client.build("stop")
    deliver(agent, queue, second.model_dump(mode="json"))
    [result] = deliver(agent, queue, first.model_dump(mode="json"))
    assert result.ok
    assert manager.calls == ["stop", "start"]


def test_replay_protection_survives_an_agent_restart(
    *,
    agent: GuestAgent,
    queue: InMemoryQueue,
    client: GuestClient,
    config: AgentConfig,
    clock: ManualClock,
    manager: FakeManager,
    secret: bytes,
) -> None:
    accepted = client.build("start")
    deliver(agent, queue, accepted.model_dump(mode="json"))
    reborn = GuestAgent(config, queue, manager, clock)  # type: ignore[arg-type]
    reborn.boot()
    replay = accepted.replace(id=str(uuid.uuid4()), signature=None).sign(
        InstanceKeys.from_secret(secret).signing
    )
    [result] = deliver(reborn, queue, replay.model_dump(mode="json"))
    assert rejection_of(result) == "replayed"
    [again] = deliver(reborn, queue, accepted.model_dump(mode="json"))
    assert again.ok and again.command_id == accepted.id  # from the journal
    assert manager.calls == ["start"]
    assert reborn.heartbeat().rejected_commands == {"replayed": 1}


def test_commands_for_another_instance_are_rejected(
    agent: GuestAgent, queue: InMemoryQueue, clock: ManualClock, secret: bytes
) -> None:
    other = GuestClient(queue, clock, "0b5c7d1e-8f9a-4b2c-9d3e-4f5a6b7c8d9e", secret)
    body = other.build("stop").model_dump(mode="json")
    [result] = deliver(agent, queue, body)
    assert rejection_of(result) == "wrong_instance"
    assert result.instance_id == INSTANCE_ID


@pytest.mark.parametrize(
    "body",
    [
        {"kind": "command", "instance_id": INSTANCE_ID},
        {"hello": "world"},
        {"kind": "command", "password": "plain"},
    ],
)
def test_malformed_messages_are_dropped_and_counted(
    agent: GuestAgent, queue: InMemoryQueue, body: dict[str, Any]
) -> None:
    assert deliver(agent, queue, body) == []
    assert agent.heartbeat().rejected_commands == {"malformed": 1}


def test_a_heartbeat_on_the_command_queue_is_malformed(
    agent: GuestAgent, queue: InMemoryQueue
) -> None:
    assert deliver(agent, queue, agent.heartbeat().model_dump(mode="json")) == []
    assert agent.heartbeat().rejected_commands == {"malformed": 1}


def test_a_result_that_cannot_be_sent_stays_on_the_queue(
    agent: GuestAgent,
    queue: InMemoryQueue,
    client: GuestClient,
    manager: FakeManager,
    clock: ManualClock,
) -> None:
    command = client.send("start")
    queue.fail_sends = True
    assert agent.poll_once() == 1
    assert queue.count(COMMANDS) == 1  # not acked: it comes back after the visibility timeout
    queue.fail_sends = False
    clock.advance(301)
    assert agent.poll_once() == 1
    [result] = results(queue)
    assert result.ok and result.command_id == command.id
    assert manager.calls == ["start"]  # answered from the journal the second time
    assert queue.count(COMMANDS) == 0


def test_journal_keeps_a_bounded_number_of_commands(
    agent: GuestAgent, queue: InMemoryQueue, client: GuestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("guest_agent.state.JOURNAL_ENTRIES", 4)
    sent = [client.send("list_databases") for _ in range(6)]
    while agent.poll_once():
        pass
    queue.drain(EVENTS_QUEUE)
    data = json.loads((agent.state.directory / "state.json").read_text())
    assert [e["command_id"] for e in data["journal"]] == [c.id for c in sent[2:]]


def test_a_signed_command_keeps_its_fields(client: GuestClient) -> None:
    command = client.build("stop", task_token="abc")
    parsed = parse_guest_message(command.model_dump(mode="json"))
    assert isinstance(parsed, GuestCommand) and parsed == command
    assert not isinstance(parsed, Heartbeat)


def test_a_validation_error_inside_a_command_never_quotes_its_input(
    agent: GuestAgent, queue: InMemoryQueue, client: GuestClient, manager: FakeManager
) -> None:
    from pydantic import BaseModel

    class Strict(BaseModel):
        count: int

    def leaky(overrides: dict[str, Any]) -> bool:
        Strict.model_validate({"count": "Secret-Value-77"})
        return False

    manager.update_overrides = leaky  # type: ignore[method-assign]
    result = call(agent, queue, client, "update_overrides", {"overrides": {}})
    assert result.error is not None and result.error.type == "InvalidArguments"
    assert "count" in result.error.message
    assert "Secret-Value-77" not in result.error.message
