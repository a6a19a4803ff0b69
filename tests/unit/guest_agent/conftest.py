"""Fixtures for the guest agent's unit tests: one instance, its secret, a manual clock, the
in-memory queue and manager, an agent on a temporary volume, and the control plane's client."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from guest_agent.agent import GuestAgent
from guest_agent.user_data import AgentConfig, LocalBackends, UserData, resolve_config
from shared.clock import ManualClock
from shared.crypto import encode_secret, new_instance_secret
from shared.services.guest_channel import EVENTS_QUEUE, GuestClient, command_queue_name
from tests.unit.guest_agent.fakes import FakeManager, InMemoryQueue

INSTANCE_ID = str(uuid.UUID("6f1c1c5e-3c4b-4f7e-9a51-0d5d1f0c7a11"))


@pytest.fixture
def secret() -> bytes:
    return new_instance_secret()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def queue(clock: ManualClock) -> InMemoryQueue:
    q = InMemoryQueue(clock)
    q.ensure_queue(command_queue_name(INSTANCE_ID))
    q.ensure_queue(EVENTS_QUEUE)
    return q


@pytest.fixture
def volume(tmp_path: Path) -> Path:
    path = tmp_path / "volume"
    path.mkdir()
    return path


def make_user_data(secret: bytes, tmp_path: Path, **changes: object) -> UserData:
    fields: dict[str, object] = {
        "instance_id": INSTANCE_ID,
        "datastore_type": "mariadb",
        "datastore_version": "10.11",
        "command_queue": command_queue_name(INSTANCE_ID),
        "events_queue": EVENTS_QUEUE,
        "secret": encode_secret(secret),
        "local": LocalBackends(queue_path=tmp_path / "q.db", blob_dir=tmp_path / "blobs"),
        "address": "127.10.0.5",
        "ram_mb": 512,
    }
    fields.update(changes)
    return UserData.model_validate(fields)


@pytest.fixture
def config(secret: bytes, tmp_path: Path, volume: Path) -> AgentConfig:
    return resolve_config(make_user_data(secret, tmp_path, volume_path=volume), None)


@pytest.fixture
def manager(volume: Path) -> FakeManager:
    return FakeManager(volume)


@pytest.fixture
def agent(
    config: AgentConfig, queue: InMemoryQueue, manager: FakeManager, clock: ManualClock
) -> GuestAgent:
    a = GuestAgent(config, queue, manager, clock)  # type: ignore[arg-type]
    a.boot()
    return a


@pytest.fixture
def client(queue: InMemoryQueue, clock: ManualClock, secret: bytes) -> GuestClient:
    return GuestClient(queue, clock, INSTANCE_ID, secret)
