"""The agent's on-volume state: atomic writes, the space reserve for a full volume, and the
sealed admin password."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from guest_agent import state as state_module
from guest_agent.state import (
    ADMIN_PASSWORD_FILE,
    RESERVE_BYTES,
    RESERVE_FILE,
    STATE_FILE,
    AgentState,
)
from shared.crypto import InstanceKeys, SealedDataError, new_instance_secret
from tests.unit.guest_agent.conftest import INSTANCE_ID


@pytest.fixture
def keys() -> InstanceKeys:
    return InstanceKeys.from_secret(new_instance_secret())


@pytest.fixture
def loaded(tmp_path: Path, keys: InstanceKeys) -> AgentState:
    s = AgentState(tmp_path, keys.volume, INSTANCE_ID)
    s.load()
    return s


def test_load_keeps_a_real_reserve(loaded: AgentState) -> None:
    reserve = loaded.directory / RESERVE_FILE
    assert reserve.stat().st_size == RESERVE_BYTES
    assert reserve.stat().st_blocks * 512 >= RESERVE_BYTES  # not sparse


def test_a_full_volume_spends_the_reserve_once(
    loaded: AgentState, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = state_module.write_atomically
    full = {"left": 1}

    def write_on_a_full_disk(path: Path, payload: bytes, mode: int = 0o600) -> None:
        if full["left"] > 0 and (loaded.directory / RESERVE_FILE).exists():
            full["left"] -= 1
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, payload, mode)

    monkeypatch.setattr(state_module, "write_atomically", write_on_a_full_disk)
    loaded.count_rejection("forged")  # saves: the first write fails, the reserve goes
    assert not (loaded.directory / RESERVE_FILE).exists()
    assert '"forged": 1' in (loaded.directory / STATE_FILE).read_text()

    def always_full(path: Path, payload: bytes, mode: int = 0o600) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(state_module, "write_atomically", always_full)
    with pytest.raises(OSError, match="No space"):
        loaded.count_rejection("forged")


def test_a_failed_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()  # the final rename fails: a directory is in the way
    with pytest.raises(OSError):
        state_module.write_atomically(tmp_path / "taken", b"x")
    state_module.write_atomically(tmp_path / "f", b"payload")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f", "taken"]
    assert (tmp_path / "f").read_bytes() == b"payload"


def test_the_admin_password_is_sealed_under_the_volume_key(
    loaded: AgentState, tmp_path: Path, keys: InstanceKeys
) -> None:
    assert loaded.admin_password() is None
    loaded.store_admin_password("Admin-Password-123")
    raw = (loaded.directory / ADMIN_PASSWORD_FILE).read_bytes()
    assert b"Admin-Password-123" not in raw
    assert AgentState(tmp_path, keys.volume, INSTANCE_ID).admin_password() == "Admin-Password-123"
    other_key = InstanceKeys.from_secret(new_instance_secret()).volume
    with pytest.raises(SealedDataError):
        AgentState(tmp_path, other_key, INSTANCE_ID).admin_password()
    other_instance = "0b5c7d1e-8f9a-4b2c-9d3e-4f5a6b7c8d9e"
    with pytest.raises(SealedDataError):
        AgentState(tmp_path, keys.volume, other_instance).admin_password()


def test_state_round_trips_through_the_file(
    loaded: AgentState, tmp_path: Path, keys: InstanceKeys
) -> None:
    loaded.window.record(42, 1000.0, now=1000.0, max_age=600)
    loaded.want_datastore(True)
    loaded.count_rejection("stale")
    again = AgentState(tmp_path, keys.volume, INSTANCE_ID)
    again.load()
    assert again.window == loaded.window
    assert again.datastore_wanted is True
    assert again.rejected() == {"stale": 1}
