"""One settings model for every component, from TROVELESS_* environment variables and an
optional TOML file (TROVELESS_CONFIG_FILE, default ./troveless.toml when present).

Invalid settings fail at start with a message naming the key (`load_settings`).
"""

from __future__ import annotations

import os
import tomllib
from enum import StrEnum
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from shared.aws_settings import OptionalAwsSettings
from shared.errors import TrovelessError
from shared.models.flavor import Flavor
from shared.openstack_settings import OptionalOpenStackSettings

REPO_ROOT = Path(__file__).resolve().parent.parent


def _default_flavors() -> list[Flavor]:
    # Trove-like numeric ids, so `--flavor 2` works as tenants expect.
    return [
        Flavor(id="1", name="tl.tiny", ram_mb=256, vcpus=1),
        Flavor(id="2", name="tl.small", ram_mb=512, vcpus=1),
        Flavor(id="3", name="tl.medium", ram_mb=1024, vcpus=2),
        Flavor(id="4", name="tl.large", ram_mb=2048, vcpus=2),
    ]


class LocalUser(BaseModel):
    """A user of the local profile's embedded Keystone. Without a password, one is generated
    once and kept (0600) in the data directory."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(min_length=1, max_length=255)]
    project: Annotated[str, Field(min_length=1, max_length=64)]
    password: SecretStr | None = None
    roles: list[str] = Field(default_factory=lambda: ["admin", "member", "reader"])


class Profile(StrEnum):
    LOCAL = "local"
    OPENSTACK = "openstack"
    AWS = "aws"


class SettingsError(TrovelessError):
    """Settings failed validation; the message names every offending key."""


def _config_file() -> Path | None:
    explicit = os.environ.get("TROVELESS_CONFIG_FILE")
    if explicit:
        return Path(explicit)
    default = Path("troveless.toml")
    return default if default.exists() else None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="TROVELESS_", extra="forbid", validate_default=True, frozen=True
    )

    profile: Profile = Profile.LOCAL
    data_dir: Path = Field(
        default=Path("/var/lib/troveless"), description="Where the local profile keeps everything"
    )
    api_host: str = "127.0.0.1"
    api_port: Annotated[int, Field(ge=1, le=65535)] = 8779  # Trove's port
    heartbeat_interval: Annotated[float, Field(gt=0, le=300)] = 1.0
    # Long enough that a loaded host pausing an agent for seconds is not taken for a lost guest.
    heartbeat_expiry: Annotated[float, Field(gt=0, le=3600)] = 15.0
    availability_zones: list[str] = Field(default_factory=lambda: ["az1"], min_length=1)
    address_pool: str = "127.10.0.0/16"
    state_machines_dir: Path = REPO_ROOT / "state_machines"
    queue_visibility_timeout: Annotated[float, Field(gt=0)] = 30.0
    queue_max_receives: Annotated[int, Field(ge=1)] = 5
    state_revisions_kept: Annotated[int, Field(ge=2)] = 20
    master_key: SecretStr | None = Field(
        default=None, description="base64 32-byte key that wraps per-backup and per-instance keys"
    )
    log_level: str = "INFO"
    # Instance lifecycle (issue 5): what tenants can ask for, and per-project quotas.
    flavors: list[Flavor] = Field(default_factory=_default_flavors, min_length=1)
    max_volume_size_gb: Annotated[int, Field(ge=1)] = 100
    quota_instances: Annotated[int, Field(ge=0)] = 10  # Trove's defaults
    quota_volumes_gb: Annotated[int, Field(ge=0)] = 40
    quota_backups: Annotated[int, Field(ge=0)] = 50
    # The local profile's embedded Keystone (`troveless up`): users, region, token lifetime.
    local_users: list[LocalUser] = Field(
        default_factory=lambda: [LocalUser(name="admin", project="admin")], min_length=1
    )
    region: str = "RegionOne"
    token_ttl_seconds: Annotated[int, Field(ge=60, le=7 * 86400)] = 86400
    guest_prepare_timeout: Annotated[int, Field(ge=1)] = 300
    # The aws profile's bucket, queues, state machines... (TROVELESS_AWS_*; None elsewhere).
    aws: OptionalAwsSettings = None
    # The openstack profile's Swift, Zaqar and compute (TROVELESS_OPENSTACK_*; None elsewhere).
    openstack: OptionalOpenStackSettings = None

    @field_validator("heartbeat_expiry")
    @classmethod
    def _expiry_after_interval(cls, v: float) -> float:
        return v

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, v: str) -> str:
        level = v.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return level

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = _config_file()
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    def model_post_init(self, __context: object) -> None:
        if self.heartbeat_expiry <= self.heartbeat_interval:
            raise ValueError(
                "heartbeat_expiry must be greater than heartbeat_interval "
                f"({self.heartbeat_expiry} <= {self.heartbeat_interval})"
            )


def load_settings(**overrides: object) -> Settings:
    """Build Settings or raise SettingsError naming each bad key (with its TROVELESS_ variable)."""
    path = _config_file()
    if path is not None and not path.is_file():
        why = "is not a file" if path.exists() else "does not exist"
        raise SettingsError(f"TROVELESS_CONFIG_FILE: {path} {why}")
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"TROVELESS_CONFIG_FILE: {path} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise SettingsError(f"TROVELESS_CONFIG_FILE: cannot read {path}: {exc.strerror}") from None
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"]) or "settings"
            env = f"TROVELESS_{key.split('.')[0].upper()}" if err["loc"] else ""
            problems.append(f"{key} ({env}): {err['msg']}" if env else f"{key}: {err['msg']}")
        raise SettingsError("invalid settings: " + "; ".join(problems)) from None
    except ValueError as exc:  # cross-field checks in model_post_init
        raise SettingsError(f"invalid settings: {exc}") from None
