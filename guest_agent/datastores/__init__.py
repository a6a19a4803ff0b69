"""Datastore managers behind one interface (`DatastoreManager`), looked up by datastore type.

Each manager's module (and its driver: PyMySQL, psycopg, redis-py) is imported only when asked
for: a guest runs one datastore, and its boot time is part of every provision.
"""

from __future__ import annotations

import importlib

from guest_agent.datastores.base import DatastoreError, DatastoreManager

# datastore type -> (module, class)
MANAGER_CLASSES: dict[str, tuple[str, str]] = {
    "mariadb": ("guest_agent.datastores.mariadb", "MariaDBManager"),
    "postgresql": ("guest_agent.datastores.postgresql", "PostgreSQLManager"),
    "redis": ("guest_agent.datastores.redis", "RedisManager"),
}


class UnknownDatastoreError(DatastoreError, ValueError):
    """No manager exists for the requested datastore type."""


def manager_for(datastore_type: str) -> type[DatastoreManager]:
    """The manager class for "mariadb", "postgresql" or "redis"."""
    try:
        module_name, class_name = MANAGER_CLASSES[datastore_type]
    except KeyError:
        known = ", ".join(sorted(MANAGER_CLASSES))
        raise UnknownDatastoreError(
            f"no manager for datastore {datastore_type!r} (known: {known})"
        ) from None
    manager: type[DatastoreManager] = getattr(importlib.import_module(module_name), class_name)
    return manager


__all__ = ["MANAGER_CLASSES", "DatastoreManager", "UnknownDatastoreError", "manager_for"]
