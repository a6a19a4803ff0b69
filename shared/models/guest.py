"""Messages between the control plane and the guest agent beside each database (DESIGN §6):
commands to the guest, its results, and its heartbeats.

Every message carries its `kind`, the `instance_id`, a per-sender `sequence` number, a
`timestamp` and an HMAC-SHA256 `signature` under the per-instance secret. The signature
covers the message's canonical JSON (`canonical_json`): the model dumped to JSON types,
without `signature`, keys sorted, no whitespace, UTF-8. Because `kind` and `instance_id`
are inside it, a signature cannot be moved to another message type or instance. Checking
sequence numbers and timestamps (replay, staleness) is the receiver's job.

Sender and receiver must run the same message schema: a field one side does not know
fails validation (`extra="forbid"`) rather than verifying differently.

Free-form `args` and `result` refuse plaintext secrets (see `reject_plaintext_secrets`):
a password goes to the guest sealed under the instance's key as `encrypted_password`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, Field, TypeAdapter, model_validator

from shared.models.base import (
    DomainModel,
    SecretFreeJson,
    SecretFreeJsonObject,
    UtcDatetime,
    Uuid,
)
from shared.models.instance import ServiceStatus

# HMAC-SHA256 wants a key of at least its output size to reach its full strength.
MIN_SECRET_BYTES = 32
SIGNATURE_FIELD = "signature"


def canonical_json(message: BaseModel) -> bytes:
    """The bytes a message's signature covers: its JSON without `signature`, keys sorted,
    no whitespace, UTF-8 (non-ASCII characters kept as themselves)."""
    data = message.model_dump(mode="json", exclude={SIGNATURE_FIELD})
    text = json.dumps(
        data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return text.encode("utf-8")


def _mac(secret: bytes, payload: bytes) -> str:
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(f"secret: at least {MIN_SECRET_BYTES} bytes are needed, got {len(secret)}")
    return hmac.new(secret, payload, hashlib.sha256).hexdigest()


class SignedMessage(DomainModel):
    """What every guest message shares: identity, ordering, time and signature."""

    instance_id: Uuid
    sequence: int = Field(ge=0)
    timestamp: UtcDatetime
    signature: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = None

    def canonical_json(self) -> bytes:
        return canonical_json(self)

    def sign(self, secret: bytes) -> Self:
        """A copy carrying the HMAC-SHA256 of its canonical JSON under `secret` (at least
        32 bytes, else ValueError)."""
        return self.replace(signature=_mac(secret, self.canonical_json()))

    def verify(self, secret: bytes) -> bool:
        """True only if the message is signed and the signature matches under `secret`
        (constant-time comparison). A secret shorter than 32 bytes raises ValueError."""
        if self.signature is None:
            return False
        return hmac.compare_digest(self.signature, _mac(secret, self.canonical_json()))


class GuestCommandName(StrEnum):
    """What the control plane can ask a guest to do (after Trove's guest API)."""

    PREPARE = "prepare"
    CREATE_DATABASE = "create_database"
    DELETE_DATABASE = "delete_database"
    LIST_DATABASES = "list_databases"
    CREATE_USER = "create_user"
    UPDATE_USER = "update_user"
    DELETE_USER = "delete_user"
    LIST_USERS = "list_users"
    GRANT_ACCESS = "grant_access"
    REVOKE_ACCESS = "revoke_access"
    LIST_ACCESS = "list_access"
    ENABLE_ROOT = "enable_root"
    DISABLE_ROOT = "disable_root"
    IS_ROOT_ENABLED = "is_root_enabled"
    UPDATE_OVERRIDES = "update_overrides"
    APPLY_OVERRIDES = "apply_overrides"
    RESTART = "restart"
    STOP = "stop"
    START = "start"
    BACKUP = "backup"
    RESTORE = "restore"
    GET_REPLICATION_SNAPSHOT = "get_replication_snapshot"
    ENABLE_AS_PRIMARY = "enable_as_primary"
    ATTACH_REPLICA = "attach_replica"
    DETACH_REPLICA = "detach_replica"
    MAKE_READ_ONLY = "make_read_only"
    PROMOTE = "promote"
    DEMOTE = "demote"
    GET_LATEST_TXN = "get_latest_txn"
    WAIT_FOR_TXN = "wait_for_txn"
    RESIZE_FS = "resize_fs"
    GET_VOLUME_INFO = "get_volume_info"
    # Trove's guest logs: list them; enable / disable / publish / discard one.
    GUEST_LOG_LIST = "guest_log_list"
    GUEST_LOG_ACTION = "guest_log_action"


class GuestCommand(SignedMessage):
    """A command for one instance's guest.

    `task_token` is set when a state machine waits for the result (`.waitForTaskToken`):
    the guest echoes it in its result, and the function consuming results answers the
    execution with it. Past `deadline` the guest drops the command unexecuted.
    """

    kind: Literal["command"] = "command"
    id: Uuid
    name: GuestCommandName
    args: SecretFreeJsonObject = Field(default_factory=dict)
    deadline: UtcDatetime | None = None
    task_token: Annotated[str, Field(min_length=1, max_length=2048)] | None = None

    @model_validator(mode="after")
    def _deadline_after_timestamp(self) -> GuestCommand:
        if self.deadline is not None and self.deadline <= self.timestamp:
            raise ValueError("deadline: must be later than timestamp")
        return self

    def is_expired(self, now: datetime) -> bool:
        return self.deadline is not None and now >= self.deadline


class GuestError(DomainModel):
    """Why a command failed: an error type the control plane can branch on, and a message
    a person can act on."""

    type: str = Field(min_length=1, max_length=255)
    message: str


class GuestResult(SignedMessage):
    """The outcome of one command: `result` when `ok`, `error` otherwise."""

    kind: Literal["result"] = "result"
    command_id: Uuid
    command: GuestCommandName
    ok: bool
    result: SecretFreeJson = None
    error: GuestError | None = None
    task_token: Annotated[str, Field(min_length=1, max_length=2048)] | None = None

    @model_validator(mode="after")
    def _outcome_consistent(self) -> GuestResult:
        if self.ok and self.error is not None:
            raise ValueError("error: a successful result carries no error")
        if not self.ok and self.error is None:
            raise ValueError("error: a failed result must say why")
        if not self.ok and self.result is not None:
            raise ValueError("result: a failed result carries no result")
        return self


class ReplicationRole(StrEnum):
    STANDALONE = "standalone"
    PRIMARY = "primary"
    REPLICA = "replica"


class ReplicationState(DomainModel):
    """Where a datastore stands in replication. `position` is the datastore's own notion
    (MariaDB GTID set, PostgreSQL LSN, Redis offset); `lag_seconds` is a replica's delay
    behind `source_instance_id`."""

    role: ReplicationRole = ReplicationRole.STANDALONE
    position: str | None = None
    lag_seconds: float | None = Field(default=None, ge=0)
    source_instance_id: Uuid | None = None

    @model_validator(mode="after")
    def _source_only_for_replicas(self) -> ReplicationState:
        if self.role is not ReplicationRole.REPLICA and self.source_instance_id is not None:
            raise ValueError("source_instance_id: only a replica has a source")
        return self


class Heartbeat(SignedMessage):
    """A guest's periodic report: the datastore's health, disk use and replication."""

    kind: Literal["heartbeat"] = "heartbeat"
    agent_version: str = Field(min_length=1, max_length=64)
    datastore_status: ServiceStatus
    disk_used_bytes: int = Field(ge=0)
    disk_total_bytes: int = Field(ge=0)
    replication: ReplicationState = Field(default_factory=ReplicationState)
    # What the health probe found, for operators ("process 1234 exited without being stopped").
    datastore_detail: str | None = Field(default=None, max_length=500)
    # Commands the guest refused since its volume was made, per reason (forged, replayed...).
    rejected_commands: dict[str, Annotated[int, Field(ge=0)]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _disk_consistent(self) -> Heartbeat:
        if self.disk_used_bytes > self.disk_total_bytes:
            raise ValueError(
                f"disk_used_bytes: {self.disk_used_bytes} exceeds disk_total_bytes "
                f"{self.disk_total_bytes}"
            )
        return self


GuestMessage = Annotated[GuestCommand | GuestResult | Heartbeat, Field(discriminator="kind")]
_GUEST_MESSAGE: TypeAdapter[GuestCommand | GuestResult | Heartbeat] = TypeAdapter(GuestMessage)


def parse_guest_message(
    data: str | bytes | Mapping[str, Any],
) -> GuestCommand | GuestResult | Heartbeat:
    """Validate a queue message body (JSON text or decoded) into the message its `kind`
    names. Raises pydantic.ValidationError. Does not verify the signature."""
    if isinstance(data, str | bytes):
        return _GUEST_MESSAGE.validate_json(data)
    return _GUEST_MESSAGE.validate_python(data)
