"""An in-memory InstanceService for route tests: the service contract, no workflows."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from shared.errors import ActionInProgressError, NotFoundError, RequestError
from shared.models.datastore import DatastoreRef
from shared.models.instance import Address, Instance, InstanceStatus, InstanceTask
from shared.models.volume import Volume, VolumeKind

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@dataclass
class StubInstanceService:
    instances: dict[str, Instance] = field(default_factory=dict)
    calls: list[tuple[Any, ...]] = field(default_factory=list)
    created: list[Any] = field(default_factory=list)

    def add(self, project_id: str, name: str, **changes: Any) -> Instance:
        instance = Instance(
            id=str(uuid.uuid4()),
            project_id=project_id,
            name=name,
            flavor_id="2",
            volume=Volume(kind=VolumeKind.LOOP, size_gb=2, used_gb=0.25),
            datastore=DatastoreRef(type="mariadb", version="10.11"),
            addresses=[Address(address="127.10.0.7")],
            port=3306,
            created=NOW,
            updated=NOW,
            **changes,
        )
        self.instances[instance.id] = instance
        return instance

    def create(self, project_id: str, request: Any) -> Instance:
        if request.volume_size_gb > 100:
            raise RequestError("instance.volume.size", "at most 100 GB", status=400)
        self.created.append(request)
        return self.add(project_id, request.name)

    def get(self, project_id: str, instance_id: str) -> Instance:
        found = self.instances.get(instance_id)
        if found is None or found.project_id != project_id:
            raise NotFoundError(instance_id, "instance")
        return found

    def list(self, project_id: str) -> list[Instance]:
        return [i for i in self.instances.values() if i.project_id == project_id]

    def update(self, project_id: str, instance_id: str, *, name: str | None = None) -> Instance:
        found = self.get(project_id, instance_id)
        changed = found.replace(name=name) if name is not None else found
        self.instances[instance_id] = changed
        return changed

    def delete(self, project_id: str, instance_id: str) -> None:
        self.get(project_id, instance_id)
        self.calls.append(("delete", instance_id))

    def _act(self, name: str, project_id: str, instance_id: str, *args: Any) -> None:
        found = self.get(project_id, instance_id)
        if found.task is not InstanceTask.NONE:
            raise ActionInProgressError(instance_id, found.task.value)
        self.calls.append((name, instance_id, *args))

    def restart(self, project_id: str, instance_id: str) -> None:
        self._act("restart", project_id, instance_id)

    def resize_flavor(self, project_id: str, instance_id: str, flavor_id: str) -> None:
        self._act("resize_flavor", project_id, instance_id, flavor_id)

    def resize_volume(self, project_id: str, instance_id: str, size_gb: int) -> None:
        self._act("resize_volume", project_id, instance_id, size_gb)

    def reset_status(self, project_id: str, instance_id: str) -> None:
        self.get(project_id, instance_id)
        self.calls.append(("reset_status", instance_id))


def busy(service: StubInstanceService, project_id: str) -> Instance:
    return service.add(project_id, "busy", status=InstanceStatus.RESIZE, task=InstanceTask.RESIZING)
