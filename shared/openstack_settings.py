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
  --profile openstack`) or "nova" (Nova servers and Cinder volumes of `cloud`: the functions'
  runtime on a real cloud, `infra.openstack.wiring.build_openstack`). Nova needs `images`
  (Glance image per "<datastore>:<version>" or "<datastore>"), `flavors` (Nova flavor id per
  troveless flavor name), usually `network_id`, and `guest_cloud`: the clouds.yaml entry of an
  application credential the guests use to reach Zaqar and Swift. Its id and secret go into
  each guest's user-data and nowhere else; the guests never get `cloud`'s credentials, so
  with Nova Swift must be reached through Keystone too (no v1 `swift_*` credentials, which are
  the control plane's own).
- **API tokens** (`api_auth`): "embedded" (the tokens `troveless up`'s own Keystone subset
  signs) or "keystone" (the caller's Keystone token is validated with `cloud`'s service
  identity). Keystone is the default, and the only choice, with Nova.

When no TROVELESS_OPENSTACK_* variable is set and nothing else gives the table,
`Settings.openstack` is None; the openstack wiring then refuses to start and says what to set.
Secrets (`swift_key`) are SecretStr: never printed, logged or shown in validation errors. The
control plane's and the guests' Keystone secrets are no settings at all: they stay in
clouds.yaml, which the wiring reads (the guests' secret then goes only into their user-data).
"""

from __future__ import annotations

import os
import re
from enum import StrEnum
from typing import Annotated, Any, Literal

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


class ApiAuth(StrEnum):
    EMBEDDED = "embedded"  # our own signed tokens (the embedded Keystone subset of `up`)
    KEYSTONE = "keystone"  # the cloud's Keystone validates every caller's token


ServerGroupPolicy = Literal["affinity", "anti-affinity", "soft-affinity", "soft-anti-affinity"]


class OpenStackSettings(BaseSettings):
    """Where the openstack profile keeps things, how it reaches Swift, Zaqar and Nova, and
    whose tokens its API accepts (see the module docstring)."""

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
    # Who validates API tokens; None: keystone with Nova compute, embedded with local compute.
    api_auth: ApiAuth | None = None
    # Nova + Cinder (compute = "nova"); see the module docstring.
    guest_cloud: str | None = Field(
        default=None, description="clouds.yaml entry: the guests' application credential"
    )
    images: dict[str, str] = Field(default_factory=dict)
    flavors: dict[str, str] = Field(default_factory=dict)
    network_id: str | None = None
    volume_type: str | None = None
    volume_zones: dict[str, str] = Field(default_factory=dict)
    security_groups: list[str] = Field(default_factory=list)
    key_name: str | None = None
    server_group_policy: ServerGroupPolicy | None = None
    server_group_name: Annotated[str, Field(min_length=1, max_length=255)] = "troveless-databases"
    # How often, and how long, Nova compute asks Nova or Cinder whether a wait is over.
    nova_poll_interval: Annotated[float, Field(gt=0, le=60)] = 2.0
    nova_timeout: Annotated[float, Field(gt=0, le=7200)] = 600.0

    @property
    def api_auth_chosen(self) -> ApiAuth:
        """`api_auth`, or its default for the compute chosen."""
        if self.api_auth is not None:
            return self.api_auth
        return ApiAuth.KEYSTONE if self.compute is ComputeKind.NOVA else ApiAuth.EMBEDDED

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
        if self.api_auth_chosen is ApiAuth.KEYSTONE and self.cloud is None:
            raise ValueError("api_auth keystone: set cloud, the API's service identity")
        if self.compute is ComputeKind.NOVA:
            self._nova_complete()
        return self

    def _nova_complete(self) -> None:
        if self.cloud is None:
            raise ValueError("compute nova: set cloud, the clouds.yaml entry Nova is reached with")
        if self.api_auth is ApiAuth.EMBEDDED:
            raise ValueError(
                "compute nova: api_auth must be keystone (the cloud's users hold Keystone "
                "tokens; the embedded signer serves one machine only)"
            )
        if self.guest_cloud is None:
            raise ValueError(
                "compute nova: set guest_cloud, the clouds.yaml entry of the guests' "
                "application credential (guests never get the control plane's credentials)"
            )
        if self.guest_cloud == self.cloud:
            raise ValueError("compute nova: guest_cloud must not be cloud (the control plane's)")
        if self.swift_auth_url is not None:
            raise ValueError(
                "compute nova: reach Swift through cloud (Keystone), not swift_auth_url: the v1 "
                "key is the control plane's and Nova guests could not use it"
            )
        if not self.images:
            raise ValueError('compute nova: set images ({"<datastore>[:<version>]": image id})')
        if not self.flavors:
            raise ValueError('compute nova: set flavors ({"<flavor name>": Nova flavor id})')


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
