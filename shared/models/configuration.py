"""Configuration groups (named sets of datastore parameters attached to instances) and the
per-datastore rule describing one parameter. Checking values against the rules is
shared/rules' job; these models only hold them.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import Field, model_validator

from shared.models.base import DomainModel, Name, ProjectId, UtcDatetime, Uuid
from shared.models.datastore import DatastoreRef

# bool first: in JSON `true` is a bool, never the integer 1.
ConfigValue = bool | int | float | str
ParameterName = Annotated[str, Field(min_length=1, max_length=255)]


class Configuration(DomainModel):
    """A configuration group: `values` applied to every instance in `instance_ids`."""

    id: Uuid
    project_id: ProjectId
    name: Name
    description: str | None = None
    datastore: DatastoreRef
    values: dict[ParameterName, ConfigValue] = Field(default_factory=dict)
    instance_ids: list[Uuid] = Field(default_factory=list)
    created: UtcDatetime
    updated: UtcDatetime

    @model_validator(mode="after")
    def _instances_unique(self) -> Configuration:
        if len(set(self.instance_ids)) != len(self.instance_ids):
            raise ValueError("instance_ids: an instance is listed twice")
        return self


class ParameterType(StrEnum):
    """Parameter types, with the names Trove's validation rules use."""

    INTEGER = "integer"
    FLOAT = "float"
    STRING = "string"
    BOOLEAN = "boolean"


class ConfigurationParameter(DomainModel):
    """The rule for one parameter of one datastore version: its type, bounds, allowed values
    and whether changing it needs a restart (Trove's configuration-parameters resource)."""

    name: ParameterName
    type: ParameterType
    min: int | float | None = None
    max: int | float | None = None
    allowed_values: list[ConfigValue] | None = None
    restart_required: bool = False
    description: str | None = None

    @model_validator(mode="after")
    def _bounds_make_sense(self) -> ConfigurationParameter:
        numeric = self.type in (ParameterType.INTEGER, ParameterType.FLOAT)
        if not numeric and (self.min is not None or self.max is not None):
            raise ValueError(
                f"min, max: only integer and float parameters have bounds, "
                f"{self.name!r} is {self.type.value}"
            )
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min: {self.min} is greater than max {self.max}")
        if self.allowed_values is not None and not self.allowed_values:
            raise ValueError("allowed_values: an empty list allows nothing; omit it instead")
        return self
