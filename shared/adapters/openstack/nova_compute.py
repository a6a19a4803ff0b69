"""The Compute port on Nova + Cinder (openstacksdk).

One Nova server per database instance, booted from the datastore version's Glance image with
the flavor mapped from (ram_mb, vcpus), in the asked availability zone (and the configured
server group, for affinity or anti-affinity), with the cloud-init user-data of
`guest_cloud_config`: the guest agent's user-data JSON, written 0600 for the guest user, and a
boot unit that mounts the data volume (found by its Cinder id) and starts the agent.
The data volume is a Cinder volume created first (so the user-data can name it) and attached
once the server is ACTIVE.

Nothing is kept outside the cloud: servers are named `troveless-<instance id>` and carry
metadata (troveless-instance-id, troveless-volume-id, troveless-ram-mb, troveless-vcpus); volumes
carry troveless-instance-id, and troveless-kept=true once delete_server kept them. A restarted
control plane finds everything again from that, which is what adopt/orphans/reap use (their
code is shared with EC2: shared/adapters/cloud_compute.py).

Growing the volume detaches it, extends it (Cinder `os-extend` on an available volume works on
every backend and needs no microversion 3.42 online-extend support) and attaches it again, so
the server is stopped for the duration and started again if it was running; the guest's boot
unit grows the filesystem. Resizing the flavor is Nova's resize + confirmResize (a stopped
server stays stopped).
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

import openstack
from openstack import exceptions as os_exc
from openstack.block_storage.v3.volume import Volume
from openstack.compute.v2.server import Server
from openstack.connection import Connection

from shared.adapters.cloud_compute import CloudServers, cloud_flavor
from shared.adapters.cloud_server_requests import (
    DATA_VOLUME_PATH,
    ServerRequest,
    check_request,
    check_volume_gb,
    flavor_spec,
    least_used_zone,
    valid_instance_id,
)
from shared.adapters.guest_cloud_config import UserDataTooLargeError, guest_cloud_config
from shared.adapters.guest_sections import with_guest_sections
from shared.errors import ComputeError, ComputeRequestError, NotFoundError
from shared.observability import get_logger
from shared.ports import JSON, FlavorLike, FlavorSpec, ServerInfo, ServerStatus

log = get_logger("nova-compute")

META_INSTANCE = "troveless-instance-id"
META_VOLUME = "troveless-volume-id"
META_RAM = "troveless-ram-mb"
META_VCPUS = "troveless-vcpus"
META_KEPT = "troveless-kept"
NAME_PREFIX = "troveless-"
VOLUME_KIND = "cinder"
ServerGroupPolicy = Literal["affinity", "anti-affinity", "soft-affinity", "soft-anti-affinity"]

# Nova's status words (server "status") onto the port's four.
_STATUS = {
    "ACTIVE": ServerStatus.ACTIVE,
    "BUILD": ServerStatus.BUILD,
    "REBUILD": ServerStatus.BUILD,
    "REBOOT": ServerStatus.BUILD,
    "HARD_REBOOT": ServerStatus.BUILD,
    "RESIZE": ServerStatus.BUILD,
    "VERIFY_RESIZE": ServerStatus.BUILD,
    "REVERT_RESIZE": ServerStatus.BUILD,
    "MIGRATING": ServerStatus.BUILD,
    "PASSWORD": ServerStatus.BUILD,
    "SHUTOFF": ServerStatus.SHUTOFF,
    "STOPPED": ServerStatus.SHUTOFF,
    "SUSPENDED": ServerStatus.SHUTOFF,
    "PAUSED": ServerStatus.SHUTOFF,
    "SHELVED": ServerStatus.SHUTOFF,
    "SHELVED_OFFLOADED": ServerStatus.SHUTOFF,
    "RESCUE": ServerStatus.SHUTOFF,
    "ERROR": ServerStatus.ERROR,
    "DELETED": ServerStatus.ERROR,
    "SOFT_DELETED": ServerStatus.ERROR,
    "UNKNOWN": ServerStatus.ERROR,
}
_SDK_ERRORS = (os_exc.SDKException,)


def server_name(instance_id: str) -> str:
    return f"{NAME_PREFIX}{instance_id}"


def cinder_device_candidates(volume_id: str) -> list[str]:
    """Where a guest sees a Cinder volume: virtio-blk and virtio-scsi name it by id (cut to
    20 characters by the serial field)."""
    serial = volume_id[:20]
    return [
        f"/dev/disk/by-id/virtio-{serial}",
        f"/dev/disk/by-id/scsi-0QEMU_QEMU_HARDDISK_{serial}",
        f"/dev/disk/by-id/scsi-SQEMU_QEMU_HARDDISK_{serial}",
    ]


class NovaCinderCompute(CloudServers):
    """Compute on Nova + Cinder. `images` maps "<datastore>:<version>" (or "<datastore>") to a
    Glance image id; `flavors` maps each troveless flavor (ram_mb, vcpus) to a Nova flavor id;
    `zones` are the Nova availability zones to use; `volume_zones` optionally maps a Nova zone to
    the Cinder zone for its volumes (without it Cinder picks its default). `network_id` is the
    network servers join ("auto" allocation without it). With `server_group_policy`, every
    server joins the server group `server_group_name` (made with that policy when missing).
    `poll_interval` and `timeout` bound every wait for Nova or Cinder to reach a state.
    `guest_sections` are user-data sections added to every guest's (how it reaches its queues
    and backups)."""

    def __init__(
        self,
        connection: Connection,
        *,
        images: Mapping[str, str],
        flavors: Mapping[FlavorSpec, str],
        zones: Sequence[str],
        volume_zones: Mapping[str, str] | None = None,
        volume_type: str | None = None,
        network_id: str | None = None,
        key_name: str | None = None,
        security_groups: Sequence[str] = (),
        server_group_policy: ServerGroupPolicy | None = None,
        server_group_name: str = "troveless-databases",
        poll_interval: float = 2.0,
        timeout: float = 600.0,
        guest_sections: Mapping[str, JSON] | None = None,
    ) -> None:
        if not zones or len(set(zones)) != len(zones):
            raise ValueError(f"zones must be distinct and not empty, got {list(zones)}")
        self.conn = connection
        self.guest_sections = dict(guest_sections or {})
        self.images = dict(images)
        self.flavors = dict(flavors)
        self._zones = list(zones)
        self.volume_zones = dict(volume_zones or {})
        self.volume_type = volume_type
        self.network_id = network_id
        self.key_name = key_name
        self.security_groups = list(security_groups)
        self.server_group_policy = server_group_policy
        self.server_group_name = server_group_name
        self.poll_interval = poll_interval
        self.timeout = timeout

    @classmethod
    def from_cloud(cls, cloud: str | None = None, **options: Any) -> NovaCinderCompute:
        """An adapter on a cloud of clouds.yaml (or the OS_* environment variables when
        `cloud` is None); `options` are the constructor's keyword arguments."""
        return cls(openstack.connect(cloud=cloud), **options)

    # ------------------------------------------------------------------ the port
    def zones(self) -> list[str]:
        return list(self._zones)

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
        user_data = with_guest_sections(user_data, self.guest_sections)
        request = check_request(
            instance_id, flavor, volume_gb, zone, user_data, zones=self._zones, images=self.images
        )
        nova_flavor = self._nova_flavor(instance_id, request.flavor)
        existing = self._find(instance_id)
        if existing is not None:
            if existing.status == "BUILD":
                existing = self._wait_server(existing.id, "ACTIVE", instance_id)
            return self._info(existing)
        kept = self._kept_volume(instance_id, volume_from) if volume_from else None
        zone_name = request.zone or least_used_zone(
            self._zones, (s.zone for s in self.list_servers())
        )
        return self._build(request, nova_flavor, zone_name, kept)

    def get_server(self, instance_id: str) -> ServerInfo | None:
        if not valid_instance_id(instance_id):
            return None
        found = self._find(instance_id)
        return self._info(found) if found is not None else None

    def list_servers(self) -> list[ServerInfo]:
        servers = [
            s for s in self._servers(f"^{NAME_PREFIX}") if (s.metadata or {}).get(META_INSTANCE)
        ]
        if not servers:
            return []
        sizes = self._volume_sizes()
        return sorted((self._info(s, sizes) for s in servers), key=lambda s: s.instance_id)

    def stop_server(self, instance_id: str) -> ServerInfo:
        server = self._require(instance_id)
        if server.status != "SHUTOFF":
            self._sdk(instance_id, "stop", self.conn.compute.stop_server, server.id)
            server = self._wait_server(server.id, "SHUTOFF", instance_id)
        return self._info(server)

    def start_server(self, instance_id: str) -> ServerInfo:
        server = self._require(instance_id)
        if server.status == "SHUTOFF":
            self._sdk(instance_id, "start", self.conn.compute.start_server, server.id)
            server = self._wait_server(server.id, "ACTIVE", instance_id)
        elif server.status != "ACTIVE":
            server = self._wait_server(server.id, "ACTIVE", instance_id)
        return self._info(server)

    def reboot_server(self, instance_id: str) -> ServerInfo:
        server = self._require(instance_id)
        if server.status != "ACTIVE":
            return self.start_server(instance_id)
        # SOFT: the guest shuts down cleanly (Nova falls back to HARD if it does not).
        self._sdk(instance_id, "reboot", self.conn.compute.reboot_server, server.id, "SOFT")
        return self._info(self._wait_server(server.id, "ACTIVE", instance_id))

    def delete_server(self, instance_id: str, *, keep_volume: bool = False) -> None:
        if not valid_instance_id(instance_id):
            return
        server = self._find(instance_id)
        volume_ids: set[str] = set()
        if server is not None:
            volume_id = (server.metadata or {}).get(META_VOLUME)
            if volume_id:
                volume_ids.add(volume_id)
            if keep_volume and server.status == "ACTIVE":
                # The datastore shuts down cleanly before its volume is detached and kept.
                self._sdk(instance_id, "stop", self.conn.compute.stop_server, server.id)
                self._wait_server(server.id, "SHUTOFF", instance_id)
            self._sdk(instance_id, "delete", self.conn.compute.delete_server, server.id)
            self._wait_server_gone(server.id, instance_id)
        # Volumes of this instance nobody kept, including any a crashed create left.
        for volume in self._instance_volumes(instance_id):
            if (volume.metadata or {}).get(META_KEPT) != "true":
                volume_ids.add(volume.id)
        for volume_id in sorted(volume_ids):
            if keep_volume:
                self._wait_volume(volume_id, "available", instance_id)
                self._sdk(
                    instance_id,
                    "mark the kept volume",
                    self.conn.block_storage.set_volume_metadata,
                    volume_id,
                    **{META_KEPT: "true"},
                )
            else:
                self._delete_volume(instance_id, volume_id)
        if server is not None:
            log.info(
                "server deleted", extra={"instance_id": instance_id, "kept_volume": keep_volume}
            )

    def resize_volume(self, instance_id: str, new_gb: int) -> ServerInfo:
        check_volume_gb(instance_id, new_gb)
        server = self._require(instance_id)
        volume_id = str((server.metadata or {}).get(META_VOLUME, ""))
        volume = self._sdk(instance_id, "get volume", self.conn.block_storage.get_volume, volume_id)
        if new_gb < volume.size:
            raise ComputeRequestError(
                instance_id, f"volumes only grow: {new_gb} GB < the current {volume.size} GB"
            )
        if new_gb == volume.size:
            if volume.status == "available":  # a resize interrupted before the re-attach
                self._attach(instance_id, server.id, volume_id)
            return self._info(server)
        was_running = server.status == "ACTIVE"
        if server.status != "SHUTOFF":
            self._sdk(instance_id, "stop", self.conn.compute.stop_server, server.id)
            self._wait_server(server.id, "SHUTOFF", instance_id)
        self._sdk(
            instance_id,
            "detach the volume",
            self.conn.compute.delete_volume_attachment,
            Server.existing(id=server.id),
            Volume.existing(id=volume_id),
        )
        self._wait_volume(volume_id, "available", instance_id)
        self._sdk(
            instance_id,
            "extend the volume",
            self.conn.block_storage.extend_volume,
            volume_id,
            new_gb,
        )
        self._wait_volume(volume_id, "available", instance_id, size=new_gb)
        self._attach(instance_id, server.id, volume_id)
        if was_running:
            self._sdk(instance_id, "start", self.conn.compute.start_server, server.id)
            self._wait_server(server.id, "ACTIVE", instance_id)
        log.info("volume resized", extra={"instance_id": instance_id, "volume_gb": new_gb})
        return self._info(self._require(instance_id))

    def resize_flavor(self, instance_id: str, flavor: FlavorLike) -> ServerInfo:
        spec = flavor_spec(instance_id, flavor)
        nova_flavor = self._nova_flavor(instance_id, spec)
        server = self._require(instance_id)
        if server.status == "VERIFY_RESIZE":  # a resize interrupted before its confirmation
            self._confirm_resize(instance_id, server.id)
            server = self._require(instance_id)
        # Since microversion 2.47 a server embeds its flavor's name, not its id.
        target = self._sdk(instance_id, "get flavor", self.conn.compute.get_flavor, nova_flavor)
        running = getattr(server.flavor, "original_name", None) or getattr(
            server.flavor, "name", None
        )
        if running != target.name:
            self._sdk(
                instance_id, "resize", self.conn.compute.resize_server, server.id, nova_flavor
            )
            self._wait_server(server.id, ("VERIFY_RESIZE",), instance_id)
            self._confirm_resize(instance_id, server.id)
        if self._recorded_flavor(server) != spec:
            self._sdk(
                instance_id,
                "record the flavor",
                self.conn.compute.set_server_metadata,
                server.id,
                **{META_RAM: str(spec.ram_mb), META_VCPUS: str(spec.vcpus)},
            )
        return self._info(self._require(instance_id))

    def _confirm_resize(self, instance_id: str, server_id: str) -> None:
        """Confirm; Nova then returns the server to its power state before the resize."""
        self._sdk(
            instance_id, "confirm the resize", self.conn.compute.confirm_server_resize, server_id
        )
        self._wait_server(server_id, ("ACTIVE", "SHUTOFF"), instance_id)

    # ------------------------------------------------------------------ building
    def _nova_flavor(self, instance_id: str, spec: FlavorSpec) -> str:
        return cloud_flavor(instance_id, self.flavors, spec, "Nova flavor")

    def _build(
        self, request: ServerRequest, nova_flavor: str, zone: str, kept: Any | None
    ) -> ServerInfo:
        instance_id = request.instance_id
        created_volume: str | None = None
        server_id: str | None = None
        try:
            if kept is not None:
                volume_id = str(kept.id)
                if kept.size < request.volume_gb:
                    self._sdk(
                        instance_id,
                        "extend the kept volume",
                        self.conn.block_storage.extend_volume,
                        volume_id,
                        request.volume_gb,
                    )
                    self._wait_volume(volume_id, "available", instance_id, size=request.volume_gb)
                self._sdk(
                    instance_id,
                    "claim the kept volume",
                    self.conn.block_storage.set_volume_metadata,
                    volume_id,
                    **{META_INSTANCE: instance_id, META_KEPT: "false"},
                )
            elif (leftover := self._leftover_volume(instance_id, request.volume_gb)) is not None:
                volume_id = created_volume = leftover
            else:
                attrs: dict[str, Any] = {
                    "size": request.volume_gb,
                    "name": server_name(instance_id),
                    "metadata": {META_INSTANCE: instance_id},
                }
                if zone in self.volume_zones:
                    attrs["availability_zone"] = self.volume_zones[zone]
                if self.volume_type:
                    attrs["volume_type"] = self.volume_type
                volume = self._sdk(
                    instance_id, "create the volume", self.conn.block_storage.create_volume, **attrs
                )
                volume_id = created_volume = str(volume.id)
                self._wait_volume(volume_id, "available", instance_id)
            try:
                cloud_config = guest_cloud_config(
                    request.user_data,
                    instance_id=instance_id,
                    zone=zone,
                    volume_id=volume_id,
                    volume_kind=VOLUME_KIND,
                    device_candidates=cinder_device_candidates(volume_id),
                )
            except UserDataTooLargeError as exc:
                raise ComputeRequestError(instance_id, str(exc)) from None
            boot: dict[str, Any] = {
                "name": server_name(instance_id),
                "image_id": request.image,
                "flavor_id": nova_flavor,
                "availability_zone": zone,
                "user_data": base64.b64encode(cloud_config.encode()).decode(),
                "networks": [{"uuid": self.network_id}] if self.network_id else "auto",
                "metadata": {
                    META_INSTANCE: instance_id,
                    META_VOLUME: volume_id,
                    META_RAM: str(request.flavor.ram_mb),
                    META_VCPUS: str(request.flavor.vcpus),
                },
            }
            if self.key_name:
                boot["key_name"] = self.key_name
            if self.security_groups:
                boot["security_groups"] = [{"name": g} for g in self.security_groups]
            if self.server_group_policy is not None:
                boot["scheduler_hints"] = {"group": self._server_group(instance_id)}
            server = self._sdk(instance_id, "boot", self.conn.compute.create_server, **boot)
            server_id = str(server.id)
            self._wait_server(server_id, "ACTIVE", instance_id)
            self._attach(instance_id, server_id, volume_id)
        except BaseException:
            self._undo_build(instance_id, server_id, created_volume)
            raise
        log.info(
            "server created",
            extra={"instance_id": instance_id, "server_id": server_id, "zone": zone},
        )
        return self._info(self._require(instance_id))

    def _attach(self, instance_id: str, server_id: str, volume_id: str) -> None:
        self._sdk(
            instance_id,
            "attach the volume",
            self.conn.compute.create_volume_attachment,
            # Typed references: given bare ids the SDK looks the server up first.
            Server.existing(id=server_id),
            Volume.existing(id=volume_id),
        )
        self._wait_volume(volume_id, "in-use", instance_id)

    def _server_group(self, instance_id: str) -> str:
        """The id of the configured server group, made with the configured policy if missing."""
        for group in self._sdk(instance_id, "list server groups", self.conn.compute.server_groups):
            if group.name == self.server_group_name:
                policy = getattr(group, "policy", None) or (group.policies or [None])[0]
                if policy != self.server_group_policy:
                    raise ComputeError(
                        instance_id,
                        f"server group {self.server_group_name} has policy {policy}, "
                        f"not {self.server_group_policy}",
                    )
                return str(group.id)
        group = self._sdk(
            instance_id,
            "create the server group",
            self.conn.compute.create_server_group,
            name=self.server_group_name,
            policy=self.server_group_policy,
        )
        return str(group.id)

    def _undo_build(self, instance_id: str, server_id: str | None, volume_id: str | None) -> None:
        """A failed create leaves nothing: best effort, logged, never masking the failure."""
        try:
            if server_id is not None:
                self.conn.compute.delete_server(server_id)
                self._wait_server_gone(server_id, instance_id)
            if volume_id is not None:
                self._delete_volume(instance_id, volume_id)
        except (*_SDK_ERRORS, ComputeError) as exc:
            log.error(
                "could not undo a failed create",
                extra={"instance_id": instance_id, "server_id": server_id, "error": str(exc)},
            )

    def _leftover_volume(self, instance_id: str, size: int) -> str | None:
        """The volume of a create that stopped before its server existed (the control plane
        died), if it fits: reused, so a repeated create does not leave one behind."""
        for volume in self._instance_volumes(instance_id):
            unkept = (volume.metadata or {}).get(META_KEPT) != "true"
            if unkept and volume.status == "available" and volume.size == size:
                log.info(
                    "reusing the volume of an interrupted create",
                    extra={"instance_id": instance_id, "volume_id": volume.id},
                )
                return str(volume.id)
        return None

    def _kept_volume(self, instance_id: str, volume_id: str) -> Any:
        try:
            volume = self.conn.block_storage.get_volume(volume_id)
        except os_exc.NotFoundException:
            raise ComputeRequestError(instance_id, f"no volume {volume_id!r}") from None
        except _SDK_ERRORS as exc:
            raise ComputeError(instance_id, f"get volume {volume_id}: {exc}") from exc
        if (volume.metadata or {}).get(META_KEPT) != "true":
            raise ComputeRequestError(
                instance_id, f"volume {volume_id!r} is not a kept troveless volume"
            )
        if volume.status != "available":
            raise ComputeRequestError(
                instance_id, f"volume {volume_id!r} is {volume.status}, not available"
            )
        return volume

    def _delete_volume(self, instance_id: str, volume_id: str) -> None:
        try:
            self._wait_volume(volume_id, "available", instance_id)
        except NotFoundError:
            return
        self._sdk(
            instance_id, "delete the volume", self.conn.block_storage.delete_volume, volume_id
        )
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                self.conn.block_storage.get_volume(volume_id)
            except os_exc.NotFoundException:
                return
            except _SDK_ERRORS as exc:
                raise ComputeError(instance_id, f"get volume {volume_id}: {exc}") from exc
            if time.monotonic() > deadline:
                raise ComputeError(instance_id, f"volume {volume_id} still exists after delete")
            time.sleep(self.poll_interval)

    # ------------------------------------------------------------------ reading
    def _servers(self, name_pattern: str) -> list[Any]:
        try:
            return list(self.conn.compute.servers(details=True, name=name_pattern))
        except _SDK_ERRORS as exc:
            raise ComputeError("*", f"list servers: {exc}") from exc

    def _find(self, instance_id: str) -> Any | None:
        # Nova's name filter is a regular expression: anchor it and escape the dots.
        pattern = "^" + server_name(instance_id).replace(".", "\\.") + "$"
        found = [
            s
            for s in self._servers(pattern)
            if (s.metadata or {}).get(META_INSTANCE) == instance_id
        ]
        if len(found) > 1:
            log.warning(
                "several servers carry one instance id; using the oldest",
                extra={"instance_id": instance_id, "servers": [s.id for s in found]},
            )
        return min(found, key=lambda s: s.created_at or "") if found else None

    def _require(self, instance_id: str) -> Any:
        found = self._find(instance_id) if valid_instance_id(instance_id) else None
        if found is None:
            raise NotFoundError(instance_id, "server")
        return found

    def _instance_volumes(self, instance_id: str) -> list[Any]:
        try:
            volumes = self.conn.block_storage.volumes(details=True, name=server_name(instance_id))
            return [v for v in volumes if (v.metadata or {}).get(META_INSTANCE) == instance_id]
        except _SDK_ERRORS as exc:
            raise ComputeError(instance_id, f"list volumes: {exc}") from exc

    def _volume_sizes(self) -> dict[str, int]:
        try:
            volumes = self.conn.block_storage.volumes(details=True)
            return {str(v.id): int(v.size) for v in volumes}
        except _SDK_ERRORS as exc:
            raise ComputeError("*", f"list volumes: {exc}") from exc

    def _recorded_flavor(self, server: Any) -> FlavorSpec | None:
        meta = server.metadata or {}
        try:
            return FlavorSpec(ram_mb=int(meta[META_RAM]), vcpus=int(meta[META_VCPUS]))
        except (KeyError, ValueError):
            return None

    def _info(self, server: Any, sizes: Mapping[str, int] | None = None) -> ServerInfo:
        meta = server.metadata or {}
        volume_id = str(meta.get(META_VOLUME, ""))
        if sizes is None:
            sizes = {}
            if volume_id:
                try:
                    sizes = {volume_id: int(self.conn.block_storage.get_volume(volume_id).size)}
                except os_exc.NotFoundException:
                    sizes = {}
                except _SDK_ERRORS as exc:
                    raise ComputeError(str(meta.get(META_INSTANCE)), f"get volume: {exc}") from exc
        fault = server.fault or {}
        status = _STATUS.get(str(server.status), ServerStatus.ERROR)
        recorded = self._recorded_flavor(server) or FlavorSpec(ram_mb=1, vcpus=1)
        return ServerInfo(
            server_id=str(server.id),
            instance_id=str(meta.get(META_INSTANCE, "")),
            status=status,
            address=_first_fixed_ipv4(server.addresses or {}),
            zone=str(server.availability_zone or ""),
            flavor=recorded,
            volume_id=volume_id,
            volume_gb=sizes.get(volume_id, 0),
            volume_kind=VOLUME_KIND,
            volume_path=DATA_VOLUME_PATH,
            limits_enforced=True,
            limits_note=None,
            agent_pid=None,
            agent_alive=None,
            created_at=_parse_time(server.created_at),
            status_reason=fault.get("message") if status == ServerStatus.ERROR else None,
            details={
                "nova_status": str(server.status),
                "image": str((server.image or {}).get("id", "")),
                "flavor": str(getattr(server.flavor, "original_name", "") or ""),
                "host_id": str(server.host_id or ""),
            },
        )

    # ------------------------------------------------------------------ waiting and calling
    def _sdk(
        self, instance_id: str, what: str, method: Callable[..., Any], *a: Any, **kw: Any
    ) -> Any:
        try:
            return method(*a, **kw)
        except os_exc.NotFoundException as exc:
            raise NotFoundError(instance_id, f"{what}: {exc}") from exc
        except _SDK_ERRORS as exc:
            raise ComputeError(instance_id, f"{what}: {exc}") from exc

    def _poll(self, instance_id: str, what: str, check: Callable[[], Any]) -> Any:
        deadline = time.monotonic() + self.timeout
        while True:
            result = check()
            if result is not None:
                return result
            if time.monotonic() > deadline:
                raise ComputeError(
                    instance_id, f"timed out after {self.timeout:g} s waiting for {what}"
                )
            time.sleep(self.poll_interval)

    def _wait_server(self, server_id: str, status: str | tuple[str, ...], instance_id: str) -> Any:
        wanted = (status,) if isinstance(status, str) else status

        def reached() -> Any:
            server = self._sdk(instance_id, "get server", self.conn.compute.get_server, server_id)
            if server.status in wanted:
                return server
            if server.status == "ERROR":
                reason = (server.fault or {}).get("message", "no fault given")
                raise ComputeError(instance_id, f"server {server_id} went to ERROR: {reason}")
            return None

        return self._poll(instance_id, f"server {server_id} to be {' or '.join(wanted)}", reached)

    def _wait_server_gone(self, server_id: str, instance_id: str) -> None:
        def gone() -> bool | None:
            try:
                server = self.conn.compute.get_server(server_id)
            except os_exc.NotFoundException:
                return True
            except _SDK_ERRORS as exc:
                raise ComputeError(instance_id, f"get server {server_id}: {exc}") from exc
            return True if server.status == "DELETED" else None

        self._poll(instance_id, f"server {server_id} to be deleted", gone)

    def _wait_volume(
        self, volume_id: str, status: str, instance_id: str, *, size: int | None = None
    ) -> None:
        def reached() -> bool | None:
            volume = self._sdk(
                instance_id, "get volume", self.conn.block_storage.get_volume, volume_id
            )
            if volume.status.startswith("error"):
                raise ComputeError(instance_id, f"volume {volume_id} is {volume.status}")
            if volume.status == status and (size is None or volume.size == size):
                return True
            return None

        self._poll(instance_id, f"volume {volume_id} to be {status}", reached)


def _first_fixed_ipv4(addresses: Mapping[str, Any]) -> str:
    """The server's first fixed IPv4 address (floating ones are for tenants' clients)."""
    for network in sorted(addresses):
        for entry in addresses[network]:
            if entry.get("version") == 4 and entry.get("OS-EXT-IPS:type", "fixed") == "fixed":
                return str(entry["addr"])
    return ""


def _parse_time(value: str | None) -> datetime:
    if not value:
        return datetime.fromtimestamp(0, UTC)
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
