"""Clusters (e.g. a Galera cluster: nodes that are all members) and replica sets (one
primary and its replicas). Topology rules (odd Galera sizes, no replica of a replica,
minimum sizes) are shared/rules' job; these models hold only self-consistent facts.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field, model_validator

from shared.models.base import DomainModel, Name, ProjectId, UtcDatetime, Uuid
from shared.models.datastore import DatastoreRef


class ClusterStatus(StrEnum):
    """The cluster as a whole; DEGRADED means serving, with a node missing or failed."""

    BUILD = "BUILD"
    ACTIVE = "ACTIVE"
    DEGRADED = "DEGRADED"
    ERROR = "ERROR"
    SHUTDOWN = "SHUTDOWN"


class ClusterTask(StrEnum):
    """The action under way on a cluster (Trove's cluster task names; HEALING is ours)."""

    NONE = "NONE"
    BUILDING_INITIAL = "BUILDING_INITIAL"
    DELETING = "DELETING"
    GROWING_CLUSTER = "GROWING_CLUSTER"
    SHRINKING_CLUSTER = "SHRINKING_CLUSTER"
    RESTARTING_CLUSTER = "RESTARTING_CLUSTER"
    UPGRADING_CLUSTER = "UPGRADING_CLUSTER"
    HEALING = "HEALING"


class NodeRole(StrEnum):
    MEMBER = "member"
    PRIMARY = "primary"
    REPLICA = "replica"
    ARBITER = "arbiter"


class ClusterNode(DomainModel):
    """One instance of a cluster, its role and the availability zone it was placed in."""

    instance_id: Uuid
    role: NodeRole = NodeRole.MEMBER
    availability_zone: str | None = None


class Cluster(DomainModel):
    id: Uuid
    project_id: ProjectId
    name: Name
    datastore: DatastoreRef
    status: ClusterStatus = ClusterStatus.BUILD
    task: ClusterTask = ClusterTask.NONE
    task_execution_arn: str | None = None
    nodes: list[ClusterNode] = Field(min_length=1)
    created: UtcDatetime
    updated: UtcDatetime

    @model_validator(mode="after")
    def _nodes_unique(self) -> Cluster:
        ids = [n.instance_id for n in self.nodes]
        if len(set(ids)) != len(ids):
            raise ValueError("nodes: an instance appears in two nodes")
        return self

    def zones(self) -> dict[str | None, int]:
        """How many nodes each availability zone holds (for spreading new nodes)."""
        counts: dict[str | None, int] = {}
        for node in self.nodes:
            counts[node.availability_zone] = counts.get(node.availability_zone, 0) + 1
        return counts


class FailoverPolicy(StrEnum):
    """AUTOMATIC: a failed primary is fenced and its most advanced replica promoted.
    MANUAL: the failure is reported and an operator promotes."""

    AUTOMATIC = "automatic"
    MANUAL = "manual"


class ReplicaSet(DomainModel):
    """A primary and its replicas. `epoch` grows by one at every failover, so a message from
    a fenced former primary (carrying an older epoch) can be told apart and ignored."""

    id: Uuid
    project_id: ProjectId
    primary_id: Uuid
    replica_ids: list[Uuid] = Field(default_factory=list)
    failover_policy: FailoverPolicy = FailoverPolicy.AUTOMATIC
    epoch: int = Field(default=0, ge=0)
    created: UtcDatetime
    updated: UtcDatetime

    @model_validator(mode="after")
    def _members_consistent(self) -> ReplicaSet:
        if self.primary_id in self.replica_ids:
            raise ValueError("replica_ids: the primary cannot also be a replica")
        if len(set(self.replica_ids)) != len(self.replica_ids):
            raise ValueError("replica_ids: a replica is listed twice")
        return self
