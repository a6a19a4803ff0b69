"""Redis backups: an RDB snapshot streamed from the server (`redis-cli --rdb -`).

Backup. redis-cli asks the server for a replica's full synchronisation and writes the RDB it
receives to stdout; the server forks and streams the snapshot, so nothing is written on the
volume. redis-cli runs as the datastore's user over the private socket, as the admin user, its
password in REDISCLI_AUTH (never on a command line). Redis has no LSN: the backup's position is
the server's `master_repl_offset` at the end.

Restore. The snapshot becomes `dump.rdb` in the new data/ (verified first, like every restore).
With `appendonly yes` Redis would load the (absent) AOF instead of the RDB and start empty, so the
first start runs with `appendonly no`, loads the RDB, and then `CONFIG SET appendonly yes`
rewrites an AOF from the loaded data (waited for) before the normal configuration is back.
ACL users are not part of an RDB: the restored instance has its own admin user only.
"""

from __future__ import annotations

import time
from pathlib import Path

from guest_agent.backup.common import (
    BackupOutcome,
    BackupRequest,
    ChainLink,
    make_private_dir,
    restore_volume,
    upload_tool_output,
)
from guest_agent.backup.process import ToolProcess
from guest_agent.backup.stream import download_backup
from guest_agent.datastores.base import DatastoreOperationError, find_binary, wait_until
from guest_agent.datastores.redis import RedisManager
from shared.ports import BlobStore
from shared.rules.names import ADMIN_USER

AOF_REWRITE_TIMEOUT = 600.0


def backup(manager: RedisManager, blobs: BlobStore, request: BackupRequest) -> BackupOutcome:
    manager._require_running()
    if request.incremental:
        raise ValueError("incremental: Redis backups are full snapshots")
    command = [
        find_binary("redis-cli"),
        "-s",
        str(manager.socket_path),
        "--user",
        ADMIN_USER,
        "--no-auth-warning",
        "--rdb",
        "-",
    ]
    with ToolProcess(
        manager, command, stdout_pipe=True, env={"REDISCLI_AUTH": manager._admin_secret()}
    ) as tool:
        stored = upload_tool_output(
            blobs, tool, request, datastore="redis", stream_format="rdb-zstd-aesgcm"
        )
    with manager._connect() as client:
        info = client.info("server")
        replication = client.info("replication")
    offset = replication.get("master_repl_offset")
    return BackupOutcome(
        stored,
        None,
        None if offset is None else str(offset),
        str(info.get("redis_version", "unknown")),
    )


def _loaded(manager: RedisManager) -> bool:
    """Whether the server finished loading its snapshot (it answers LOADING until then)."""
    try:
        with manager._connect(timeout=2.0) as client:
            return bool(client.ping())
    except DatastoreOperationError:
        return False


def restore(
    manager: RedisManager,
    blobs: BlobStore,
    chain: list[ChainLink],
    *,
    admin_password: str,
    overrides: dict[str, object],
) -> None:
    if len(chain) != 1 or chain[0].incremental:
        raise ValueError("chain: a Redis restore takes exactly one full backup")
    link = chain[0]

    def build_data(staging: Path) -> Path:
        target = make_private_dir(manager, staging / "data")
        dump = target / "dump.rdb"
        with dump.open("wb") as sink:
            download_backup(
                blobs,
                sink,
                backup_id=link.backup_id,
                location=link.location,
                sha256=link.sha256,
                size_bytes=link.size_bytes,
                data_key=link.data_key,
            )
        dump.chmod(0o600)
        manager.run_as.chown(dump)
        return target

    def start() -> None:
        manager._initialize(admin_password)  # the ACL file with this instance's admin
        settings = manager.effective_settings()
        wants_aof = bool(settings.get("appendonly", True))
        manager._render_config({**settings, "appendonly": False})
        try:
            manager._start_server()
        finally:
            manager._render_config(settings)
        deadline = time.monotonic() + manager.start_timeout
        if not wait_until(lambda: _loaded(manager), deadline, interval=0.02):
            raise DatastoreOperationError("redis: the snapshot did not load in time")
        if wants_aof:
            with manager._connect() as client:
                client.config_set("appendonly", "yes")

                def rewritten() -> bool:
                    persistence = client.info("persistence")
                    return not persistence.get("aof_rewrite_in_progress") and not persistence.get(
                        "aof_rewrite_scheduled"
                    )

                deadline = time.monotonic() + AOF_REWRITE_TIMEOUT
                if not wait_until(rewritten, deadline, interval=0.02):
                    raise DatastoreOperationError("redis: the AOF rewrite did not finish in time")

    restore_volume(
        manager,
        admin_password=admin_password,
        overrides=overrides,
        build_data=build_data,
        start=start,
    )
