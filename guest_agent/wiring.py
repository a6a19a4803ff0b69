"""The agent's composition root: the Queue, BlobStore and datastore manager its user-data names.

Like `infra/`, this is the one place in the agent that imports concrete adapters.
"""

from __future__ import annotations

from dataclasses import dataclass

from guest_agent.datastores import DatastoreManager, manager_for
from guest_agent.user_data import AgentConfig, UserDataError
from shared.ports import BlobStore, Clock, Queue
from shared.settings import Profile


@dataclass(frozen=True)
class Backends:
    queue: Queue
    blobs: BlobStore


def build_backends(config: AgentConfig, clock: Clock) -> Backends:
    """Queue and BlobStore adapters for the user-data's profile."""
    user_data = config.user_data
    if user_data.profile is Profile.LOCAL:
        from shared.adapters.local.blob_store import DirectoryBlobStore
        from shared.adapters.local.sqlite_queue import SqliteQueue

        local = user_data.local
        if local is None:  # the model refuses this already; keep mypy and readers sure
            raise UserDataError("local: the local profile needs queue_path and blob_dir")
        return Backends(
            queue=SqliteQueue(local.queue_path, clock),
            blobs=DirectoryBlobStore(local.blob_dir, clock=clock),
        )
    if user_data.profile is Profile.OPENSTACK:
        from zaqarclient.queues.v2 import client as zaqar_client

        from shared.adapters.openstack.swift_blob_store import SwiftBlobStore
        from shared.adapters.openstack.swift_client import SwiftError, tempauth_connection
        from shared.adapters.openstack.zaqar_queue import ZaqarQueue

        openstack = user_data.openstack
        if openstack is None:  # refused by the model already, as for local
            raise UserDataError(
                "openstack: the openstack profile needs its Zaqar and Swift section"
            )
        zaqar = zaqar_client.Client(
            openstack.zaqar_url,
            version=2,
            conf={
                "auth_opts": {
                    "backend": "noauth",
                    "options": {"os_project_id": openstack.zaqar_project_id},
                }
            },
        )
        try:
            swift = tempauth_connection(
                openstack.swift_auth_url,
                openstack.swift_user,
                openstack.swift_key.get_secret_value(),
            )
        except (SwiftError, OSError) as exc:  # the message names the URL, never the key
            raise UserDataError(f"openstack: cannot reach Swift: {exc}") from None
        return Backends(
            queue=ZaqarQueue(zaqar, poll_interval=openstack.queue_poll_interval),
            # The control plane made the container; the guest may only write objects into it.
            blobs=SwiftBlobStore(
                swift.object_store, openstack.backups_container, create_container=False
            ),
        )
    raise UserDataError(f"profile: the guest agent has no {user_data.profile.value} backends")


def build_manager(config: AgentConfig) -> DatastoreManager:
    """The datastore manager for the instance's datastore, on its volume and address."""
    manager_class = manager_for(config.user_data.datastore_type.value)
    return manager_class(
        config.volume_path,
        config.address,
        run_as=config.user_data.run_as,
        ram_mb=config.ram_mb,
        port=config.port,
    )


def close_backends(backends: Backends) -> None:
    """Release what the adapters hold open (database connections)."""
    close = getattr(backends.queue, "close", None)
    if callable(close):
        close()
