"""What configures a guest agent at boot, as cloud-init would hand it to a Nova server.

Two documents:

- **user-data** (`UserData`), written by the control plane and readable only by the guest: which
  instance and datastore this is, the queues to use, the per-instance secret, where the queue and
  blob backends are (one section per profile: `local`, `openstack`, `aws`), and agent tuning;
- **meta-data** (`MetaData`), written by the compute driver: facts only the server knows once it
  exists (its address, flavor, where its volume is mounted and whether its size is a soft quota).
  The agent finds it through `--meta-data`, `$TROVELESS_META_DATA` or `meta-data.json` beside the
  user-data file. Values set in user-data win over meta-data.

`load_agent_config` merges both into the `AgentConfig` the agent runs with.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator

from shared.aws_settings import QUEUE_PREFIX_PATTERN, EndpointUrl
from shared.crypto import decode_secret
from shared.errors import TrovelessError
from shared.models.base import DomainModel, IpAddress, Name, Port, Uuid
from shared.models.datastore import DatastoreManager
from shared.ports import QUEUE_NAME_PATTERN
from shared.settings import Profile

META_DATA_ENV = "TROVELESS_META_DATA"
META_DATA_FILE = "meta-data.json"
GIB = 1 << 30

QueueName = Annotated[str, Field(pattern=QUEUE_NAME_PATTERN)]
AWS_REGION_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}"
BUCKET_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{1,61}[A-Za-z0-9]"


class UserDataError(TrovelessError):
    """The user-data or meta-data is missing, unreadable or invalid; the message says which."""


class LocalBackends(DomainModel):
    """Where the local profile's queue database and blob directory are."""

    queue_path: Path
    blob_dir: Path


class GuestKeystone(DomainModel):
    """A Keystone application credential of the guests' own (Nova compute): the guest logs in
    with it and finds Zaqar and Swift in its token's catalog. Never the control plane's."""

    auth_url: Annotated[str, Field(min_length=1)]
    application_credential_id: Annotated[str, Field(min_length=1)]
    application_credential_secret: SecretStr
    region_name: str | None = None
    interface: str = "public"


class OpenStackBackends(DomainModel):
    """How a guest of the openstack profile reaches Zaqar (its queues) and Swift (backups).

    Two forms. One machine (`troveless up --profile openstack`, local compute): Zaqar without
    auth, Swift by v1 (tempauth) credentials. Nova guests: `keystone`, an application
    credential of the guests' own; Zaqar is then its catalog's, unless `zaqar_url` names a
    noauth Zaqar. Keys are SecretStr (never shown); they are in the user-data because only the
    guest's user reads it.
    """

    zaqar_url: Annotated[str, Field(min_length=1)] | None = None
    zaqar_project_id: Annotated[str, Field(min_length=1)] | None = None
    swift_auth_url: Annotated[str, Field(min_length=1)] | None = None
    swift_user: Annotated[str, Field(min_length=1)] | None = None
    swift_key: SecretStr | None = None
    keystone: GuestKeystone | None = None
    backups_container: Annotated[str, Field(pattern=r"^[^/]{1,256}$")]
    queue_poll_interval: Annotated[float, Field(gt=0, le=10)] = 0.2

    @model_validator(mode="after")
    def _one_form(self) -> OpenStackBackends:
        if (self.zaqar_url is None) != (self.zaqar_project_id is None):
            raise ValueError("zaqar_url and zaqar_project_id go together")
        v1 = (self.swift_auth_url, self.swift_user, self.swift_key)
        if self.keystone is not None:
            if any(v is not None for v in v1):
                raise ValueError("keystone guests reach Swift through Keystone, not v1 credentials")
        elif not all(v is not None for v in v1) or self.zaqar_url is None:
            raise ValueError(
                "give keystone (an application credential), or zaqar_url, zaqar_project_id, "
                "swift_auth_url, swift_user and swift_key"
            )
        return self


class AwsBackends(DomainModel):
    """How a guest of the aws profile reaches SQS (its queues) and S3 (backups).

    The same bucket, prefixes and region as the control plane's (infra/aws/wiring.py), so
    queue names resolve to the same SQS queues and backup objects to the same S3 keys. No
    credentials of any kind: boto3's default chain finds them (the instance profile on EC2,
    through the metadata service); unknown keys, `aws_secret_access_key` included, are refused.
    """

    region: str
    # SQS queue `name` is `<queue_prefix><name>`, as the control plane's SqsQueue names it.
    queue_prefix: Annotated[str, Field(pattern=QUEUE_PREFIX_PATTERN)]
    bucket: str
    # The control plane's `blob_prefix`: backups are `<blob_prefix>blobs/<key>` in the bucket.
    blob_prefix: Annotated[str, Field(max_length=256)] = "backups/"
    # moto or an S3-compatible store (tests, private clouds); None is AWS's own endpoints.
    endpoint_url: EndpointUrl | None = None

    @field_validator("region")
    @classmethod
    def _region_is_a_name(cls, v: str) -> str:
        if re.fullmatch(AWS_REGION_PATTERN, v) is None:
            raise ValueError(f"{v!r} is not a region name (such as us-east-1)")
        return v

    @field_validator("bucket")
    @classmethod
    def _bucket_is_a_name(cls, v: str) -> str:
        if re.fullmatch(BUCKET_PATTERN, v) is None:
            raise ValueError(f"{v!r} is not a bucket name (3-63 letters, digits, '.', '_' or '-')")
        return v

    @field_validator("blob_prefix")
    @classmethod
    def _prefix_is_a_key_prefix(cls, v: str) -> str:
        if v.startswith("/") or re.search(r"[\x00-\x1f\\]", v):
            raise ValueError("a key prefix: no leading '/', control characters or backslashes")
        return v


class UserData(DomainModel):
    """The control plane's instructions to one guest agent."""

    instance_id: Uuid
    datastore_type: DatastoreManager
    datastore_version: Name
    command_queue: QueueName
    events_queue: QueueName
    secret: SecretStr = Field(description="base64 of the per-instance secret (>= 32 bytes)")
    profile: Profile = Profile.LOCAL
    local: LocalBackends | None = None
    openstack: OpenStackBackends | None = None
    aws: AwsBackends | None = None
    heartbeat_interval: Annotated[float, Field(gt=0, le=300)] = 1.0
    # A command older than this (by its timestamp) is refused as stale; its deadline still
    # applies when it is earlier.
    command_max_age: Annotated[float, Field(gt=0)] = 600.0
    max_clock_skew: Annotated[float, Field(ge=0)] = 60.0
    run_as: str | None = None
    # Normally from meta-data; user-data may pin them.
    address: IpAddress | None = None
    port: Port | None = None
    ram_mb: Annotated[int, Field(ge=16)] | None = None
    volume_path: Path | None = None
    # On SIGTERM (the server is shutting down) stop the datastore cleanly before exiting.
    stop_datastore_on_exit: bool = True

    @field_validator("secret")
    @classmethod
    def _secret_is_key_material(cls, v: SecretStr) -> SecretStr:
        decode_secret(v.get_secret_value())
        return v

    @model_validator(mode="after")
    def _backends_for_profile(self) -> UserData:
        if self.profile is Profile.LOCAL and self.local is None:
            raise ValueError("local: the local profile needs queue_path and blob_dir")
        if self.profile is Profile.OPENSTACK and self.openstack is None:
            raise ValueError("openstack: the openstack profile needs its Zaqar and Swift section")
        if self.profile is Profile.AWS and self.aws is None:
            raise ValueError("aws: the aws profile needs its SQS and S3 section")
        return self

    def secret_bytes(self) -> bytes:
        return decode_secret(self.secret.get_secret_value())


class MetaVolume(DomainModel):
    model_config = DomainModel.model_config | {"extra": "ignore"}

    mount_point: Path
    size_gb: Annotated[int, Field(ge=1)] | None = None
    soft_quota: bool = False


class MetaFlavor(DomainModel):
    model_config = DomainModel.model_config | {"extra": "ignore"}

    ram_mb: Annotated[int, Field(ge=1)]


class MetaData(DomainModel):
    """What the compute driver says about the server (unknown keys are ignored: the driver
    may say more than the agent needs)."""

    model_config = DomainModel.model_config | {"extra": "ignore"}

    instance_id: Uuid | None = None
    address: IpAddress | None = None
    flavor: MetaFlavor | None = None
    volume: MetaVolume | None = None


@dataclass(frozen=True)
class AgentConfig:
    """Everything the agent runs with: user-data, completed from meta-data."""

    user_data: UserData
    address: str
    port: int | None
    ram_mb: int
    volume_path: Path
    soft_quota_bytes: int | None  # the volume is a plain directory of this nominal size

    @property
    def instance_id(self) -> str:
        return self.user_data.instance_id


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserDataError(f"{what} {path} does not exist") from None
    except PermissionError:
        raise UserDataError(f"{what} {path} is not readable by this user") from None
    except (OSError, ValueError) as exc:
        raise UserDataError(f"{what} {path} is not valid JSON: {exc}") from None


def _validation_problem(what: str, exc: ValidationError) -> UserDataError:
    problems = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or what
        problems.append(f"{where}: {err['msg']}")  # err['input'] may be the secret: never shown
    return UserDataError(f"invalid {what}: " + "; ".join(problems))


def parse_user_data(data: Any) -> UserData:
    try:
        return UserData.model_validate(data)
    except ValidationError as exc:
        raise _validation_problem("user-data", exc) from None


def parse_meta_data(data: Any) -> MetaData:
    try:
        return MetaData.model_validate(data)
    except ValidationError as exc:
        raise _validation_problem("meta-data", exc) from None


def resolve_config(user_data: UserData, meta: MetaData | None) -> AgentConfig:
    """Merge user-data with meta-data; UserDataError names what neither provides."""
    meta = meta or MetaData()
    if meta.instance_id is not None and meta.instance_id != user_data.instance_id:
        raise UserDataError(
            f"meta-data is for instance {meta.instance_id}, user-data for {user_data.instance_id}"
        )
    address = user_data.address or meta.address
    ram_mb = user_data.ram_mb or (meta.flavor.ram_mb if meta.flavor else None)
    volume_path = user_data.volume_path or (meta.volume.mount_point if meta.volume else None)
    missing = [
        name
        for name, value in (("address", address), ("ram_mb", ram_mb), ("volume_path", volume_path))
        if value is None
    ]
    if missing:
        raise UserDataError(f"neither user-data nor meta-data gives {', '.join(missing)}")
    assert address is not None and ram_mb is not None and volume_path is not None
    quota = None
    if meta.volume is not None and meta.volume.soft_quota and meta.volume.size_gb:
        quota = meta.volume.size_gb * GIB
    return AgentConfig(
        user_data=user_data,
        address=address,
        port=user_data.port,
        ram_mb=ram_mb,
        volume_path=volume_path,
        soft_quota_bytes=quota,
    )


def load_agent_config(user_data_path: Path, meta_data_path: Path | None = None) -> AgentConfig:
    """Read the user-data file and the meta-data file (explicit, from the environment, or
    beside the user-data; optional when user-data is complete)."""
    user_data = parse_user_data(_read_json(user_data_path, "user-data"))
    explicit = meta_data_path is not None or bool(os.environ.get(META_DATA_ENV))
    path = meta_data_path or Path(
        os.environ.get(META_DATA_ENV) or user_data_path.with_name(META_DATA_FILE)
    )
    meta: MetaData | None = None
    if explicit or path.exists():
        meta = parse_meta_data(_read_json(path, "meta-data"))
    return resolve_config(user_data, meta)
