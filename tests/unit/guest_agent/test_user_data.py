"""User-data and meta-data: parsing, merging, and refusals that name the field but never
show the secret; the CLI's exit status on bad configuration."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from guest_agent.__main__ import EXIT_CONFIG, main
from guest_agent.user_data import (
    META_DATA_ENV,
    UserDataError,
    load_agent_config,
    parse_meta_data,
    parse_user_data,
    resolve_config,
)
from shared.crypto import encode_secret
from shared.settings import Profile
from tests.unit.guest_agent.conftest import INSTANCE_ID

SECRET = bytes(range(100, 132))


def user_data(tmp_path: Path, **changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "instance_id": INSTANCE_ID,
        "datastore_type": "redis",
        "datastore_version": "7.0",
        "command_queue": "guest-cmd-x",
        "events_queue": "guest-events",
        "secret": encode_secret(SECRET),
        "local": {"queue_path": str(tmp_path / "q.db"), "blob_dir": str(tmp_path / "blobs")},
    }
    data.update(changes)
    return data


def meta_data(tmp_path: Path, **changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "instance_id": INSTANCE_ID,
        "server_id": "srv-1",
        "address": "127.10.0.9",
        "zone": "az1",
        "flavor": {"ram_mb": 256, "vcpus": 1},
        "volume": {"id": "v", "kind": "loop", "size_gb": 2, "mount_point": str(tmp_path / "v")},
    }
    data.update(changes)
    return data


def test_meta_data_completes_user_data(tmp_path: Path) -> None:
    config = resolve_config(
        parse_user_data(user_data(tmp_path)), parse_meta_data(meta_data(tmp_path))
    )
    assert (config.address, config.ram_mb, config.volume_path) == (
        "127.10.0.9",
        256,
        tmp_path / "v",
    )
    assert config.soft_quota_bytes is None and config.port is None
    assert config.user_data.secret_bytes() == SECRET
    assert config.user_data.profile is Profile.LOCAL
    assert config.user_data.heartbeat_interval == 1.0


def test_user_data_wins_over_meta_data_and_soft_quota_comes_from_meta(tmp_path: Path) -> None:
    meta = meta_data(tmp_path)
    meta["volume"]["soft_quota"] = True
    config = resolve_config(
        parse_user_data(
            user_data(tmp_path, address="127.0.0.7", ram_mb=64, port=16379, volume_path="/x")
        ),
        parse_meta_data(meta),
    )
    assert (config.address, config.ram_mb, config.port, str(config.volume_path)) == (
        "127.0.0.7",
        64,
        16379,
        "/x",
    )
    assert config.soft_quota_bytes == 2 << 30


def test_what_neither_document_gives_is_named(tmp_path: Path) -> None:
    with pytest.raises(UserDataError, match="address, ram_mb, volume_path"):
        resolve_config(parse_user_data(user_data(tmp_path)), None)


def test_meta_data_for_another_instance_is_refused(tmp_path: Path) -> None:
    other = meta_data(tmp_path, instance_id="0b5c7d1e-8f9a-4b2c-9d3e-4f5a6b7c8d9e")
    with pytest.raises(UserDataError, match="meta-data is for instance"):
        resolve_config(parse_user_data(user_data(tmp_path)), parse_meta_data(other))


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"secret": base64.b64encode(b"short-secret-value").decode()}, "secret"),
        ({"secret": "not base64 at all!"}, "secret"),
        ({"command_queue": "bad name"}, "command_queue"),
        ({"datastore_type": "oracle"}, "datastore_type"),
        ({"heartbeat_interval": 0}, "heartbeat_interval"),
        ({"local": None}, "local"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_bad_user_data_names_the_field_and_hides_the_secret(
    tmp_path: Path, changes: dict[str, Any], field: str
) -> None:
    data = user_data(tmp_path, **changes)
    with pytest.raises(UserDataError, match=field) as caught:
        parse_user_data(data)
    assert str(data["secret"]) not in str(caught.value)
    assert encode_secret(SECRET) not in str(caught.value)


def test_secret_does_not_show_in_repr(tmp_path: Path) -> None:
    parsed = parse_user_data(user_data(tmp_path))
    assert encode_secret(SECRET) not in repr(parsed)


def write(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_files_are_found_beside_by_environment_or_explicitly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(META_DATA_ENV, raising=False)
    ud = write(tmp_path / "user-data.json", user_data(tmp_path))
    write(tmp_path / "meta-data.json", meta_data(tmp_path))
    assert load_agent_config(ud).address == "127.10.0.9"
    elsewhere = write(tmp_path / "other.json", meta_data(tmp_path, address="127.10.0.10"))
    assert load_agent_config(ud, elsewhere).address == "127.10.0.10"
    monkeypatch.setenv(META_DATA_ENV, str(elsewhere))
    assert load_agent_config(ud).address == "127.10.0.10"
    monkeypatch.setenv(META_DATA_ENV, str(tmp_path / "missing.json"))
    with pytest.raises(UserDataError, match=r"meta-data .*missing.json does not exist"):
        load_agent_config(ud)


def test_unreadable_or_invalid_files_are_reported(tmp_path: Path) -> None:
    with pytest.raises(UserDataError, match="does not exist"):
        load_agent_config(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(UserDataError, match="not valid JSON"):
        load_agent_config(bad)


def test_cli_exits_2_on_bad_user_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(META_DATA_ENV, raising=False)
    ud = write(tmp_path / "user-data.json", user_data(tmp_path, secret="AAAA"))
    assert main(["--user-data", str(ud)]) == EXIT_CONFIG
