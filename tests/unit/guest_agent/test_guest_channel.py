"""The control plane's end: GuestClient builds and signs commands; GuestEventVerifier refuses
unsigned, forged, stale and replayed events and keeps its "seen" state in the StateStore."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest

from shared.clock import ManualClock
from shared.crypto import InstanceKeys, SealedDataError, new_instance_secret
from shared.errors import ConflictError
from shared.models import GuestCommandName, GuestResult, Heartbeat, ServiceStatus, User
from shared.services.guest_channel import (
    GuestClient,
    GuestEventVerifier,
    command_queue_name,
    seen_key,
)
from shared.services.replay_guard import Rejection, SequenceSource
from tests.unit.guest_agent.conftest import INSTANCE_ID
from tests.unit.guest_agent.fakes import InMemoryQueue, InMemoryStateStore

OTHER_ID = "0b5c7d1e-8f9a-4b2c-9d3e-4f5a6b7c8d9e"


def test_command_queue_names_fit_the_queue_rules() -> None:
    name = command_queue_name(INSTANCE_ID.upper())
    assert name == f"guest-cmd-{INSTANCE_ID}"
    assert len(name) <= 64


def test_client_sends_a_signed_command_with_a_deadline(
    client: GuestClient, queue: InMemoryQueue, clock: ManualClock, secret: bytes
) -> None:
    sent = client.send(
        GuestCommandName.CREATE_DATABASE,
        {"databases": [{"name": "shop"}]},
        task_token="token-1",
        timeout=42,
    )
    [body] = queue.bodies(command_queue_name(INSTANCE_ID))
    assert body == sent.model_dump(mode="json")
    assert sent.verify(InstanceKeys.from_secret(secret).signing)
    assert not sent.verify(secret)  # signed with the derived key, not the raw secret
    assert sent.timestamp == clock.now()
    assert sent.deadline == clock.now() + timedelta(seconds=42)
    assert sent.task_token == "token-1"


def test_client_sequences_grow_and_command_ids_can_be_chosen(client: GuestClient) -> None:
    first = client.build("list_users")
    second = client.build("list_users", command_id="7d7a6f7e-1c54-4a1f-8d1e-111111111111")
    assert second.sequence > first.sequence
    assert second.id == "7d7a6f7e-1c54-4a1f-8d1e-111111111111"
    with pytest.raises(ValueError, match="timeout"):
        client.build("list_users", timeout=0)


def test_clients_on_one_clock_share_a_sequence(
    queue: InMemoryQueue, clock: ManualClock, secret: bytes
) -> None:
    a = GuestClient(queue, clock, INSTANCE_ID, secret)
    b = GuestClient(queue, clock, INSTANCE_ID, secret)
    numbers = [a.build("stop").sequence, b.build("stop").sequence, a.build("stop").sequence]
    assert numbers == sorted(set(numbers))


def test_client_seals_passwords_that_only_this_instance_opens(
    client: GuestClient, queue: InMemoryQueue, clock: ManualClock, secret: bytes
) -> None:
    user = User(name="app", password="app-password-1").sealed(client.seal_password)
    assert user.encrypted_password is not None
    assert client.open_password(user.encrypted_password) == "app-password-1"
    other = GuestClient(queue, clock, OTHER_ID, secret)  # same secret, other instance
    with pytest.raises(SealedDataError):
        other.open_password(user.encrypted_password)
    assert "app-password-1" not in repr(client)


# --------------------------------------------------------------------------- verifier
class Guest:
    """Signs events the way an agent does."""

    def __init__(self, clock: ManualClock, secret: bytes, instance_id: str = INSTANCE_ID) -> None:
        self.clock = clock
        self.instance_id = instance_id
        self.keys = InstanceKeys.from_secret(secret)
        self.sequences = SequenceSource(clock)

    def heartbeat(self, *, sign_with: bytes | None = None, **changes: Any) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "instance_id": self.instance_id,
            "sequence": self.sequences.next(),
            "timestamp": self.clock.now(),
            "agent_version": "0.1.0",
            "datastore_status": ServiceStatus.RUNNING,
            "disk_used_bytes": 1,
            "disk_total_bytes": 2,
        }
        fields.update(changes)
        beat = Heartbeat(**fields).sign(sign_with or self.keys.signing)
        return beat.model_dump(mode="json")

    def result(self, **changes: Any) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "instance_id": self.instance_id,
            "sequence": self.sequences.next(),
            "timestamp": self.clock.now(),
            "command_id": "7d7a6f7e-1c54-4a1f-8d1e-222222222222",
            "command": GuestCommandName.STOP,
            "ok": True,
        }
        fields.update(changes)
        return GuestResult(**fields).sign(self.keys.signing).model_dump(mode="json")


@pytest.fixture
def store() -> InMemoryStateStore:
    return InMemoryStateStore()


@pytest.fixture
def verifier(store: InMemoryStateStore, clock: ManualClock, secret: bytes) -> GuestEventVerifier:
    secrets = {INSTANCE_ID: secret}
    return GuestEventVerifier(store, clock, secrets.get, heartbeat_max_age=30, max_skew=5)


@pytest.fixture
def guest(clock: ManualClock, secret: bytes) -> Guest:
    return Guest(clock, secret)


def test_a_good_heartbeat_is_accepted_once(
    verifier: GuestEventVerifier, guest: Guest, store: InMemoryStateStore
) -> None:
    body = guest.heartbeat()
    verdict = verifier.verify(body)
    assert verdict.accepted and isinstance(verdict.message, Heartbeat)
    assert verdict.instance_id == INSTANCE_ID
    record = store.get(seen_key(INSTANCE_ID))
    assert record is not None and [body["sequence"], pytest.approx(body_ts(body))] in [
        list(e) for e in record.data["heartbeat"]["seen"]
    ]
    again = verifier.verify(body)
    assert again.rejection is Rejection.REPLAYED and again.message is None
    assert verifier.rejections == {Rejection.REPLAYED: 1}


def body_ts(body: dict[str, Any]) -> float:
    return datetime.fromisoformat(body["timestamp"]).timestamp()


def test_events_that_overtook_each_other_are_both_accepted(
    verifier: GuestEventVerifier, guest: Guest
) -> None:
    first, second = guest.heartbeat(), guest.heartbeat()
    assert verifier.verify(second).accepted
    assert verifier.verify(first).accepted


def test_heartbeats_and_results_have_separate_windows(
    verifier: GuestEventVerifier, guest: Guest
) -> None:
    beat = guest.heartbeat()
    result = guest.result(sequence=beat["sequence"])
    assert verifier.verify(beat).accepted
    assert verifier.verify(result).accepted


def test_unsigned_forged_and_tampered_events_are_rejected_and_counted(
    verifier: GuestEventVerifier, guest: Guest, store: InMemoryStateStore
) -> None:
    unsigned = guest.heartbeat()
    unsigned["signature"] = None
    forged = guest.heartbeat(sign_with=new_instance_secret())
    tampered = guest.heartbeat()
    tampered["datastore_status"] = "CRASHED"
    good = guest.heartbeat()
    verdicts = [verifier.verify(b) for b in (unsigned, forged, tampered)]
    assert [v.rejection for v in verdicts] == [
        Rejection.UNSIGNED,
        Rejection.FORGED,
        Rejection.FORGED,
    ]
    assert verifier.rejections == {Rejection.UNSIGNED: 1, Rejection.FORGED: 2}
    assert store.puts == 0  # nothing rejected touches the seen record
    assert verifier.verify(good).accepted


def test_stale_and_future_events_are_rejected(
    verifier: GuestEventVerifier, guest: Guest, clock: ManualClock
) -> None:
    old = guest.heartbeat(timestamp=clock.now() - timedelta(seconds=31))
    ahead = guest.heartbeat(timestamp=clock.now() + timedelta(seconds=6))
    assert verifier.verify(old).rejection is Rejection.STALE
    assert verifier.verify(ahead).rejection is Rejection.FROM_FUTURE
    # Results may wait longer in the queue than heartbeats.
    assert verifier.verify(guest.result(timestamp=clock.now() - timedelta(seconds=31))).accepted


def test_unknown_instances_commands_and_garbage_are_rejected(
    verifier: GuestEventVerifier, guest: Guest, clock: ManualClock, secret: bytes
) -> None:
    stranger = Guest(clock, secret, OTHER_ID)
    client = GuestClient(InMemoryQueue(clock), clock, INSTANCE_ID, secret)
    command = client.build("stop").model_dump(mode="json")
    cases = {
        Rejection.UNKNOWN_INSTANCE: stranger.heartbeat(),
        Rejection.MALFORMED: {"kind": "heartbeat", "instance_id": INSTANCE_ID},
    }
    for reason, body in cases.items():
        verdict = verifier.verify(body)
        assert verdict.rejection is reason
        assert verdict.instance_id == body["instance_id"]
    assert verifier.verify(command).rejection is Rejection.MALFORMED
    assert verifier.verify({"kind": "heartbeat", "password": "x"}).instance_id is None


def test_a_lost_compare_and_swap_is_retried(
    verifier: GuestEventVerifier, guest: Guest, store: InMemoryStateStore
) -> None:
    store.conflicts_before_put = 2
    assert verifier.verify(guest.heartbeat()).accepted
    store.conflicts_before_put = 100
    with pytest.raises(ConflictError):
        verifier.verify(guest.heartbeat())


def test_two_consumers_of_one_message_accept_it_once(
    store: InMemoryStateStore, clock: ManualClock, secret: bytes, guest: Guest
) -> None:
    one = GuestEventVerifier(store, clock, {INSTANCE_ID: secret}.get)
    two = GuestEventVerifier(store, clock, {INSTANCE_ID: secret}.get)
    body = guest.result()
    assert [one.verify(body).accepted, two.verify(body).accepted] == [True, False]


def test_forget_drops_the_seen_record(
    verifier: GuestEventVerifier, guest: Guest, store: InMemoryStateStore
) -> None:
    body = guest.heartbeat()
    assert verifier.verify(body).accepted
    verifier.forget(INSTANCE_ID)
    assert store.get(seen_key(INSTANCE_ID)) is None
