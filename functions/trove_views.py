"""Domain models shaped as Trove v1.0's JSON (what python-troveclient and openstacksdk read).

`ApiUrls` carries the addresses the links point at, taken from the request (the host the
client used), so links work through whatever address or proxy the client came by.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.models.datastore import Datastore, DatastoreVersion
from shared.models.flavor import Flavor
from shared.models.instance import Instance, InstanceStatus

API_VERSION = "v1.0"
API_UPDATED = "2012-08-01T00:00:00Z"  # the date Trove's v1.0 document carries


@dataclass(frozen=True)
class ApiUrls:
    """`root` is `http://host:port` as the client addressed us; `project_id` the path's."""

    root: str
    project_id: str

    @property
    def versioned(self) -> str:
        return f"{self.root}/{API_VERSION}/{self.project_id}"

    @property
    def bookmark(self) -> str:
        return f"{self.root}/{self.project_id}"

    def links(self, collection: str, item_id: str) -> list[dict[str, str]]:
        return [
            {"href": f"{self.versioned}/{collection}/{item_id}", "rel": "self"},
            {"href": f"{self.bookmark}/{collection}/{item_id}", "rel": "bookmark"},
        ]


def timestamp(value: datetime) -> str:
    """Trove's timestamp format (UTC, no offset): `2024-01-31T12:00:00`."""
    return value.strftime("%Y-%m-%dT%H:%M:%S")


def flavor_view(flavor: Flavor, urls: ApiUrls) -> dict[str, Any]:
    return {
        "id": flavor.id,
        "str_id": flavor.id,
        "name": flavor.name,
        "ram": flavor.ram_mb,
        "vcpus": flavor.vcpus,
        "disk": flavor.disk_gb,
        "links": urls.links("flavors", flavor.id),
    }


def version_view(datastore: Datastore, version: DatastoreVersion, urls: ApiUrls) -> dict[str, Any]:
    return {
        "id": version.id,
        "name": version.name,
        "datastore": datastore.id,
        "version": version.version,
        "active": version.active,
        "image": None,
        "packages": ",".join(version.packages),
        "links": urls.links("datastores/versions", version.id),
    }


def datastore_view(datastore: Datastore, urls: ApiUrls) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": datastore.id,
        "name": datastore.name,
        "links": urls.links("datastores", datastore.id),
        "versions": [
            {
                "id": v.id,
                "name": v.name,
                "version": v.version,
                "active": v.active,
                "links": urls.links("datastores/versions", v.id),
            }
            for v in datastore.versions
            if v.active
        ],
    }
    default = datastore.default_version
    if default is not None:
        view["default_version"] = default.id
    return view


def instance_view(
    instance: Instance, urls: ApiUrls, region: str, *, detail: bool = True
) -> dict[str, Any]:
    """An instance as Trove shows it; `detail` adds what only `show`/`detail` carry."""
    addresses = [{"type": a.type.value, "address": a.address} for a in instance.addresses]
    view: dict[str, Any] = {
        "id": instance.id,
        "name": instance.name,
        "status": instance.status.value,
        "operating_status": instance.operating_status.api_status,
        "links": urls.links("instances", instance.id),
        "flavor": {"id": instance.flavor_id, "links": urls.links("flavors", instance.flavor_id)},
        "datastore": {
            "type": instance.datastore.type,
            "version": instance.datastore.version,
        },
        "region": region,
        "tenant_id": instance.project_id,
        "volume": {"size": instance.volume.size_gb},
        "ip": [a.address for a in instance.addresses],
        "addresses": addresses,
        "access": {"is_public": False, "allowed_cidrs": []},
        "created": timestamp(instance.created),
        "updated": timestamp(instance.updated),
    }
    if instance.addresses:
        view["hostname"] = instance.addresses[0].address
    if instance.port is not None:
        view["port"] = instance.port
    if instance.availability_zone is not None:
        view["availability_zone"] = instance.availability_zone
    if instance.replica_of is not None:
        view["replica_of"] = {"id": instance.replica_of, "links": []}
    if instance.operating_status_updated is not None:
        view["service_status_updated"] = timestamp(instance.operating_status_updated)
    if detail:
        if instance.volume.used_gb is not None:
            view["volume"]["used"] = round(instance.volume.used_gb, 3)
        if instance.configuration_id is not None:
            view["configuration"] = {
                "id": instance.configuration_id,
                "links": urls.links("configurations", instance.configuration_id),
            }
        if instance.status is InstanceStatus.ERROR and instance.fault is not None:
            view["fault"] = {
                "message": instance.fault.message,
                "details": instance.fault.details or "",
                "created": timestamp(instance.fault.created),
            }
    return view


def limits_view(limits: dict[str, int], usage: dict[str, int]) -> list[dict[str, Any]]:
    """Trove's `/limits`: the absolute limits first, then (none here) the rate limits."""
    return [
        {
            "verb": "ABSOLUTE",
            "max_instances": limits.get("instances", 0),
            "max_volumes": limits.get("volumes", 0),
            "max_backups": limits.get("backups", 0),
            "instances_used": usage.get("instances", 0),
            "volumes_used": usage.get("volumes", 0),
            "backups_used": usage.get("backups", 0),
        }
    ]


def quotas_view(limits: dict[str, int], usage: dict[str, int]) -> list[dict[str, Any]]:
    """Trove's `/mgmt/quotas` rows: resource, limit, in use, reserved."""
    return [
        {"resource": name, "limit": limit, "in_use": usage.get(name, 0), "reserved": 0}
        for name, limit in sorted(limits.items())
    ]
