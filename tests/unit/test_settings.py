"""Settings: defaults, TROVELESS_* environment variables, the TOML file, refusals naming the
key, and the `troveless config` command."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from infra.cli.main import app
from shared.settings import Profile, SettingsError, load_settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No TROVELESS_* variable from the caller's shell, and a working directory without a
    stray troveless.toml (the default config file is looked up in the cwd)."""
    for name in list(os.environ):
        if name.startswith("TROVELESS_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_config(tmp_path: Path, text: str, name: str = "troveless-test.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults() -> None:
    settings = load_settings()
    assert settings.profile is Profile.LOCAL
    assert settings.api_port == 8779
    assert settings.heartbeat_interval == 1.0
    assert settings.heartbeat_expiry == 15.0
    assert settings.availability_zones == ["az1"]
    assert settings.master_key is None


def test_environment_overrides_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TROVELESS_API_PORT", "9001")
    monkeypatch.setenv("TROVELESS_PROFILE", "aws")
    monkeypatch.setenv("TROVELESS_AVAILABILITY_ZONES", '["az1", "az2", "az3"]')
    monkeypatch.setenv("TROVELESS_LOG_LEVEL", "debug")
    monkeypatch.setenv("TROVELESS_HEARTBEAT_EXPIRY", "12.5")
    settings = load_settings()
    assert settings.api_port == 9001
    assert settings.profile is Profile.AWS
    assert settings.availability_zones == ["az1", "az2", "az3"]
    assert settings.log_level == "DEBUG"
    assert settings.heartbeat_expiry == 12.5


def test_config_file_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        'api_port = 9100\nheartbeat_interval = 2.0\navailability_zones = ["north", "south"]\n',
    )
    monkeypatch.setenv("TROVELESS_CONFIG_FILE", str(path))
    settings = load_settings()
    assert settings.api_port == 9100
    assert settings.heartbeat_interval == 2.0
    assert settings.availability_zones == ["north", "south"]


def test_default_config_file_in_working_directory_is_read(tmp_path: Path) -> None:
    write_config(tmp_path, "api_port = 9200\n", name="troveless.toml")
    assert load_settings().api_port == 9200


def test_precedence_arguments_then_environment_then_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = write_config(tmp_path, 'api_port = 9100\napi_host = "127.0.0.2"\n')
    monkeypatch.setenv("TROVELESS_CONFIG_FILE", str(path))
    monkeypatch.setenv("TROVELESS_API_PORT", "9300")
    settings = load_settings()
    assert settings.api_port == 9300  # the environment beats the file
    assert settings.api_host == "127.0.0.2"  # the file beats the default
    assert load_settings(api_port=9400).api_port == 9400  # arguments beat both


@pytest.mark.parametrize(
    ("variable", "value", "key"),
    [
        ("TROVELESS_API_PORT", "not-a-port", "api_port"),
        ("TROVELESS_API_PORT", "70000", "api_port"),
        ("TROVELESS_HEARTBEAT_INTERVAL", "0", "heartbeat_interval"),
        ("TROVELESS_PROFILE", "azure", "profile"),
        ("TROVELESS_LOG_LEVEL", "LOUD", "log_level"),
        ("TROVELESS_QUEUE_MAX_RECEIVES", "0", "queue_max_receives"),
        ("TROVELESS_STATE_REVISIONS_KEPT", "1", "state_revisions_kept"),
    ],
)
def test_invalid_environment_value_names_key_and_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, key: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert key in str(caught.value)
    assert variable in str(caught.value)


def test_unparsable_list_from_environment_names_key(monkeypatch: pytest.MonkeyPatch) -> None:
    # Lists come from the environment as JSON; a bare word is refused, naming the key.
    monkeypatch.setenv("TROVELESS_AVAILABILITY_ZONES", "az1,az2")
    with pytest.raises(SettingsError, match="availability_zones"):
        load_settings()


def test_invalid_file_value_names_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = write_config(tmp_path, 'queue_visibility_timeout = "soon"\n')
    monkeypatch.setenv("TROVELESS_CONFIG_FILE", str(path))
    with pytest.raises(SettingsError, match="queue_visibility_timeout"):
        load_settings()


def test_unknown_file_key_is_refused_by_name(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = write_config(tmp_path, "api_prot = 9000\n")
    monkeypatch.setenv("TROVELESS_CONFIG_FILE", str(path))
    with pytest.raises(SettingsError, match="api_prot"):
        load_settings()


@pytest.mark.parametrize(("interval", "expiry"), [("5", "5"), ("5", "4.9"), ("10", "1")])
def test_heartbeat_expiry_must_exceed_interval(
    monkeypatch: pytest.MonkeyPatch, interval: str, expiry: str
) -> None:
    monkeypatch.setenv("TROVELESS_HEARTBEAT_INTERVAL", interval)
    monkeypatch.setenv("TROVELESS_HEARTBEAT_EXPIRY", expiry)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert "heartbeat_expiry" in str(caught.value)
    assert "heartbeat_interval" in str(caught.value)


def test_heartbeat_expiry_just_above_interval_is_accepted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TROVELESS_HEARTBEAT_INTERVAL", "5")
    monkeypatch.setenv("TROVELESS_HEARTBEAT_EXPIRY", "5.1")
    assert load_settings().heartbeat_expiry == 5.1


def test_missing_config_file_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    missing = tmp_path / "absent.toml"
    monkeypatch.setenv("TROVELESS_CONFIG_FILE", str(missing))
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert "TROVELESS_CONFIG_FILE" in str(caught.value)
    assert str(missing) in str(caught.value)


def test_directory_as_config_file_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TROVELESS_CONFIG_FILE", str(tmp_path))
    with pytest.raises(SettingsError, match=r"TROVELESS_CONFIG_FILE: .* is not a file"):
        load_settings()


def test_malformed_config_file_names_the_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = write_config(tmp_path, "api_port = \n")
    monkeypatch.setenv("TROVELESS_CONFIG_FILE", str(path))
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert "TROVELESS_CONFIG_FILE" in str(caught.value)
    assert str(path) in str(caught.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_config_file_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = write_config(tmp_path, "api_port = 9000\n")
    path.chmod(0)
    try:
        monkeypatch.setenv("TROVELESS_CONFIG_FILE", str(path))
        with pytest.raises(SettingsError, match="cannot read"):
            load_settings()
    finally:
        path.chmod(0o600)


def test_master_key_is_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TROVELESS_MASTER_KEY", "c2VjcmV0LWtleS1ieXRlcy1zZWNyZXQta2V5LWJ5dGVz")
    settings = load_settings()
    assert settings.master_key is not None
    assert settings.master_key.get_secret_value().startswith("c2Vj")
    assert "c2Vj" not in settings.model_dump_json()
    assert "c2Vj" not in repr(settings)


# --------------------------------------------------------------------------- the CLI
def test_cli_config_prints_effective_settings_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TROVELESS_API_PORT", "9555")
    monkeypatch.setenv("TROVELESS_MASTER_KEY", "c2VjcmV0LWtleS1ieXRlcy1zZWNyZXQta2V5LWJ5dGVz")
    result = CliRunner().invoke(app, ["config"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown["api_port"] == 9555
    assert shown["profile"] == "local"
    assert shown["master_key"] == "**********"
    assert "c2Vj" not in result.output


def test_cli_config_exits_2_naming_the_bad_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TROVELESS_HEARTBEAT_INTERVAL", "-1")
    result = CliRunner().invoke(app, ["config"])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert "heartbeat_interval" in result.stderr
    assert "TROVELESS_HEARTBEAT_INTERVAL" in result.stderr


def test_cli_config_exits_2_on_missing_config_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TROVELESS_CONFIG_FILE", str(tmp_path / "absent.toml"))
    result = CliRunner().invoke(app, ["config"])
    assert result.exit_code == 2
    assert "TROVELESS_CONFIG_FILE" in result.stderr
