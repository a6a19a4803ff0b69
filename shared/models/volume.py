"""Data volumes: where a datastore keeps its files."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import Field

from shared.models.base import DomainModel


class VolumeKind(StrEnum):
    """What backs a volume.

    The local profile uses a loop-mounted filesystem image (a hard size limit) or a plain
    directory (no limit: `used_gb` may exceed `size_gb`, which the watchdog reports); the
    cloud profiles use Cinder or EBS volumes.
    """

    LOOP = "loop"
    DIRECTORY = "directory"
    CINDER = "cinder"
    EBS = "ebs"


class Volume(DomainModel):
    """An instance's data volume. `id` is the Cinder/EBS id or the local image/directory
    name; `device` is where the guest finds it (/dev/vdb, /dev/loop3)."""

    kind: VolumeKind
    size_gb: Annotated[int, Field(ge=1)]
    used_gb: Annotated[float, Field(ge=0)] | None = None
    id: str | None = None
    device: str | None = None
    volume_type: str | None = None
