"""Flavors: the compute sizes an instance can be created or resized to."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from shared.models.base import DomainModel, Name


class Flavor(DomainModel):
    """A compute size. `id` is a string because Nova's flavor ids are ("1", or a UUID)."""

    id: Annotated[str, Field(min_length=1, max_length=255)]
    name: Name
    ram_mb: Annotated[int, Field(ge=1)]
    vcpus: Annotated[int, Field(ge=1)]
    disk_gb: Annotated[int, Field(ge=0)] = 0
