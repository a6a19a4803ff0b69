"""Datastores (MariaDB, MySQL, PostgreSQL, Redis) and their versions, as operators register
them; and the (type, version) reference that instances, backups and configurations carry.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field, model_validator

from shared.models.base import DomainModel, Name, Uuid


class DatastoreManager(StrEnum):
    """Which guest-agent datastore implementation runs a datastore (Trove's `manager`)."""

    MARIADB = "mariadb"
    MYSQL = "mysql"
    POSTGRESQL = "postgresql"
    REDIS = "redis"


class DatastoreRef(DomainModel):
    """The datastore an instance, backup or configuration belongs to, by name, as Trove
    shows it: `{"type": "mariadb", "version": "10.11"}`."""

    type: Name
    version: Name


class DatastoreVersion(DomainModel):
    """One installable version of a datastore.

    `name` is what tenants ask for ("10.11"); `version` is the exact number ("10.11.6").
    `image` is the Glance image / AMI, or the local profile's binary directory; `packages`
    are what the guest installs on top. Inactive versions cannot be used for new instances.
    """

    id: Uuid
    name: Name
    version: Name
    image: str | None = None
    packages: list[str] = Field(default_factory=list)
    active: bool = True
    default: bool = False


class Datastore(DomainModel):
    """A datastore type with its versions (one record holds them all)."""

    id: Uuid
    name: Name
    manager: DatastoreManager
    versions: list[DatastoreVersion] = Field(default_factory=list)

    @model_validator(mode="after")
    def _versions_consistent(self) -> Datastore:
        ids = [v.id for v in self.versions]
        names = [v.name for v in self.versions]
        if len(set(ids)) != len(ids):
            raise ValueError("versions: two versions share an id")
        if len(set(names)) != len(names):
            raise ValueError("versions: two versions share a name")
        defaults = [v.name for v in self.versions if v.default]
        if len(defaults) > 1:
            raise ValueError(f"versions: only one may be the default, not {defaults}")
        if any(not v.active for v in self.versions if v.default):
            raise ValueError("versions: the default version must be active")
        return self

    @property
    def default_version(self) -> DatastoreVersion | None:
        """The version used when a request names none."""
        return next((v for v in self.versions if v.default), None)

    def find_version(self, name_or_id: str) -> DatastoreVersion | None:
        """A version by name or id, as Trove's API accepts either."""
        return next((v for v in self.versions if name_or_id in (v.name, v.id)), None)
