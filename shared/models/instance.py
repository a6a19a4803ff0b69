"""Database instances: the record each service reads and writes, and the statuses Trove's
API shows for them.

Trove reports two statuses. `status` (InstanceStatus) is the instance as a whole: what is
being done to it (BUILD, RESIZE, BACKUP...) or how it ended (ACTIVE, ERROR). The
`operating_status` is the database service inside it, as the guest last reported it
(ServiceStatus); Trove stores its internal name and shows `ServiceStatus.api_status`.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field, model_validator

from shared.models.base import (
    DomainModel,
    EncryptedBlob,
    IpAddress,
    Name,
    Port,
    ProjectId,
    UtcDatetime,
    Uuid,
)
from shared.models.datastore import DatastoreRef
from shared.models.volume import Volume


class InstanceStatus(StrEnum):
    """Trove's public instance statuses (the `status` field of its API)."""

    BUILD = "BUILD"
    ACTIVE = "ACTIVE"
    HEALTHY = "HEALTHY"
    BLOCKED = "BLOCKED"
    FAILED = "FAILED"
    ERROR = "ERROR"
    REBOOT = "REBOOT"
    RESIZE = "RESIZE"
    BACKUP = "BACKUP"
    SHUTDOWN = "SHUTDOWN"
    RESTART_REQUIRED = "RESTART_REQUIRED"
    PROMOTE = "PROMOTE"
    EJECT = "EJECT"
    UPGRADE = "UPGRADE"
    DETACH = "DETACH"
    LOGGING = "LOGGING"
    UNKNOWN = "UNKNOWN"


class ServiceStatus(StrEnum):
    """Status of the database service inside an instance, as the guest reports it
    (Trove's internal service-status names). `api_status` is what Trove's API shows."""

    NEW = "NEW"
    BUILDING = "BUILDING"
    INSTANCE_READY = "INSTANCE_READY"
    RUNNING = "RUNNING"
    HEALTHY = "HEALTHY"
    BLOCKED = "BLOCKED"
    PAUSED = "PAUSED"
    SHUTDOWN = "SHUTDOWN"
    CRASHED = "CRASHED"
    FAILED = "FAILED"
    FAILED_TIMEOUT_GUESTAGENT = "FAILED_TIMEOUT_GUESTAGENT"
    PROMOTING = "PROMOTING"
    EJECTING = "EJECTING"
    LOGGING = "LOGGING"
    RESTART_REQUIRED = "RESTART_REQUIRED"
    RESTARTING = "RESTARTING"
    UPGRADING = "UPGRADING"
    DELETED = "DELETED"
    UNKNOWN = "UNKNOWN"

    @property
    def api_status(self) -> str:
        """The string Trove's API shows as `operating_status` for this service status."""
        return _SERVICE_API_STATUS[self]


_SERVICE_API_STATUS: dict[ServiceStatus, str] = {
    ServiceStatus.NEW: "NEW",
    ServiceStatus.BUILDING: "BUILD",
    ServiceStatus.INSTANCE_READY: "BUILD",
    ServiceStatus.RUNNING: "ACTIVE",
    ServiceStatus.HEALTHY: "HEALTHY",
    ServiceStatus.BLOCKED: "BLOCKED",
    ServiceStatus.PAUSED: "SHUTDOWN",
    ServiceStatus.SHUTDOWN: "SHUTDOWN",
    ServiceStatus.CRASHED: "SHUTDOWN",
    ServiceStatus.FAILED: "FAILED",
    ServiceStatus.FAILED_TIMEOUT_GUESTAGENT: "ERROR",
    ServiceStatus.PROMOTING: "PROMOTE",
    ServiceStatus.EJECTING: "EJECT",
    ServiceStatus.LOGGING: "LOGGING",
    ServiceStatus.RESTART_REQUIRED: "RESTART_REQUIRED",
    ServiceStatus.RESTARTING: "RESTARTING",
    ServiceStatus.UPGRADING: "UPGRADING",
    ServiceStatus.DELETED: "DELETED",
    ServiceStatus.UNKNOWN: "ERROR",
}


class InstanceTask(StrEnum):
    """The action under way on an instance (Trove's task names; HEALING is ours)."""

    NONE = "NONE"
    BUILDING = "BUILDING"
    DELETING = "DELETING"
    REBOOTING = "REBOOTING"
    RESIZING = "RESIZING"
    PROMOTING = "PROMOTING"
    EJECTING = "EJECTING"
    DETACHING = "DETACHING"
    UPDATING = "UPDATING"
    UPGRADING = "UPGRADING"
    HEALING = "HEALING"
    BACKING_UP = "BACKING_UP"


class AddressType(StrEnum):
    PRIVATE = "private"
    PUBLIC = "public"


class Address(DomainModel):
    """One address of an instance, as in Trove's `addresses` list."""

    address: IpAddress
    type: AddressType = AddressType.PRIVATE
    network_id: str | None = None


class Fault(DomainModel):
    """Why an instance is in ERROR (Trove's `fault`): a message a person can act on, the
    technical details, and when it happened."""

    message: str = Field(min_length=1)
    details: str | None = None
    created: UtcDatetime


class Instance(DomainModel):
    """A database instance, as stored under `instances/<id>`.

    `task` with `task_execution_arn` says which action (and which state-machine execution)
    is under way; `fault` says why the last one failed. `encrypted_guest_secret` is the
    per-instance key that signs guest messages, sealed by the master key: it is never
    held here in plaintext.
    """

    id: Uuid
    project_id: ProjectId
    name: Name
    status: InstanceStatus = InstanceStatus.BUILD
    operating_status: ServiceStatus = ServiceStatus.NEW
    operating_status_updated: UtcDatetime | None = None
    task: InstanceTask = InstanceTask.NONE
    task_execution_arn: str | None = None
    fault: Fault | None = None
    flavor_id: str = Field(min_length=1, max_length=255)
    volume: Volume
    datastore: DatastoreRef
    availability_zone: str | None = None
    addresses: list[Address] = Field(default_factory=list)
    port: Port | None = None
    configuration_id: Uuid | None = None
    replica_of: Uuid | None = None
    replicas: list[Uuid] = Field(default_factory=list)
    cluster_id: Uuid | None = None
    server_id: str | None = None
    encrypted_guest_secret: EncryptedBlob | None = None
    created: UtcDatetime
    updated: UtcDatetime

    @model_validator(mode="after")
    def _replication_consistent(self) -> Instance:
        if self.replica_of == self.id:
            raise ValueError("replica_of: an instance cannot be a replica of itself")
        if self.id in self.replicas:
            raise ValueError("replicas: an instance cannot be its own replica")
        if len(set(self.replicas)) != len(self.replicas):
            raise ValueError("replicas: an instance is listed twice")
        return self

    @property
    def is_replica(self) -> bool:
        return self.replica_of is not None
