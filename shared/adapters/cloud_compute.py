"""What the cloud compute adapters (Nova + Cinder, EC2 + EBS) do alike once their servers exist.

Both keep everything needed to find a server in the cloud itself (names, tags, metadata), so a
restarted control plane has nothing to take charge of: `adopt` is reporting the servers,
`orphans` is that report minus the known instances, `reap` is a delete with the volume. Each
adapter supplies `list_servers` and `delete_server`; `cloud_flavor` is their common lookup of a
troveless flavor's cloud flavor (Nova flavor id, EC2 instance type).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping

from shared.errors import ComputeRequestError
from shared.ports import FlavorSpec, ServerInfo


def cloud_flavor(
    instance_id: str, flavors: Mapping[FlavorSpec, str], spec: FlavorSpec, kind: str
) -> str:
    """The cloud's flavor (`kind` names it in the error: "Nova flavor", "instance type")
    configured for `spec`; refused before any cloud call when there is none."""
    try:
        return flavors[spec]
    except KeyError:
        raise ComputeRequestError(
            instance_id, f"no {kind} configured for {spec.ram_mb} MiB / {spec.vcpus} vCPU"
        ) from None


class CloudServers(ABC):
    """adopt / orphans / reap for an adapter whose servers the cloud keeps and labels."""

    @abstractmethod
    def list_servers(self) -> list[ServerInfo]: ...

    @abstractmethod
    def delete_server(self, instance_id: str, *, keep_volume: bool = False) -> None: ...

    def adopt(self) -> list[ServerInfo]:
        """The cloud runs the servers whatever the control plane does: adopting is reporting
        them, each as the cloud sees it (`agent_alive` is None: heartbeats are the authority).
        A create interrupted half-way is reported as it was left; delete_server or reap
        removes it with its volume."""
        return self.list_servers()

    def orphans(self, known_instance_ids: Iterable[str]) -> list[ServerInfo]:
        known = set(known_instance_ids)
        return [s for s in self.list_servers() if s.instance_id not in known]

    def reap(self, instance_id: str) -> None:
        self.delete_server(instance_id, keep_volume=False)
