"""The openstack profile's settings: `Settings.openstack`, read from TROVELESS_OPENSTACK_<FIELD>.

Each field `x` is read from `TROVELESS_OPENSTACK_X`; a TOML file may give them in an
`[openstack]` table (the variables still override single fields, as for every setting).

How the profile reaches the cloud:

- **Swift** (state and backups): `cloud`, a clouds.yaml entry that openstacksdk authenticates
  with Keystone, or a v1 (tempauth) cluster such as a Swift all-in-one: `swift_auth_url`,
  `swift_user`, `swift_key`. The v1 credentials win when both are given.
- **Zaqar** (queues): `zaqar_url` + `zaqar_project_id` talks to a noauth Zaqar; without
  `zaqar_url`, Zaqar is found in the Keystone catalog of `cloud`.
- **compute**: "local" (the embedded cloud's LocalCompute makes the servers: `troveless up
  --profile openstack`) or "nova".

When no TROVELESS_OPENSTACK_* variable is set and nothing else gives the table,
`Settings.openstack` is None; the openstack wiring then refuses to start and says what to set.
Secrets (`swift_key`) are SecretStr: never printed, logged or shown in validation errors.
"""

from __future__ import annotations

import os
import re
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

ENV_PREFIX = "TROVELESS_OPENSTACK_"
# Swift container names: no '/', at most 256 bytes. These defaults are infra/openstack/
# deployment.py's names (a unit test checks they agree; shared/ may not import infra/).
CONTAINER_PATTERN = r"^[^/]{1,256}$"
DEFAULT_STATE_CONTAINER = "troveless-state"
DEFAULT_BACKUPS_CONTAINER = "troveless-backups"


class ComputeKind(StrEnum):
    LOCAL = "local"  # the embedded cloud's LocalCompute (one machine)
    NOVA = "nova"  # Nova servers + Cinder volumes


class OpenStackSettings(BaseSettings):
    """Where the openstack profile keeps things, and how it reaches Swift and Zaqar."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    cloud: str | None = Field(default=None, description="clouds.yaml cloud (Keystone)")
    swift_auth_url: str | None = Field(default=None, description="v1 auth URL (tempauth)")
    swift_user: str | None = None
    swift_key: SecretStr | None = None
    zaqar_url: str | None = Field(default=None, description="Zaqar endpoint (noauth)")
    zaqar_project_id: str | None = None
    state_container: Annotated[str, Field(pattern=CONTAINER_PATTERN)] = DEFAULT_STATE_CONTAINER
    backups_container: Annotated[str, Field(pattern=CONTAINER_PATTERN)] = DEFAULT_BACKUPS_CONTAINER
    compute: ComputeKind = ComputeKind.LOCAL
    # How often an empty Zaqar receive asks again while long-polling (Zaqar cannot wait).
    # Every consumer polls (engine workers, guest events, each guest's command queue), so a
    # short interval is latency bought with requests to a single Zaqar.
    queue_poll_interval: Annotated[float, Field(gt=0, le=10)] = 0.2
    # `troveless up`: Zaqar pushes guest events to the server's /functions/guest-events
    # (a webhook subscription) instead of a thread pulling them (infra/openstack/wiring.py).
    guest_events_push: bool = False

    @model_validator(mode="after")
    def _reachable(self) -> OpenStackSettings:
        v1 = (self.swift_auth_url, self.swift_user, self.swift_key)
        if any(v is not None for v in v1) and not all(v is not None for v in v1):
            raise ValueError("swift_auth_url, swift_user and swift_key go together")
        if self.swift_auth_url is None and self.cloud is None:
            raise ValueError("Swift: set cloud, or swift_auth_url, swift_user and swift_key")
        if (self.zaqar_url is None) != (self.zaqar_project_id is None):
            raise ValueError("zaqar_url and zaqar_project_id go together")
        if self.zaqar_url is None and self.cloud is None:
            raise ValueError("Zaqar: set cloud, or zaqar_url and zaqar_project_id")
        return self


def openstack_variables() -> dict[str, str]:
    """The TROVELESS_OPENSTACK_* variables set now, by upper-case name."""
    return {k.upper(): v for k, v in os.environ.items() if k.upper().startswith(ENV_PREFIX)}


def variable_for(field: str) -> str:
    return ENV_PREFIX + field.upper()


def _from_environment(value: Any) -> Any:
    """Settings.openstack's value: what was given, completed and overridden by the variables."""
    variables = openstack_variables()
    if value is None and not variables:
        return None
    if isinstance(value, OpenStackSettings):
        return value
    known = {variable_for(name) for name in OpenStackSettings.model_fields}
    unknown = sorted(set(variables) - known)
    if unknown:
        raise ValueError(f"{', '.join(unknown)}: unknown (known: {', '.join(sorted(known))})")
    given = {} if value is None else value
    if not isinstance(given, dict):
        raise ValueError(f"must be a table of {', '.join(sorted(OpenStackSettings.model_fields))}")
    try:
        return OpenStackSettings(
            **{k: v for k, v in given.items() if variable_for(k) not in variables}
        )
    except ValidationError as exc:
        problems = []
        for err in exc.errors():  # err["input"] may hold the key: never shown
            field = str(err["loc"][0]) if err["loc"] else ""
            named = f"openstack.{field} ({variable_for(field)})" if field else "openstack"
            problems.append(f"{named}: {err['msg']}")
        raise ValueError("; ".join(problems)) from None
    except SettingsError as exc:
        found = re.search(r'field "(\w+)"', str(exc))
        variable = variable_for(found.group(1)) if found else f"{ENV_PREFIX}*"
        raise ValueError(f"{variable}: not valid") from None


OptionalOpenStackSettings = Annotated[OpenStackSettings | None, BeforeValidator(_from_environment)]
"""The type of `Settings.openstack` (None outside the openstack profile)."""
