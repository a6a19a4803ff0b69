"""The openstack profile's settings, wiring refusals and guest user-data, without servers.

What runs on the real Swift and Zaqar is tests/e2e/test_openstack_profile.py.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from guest_agent.user_data import UserDataError, parse_user_data, resolve_config
from guest_agent.wiring import build_backends
from infra.cli.main import app
from infra.openstack import deployment
from infra.openstack.wiring import guest_backends, openstack_cloud
from infra.wiring import WiringError, build_embedded, build_runtime, master_key
from shared.clock import SystemClock
from shared.openstack_settings import (
    DEFAULT_BACKUPS_CONTAINER,
    DEFAULT_STATE_CONTAINER,
    ComputeKind,
    OpenStackSettings,
)
from shared.settings import Profile, SettingsError, load_settings

KEY = "swift-key-never-shown"
V1 = {
    "TROVELESS_OPENSTACK_SWIFT_AUTH_URL": "http://127.0.0.1:8080/auth/v1.0",
    "TROVELESS_OPENSTACK_SWIFT_USER": "test:tester",
    "TROVELESS_OPENSTACK_SWIFT_KEY": KEY,
    "TROVELESS_OPENSTACK_ZAQAR_URL": "http://127.0.0.1:8888",
    "TROVELESS_OPENSTACK_ZAQAR_PROJECT_ID": "troveless",
}
INSTANCE = "1b4e28ba-2fa1-41d2-883f-0016d3cca427"
# The least a Nova (cloud) form of the settings needs.
NOVA: dict[str, Any] = {
    "cloud": "c",
    "guest_cloud": "g",
    "compute": "nova",
    "images": {"mariadb": "image-id"},
    "flavors": {"tl.tiny": "flavor-id"},
}


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TROVELESS_CONFIG_FILE", raising=False)
    monkeypatch.chdir("/")  # no ./troveless.toml
    for name in list(os.environ):
        if name.startswith("TROVELESS_"):
            monkeypatch.delenv(name)


def _set(monkeypatch: pytest.MonkeyPatch, variables: dict[str, str]) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_without_variables_there_are_no_openstack_settings() -> None:
    assert load_settings().openstack is None


def test_variables_give_the_settings_and_the_key_stays_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _set(monkeypatch, {**V1, "TROVELESS_OPENSTACK_QUEUE_POLL_INTERVAL": "0.5"})
    openstack = load_settings(profile="openstack").openstack
    assert openstack is not None
    assert openstack.swift_user == "test:tester"
    assert openstack.swift_key is not None and openstack.swift_key.get_secret_value() == KEY
    assert openstack.compute is ComputeKind.LOCAL
    assert openstack.queue_poll_interval == 0.5
    assert KEY not in repr(openstack) and KEY not in str(openstack.model_dump())


def test_default_containers_are_the_deployments() -> None:
    assert DEFAULT_STATE_CONTAINER == deployment.STATE_CONTAINER
    assert DEFAULT_BACKUPS_CONTAINER == deployment.BACKUPS_CONTAINER


@pytest.mark.parametrize(
    ("variables", "words"),
    [
        ({"TROVELESS_OPENSTACK_SWIFT_USER": "u"}, "go together"),
        ({"TROVELESS_OPENSTACK_ZAQAR_URL": "http://z"}, "Swift: set cloud"),
        ({"TROVELESS_OPENSTACK_CLOUD": "c", "TROVELESS_OPENSTACK_COMPUTE": "ec2"}, "compute"),
        ({"TROVELESS_OPENSTACK_CLOUD": "c", "TROVELESS_OPENSTACK_STATE_CONTAINER": "a/b"}, "state"),
        ({"TROVELESS_OPENSTACK_BUCKET": "x"}, "TROVELESS_OPENSTACK_BUCKET: unknown"),
    ],
)
def test_bad_variables_fail_naming_them(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], words: str
) -> None:
    _set(monkeypatch, variables)
    with pytest.raises(SettingsError, match="openstack") as failed:
        load_settings()
    assert words in str(failed.value)


def test_a_bad_setting_never_shows_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    _set(monkeypatch, {**V1, "TROVELESS_OPENSTACK_ZAQAR_PROJECT_ID": ""})
    monkeypatch.delenv("TROVELESS_OPENSTACK_ZAQAR_URL")
    with pytest.raises(SettingsError) as failed:
        load_settings()
    assert KEY not in str(failed.value)


def test_the_profile_without_settings_refuses_to_start(tmp_path: Path) -> None:
    settings = load_settings(profile="openstack", data_dir=tmp_path)
    with pytest.raises(WiringError, match="TROVELESS_OPENSTACK_"):
        build_embedded(settings)
    with pytest.raises(WiringError, match="TROVELESS_OPENSTACK_"):
        build_runtime(settings.model_copy(update={"openstack": None}))


def test_up_says_what_to_set_and_exits_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["up", "--profile", "openstack", "--data-dir", str(tmp_path), "--port", "65000"]
    )
    assert result.exit_code == 2
    assert "TROVELESS_OPENSTACK_" in result.output


def test_nova_compute_is_refused_in_the_embedded_cloud(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    nova = OpenStackSettings(**NOVA)
    with pytest.raises(WiringError, match="nova"):
        openstack_cloud(load_settings(profile="openstack", data_dir=tmp_path, openstack=nova))


def test_an_unreachable_swift_is_a_wiring_error_without_the_key(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/auth/v1.0"
    _set(monkeypatch, {**V1, "TROVELESS_OPENSTACK_SWIFT_AUTH_URL": url})
    with pytest.raises(WiringError, match="Swift") as failed:
        openstack_cloud(load_settings(profile="openstack", data_dir=tmp_path))
    assert KEY not in str(failed.value)


def test_guests_need_v1_swift_and_noauth_zaqar() -> None:
    with pytest.raises(WiringError, match="SWIFT_AUTH_URL"):
        guest_backends(OpenStackSettings(cloud="mycloud"))


def test_one_machine_openstack_keeps_its_master_key_beside_its_data(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cloud_form = OpenStackSettings(**NOVA)  # before the V1 variables, which it would take
    _set(monkeypatch, V1)
    settings = load_settings(profile="openstack", data_dir=tmp_path)
    key = master_key(settings)
    assert len(key) == 32 and master_key(settings) == key
    assert (tmp_path / "master.key").stat().st_mode & 0o777 == 0o600
    nova = settings.model_copy(update={"openstack": cloud_form})
    with pytest.raises(WiringError, match="TROVELESS_MASTER_KEY"):
        master_key(nova)


def _user_data(openstack: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "instance_id": INSTANCE,
        "datastore_type": "redis",
        "datastore_version": "7",
        "command_queue": f"guest-{INSTANCE}",
        "events_queue": "guest-events",
        "secret": "A" * 44,
        "profile": Profile.OPENSTACK.value,
        "address": "127.0.0.1",
        "ram_mb": 256,
        "volume_path": "/tmp/v",
    }
    if openstack is not None:
        data["openstack"] = openstack
    return data


def test_guest_user_data_carries_the_backends(monkeypatch: pytest.MonkeyPatch) -> None:
    _set(monkeypatch, V1)
    openstack = load_settings().openstack
    assert openstack is not None
    parsed = parse_user_data(_user_data(guest_backends(openstack)))
    assert parsed.openstack is not None
    assert parsed.openstack.swift_key is not None
    assert parsed.openstack.swift_key.get_secret_value() == KEY
    assert parsed.openstack.backups_container == deployment.BACKUPS_CONTAINER
    assert KEY not in repr(parsed)


def test_guest_user_data_without_the_section_is_refused() -> None:
    with pytest.raises(UserDataError, match="openstack"):
        parse_user_data(_user_data(None))


def test_a_guest_that_cannot_reach_swift_says_so_without_the_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _set(monkeypatch, V1)
    openstack = load_settings().openstack
    assert openstack is not None
    given = guest_backends(openstack)
    assert isinstance(given, dict)
    backends = {
        **given,
        "swift_auth_url": f"http://127.0.0.1:{_closed_port()}/auth/v1.0",
    }
    config = resolve_config(parse_user_data(_user_data(backends)), None)
    with pytest.raises(UserDataError, match="Swift") as failed:
        build_backends(config, SystemClock())
    assert KEY not in str(failed.value)
