"""Checks and choices the cloud compute adapters (Nova + Cinder, EC2 + EBS) share, made before
anything is created so a refused request leaves nothing behind."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from shared.errors import ComputeRequestError
from shared.ports import JSON, FlavorLike, FlavorSpec

# The same rule as the local driver: instance ids become server names, tags and volume names.
INSTANCE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# Mount point and kind the guest boot script gives the data volume (see guest_cloud_config).
DATA_VOLUME_PATH = "/var/lib/troveless/data"


@dataclass(frozen=True)
class ServerRequest:
    """A create_server request that passed every check."""

    instance_id: str
    flavor: FlavorSpec
    volume_gb: int
    zone: str | None  # None: the adapter picks the least used zone
    image: str
    user_data: JSON


def valid_instance_id(instance_id: object) -> bool:
    return isinstance(instance_id, str) and INSTANCE_ID.fullmatch(instance_id) is not None


def check_instance_id(instance_id: str) -> None:
    if not valid_instance_id(instance_id):
        raise ComputeRequestError(
            str(instance_id), f"invalid instance id (want {INSTANCE_ID.pattern})"
        )


def check_volume_gb(instance_id: str, volume_gb: object) -> int:
    if isinstance(volume_gb, bool) or not isinstance(volume_gb, int) or volume_gb < 1:
        raise ComputeRequestError(
            instance_id, f"volume size must be an integer >= 1 GB, got {volume_gb!r}"
        )
    return volume_gb


def flavor_spec(instance_id: str, flavor: FlavorLike) -> FlavorSpec:
    try:
        return FlavorSpec.of(flavor)
    except (ValueError, TypeError, AttributeError) as exc:
        raise ComputeRequestError(instance_id, f"invalid flavor: {exc}") from None


def image_for(instance_id: str, images: Mapping[str, str], user_data: JSON) -> str:
    """The image for the datastore the user-data names: "<type>:<version>", else "<type>"."""
    kind = str(user_data.get("datastore_type", ""))
    version = str(user_data.get("datastore_version", ""))
    for key in (f"{kind}:{version}", kind):
        if key in images:
            return images[key]
    raise ComputeRequestError(
        instance_id, f"no image configured for datastore {kind!r} version {version!r}"
    )


def check_request(
    instance_id: str,
    flavor: FlavorLike,
    volume_gb: object,
    zone: str | None,
    user_data: JSON,
    *,
    zones: Sequence[str],
    images: Mapping[str, str],
) -> ServerRequest:
    check_instance_id(instance_id)
    spec = flavor_spec(instance_id, flavor)
    size = check_volume_gb(instance_id, volume_gb)
    if zone is not None and zone not in zones:
        raise ComputeRequestError(
            instance_id, f"unknown availability zone {zone!r} (have {list(zones)})"
        )
    try:
        json.dumps(user_data)
    except (TypeError, ValueError) as exc:
        raise ComputeRequestError(instance_id, f"user_data is not JSON: {exc}") from None
    image = image_for(instance_id, images, user_data)
    return ServerRequest(instance_id, spec, size, zone, image, user_data)


def least_used_zone(zones: Sequence[str], zones_in_use: Iterable[str]) -> str:
    """The configured zone holding the fewest servers; ties go to the earlier one."""
    used = Counter(z for z in zones_in_use if z in zones)
    return min(zones, key=lambda z: used[z])
