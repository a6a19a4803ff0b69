"""Ports: the interfaces services depend on. Adapters (local, openstack, aws) implement them.

Services import only this module (and models/rules); `infra/` wires concrete adapters per profile.
Every port has one contract test suite under tests/contract/ that every adapter must pass.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

JSON = dict[str, Any]

# Keys: '/'-separated segments of [A-Za-z0-9._-], no empty segment, no '..', at most 512 chars.
KEY_PATTERN = r"^(?!.*\.\.)[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$"
# Queue names: what SQS and Zaqar both accept.
QUEUE_NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"


# --------------------------------------------------------------------------- Clock
@runtime_checkable
class Clock(Protocol):
    """Time source; injectable so tests can move time by hand."""

    def now(self) -> datetime:
        """Current wall-clock time, timezone-aware UTC."""
        ...

    def time(self) -> float:
        """Current wall-clock time as a POSIX timestamp (seconds)."""
        ...

    def monotonic(self) -> float:
        """Monotonic seconds, for measuring intervals."""
        ...


# --------------------------------------------------------------------------- StateStore
@dataclass(frozen=True)
class Record:
    """One revision of a record. Revisions start at 1 and grow by exactly one per write."""

    key: str
    revision: int
    data: JSON


@dataclass(frozen=True)
class Lease:
    """A named, expiring exclusive claim (one healer per instance, one scheduler tick...)."""

    name: str
    owner: str
    expires_at: float  # POSIX seconds
    token: int  # fencing token: grows with each new holder


@runtime_checkable
class StateStore(Protocol):
    """Revisioned JSON records with compare-and-swap built only on create-if-absent (DESIGN §4)."""

    def get(self, key: str) -> Record | None:
        """Latest revision of `key`, or None. Raises CorruptDataError if it does not parse."""
        ...

    def put(self, key: str, data: JSON, expected_revision: int) -> Record:
        """Write revision `expected_revision + 1`. `expected_revision=0` creates the record.

        Raises ConflictError when that revision already exists (someone else wrote first).
        """
        ...

    def list(self, prefix: str = "") -> Iterator[str]:
        """Keys of live records starting with `prefix`, in lexical order."""
        ...

    def delete(self, key: str) -> None:
        """Remove a record and all its revisions. Deleting a missing key is not an error."""
        ...

    def acquire_lease(self, name: str, owner: str, ttl_seconds: float) -> Lease:
        """Take the lease, or renew it if `owner` already holds it. Raises LeaseHeldError."""
        ...

    def renew_lease(self, lease: Lease, ttl_seconds: float) -> Lease:
        """Extend a held lease. Raises LeaseLostError if it expired and was taken."""
        ...

    def release_lease(self, lease: Lease) -> None:
        """Give the lease up. Releasing a lease someone else now holds is a no-op."""
        ...


# --------------------------------------------------------------------------- BlobStore
@dataclass(frozen=True)
class BlobInfo:
    key: str
    size: int
    sha256: str  # hex digest of the stored bytes
    metadata: dict[str, str] = field(default_factory=dict)
    modified: datetime | None = None


@runtime_checkable
class BlobStore(Protocol):
    """Large immutable objects (backups, logs), streamed in and out, never buffered whole."""

    def put(
        self, key: str, chunks: Iterable[bytes], metadata: dict[str, str] | None = None
    ) -> BlobInfo:
        """Stream `chunks` into `key` (multipart when large). On any error nothing is left."""
        ...

    def get(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """Stream the object's bytes. Raises NotFoundError."""
        ...

    def head(self, key: str) -> BlobInfo:
        """Size, sha256 and metadata. Raises NotFoundError."""
        ...

    def list(self, prefix: str = "") -> Iterator[BlobInfo]: ...

    def delete(self, key: str) -> None:
        """Remove the object; a missing key is not an error."""
        ...


# --------------------------------------------------------------------------- Queue
@dataclass(frozen=True)
class Message:
    id: str
    body: JSON
    receipt: str  # handle for ack / visibility changes; changes with each receive
    receive_count: int
    sent_at: float


@runtime_checkable
class Queue(Protocol):
    """At-least-once message queues: visibility timeout, delay, redelivery, dead-letter."""

    def ensure_queue(
        self, name: str, *, max_receives: int | None = None, dead_letter_queue: str | None = None
    ) -> None:
        """Create the queue if missing. After `max_receives` receives a message moves to the DLQ."""
        ...

    def send(self, queue: str, body: JSON, delay_seconds: float = 0) -> str:
        """Enqueue one message; returns its id."""
        ...

    def send_batch(
        self, queue: str, bodies: Sequence[JSON], delay_seconds: float = 0
    ) -> list[str]: ...

    def receive(
        self,
        queue: str,
        max_messages: int = 1,
        visibility_timeout: float = 30,
        wait_seconds: float = 0,
    ) -> list[Message]:
        """Claim up to `max_messages` visible messages, hidden for `visibility_timeout` seconds."""
        ...

    def ack(self, queue: str, receipt: str) -> None:
        """Delete a received message. A stale receipt (message redelivered since) is ignored."""
        ...

    def change_visibility(self, queue: str, receipt: str, visibility_timeout: float) -> None:
        """Extend (or end, with 0) the claim on a received message."""
        ...

    def purge(self, queue: str) -> None: ...

    def count(self, queue: str) -> int:
        """Messages in the queue, visible or not (approximate on some backends)."""
        ...


# --------------------------------------------------------------------------- Invoker
@runtime_checkable
class Invoker(Protocol):
    """Calls a function by resource name (`fn:provision.create_server`) with a JSON payload."""

    def invoke(self, resource: str, payload: Any, *, idempotency_key: str | None = None) -> Any: ...


# --------------------------------------------------------------------------- Compute
class ServerStatus(StrEnum):
    """Nova's words for a server's state (EC2's map onto them: running=ACTIVE, stopped=SHUTOFF)."""

    BUILD = "BUILD"
    ACTIVE = "ACTIVE"
    SHUTOFF = "SHUTOFF"
    ERROR = "ERROR"


class FlavorLike(Protocol):
    """What a compute adapter needs from a flavor; `shared.models.Flavor` and `FlavorSpec` fit."""

    @property
    def ram_mb(self) -> int: ...

    @property
    def vcpus(self) -> int: ...


@dataclass(frozen=True)
class FlavorSpec:
    """The resources a server is given: RAM in MiB and virtual CPUs."""

    ram_mb: int
    vcpus: int

    def __post_init__(self) -> None:
        if self.ram_mb < 1 or self.vcpus < 1:
            raise ValueError(f"flavor needs ram_mb >= 1 and vcpus >= 1, got {self}")

    @classmethod
    def of(cls, flavor: FlavorLike) -> FlavorSpec:
        return cls(ram_mb=int(flavor.ram_mb), vcpus=int(flavor.vcpus))


@dataclass(frozen=True)
class ServerInfo:
    """One server (VM, EC2 instance, or local process tree) that hosts one database instance.

    `volume_kind` is a `shared.models.volume.VolumeKind` value ("loop", "directory", "cinder",
    "ebs"); `volume_path` is where the guest finds its data volume mounted. `limits_enforced`
    says whether the flavor's RAM and CPU are enforced; `limits_note` says why not when they
    are not. `agent_alive` is the adapter's own view of the guest agent process (None when the
    adapter cannot see inside the guest); heartbeats are the authority on guest health.
    `details` holds adapter-specific facts for operators (image path, loop device, cgroups...).
    """

    server_id: str
    instance_id: str
    status: ServerStatus
    address: str
    zone: str
    flavor: FlavorSpec
    volume_id: str
    volume_gb: int
    volume_kind: str
    volume_path: str
    limits_enforced: bool
    limits_note: str | None
    agent_pid: int | None
    agent_alive: bool | None
    created_at: datetime
    status_reason: str | None = None
    details: dict[str, str] = field(default_factory=dict)


@runtime_checkable
class Compute(Protocol):
    """Servers for database instances: one per instance, each with its own data volume, address,
    zone and resource limits, booting the guest agent configured from `user_data`.

    Every call is safe to repeat (engine steps are redelivered). Calls naming an instance that
    has no server raise NotFoundError, except `delete_server`/`reap`, which are no-ops then.
    Requests that can never succeed as asked raise ComputeRequestError (a ValueError); failures
    of the underlying cloud raise ComputeError, and a failed create leaves nothing behind.
    """

    def zones(self) -> list[str]:
        """The availability zones servers can be placed in, in configured order."""
        ...

    def create_server(
        self,
        instance_id: str,
        flavor: FlavorLike,
        volume_gb: int,
        zone: str | None,
        user_data: JSON,
        *,
        volume_from: str | None = None,
    ) -> ServerInfo:
        """Build and boot the server for `instance_id` and return it (status ACTIVE).

        `zone=None` lets the adapter choose (the least used zone). `volume_from` attaches a
        volume kept by `delete_server(keep_volume=True)` (its `volume_id`) instead of a new one,
        grown to `volume_gb` if smaller. If the server already exists it is returned as it is.
        `user_data` reaches the guest agent as a file only it can read; it may hold secrets.
        """
        ...

    def get_server(self, instance_id: str) -> ServerInfo | None: ...

    def list_servers(self) -> list[ServerInfo]: ...

    def stop_server(self, instance_id: str) -> ServerInfo:
        """Stop the agent and the datastore (gracefully, then by force); the volume stays."""
        ...

    def start_server(self, instance_id: str) -> ServerInfo:
        """Boot a stopped (or crashed) server again; a running one is left alone."""
        ...

    def reboot_server(self, instance_id: str) -> ServerInfo:
        """Stop then start: every process of the server is replaced."""
        ...

    def delete_server(self, instance_id: str, *, keep_volume: bool = False) -> None:
        """Remove the server and everything it holds (processes, address, limits, volume).

        With `keep_volume` the volume survives, detached, under the server's `volume_id`.
        """
        ...

    def resize_volume(self, instance_id: str, new_gb: int) -> ServerInfo:
        """Grow the data volume to `new_gb` (never shrink), keeping its data; may stop the
        server for the duration and restarts it if it was running."""
        ...

    def resize_flavor(self, instance_id: str, flavor: FlavorLike) -> ServerInfo:
        """Give the server the RAM and CPU of `flavor`."""
        ...

    def adopt(self) -> list[ServerInfo]:
        """After a control-plane restart: take charge of the servers that already exist and
        report each one's state (`agent_alive`); running servers are not disturbed."""
        ...

    def orphans(self, known_instance_ids: Iterable[str]) -> list[ServerInfo]:
        """Servers this adapter made whose instance is not among `known_instance_ids`."""
        ...

    def reap(self, instance_id: str) -> None:
        """Delete an orphan server, volume included."""
        ...


# --------------------------------------------------------------------------- Workflows
@runtime_checkable
class Workflows(Protocol):
    """Starts and answers state-machine executions (the embedded engine, or Step Functions).

    `state_machine` is a definition's name in state_machines/ without `.asl.json`
    (e.g. "provision_instance"). `name` makes a start idempotent: starting the same name twice
    returns the first execution's ARN.
    """

    def start(self, state_machine: str, input_value: JSON, *, name: str | None = None) -> str:
        """Start an execution; returns its ARN."""
        ...

    def describe(self, execution_arn: str) -> JSON:
        """Step Functions' DescribeExecution shape: status, input, output, error, cause, dates."""
        ...

    def send_task_success(self, task_token: str, output: JSON) -> None: ...

    def send_task_failure(self, task_token: str, error: str, cause: str) -> None: ...

    def send_task_heartbeat(self, task_token: str) -> None: ...


# --------------------------------------------------------------------------- Identity
@dataclass(frozen=True)
class TokenClaims:
    """Who a token speaks for, in which project, until when (epoch seconds)."""

    user_id: str
    user_name: str
    project_id: str
    project_name: str
    roles: tuple[str, ...]
    issued_at: float
    expires_at: float
    audit_id: str
    methods: tuple[str, ...] = ("password",)

    def expires_at_iso(self) -> str:
        return _iso(self.expires_at)

    def issued_at_iso(self) -> str:
        return _iso(self.issued_at)


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "Z"


@runtime_checkable
class TokenValidator(Protocol):
    """Turns a caller's token into its claims: our own signed tokens (local profile) or
    Keystone's (OpenStack profile)."""

    def validate(self, token: str) -> TokenClaims:
        """The token's claims. Raises AuthenticationError when the token is forged,
        malformed, unknown or expired; IdentityUnavailableError when the identity service
        cannot answer."""
        ...
