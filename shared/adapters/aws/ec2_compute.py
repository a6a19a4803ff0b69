"""The Compute port on EC2 + EBS (boto3).

One EC2 instance per database instance, booted from the datastore's AMI with the cloud-init
user-data of `guest_cloud_config` (the guest agent's user-data JSON, written 0600 for the guest
user), and one EBS data volume created beside it and attached as /dev/sdf.

Everything the adapter needs to find again is in EC2 tags, so a new adapter (a restarted
control plane) sees what the last one made without any bookkeeping of its own:

    instance  troveless:instance-id, troveless:volume-id, troveless:ram-mb, troveless:vcpus
    volume    troveless:instance-id, and troveless:kept=true once delete_server kept it

The flavor is kept in tags because several flavors may share one instance type.
Resizing the flavor changes the instance type, which EC2 only allows on a stopped instance: the
adapter stops it and starts it again if it was running. Growing the volume is EBS's online
ModifyVolume; the guest's filesystem grows at its next boot, so a running server is rebooted.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

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

log = get_logger("ec2-compute")

TAG_INSTANCE = "troveless:instance-id"
TAG_VOLUME = "troveless:volume-id"
TAG_RAM = "troveless:ram-mb"
TAG_VCPUS = "troveless:vcpus"
TAG_KEPT = "troveless:kept"
VOLUME_KIND = "ebs"
DATA_DEVICE = "/dev/sdf"
NITRO_DEVICE_PREFIX = "/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_"
# Instances in these states are gone or going: they are not anyone's server any more.
_LIVE_STATES = ["pending", "running", "stopping", "stopped"]
_STATUS = {
    "pending": ServerStatus.BUILD,
    "running": ServerStatus.ACTIVE,
    "stopping": ServerStatus.SHUTOFF,
    "stopped": ServerStatus.SHUTOFF,
    "shutting-down": ServerStatus.ERROR,
    "terminated": ServerStatus.ERROR,
}


def make_ec2_client(
    endpoint_url: str | None = None,
    *,
    region: str = "us-east-1",
    access_key: str | None = None,
    secret_key: str | None = None,
) -> Any:
    """A boto3 EC2 client; without keys boto3's usual credential chain applies."""
    return boto3.client(
        "ec2",
        endpoint_url=endpoint_url,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        config=Config(region_name=region, retries={"mode": "standard", "max_attempts": 5}),
    )


def _tags(resource: Mapping[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in resource.get("Tags", [])}


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class Ec2Compute(CloudServers):
    """Compute on EC2. `images` maps "<datastore>:<version>" (or "<datastore>") to an AMI id;
    `instance_types` maps each flavor's (ram_mb, vcpus) to an instance type; `zones` are the
    availability zones to use, `subnets` optionally the subnet per zone (else the default VPC's),
    `instance_profile` (ARN or name) the IAM instance profile every guest is launched with.
    `poll_interval` and `timeout` bound every wait for EC2 to reach a state. `guest_sections`
    are user-data sections added to every guest's (how it reaches its queues and backups)."""

    def __init__(
        self,
        client: Any,
        *,
        images: Mapping[str, str],
        instance_types: Mapping[FlavorSpec, str],
        zones: Sequence[str],
        subnets: Mapping[str, str] | None = None,
        security_group_ids: Sequence[str] = (),
        key_name: str | None = None,
        instance_profile: str | None = None,
        volume_type: str = "gp3",
        poll_interval: float = 2.0,
        timeout: float = 600.0,
        guest_sections: Mapping[str, JSON] | None = None,
    ) -> None:
        if not zones or len(set(zones)) != len(zones):
            raise ValueError(f"zones must be distinct and not empty, got {list(zones)}")
        self.client = client
        self.guest_sections = dict(guest_sections or {})
        self.images = dict(images)
        self.instance_types = dict(instance_types)
        self._zones = list(zones)
        self.subnets = dict(subnets or {})
        self.security_group_ids = list(security_group_ids)
        self.key_name = key_name
        self.instance_profile = instance_profile
        self.volume_type = volume_type
        self.poll_interval = poll_interval
        self.timeout = timeout

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
            instance_id,
            flavor,
            volume_gb,
            zone,
            user_data,
            zones=self._zones,
            images=self.images,
        )
        instance_type = self._instance_type(instance_id, request.flavor)
        existing = self._find_instance(instance_id)
        if existing is not None:
            if existing["State"]["Name"] == "pending":
                existing = self._wait_instance(existing["InstanceId"], "running", instance_id)
            return self._info(existing)
        kept = self._kept_volume(instance_id, volume_from) if volume_from else None
        if kept is not None:
            kept_zone = str(kept["AvailabilityZone"])
            if request.zone is not None and request.zone != kept_zone:
                raise ComputeRequestError(
                    instance_id,
                    f"volume {volume_from} is in zone {kept_zone}, not {request.zone}: "
                    "EBS volumes cannot change zone",
                )
            zone_name = kept_zone
        else:
            zone_name = request.zone or least_used_zone(
                self._zones, (s.zone for s in self.list_servers())
            )
        return self._build(request, instance_type, zone_name, kept)

    def get_server(self, instance_id: str) -> ServerInfo | None:
        if not valid_instance_id(instance_id):
            return None
        found = self._find_instance(instance_id)
        return self._info(found) if found is not None else None

    def list_servers(self) -> list[ServerInfo]:
        instances = self._describe_instances([{"Name": "tag-key", "Values": [TAG_INSTANCE]}])
        sizes = self._volume_sizes(_tags(i).get(TAG_VOLUME, "") for i in instances)
        infos = [self._info(i, sizes) for i in instances]
        return sorted(infos, key=lambda s: s.instance_id)

    def stop_server(self, instance_id: str) -> ServerInfo:
        found = self._require(instance_id)
        if found["State"]["Name"] != "stopped":
            self._call(
                instance_id, "stop", self.client.stop_instances, InstanceIds=[found["InstanceId"]]
            )
            found = self._wait_instance(found["InstanceId"], "stopped", instance_id)
        return self._info(found)

    def start_server(self, instance_id: str) -> ServerInfo:
        found = self._require(instance_id)
        state = found["State"]["Name"]
        if state == "stopping":
            found = self._wait_instance(found["InstanceId"], "stopped", instance_id)
            state = "stopped"
        if state == "stopped":
            self._call(
                instance_id, "start", self.client.start_instances, InstanceIds=[found["InstanceId"]]
            )
        if state != "running":
            found = self._wait_instance(found["InstanceId"], "running", instance_id)
        return self._info(found)

    def reboot_server(self, instance_id: str) -> ServerInfo:
        found = self._require(instance_id)
        if found["State"]["Name"] != "running":
            return self.start_server(instance_id)
        # An OS reboot: EC2 keeps the instance "running" throughout, so there is no state to
        # wait for; the guest's heartbeats say when it is back.
        self._call(
            instance_id, "reboot", self.client.reboot_instances, InstanceIds=[found["InstanceId"]]
        )
        return self._info(self._require(instance_id))

    def delete_server(self, instance_id: str, *, keep_volume: bool = False) -> None:
        if not valid_instance_id(instance_id):
            return
        found = self._find_instance(instance_id)
        volume_ids: set[str] = set()
        if found is not None:
            volume_id = _tags(found).get(TAG_VOLUME)
            if volume_id:
                volume_ids.add(volume_id)
            self._call(
                instance_id,
                "terminate",
                self.client.terminate_instances,
                InstanceIds=[found["InstanceId"]],
            )
            self._wait_instance(found["InstanceId"], "terminated", instance_id)
        # Volumes of this instance that nobody kept, including any a crashed create left.
        for volume in self._instance_volumes(instance_id):
            if _tags(volume).get(TAG_KEPT) != "true":
                volume_ids.add(volume["VolumeId"])
        for volume_id in sorted(volume_ids):
            if keep_volume:
                self._wait_volume(volume_id, "available", instance_id)
                self._mark_kept(instance_id, volume_id)
            else:
                self._delete_volume(instance_id, volume_id)
        if found is not None:
            log.info(
                "server deleted", extra={"instance_id": instance_id, "kept_volume": keep_volume}
            )

    def resize_volume(self, instance_id: str, new_gb: int) -> ServerInfo:
        check_volume_gb(instance_id, new_gb)
        found = self._require(instance_id)
        volume_id = _tags(found).get(TAG_VOLUME, "")
        current = self._volume_sizes([volume_id]).get(volume_id, 0)
        if new_gb < current:
            raise ComputeRequestError(
                instance_id, f"volumes only grow: {new_gb} GB < the current {current} GB"
            )
        if new_gb == current:
            return self._info(found)
        self._call(
            instance_id,
            "grow the volume",
            self.client.modify_volume,
            VolumeId=volume_id,
            Size=new_gb,
        )
        self._wait_modification(volume_id, new_gb, instance_id)
        if found["State"]["Name"] == "running":
            # The boot unit grows the filesystem to the volume's new size.
            self._call(
                instance_id,
                "reboot",
                self.client.reboot_instances,
                InstanceIds=[found["InstanceId"]],
            )
        log.info("volume resized", extra={"instance_id": instance_id, "volume_gb": new_gb})
        return self._info(self._require(instance_id))

    def resize_flavor(self, instance_id: str, flavor: FlavorLike) -> ServerInfo:
        spec = flavor_spec(instance_id, flavor)
        instance_type = self._instance_type(instance_id, spec)
        found = self._require(instance_id)
        server_id = found["InstanceId"]
        if found["InstanceType"] != instance_type:
            was_running = found["State"]["Name"] in ("running", "pending")
            if found["State"]["Name"] != "stopped":
                self._call(instance_id, "stop", self.client.stop_instances, InstanceIds=[server_id])
                self._wait_instance(server_id, "stopped", instance_id)
            self._call(
                instance_id,
                "change the instance type",
                self.client.modify_instance_attribute,
                InstanceId=server_id,
                InstanceType={"Value": instance_type},
            )
            if was_running:
                self._call(
                    instance_id, "start", self.client.start_instances, InstanceIds=[server_id]
                )
                self._wait_instance(server_id, "running", instance_id)
        self._call(
            instance_id,
            "record the flavor",
            self.client.create_tags,
            Resources=[server_id],
            Tags=[
                {"Key": TAG_RAM, "Value": str(spec.ram_mb)},
                {"Key": TAG_VCPUS, "Value": str(spec.vcpus)},
            ],
        )
        return self._info(self._require(instance_id))

    # ------------------------------------------------------------------ building
    def _instance_type(self, instance_id: str, spec: FlavorSpec) -> str:
        return cloud_flavor(instance_id, self.instance_types, spec, "instance type")

    def _build(
        self,
        request: ServerRequest,
        instance_type: str,
        zone: str,
        kept: Mapping[str, Any] | None,
    ) -> ServerInfo:
        instance_id = request.instance_id
        created_volume: str | None = None
        server_id: str | None = None
        try:
            if kept is not None:
                volume_id = str(kept["VolumeId"])
                if int(kept["Size"]) < request.volume_gb:
                    self._call(
                        instance_id,
                        "grow the volume",
                        self.client.modify_volume,
                        VolumeId=volume_id,
                        Size=request.volume_gb,
                    )
                    self._wait_modification(volume_id, request.volume_gb, instance_id)
                self._call(
                    instance_id,
                    "claim the kept volume",
                    self.client.create_tags,
                    Resources=[volume_id],
                    Tags=[{"Key": TAG_INSTANCE, "Value": instance_id}],
                )
                self._call(
                    instance_id,
                    "claim the kept volume",
                    self.client.delete_tags,
                    Resources=[volume_id],
                    Tags=[{"Key": TAG_KEPT}],
                )
            elif (
                leftover := self._leftover_volume(instance_id, request.volume_gb, zone)
            ) is not None:
                volume_id = created_volume = leftover
            else:
                volume = self._call(
                    instance_id,
                    "create the volume",
                    self.client.create_volume,
                    AvailabilityZone=zone,
                    Size=request.volume_gb,
                    VolumeType=self.volume_type,
                    TagSpecifications=[
                        {
                            "ResourceType": "volume",
                            "Tags": [
                                {"Key": TAG_INSTANCE, "Value": instance_id},
                                {"Key": "Name", "Value": f"troveless-{instance_id}"},
                            ],
                        }
                    ],
                )
                volume_id = created_volume = str(volume["VolumeId"])
                self._wait_volume(volume_id, "available", instance_id)
            try:
                cloud_config = guest_cloud_config(
                    request.user_data,
                    instance_id=instance_id,
                    zone=zone,
                    volume_id=volume_id,
                    volume_kind=VOLUME_KIND,
                    # Nitro instances name EBS volumes by id; Xen ones keep the sdX -> xvdX name.
                    device_candidates=[
                        NITRO_DEVICE_PREFIX + volume_id.replace("-", ""),
                        "/dev/xvdf",
                        DATA_DEVICE,
                    ],
                )
            except UserDataTooLargeError as exc:
                raise ComputeRequestError(instance_id, str(exc)) from None
            launch: dict[str, Any] = {
                "ImageId": request.image,
                "InstanceType": instance_type,
                "MinCount": 1,
                "MaxCount": 1,
                "UserData": cloud_config,
                "Placement": {"AvailabilityZone": zone},
                # The user-data holds the instance's secret: IMDSv2 only, one hop (no
                # containers or proxies on the guest reaching it).
                "MetadataOptions": {
                    "HttpTokens": "required",
                    "HttpPutResponseHopLimit": 1,
                    "HttpEndpoint": "enabled",
                },
                "TagSpecifications": [
                    {
                        "ResourceType": "instance",
                        "Tags": [
                            {"Key": TAG_INSTANCE, "Value": instance_id},
                            {"Key": TAG_VOLUME, "Value": volume_id},
                            {"Key": TAG_RAM, "Value": str(request.flavor.ram_mb)},
                            {"Key": TAG_VCPUS, "Value": str(request.flavor.vcpus)},
                            {"Key": "Name", "Value": f"troveless-{instance_id}"},
                        ],
                    }
                ],
            }
            if zone in self.subnets:
                launch["SubnetId"] = self.subnets[zone]
            if self.security_group_ids:
                launch["SecurityGroupIds"] = self.security_group_ids
            if self.key_name:
                launch["KeyName"] = self.key_name
            if self.instance_profile:
                # The guest's AWS credentials: from the metadata service, never user-data.
                launch["IamInstanceProfile"] = (
                    {"Arn": self.instance_profile}
                    if self.instance_profile.startswith("arn:")
                    else {"Name": self.instance_profile}
                )
            reservation = self._call(instance_id, "launch", self.client.run_instances, **launch)
            server_id = str(reservation["Instances"][0]["InstanceId"])
            self._wait_instance(server_id, "running", instance_id)
            self._call(
                instance_id,
                "attach the volume",
                self.client.attach_volume,
                Device=DATA_DEVICE,
                InstanceId=server_id,
                VolumeId=volume_id,
            )
            self._wait_volume(volume_id, "in-use", instance_id)
        except BaseException:
            self._undo_build(instance_id, server_id, created_volume)
            if kept is not None:
                self._mark_kept(instance_id, str(kept["VolumeId"]))
            raise
        log.info(
            "server created",
            extra={"instance_id": instance_id, "server_id": server_id, "zone": zone},
        )
        return self._info(self._require(instance_id))

    def _undo_build(self, instance_id: str, server_id: str | None, volume_id: str | None) -> None:
        """A failed create leaves nothing: best effort, logged, never masking the failure."""
        try:
            if server_id is not None:
                self.client.terminate_instances(InstanceIds=[server_id])
                self._wait_instance(server_id, "terminated", instance_id)
            if volume_id is not None:
                self._delete_volume(instance_id, volume_id)
        except (ClientError, BotoCoreError, ComputeError) as exc:
            log.error(
                "could not undo a failed create",
                extra={"instance_id": instance_id, "server_id": server_id, "error": str(exc)},
            )

    def _leftover_volume(self, instance_id: str, size: int, zone: str) -> str | None:
        """The volume of a create that stopped before its instance existed (the control plane
        died), if it fits: reused, so a repeated create does not leave one behind."""
        for volume in self._instance_volumes(instance_id):
            fits = volume["State"] == "available" and int(volume["Size"]) == size
            if (
                fits
                and volume["AvailabilityZone"] == zone
                and _tags(volume).get(TAG_KEPT) != "true"
            ):
                log.info(
                    "reusing the volume of an interrupted create",
                    extra={"instance_id": instance_id, "volume_id": volume["VolumeId"]},
                )
                return str(volume["VolumeId"])
        return None

    def _mark_kept(self, instance_id: str, volume_id: str) -> None:
        self._call(
            instance_id,
            "tag the kept volume",
            self.client.create_tags,
            Resources=[volume_id],
            Tags=[{"Key": TAG_KEPT, "Value": "true"}],
        )

    def _kept_volume(self, instance_id: str, volume_id: str) -> Mapping[str, Any]:
        try:
            volumes = self.client.describe_volumes(VolumeIds=[volume_id])["Volumes"]
        except ClientError as exc:
            if _code(exc) in (
                "InvalidVolume.NotFound",
                "InvalidVolume.Malformed",
                "InvalidParameterValue",
            ):
                raise ComputeRequestError(instance_id, f"no volume {volume_id!r}") from None
            raise ComputeError(instance_id, f"describe volume {volume_id}: {exc}") from exc
        if not volumes or _tags(volumes[0]).get(TAG_KEPT) != "true":
            raise ComputeRequestError(
                instance_id, f"volume {volume_id!r} is not a kept troveless volume"
            )
        if volumes[0]["State"] != "available":
            raise ComputeRequestError(
                instance_id, f"volume {volume_id!r} is {volumes[0]['State']}, not available"
            )
        return dict(volumes[0])

    def _delete_volume(self, instance_id: str, volume_id: str) -> None:
        try:
            self._wait_volume(volume_id, "available", instance_id)
            self.client.delete_volume(VolumeId=volume_id)
        except ClientError as exc:
            if _code(exc) != "InvalidVolume.NotFound":
                raise ComputeError(instance_id, f"delete volume {volume_id}: {exc}") from exc

    # ------------------------------------------------------------------ reading
    def _describe_instances(self, filters: list[dict[str, Any]]) -> list[dict[str, Any]]:
        filters = [*filters, {"Name": "instance-state-name", "Values": _LIVE_STATES}]
        out: list[dict[str, Any]] = []
        try:
            for page in self.client.get_paginator("describe_instances").paginate(Filters=filters):
                for reservation in page["Reservations"]:
                    out.extend(reservation["Instances"])
        except (ClientError, BotoCoreError) as exc:
            raise ComputeError("*", f"describe instances: {exc}") from exc
        return out

    def _find_instance(self, instance_id: str) -> dict[str, Any] | None:
        found = self._describe_instances([{"Name": f"tag:{TAG_INSTANCE}", "Values": [instance_id]}])
        if len(found) > 1:
            log.warning(
                "several instances carry one instance id; using the oldest",
                extra={"instance_id": instance_id, "servers": [i["InstanceId"] for i in found]},
            )
        return min(found, key=lambda i: i["LaunchTime"]) if found else None

    def _require(self, instance_id: str) -> dict[str, Any]:
        found = self._find_instance(instance_id) if valid_instance_id(instance_id) else None
        if found is None:
            raise NotFoundError(instance_id, "server")
        return found

    def _instance_volumes(self, instance_id: str) -> list[dict[str, Any]]:
        try:
            volumes: list[dict[str, Any]] = self.client.describe_volumes(
                Filters=[{"Name": f"tag:{TAG_INSTANCE}", "Values": [instance_id]}]
            )["Volumes"]
        except (ClientError, BotoCoreError) as exc:
            raise ComputeError(instance_id, f"describe volumes: {exc}") from exc
        return volumes

    def _volume_sizes(self, volume_ids: Iterable[str]) -> dict[str, int]:
        ids = sorted({v for v in volume_ids if v})
        if not ids:
            return {}
        try:
            volumes = self.client.describe_volumes(Filters=[{"Name": "volume-id", "Values": ids}])[
                "Volumes"
            ]
        except (ClientError, BotoCoreError) as exc:
            raise ComputeError("*", f"describe volumes: {exc}") from exc
        return {v["VolumeId"]: int(v["Size"]) for v in volumes}

    def _info(
        self, instance: Mapping[str, Any], sizes: Mapping[str, int] | None = None
    ) -> ServerInfo:
        tags = _tags(instance)
        volume_id = tags.get(TAG_VOLUME, "")
        if sizes is None:
            sizes = self._volume_sizes([volume_id])
        launched = instance["LaunchTime"]
        if isinstance(launched, datetime) and launched.tzinfo is None:
            launched = launched.replace(tzinfo=UTC)
        state = instance["State"]["Name"]
        reason = instance.get("StateReason", {}).get("Message") if state != "running" else None
        return ServerInfo(
            server_id=instance["InstanceId"],
            instance_id=tags.get(TAG_INSTANCE, ""),
            status=_STATUS.get(state, ServerStatus.ERROR),
            address=instance.get("PrivateIpAddress", ""),
            zone=instance["Placement"]["AvailabilityZone"],
            flavor=FlavorSpec(
                ram_mb=int(tags.get(TAG_RAM, "1")), vcpus=int(tags.get(TAG_VCPUS, "1"))
            ),
            volume_id=volume_id,
            volume_gb=sizes.get(volume_id, 0),
            volume_kind=VOLUME_KIND,
            volume_path=DATA_VOLUME_PATH,
            limits_enforced=True,
            limits_note=None,
            agent_pid=None,
            agent_alive=None,
            created_at=launched,
            status_reason=reason,
            details={
                "instance_type": instance.get("InstanceType", ""),
                "image": instance.get("ImageId", ""),
                "ec2_state": state,
                "data_device": DATA_DEVICE,
            },
        )

    # ------------------------------------------------------------------ waiting and calling
    def _call(self, instance_id: str, what: str, method: Callable[..., Any], **kwargs: Any) -> Any:
        try:
            return method(**kwargs)
        except (ClientError, BotoCoreError) as exc:
            raise ComputeError(instance_id, f"{what}: {exc}") from exc

    def _poll(self, instance_id: str, what: str, check: Callable[[], bool]) -> None:
        deadline = time.monotonic() + self.timeout
        while not check():
            if time.monotonic() > deadline:
                raise ComputeError(
                    instance_id, f"timed out after {self.timeout:g} s waiting for {what}"
                )
            time.sleep(self.poll_interval)

    def _wait_instance(self, server_id: str, state: str, instance_id: str) -> dict[str, Any]:
        seen: dict[str, Any] = {}

        def reached() -> bool:
            try:
                reservations = self.client.describe_instances(InstanceIds=[server_id])[
                    "Reservations"
                ]
            except ClientError as exc:
                if _code(exc) == "InvalidInstanceID.NotFound" and state == "terminated":
                    return True
                raise ComputeError(instance_id, f"describe {server_id}: {exc}") from exc
            instance = reservations[0]["Instances"][0]
            seen.update(instance)
            current = instance["State"]["Name"]
            if current == "terminated" and state != "terminated":
                reason = instance.get("StateReason", {}).get("Message", "no reason given")
                raise ComputeError(instance_id, f"instance {server_id} terminated: {reason}")
            return bool(current == state)

        self._poll(instance_id, f"instance {server_id} to be {state}", reached)
        return seen

    def _wait_volume(self, volume_id: str, state: str, instance_id: str) -> None:
        def reached() -> bool:
            try:
                volume = self.client.describe_volumes(VolumeIds=[volume_id])["Volumes"][0]
            except ClientError as exc:
                raise ComputeError(instance_id, f"describe volume {volume_id}: {exc}") from exc
            if volume["State"] == "error":
                raise ComputeError(instance_id, f"volume {volume_id} is in error")
            return bool(volume["State"] == state)

        self._poll(instance_id, f"volume {volume_id} to be {state}", reached)

    def _wait_modification(self, volume_id: str, size: int, instance_id: str) -> None:
        """EBS takes the new size once the modification is "optimizing" (usable) or done."""

        def reached() -> bool:
            try:
                mods = self.client.describe_volumes_modifications(VolumeIds=[volume_id])[
                    "VolumesModifications"
                ]
            except ClientError as exc:
                raise ComputeError(instance_id, f"describe volume modification: {exc}") from exc
            # The modification to this size (an earlier one may have the same start second).
            ours = [m for m in mods if int(m.get("TargetSize", 0)) == size]
            if not ours:
                return False
            latest = max(ours, key=lambda m: m["StartTime"])
            if latest["ModificationState"] == "failed":
                raise ComputeError(
                    instance_id,
                    f"growing volume {volume_id} failed: {latest.get('StatusMessage')}",
                )
            return latest["ModificationState"] in ("optimizing", "completed")

        self._poll(instance_id, f"volume {volume_id} to grow to {size} GB", reached)
