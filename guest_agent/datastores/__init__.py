"""Datastore managers behind one interface (`DatastoreManager`), looked up by datastore type."""

from __future__ import annotations

from guest_agent.datastores.base import DatastoreError, DatastoreManager
from guest_agent.datastores.mariadb import MariaDBManager
from guest_agent.datastores.postgresql import PostgreSQLManager
from guest_agent.datastores.redis import RedisManager

MANAGERS: dict[str, type[DatastoreManager]] = {
    manager.datastore: manager for manager in (MariaDBManager, PostgreSQLManager, RedisManager)
}


class UnknownDatastoreError(DatastoreError, ValueError):
    """No manager exists for the requested datastore type."""


def manager_for(datastore_type: str) -> type[DatastoreManager]:
    """The manager class for "mariadb", "postgresql" or "redis"."""
    try:
        return MANAGERS[datastore_type]
    except KeyError:
        known = ", ".join(sorted(MANAGERS))
        raise UnknownDatastoreError(
            f"no manager for datastore {datastore_type!r} (known: {known})"
        ) from None


__all__ = ["MANAGERS", "DatastoreManager", "UnknownDatastoreError", "manager_for"]
