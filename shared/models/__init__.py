"""Domain models (pydantic v2): what the services store in the StateStore, what guests and
the control plane exchange, and what the API shapes into Trove's JSON.

One module per resource; the public names are re-exported here.
"""

from shared.models.backup import Backup, BackupChainError, BackupStatus
from shared.models.base import (
    DomainModel,
    EncryptedBlob,
    IpAddress,
    SecretFreeJson,
    SecretFreeJsonObject,
    UtcDatetime,
    Uuid,
    reject_plaintext_secrets,
)
from shared.models.cluster import (
    Cluster,
    ClusterNode,
    ClusterStatus,
    ClusterTask,
    FailoverPolicy,
    NodeRole,
    ReplicaSet,
)
from shared.models.configuration import (
    Configuration,
    ConfigurationParameter,
    ConfigValue,
    ParameterType,
)
from shared.models.database import Database, User
from shared.models.datastore import Datastore, DatastoreManager, DatastoreRef, DatastoreVersion
from shared.models.execution import Execution, ExecutionStatus
from shared.models.flavor import Flavor
from shared.models.guest import (
    GuestCommand,
    GuestCommandName,
    GuestError,
    GuestMessage,
    GuestResult,
    Heartbeat,
    ReplicationRole,
    ReplicationState,
    SignedMessage,
    canonical_json,
    parse_guest_message,
)
from shared.models.instance import (
    Address,
    AddressType,
    Fault,
    Instance,
    InstanceStatus,
    InstanceTask,
    ServiceStatus,
)
from shared.models.volume import Volume, VolumeKind

__all__ = [
    "Address",
    "AddressType",
    "Backup",
    "BackupChainError",
    "BackupStatus",
    "Cluster",
    "ClusterNode",
    "ClusterStatus",
    "ClusterTask",
    "ConfigValue",
    "Configuration",
    "ConfigurationParameter",
    "Database",
    "Datastore",
    "DatastoreManager",
    "DatastoreRef",
    "DatastoreVersion",
    "DomainModel",
    "EncryptedBlob",
    "Execution",
    "ExecutionStatus",
    "FailoverPolicy",
    "Fault",
    "Flavor",
    "GuestCommand",
    "GuestCommandName",
    "GuestError",
    "GuestMessage",
    "GuestResult",
    "Heartbeat",
    "Instance",
    "InstanceStatus",
    "InstanceTask",
    "IpAddress",
    "NodeRole",
    "ParameterType",
    "ReplicaSet",
    "ReplicationRole",
    "ReplicationState",
    "SecretFreeJson",
    "SecretFreeJsonObject",
    "ServiceStatus",
    "SignedMessage",
    "User",
    "UtcDatetime",
    "Uuid",
    "Volume",
    "VolumeKind",
    "canonical_json",
    "parse_guest_message",
    "reject_plaintext_secrets",
]
