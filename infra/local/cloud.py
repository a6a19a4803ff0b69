"""The embedded cloud's composition root: local adapters wired to the ports, by settings.

This is the one place (with `guest_agent/wiring.py` on the guest side) that names concrete
adapters. Layout under `data_dir`:

    state/      DirectoryStateStore (records, leases)
    blobs/      DirectoryBlobStore (backups, published logs)
    queues/     SqliteQueue database, shared by the control plane and the local guests
    compute/    LocalCompute: one directory per server (volume image, user-data, logs)

`EmbeddedCloud` is what `troveless up` runs on whatever the profile: its stores and queue
(local ones here, Swift and Zaqar from infra/openstack/wiring.py) with LocalCompute.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from shared.adapters.local.blob_store import DirectoryBlobStore
from shared.adapters.local.compute import LocalCompute
from shared.adapters.local.sqlite_queue import SqliteQueue
from shared.adapters.local.state_store import DirectoryStateStore
from shared.adapters.local.system_user import DEFAULT_GUEST_USER, ensure_system_user
from shared.clock import SystemClock
from shared.crypto import encode_secret
from shared.ports import JSON, BlobStore, Clock, Queue, StateStore
from shared.services.guest_channel import EVENTS_QUEUE, command_queue_name
from shared.settings import Settings

QUEUE_FILE = "queues.db"


@dataclass
class EmbeddedCloud:
    """The adapters of the embedded cloud: any profile's stores and queue, local compute."""

    settings: Settings
    clock: Clock
    state: StateStore
    blobs: BlobStore
    queue: Queue
    compute: LocalCompute

    def close(self) -> None:
        close = getattr(self.queue, "close", None)
        if callable(close):
            close()


@dataclass
class LocalCloud(EmbeddedCloud):
    """Every local adapter, built once per process from one Settings."""

    state: DirectoryStateStore
    blobs: DirectoryBlobStore
    queue: SqliteQueue
    queue_path: Path
    blob_dir: Path

    @classmethod
    def from_settings(
        cls, settings: Settings, *, guest_user: str = DEFAULT_GUEST_USER
    ) -> LocalCloud:
        root = settings.data_dir
        root.mkdir(parents=True, exist_ok=True)
        os.chmod(root, 0o755)  # guests (another user) traverse it to reach their queue and volume
        clock = SystemClock()
        queue_dir = root / "queues"
        blob_dir = root / "blobs"
        queue_dir.mkdir(exist_ok=True)
        blob_dir.mkdir(exist_ok=True)
        queue_path = queue_dir / QUEUE_FILE
        queue = SqliteQueue(queue_path, clock)
        queue.ensure_queue(
            EVENTS_QUEUE,
            max_receives=settings.queue_max_receives,
            dead_letter_queue=f"{EVENTS_QUEUE}-dlq",
        )
        if os.geteuid() == 0:
            # Local guests run as an unprivileged user and share the queue database: it and
            # the WAL files SQLite creates beside it must belong to that user.
            user = ensure_system_user(guest_user)
            for path in [queue_dir, *queue_dir.iterdir()]:
                os.chown(path, user.uid, user.gid)
            # Guests write into the blob store themselves (published logs, later backups).
            DirectoryBlobStore(blob_dir, clock=clock)  # lays out its directories
            for path in [blob_dir, *(p for p in blob_dir.iterdir() if p.is_dir())]:
                os.chown(path, user.uid, user.gid)
        return cls(
            settings=settings,
            clock=clock,
            state=DirectoryStateStore(
                root / "state", clock, revisions_kept=settings.state_revisions_kept
            ),
            blobs=DirectoryBlobStore(blob_dir, clock=clock),
            queue=queue,
            compute=LocalCompute.from_settings(settings, guest_user=guest_user),
            queue_path=queue_path,
            blob_dir=blob_dir,
        )

    def guest_user_data(
        self, instance_id: str, datastore_type: str, datastore_version: str, secret: bytes
    ) -> JSON:
        """The user-data a local guest boots with; its command queue is created first."""
        commands = command_queue_name(instance_id)
        self.queue.ensure_queue(commands)
        return {
            "instance_id": instance_id,
            "datastore_type": datastore_type,
            "datastore_version": datastore_version,
            "command_queue": commands,
            "events_queue": EVENTS_QUEUE,
            "secret": encode_secret(secret),
            "profile": "local",
            "local": {"queue_path": str(self.queue_path), "blob_dir": str(self.blob_dir)},
            "heartbeat_interval": self.settings.heartbeat_interval,
        }

    def close(self) -> None:
        self.queue.close()
