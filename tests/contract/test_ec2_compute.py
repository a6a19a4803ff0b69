"""Ec2Compute against a real moto server (EC2 + EBS as moto implements them, no Docker).

moto runs no VMs: instances go pending -> running at once and the guest never boots, so these
tests check what the adapter asks of EC2 (instances, tags, user-data, volumes, attachments,
instance types, sizes) and that it cleans up; the guest side is the cloud-config's business.
"""

from __future__ import annotations

import base64
import re
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from shared.adapters.aws.ec2_compute import (
    DATA_DEVICE,
    TAG_INSTANCE,
    TAG_KEPT,
    TAG_VOLUME,
    Ec2Compute,
    make_ec2_client,
)
from shared.adapters.guest_cloud_config import user_data_from_cloud_config
from shared.errors import ComputeError, ComputeRequestError, NotFoundError
from shared.ports import Compute, FlavorSpec, ServerStatus
from tests.contract import moto_server

SMALL = FlavorSpec(ram_mb=512, vcpus=1)
LARGER = FlavorSpec(ram_mb=2048, vcpus=2)
UNMAPPED = FlavorSpec(ram_mb=3000, vcpus=3)
ZONES = ("us-east-1a", "us-east-1b")
IMAGES = {"mariadb:11.4": "ami-0a1b2c3d4e5f60001", "postgresql": "ami-0a1b2c3d4e5f60002"}
INSTANCE_TYPES = {SMALL: "t3.micro", LARGER: "t3.medium"}
USER_DATA = {
    "instance_id": "5f0c1c38-0a4e-4d55-9f0e-6f8b4b0a1a11",
    "datastore_type": "mariadb",
    "datastore_version": "11.4",
    "command_queue": "guest-5f0c1c38",
    "events_queue": "guest-events",
    "secret": base64.b64encode(b"s" * 32).decode(),
    "profile": "aws",
}


def _ec2(endpoint: str) -> Any:
    return make_ec2_client(
        endpoint,
        region=moto_server.REGION,
        access_key=moto_server.ACCESS_KEY,
        secret_key=moto_server.SECRET_KEY,
    )


def _open(endpoint: str) -> Ec2Compute:
    return Ec2Compute(
        _ec2(endpoint),
        images=IMAGES,
        instance_types=INSTANCE_TYPES,
        zones=ZONES,
        poll_interval=0.05,
        timeout=30,
    )


def _troveless_volumes(ec2: Any) -> list[dict[str, Any]]:
    volumes: list[dict[str, Any]] = ec2.describe_volumes(
        Filters=[{"Name": "tag-key", "Values": [TAG_INSTANCE]}]
    )["Volumes"]
    return volumes


def _live_instances(ec2: Any) -> list[dict[str, Any]]:
    reservations = ec2.describe_instances(
        Filters=[
            {"Name": "tag-key", "Values": [TAG_INSTANCE]},
            {
                "Name": "instance-state-name",
                "Values": ["pending", "running", "stopping", "stopped"],
            },
        ]
    )["Reservations"]
    return [i for r in reservations for i in r["Instances"]]


@pytest.fixture
def ec2(moto_endpoint: str) -> Any:
    return _ec2(moto_endpoint)


@pytest.fixture
def compute(moto_endpoint: str, ec2: Any) -> Iterator[Ec2Compute]:
    """An adapter on the session's moto server; every server and troveless volume is removed
    after the test, and leftovers of the adapter's own deletes fail it."""
    adapter = _open(moto_endpoint)
    assert _live_instances(ec2) == [], "a previous test left instances"
    try:
        yield adapter
    finally:
        for server in adapter.list_servers():
            adapter.delete_server(server.instance_id)
        for volume in _troveless_volumes(ec2):
            ec2.delete_volume(VolumeId=volume["VolumeId"])


def test_adapter_satisfies_the_protocol(compute: Ec2Compute) -> None:
    assert isinstance(compute, Compute)
    assert compute.zones() == list(ZONES)


def test_create_boots_the_image_with_user_data_tags_and_an_attached_volume(
    compute: Ec2Compute, ec2: Any
) -> None:
    info = compute.create_server("inst-a", SMALL, 3, "us-east-1b", dict(USER_DATA))

    assert info.status == ServerStatus.ACTIVE
    assert (info.instance_id, info.zone, info.flavor) == ("inst-a", "us-east-1b", SMALL)
    assert (info.volume_gb, info.volume_kind) == (3, "ebs")
    assert info.address and info.server_id.startswith("i-")
    assert compute.get_server("inst-a") == info

    instance = ec2.describe_instances(InstanceIds=[info.server_id])["Reservations"][0]["Instances"][
        0
    ]
    tags = {t["Key"]: t["Value"] for t in instance["Tags"]}
    assert tags[TAG_INSTANCE] == "inst-a"
    assert tags[TAG_VOLUME] == info.volume_id
    assert instance["ImageId"] == IMAGES["mariadb:11.4"]
    assert instance["InstanceType"] == "t3.micro"
    assert instance["Placement"]["AvailabilityZone"] == "us-east-1b"
    assert instance["MetadataOptions"]["HttpTokens"] == "required"  # IMDSv2: user-data has secrets

    volume = ec2.describe_volumes(VolumeIds=[info.volume_id])["Volumes"][0]
    assert (volume["Size"], volume["State"], volume["AvailabilityZone"]) == (
        3,
        "in-use",
        "us-east-1b",
    )
    assert [(a["InstanceId"], a["Device"]) for a in volume["Attachments"]] == [
        (info.server_id, DATA_DEVICE)
    ]

    raw = ec2.describe_instance_attribute(InstanceId=info.server_id, Attribute="userData")
    cloud_config = base64.b64decode(raw["UserData"]["Value"]).decode()
    assert user_data_from_cloud_config(cloud_config) == USER_DATA
    assert info.volume_id.replace("-", "") in cloud_config  # the guest finds its volume by id


def test_repeated_create_returns_the_same_server(compute: Ec2Compute, ec2: Any) -> None:
    first = compute.create_server("inst-a", SMALL, 1, None, dict(USER_DATA))
    again = compute.create_server("inst-a", SMALL, 1, None, dict(USER_DATA))
    assert (again.server_id, again.volume_id) == (first.server_id, first.volume_id)
    assert len(_live_instances(ec2)) == 1
    assert len(_troveless_volumes(ec2)) == 1


def test_a_repeated_create_reuses_the_volume_an_interrupted_one_left(
    compute: Ec2Compute, ec2: Any
) -> None:
    leftover = ec2.create_volume(
        AvailabilityZone="us-east-1a",
        Size=1,
        TagSpecifications=[
            {"ResourceType": "volume", "Tags": [{"Key": TAG_INSTANCE, "Value": "inst-a"}]}
        ],
    )["VolumeId"]
    info = compute.create_server("inst-a", SMALL, 1, "us-east-1a", dict(USER_DATA))
    assert info.volume_id == leftover
    assert [v["VolumeId"] for v in _troveless_volumes(ec2)] == [leftover]


def test_unchosen_zones_are_spread(compute: Ec2Compute) -> None:
    zones = [compute.create_server(f"inst-{n}", SMALL, 1, None, dict(USER_DATA)).zone for n in "ab"]
    assert sorted(zones) == sorted(ZONES)


@pytest.mark.parametrize(
    "asked",
    [
        (SMALL, 1, "us-east-1f", USER_DATA),  # a zone not configured
        (SMALL, 0, None, USER_DATA),
        (UNMAPPED, 1, None, USER_DATA),  # no instance type for the flavor
        (SMALL, 1, None, {**USER_DATA, "datastore_type": "redis"}),  # no image
    ],
)
def test_impossible_requests_are_refused_and_leave_nothing(
    compute: Ec2Compute, ec2: Any, asked: tuple[FlavorSpec, int, str | None, dict[str, Any]]
) -> None:
    flavor, volume_gb, zone, user_data = asked
    with pytest.raises(ComputeRequestError):
        compute.create_server("inst-a", flavor, volume_gb, zone, dict(user_data))
    assert compute.list_servers() == []
    assert _troveless_volumes(ec2) == []


def test_a_failed_launch_leaves_no_volume(moto_endpoint: str, ec2: Any) -> None:
    """EC2 refuses to launch into a subnet that does not exist: the volume made first goes."""
    compute = Ec2Compute(
        _ec2(moto_endpoint),
        images=IMAGES,
        instance_types=INSTANCE_TYPES,
        zones=ZONES,
        subnets={"us-east-1a": "subnet-0123456789abcdef0"},
        poll_interval=0.05,
        timeout=30,
    )
    try:
        with pytest.raises(ComputeError, match="launch") as failed:
            compute.create_server("inst-a", SMALL, 1, "us-east-1a", dict(USER_DATA))
        assert not isinstance(failed.value, ComputeRequestError)
        assert compute.list_servers() == []
        assert _troveless_volumes(ec2) == []
    finally:
        for server in compute.list_servers():
            compute.delete_server(server.instance_id)


def test_stop_start_reboot(compute: Ec2Compute, ec2: Any) -> None:
    info = compute.create_server("inst-a", SMALL, 1, None, dict(USER_DATA))

    def ec2_state() -> str:
        instance = ec2.describe_instances(InstanceIds=[info.server_id])["Reservations"][0][
            "Instances"
        ][0]
        return str(instance["State"]["Name"])

    assert compute.stop_server("inst-a").status == ServerStatus.SHUTOFF
    assert ec2_state() == "stopped"
    assert compute.stop_server("inst-a").status == ServerStatus.SHUTOFF  # repeatable
    assert compute.start_server("inst-a").status == ServerStatus.ACTIVE
    assert ec2_state() == "running"
    assert compute.start_server("inst-a").status == ServerStatus.ACTIVE  # repeatable
    assert compute.reboot_server("inst-a").status == ServerStatus.ACTIVE
    compute.stop_server("inst-a")
    assert compute.reboot_server("inst-a").status == ServerStatus.ACTIVE  # boots a stopped one


def test_resize_flavor_changes_the_instance_type_and_keeps_the_state(
    compute: Ec2Compute, ec2: Any
) -> None:
    info = compute.create_server("inst-a", SMALL, 1, None, dict(USER_DATA))
    resized = compute.resize_flavor("inst-a", LARGER)
    assert (resized.flavor, resized.status) == (LARGER, ServerStatus.ACTIVE)
    instance = ec2.describe_instances(InstanceIds=[info.server_id])["Reservations"][0]["Instances"][
        0
    ]
    assert instance["InstanceType"] == "t3.medium"
    assert compute.get_server("inst-a").flavor == LARGER  # type: ignore[union-attr]

    compute.stop_server("inst-a")
    back = compute.resize_flavor("inst-a", SMALL)
    assert (back.flavor, back.status) == (SMALL, ServerStatus.SHUTOFF)
    with pytest.raises(ComputeRequestError):
        compute.resize_flavor("inst-a", UNMAPPED)


def test_resize_volume_grows_only(compute: Ec2Compute, ec2: Any) -> None:
    info = compute.create_server("inst-a", SMALL, 1, None, dict(USER_DATA))
    grown = compute.resize_volume("inst-a", 2)
    assert (grown.volume_gb, grown.status) == (2, ServerStatus.ACTIVE)
    assert ec2.describe_volumes(VolumeIds=[info.volume_id])["Volumes"][0]["Size"] == 2
    assert compute.resize_volume("inst-a", 2).volume_gb == 2  # repeatable
    with pytest.raises(ComputeRequestError):
        compute.resize_volume("inst-a", 1)
    compute.stop_server("inst-a")
    stopped = compute.resize_volume("inst-a", 3)
    assert (stopped.volume_gb, stopped.status) == (3, ServerStatus.SHUTOFF)


def test_delete_leaves_no_instance_and_no_volume(compute: Ec2Compute, ec2: Any) -> None:
    compute.create_server("inst-a", SMALL, 1, None, dict(USER_DATA))
    compute.delete_server("inst-a")
    assert compute.get_server("inst-a") is None
    assert _live_instances(ec2) == []
    assert _troveless_volumes(ec2) == []
    compute.delete_server("inst-a")  # repeatable
    compute.delete_server("inst-never-existed")


def test_kept_volume_is_attached_to_a_new_server_and_grown(compute: Ec2Compute, ec2: Any) -> None:
    first = compute.create_server("inst-a", SMALL, 1, "us-east-1a", dict(USER_DATA))
    compute.delete_server("inst-a", keep_volume=True)
    assert compute.get_server("inst-a") is None
    [kept] = _troveless_volumes(ec2)
    assert kept["VolumeId"] == first.volume_id and kept["State"] == "available"
    assert {t["Key"]: t["Value"] for t in kept["Tags"]}[TAG_KEPT] == "true"

    with pytest.raises(ComputeRequestError):  # EBS volumes stay in their zone
        compute.create_server(
            "inst-a", SMALL, 2, "us-east-1b", dict(USER_DATA), volume_from=first.volume_id
        )
    again = compute.create_server(
        "inst-a", SMALL, 2, None, dict(USER_DATA), volume_from=first.volume_id
    )
    assert (again.volume_id, again.volume_gb, again.zone) == (first.volume_id, 2, "us-east-1a")
    assert again.server_id != first.server_id
    with pytest.raises(ComputeRequestError):
        compute.create_server("inst-b", SMALL, 1, None, dict(USER_DATA), volume_from="vol-0bad")


def test_calls_on_a_missing_server_raise_not_found(compute: Ec2Compute) -> None:
    for call in (compute.stop_server, compute.start_server, compute.reboot_server):
        with pytest.raises(NotFoundError):
            call("inst-missing")
    with pytest.raises(NotFoundError):
        compute.resize_volume("inst-missing", 2)
    with pytest.raises(NotFoundError):
        compute.resize_flavor("inst-missing", LARGER)


def test_a_new_adapter_adopts_servers_and_reaps_orphans(
    compute: Ec2Compute, moto_endpoint: str, ec2: Any
) -> None:
    compute.create_server("inst-known", SMALL, 1, None, dict(USER_DATA))
    compute.create_server("inst-orphan", SMALL, 1, None, dict(USER_DATA))
    compute.stop_server("inst-orphan")

    restarted = _open(moto_endpoint)
    adopted = {s.instance_id: s.status for s in restarted.adopt()}
    assert adopted == {"inst-known": ServerStatus.ACTIVE, "inst-orphan": ServerStatus.SHUTOFF}
    assert [s.instance_id for s in restarted.orphans(["inst-known"])] == ["inst-orphan"]
    restarted.reap("inst-orphan")
    assert restarted.orphans(["inst-known"]) == []
    owners = [
        {t["Key"]: t["Value"] for t in v["Tags"]}[TAG_INSTANCE] for v in _troveless_volumes(ec2)
    ]
    assert owners == ["inst-known"]  # the orphan's volume went with it


# Credentials only this test's EC2 client signs with (moto takes any): if the adapter ever put
# its own keys into a guest's user-data, they would show up there.
CONTROL_PLANE_KEY_ID = "AKIATROVELESSCTRL001"
CONTROL_PLANE_SECRET = "control-plane-secret-never-in-user-data"
AWS_KEY_PATTERNS = (
    re.compile(r"\b(AKIA|ASIA)[A-Z0-9]{16}\b"),
    re.compile(r"aws_(access_key_id|secret_access_key|session_token)", re.IGNORECASE),
    re.compile(r"(AccessKeyId|SecretAccessKey|SessionToken)"),
)


@pytest.fixture
def guest_profile(moto_endpoint: str) -> Iterator[str]:
    """An IAM role and instance profile on the moto server (removed after the test)."""
    iam = boto3.client(
        "iam",
        endpoint_url=moto_endpoint,
        region_name=moto_server.REGION,
        aws_access_key_id=moto_server.ACCESS_KEY,
        aws_secret_access_key=moto_server.SECRET_KEY,
    )
    name = f"guest-{uuid.uuid4().hex[:8]}"
    iam.create_role(RoleName=name, AssumeRolePolicyDocument="{}")
    try:
        arn = str(iam.create_instance_profile(InstanceProfileName=name)["InstanceProfile"]["Arn"])
        try:
            iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=name)
            yield arn
        finally:
            iam.remove_role_from_instance_profile(InstanceProfileName=name, RoleName=name)
            iam.delete_instance_profile(InstanceProfileName=name)
    finally:
        iam.delete_role(RoleName=name)


@pytest.mark.parametrize("given_as", ["arn", "name"])
def test_guests_get_the_instance_profile_and_no_keys_in_user_data(
    moto_endpoint: str, ec2: Any, guest_profile: str, given_as: str
) -> None:
    compute = Ec2Compute(
        make_ec2_client(
            moto_endpoint,
            region=moto_server.REGION,
            access_key=CONTROL_PLANE_KEY_ID,
            secret_key=CONTROL_PLANE_SECRET,
        ),
        images=IMAGES,
        instance_types=INSTANCE_TYPES,
        zones=ZONES,
        instance_profile=guest_profile if given_as == "arn" else guest_profile.rsplit("/", 1)[1],
        poll_interval=0.05,
        timeout=30,
    )
    try:
        info = compute.create_server("inst-a", SMALL, 1, None, dict(USER_DATA))

        [instance] = ec2.describe_instances(InstanceIds=[info.server_id])["Reservations"][0][
            "Instances"
        ]
        assert instance["IamInstanceProfile"]["Arn"] == guest_profile
        [association] = ec2.describe_iam_instance_profile_associations(
            Filters=[{"Name": "instance-id", "Values": [info.server_id]}]
        )["IamInstanceProfileAssociations"]
        assert association["IamInstanceProfile"]["Arn"] == guest_profile

        raw = ec2.describe_instance_attribute(InstanceId=info.server_id, Attribute="userData")
        cloud_config = base64.b64decode(raw["UserData"]["Value"]).decode()
        assert user_data_from_cloud_config(cloud_config) == USER_DATA  # all it was given
        assert CONTROL_PLANE_KEY_ID not in cloud_config
        assert CONTROL_PLANE_SECRET not in cloud_config
        for pattern in AWS_KEY_PATTERNS:
            assert pattern.search(cloud_config) is None, pattern.pattern
    finally:
        for server in compute.list_servers():
            compute.delete_server(server.instance_id)
        for volume in _troveless_volumes(ec2):
            ec2.delete_volume(VolumeId=volume["VolumeId"])


def test_without_a_profile_guests_are_launched_without_one(compute: Ec2Compute, ec2: Any) -> None:
    info = compute.create_server("inst-a", SMALL, 1, None, dict(USER_DATA))
    [instance] = ec2.describe_instances(InstanceIds=[info.server_id])["Reservations"][0][
        "Instances"
    ]
    assert "IamInstanceProfile" not in instance


def test_an_unknown_profile_is_refused_and_leaves_nothing(moto_endpoint: str, ec2: Any) -> None:
    compute = Ec2Compute(
        _ec2(moto_endpoint),
        images=IMAGES,
        instance_types=INSTANCE_TYPES,
        zones=ZONES,
        instance_profile="arn:aws:iam::123456789012:instance-profile/never-made",
        poll_interval=0.05,
        timeout=30,
    )
    try:
        with pytest.raises(ComputeError, match="launch"):
            compute.create_server("inst-a", SMALL, 1, None, dict(USER_DATA))
        assert compute.list_servers() == []
        assert _troveless_volumes(ec2) == []
    finally:
        for server in compute.list_servers():
            compute.delete_server(server.instance_id)
