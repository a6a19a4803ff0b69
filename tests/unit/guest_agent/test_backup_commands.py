"""The `backup` and `restore` command handlers (and prepare's `restore` argument): argument
checks and the data key's journey, with the datastore side replaced by recorders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from guest_agent import commands
from guest_agent.backup import BackupOutcome, BackupRequest, ChainLink
from guest_agent.backup.stream import StoredBackup, new_data_key
from shared.crypto import InstanceKeys, encode_secret, open_sealed, password_context, seal
from shared.models.guest import GuestCommandName
from tests.unit.guest_agent.fakes import FakeManager
from tests.unit.guest_agent.test_backup_stream import MemoryBlobStore

INSTANCE = "inst-1"
KEYS = InstanceKeys.from_secret(b"k" * 32)
OTHER_KEYS = InstanceKeys.from_secret(b"o" * 32)
SHA = "ab" * 32


def sealed_key(data_key: bytes, keys: InstanceKeys = KEYS, instance: str = INSTANCE) -> str:
    return seal(keys.passwords, encode_secret(data_key).encode(), password_context(instance))


class Recorder:
    def __init__(self) -> None:
        self.backups: list[BackupRequest] = []
        self.restores: list[tuple[list[ChainLink], str, dict[str, Any]]] = []

    def backup(self, manager: Any, blobs: Any, request: BackupRequest) -> BackupOutcome:
        self.backups.append(request)
        stored = StoredBackup(request.location, 123, SHA, 456)
        return BackupOutcome(stored, "42", None, "10.11.19")

    def restore(
        self,
        manager: Any,
        blobs: Any,
        chain: list[ChainLink],
        *,
        admin_password: str,
        overrides: dict[str, Any],
    ) -> None:
        self.restores.append((chain, admin_password, overrides))


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    recorder = Recorder()
    monkeypatch.setattr(commands, "backup_datastore", recorder.backup)
    monkeypatch.setattr(commands, "restore_datastore", recorder.restore)
    return recorder


def context(tmp_path: Path, blobs: Any = None) -> commands.CommandContext:
    return commands.CommandContext(
        manager=FakeManager(tmp_path),  # type: ignore[arg-type]
        open_password=lambda s: open_sealed(KEYS.passwords, s, password_context(INSTANCE)).decode(),
        seal_password=lambda p: seal(KEYS.passwords, p.encode(), password_context(INSTANCE)),
        admin_password_for_prepare=lambda: "admin-Pass-0123456789",
        volume_info=lambda: {"path": str(tmp_path)},
        blobs=MemoryBlobStore() if blobs is None else blobs,
    )


def backup_args(**changes: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "backup_id": "b-1",
        "location": "backups/inst-1/b-1",
        "incremental": False,
        "parent": None,
        "encrypted_data_key": sealed_key(b"\x07" * 32),
    }
    return {**args, **changes}


def link(backup_id: str, incremental: bool = False, **changes: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "backup_id": backup_id,
        "location": f"backups/inst-0/{backup_id}",
        "sha256": SHA,
        "size_bytes": 10,
        "encrypted_data_key": sealed_key(b"\x09" * 32),
        "incremental": incremental,
    }
    return {**entry, **changes}


def test_backup_opens_the_data_key_and_returns_the_contracted_result(
    tmp_path: Path, recorder: Recorder
) -> None:
    data_key = new_data_key()
    args = backup_args(
        incremental=True,
        parent={"backup_id": "b-0", "lsn": "41"},
        encrypted_data_key=sealed_key(data_key),
    )
    result = commands.execute(context(tmp_path), GuestCommandName.BACKUP, args)
    assert result == {
        "location": "backups/inst-1/b-1",
        "size_bytes": 123,
        "data_size_bytes": 456,
        "sha256": SHA,
        "lsn": "42",
        "position": None,
        "datastore_version": "10.11.19",
    }
    (request,) = recorder.backups
    assert request.data_key == data_key and request.parent_lsn == "41" and request.incremental


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"backup_id": "../x"}, "args.backup_id"),
        ({"location": "backups//x"}, "args.location"),
        ({"encrypted_data_key": "plain"}, "encrypted_data_key"),
        ({"incremental": True}, "args.parent"),
        ({"extra": 1}, "args.extra"),
    ],
)
def test_backup_refuses_bad_arguments(
    tmp_path: Path, recorder: Recorder, changes: dict[str, Any], words: str
) -> None:
    with pytest.raises(commands.CommandRefusedError, match=words) as refused:
        commands.execute(context(tmp_path), GuestCommandName.BACKUP, backup_args(**changes))
    assert refused.value.error_type == "InvalidArguments"
    assert recorder.backups == []


def test_a_data_key_sealed_for_another_instance_does_not_open(
    tmp_path: Path, recorder: Recorder
) -> None:
    args = backup_args(encrypted_data_key=sealed_key(new_data_key(), OTHER_KEYS))
    with pytest.raises(Exception, match="does not open"):
        commands.execute(context(tmp_path), GuestCommandName.BACKUP, args)
    assert recorder.backups == []


def test_a_sealed_value_that_is_not_a_32_byte_key_is_refused(
    tmp_path: Path, recorder: Recorder
) -> None:
    args = backup_args(encrypted_data_key=sealed_key(b"short-key-but-32-bytes-long!!!!!"[:31]))
    with pytest.raises(commands.CommandRefusedError, match="encrypted_data_key"):
        commands.execute(context(tmp_path), GuestCommandName.BACKUP, args)


def test_no_blob_store_is_refused(tmp_path: Path, recorder: Recorder) -> None:
    ctx = context(tmp_path)
    ctx.blobs = None
    with pytest.raises(commands.CommandRefusedError) as refused:
        commands.execute(ctx, GuestCommandName.BACKUP, backup_args())
    assert refused.value.error_type == "NoBlobStore"


def test_prepare_with_restore_restores_the_chain_in_order(
    tmp_path: Path, recorder: Recorder
) -> None:
    chain = [link("full"), link("inc-1", True), link("inc-2", True)]
    result = commands.execute(
        context(tmp_path),
        GuestCommandName.PREPARE,
        {"overrides": {"max_connections": 50}, "restore": {"chain": chain}},
    )
    assert result["restored"] == ["full", "inc-1", "inc-2"]  # type: ignore[index,call-overload]
    ((links, admin_password, overrides),) = recorder.restores
    assert [x.backup_id for x in links] == ["full", "inc-1", "inc-2"]
    assert all(x.data_key == b"\x09" * 32 for x in links)
    assert admin_password == "admin-Pass-0123456789"
    assert overrides == {"max_connections": 50}
    assert GuestCommandName.RESTORE in commands.STARTS_DATASTORE


@pytest.mark.parametrize(
    ("args", "words"),
    [
        ({"chain": []}, "args.chain"),
        ({"chain": [link("inc", True)]}, "a full backup first"),
        ({"chain": [link("full"), link("full-2")]}, "a full backup first"),
        ({"chain": [link("full", sha256="xyz")]}, "sha256"),
        ({"chain": [link("full", size_bytes=-1)]}, "size_bytes"),
    ],
)
def test_restore_refuses_malformed_chains(
    tmp_path: Path, recorder: Recorder, args: dict[str, Any], words: str
) -> None:
    with pytest.raises(commands.CommandRefusedError, match=words):
        commands.execute(context(tmp_path), GuestCommandName.RESTORE, args)
    assert recorder.restores == []


def test_prepare_with_restore_takes_no_databases_or_users(
    tmp_path: Path, recorder: Recorder
) -> None:
    with pytest.raises(commands.CommandRefusedError, match="no databases or users"):
        commands.execute(
            context(tmp_path),
            GuestCommandName.PREPARE,
            {"databases": [{"name": "x"}], "restore": {"chain": [link("full")]}},
        )
    assert recorder.restores == []
