"""PostgreSQL physical backups: `pg_basebackup -Ft -X fetch -D -` (one tar, WAL included).

Backup. pg_basebackup connects as the admin role (a superuser, so it may replicate) over the
instance's loopback address, which pg_hba allows for replication; its password sits in a
temporary passfile in run/ (mode 0600), never on a command line or in the environment. The
backup's LSN is the "write-ahead log end point" pg_basebackup reports: the first consistent
point of the restored cluster.

Restore. The tar is extracted (`tar -x`) into the staging area and verified, then becomes data/.
The first start replays the included WAL (backup_label) with a temporary pg_hba that trusts only
the admin role on the instance's private socket (mode 0700), long enough to give that role this
instance's password (as a SCRAM verifier); the server then restarts with the normal pg_hba.
"""

from __future__ import annotations

import re
from pathlib import Path

import psycopg
from psycopg import sql

from guest_agent.backup.common import (
    BackupOutcome,
    BackupRequest,
    ChainLink,
    download_into_tool,
    make_private_dir,
    remove_stale_backup_files,
    restore_volume,
    upload_tool_output,
)
from guest_agent.backup.process import ToolProcess
from guest_agent.backup.stream import BackupSourceError
from guest_agent.datastores.base import DatastoreOperationError, find_binary
from guest_agent.datastores.postgresql import (
    PostgreSQLManager,
    postgres_bin_dirs,
    scram_sha256_verifier,
)
from shared.ports import BlobStore
from shared.rules.names import ADMIN_USER

_END_POINT = re.compile(r"write-ahead log end point: ([0-9A-Fa-f]+/[0-9A-Fa-f]+)")


def _server_version(manager: PostgreSQLManager) -> str:
    with manager._connect() as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return str(row[0]) if row else "unknown"


def backup(manager: PostgreSQLManager, blobs: BlobStore, request: BackupRequest) -> BackupOutcome:
    manager._require_running()
    if request.incremental:
        raise ValueError("incremental: PostgreSQL backups are full backups (no incrementals yet)")
    remove_stale_backup_files(manager)
    passfile = manager.layout.run / f"backup-{request.backup_id}.pgpass"
    try:
        manager._write_file(
            passfile,
            f"{manager.address}:{manager.port}:*:{ADMIN_USER}:{manager._admin_secret()}\n",
            durable=False,
        )
        command = [
            find_binary("pg_basebackup", postgres_bin_dirs()),
            "-h",
            manager.address,
            "-p",
            str(manager.port),
            "-U",
            ADMIN_USER,
            "-w",
            "-D",
            "-",
            "-Ft",
            "-X",
            "fetch",
            "-c",
            "fast",
            "-v",
        ]
        with ToolProcess(
            manager, command, stdout_pipe=True, env={"PGPASSFILE": str(passfile)}
        ) as tool:
            report: list[str] = []
            stored = upload_tool_output(
                blobs,
                tool,
                request,
                datastore="postgresql",
                stream_format="tar-zstd-aesgcm",
                report=report,
            )
        match = _END_POINT.search(report[0]) if report else None
        if match is None:
            blobs.delete(request.location)
            raise BackupSourceError("pg_basebackup did not report its write-ahead log end point")
        lsn = match.group(1)
        return BackupOutcome(stored, lsn, lsn, _server_version(manager))
    finally:
        passfile.unlink(missing_ok=True)


def restore(
    manager: PostgreSQLManager,
    blobs: BlobStore,
    chain: list[ChainLink],
    *,
    admin_password: str,
    overrides: dict[str, object],
) -> None:
    if len(chain) != 1 or chain[0].incremental:
        raise ValueError("chain: a PostgreSQL restore takes exactly one full backup")
    tar = find_binary("tar")

    def build_data(staging: Path) -> Path:
        target = make_private_dir(manager, staging / "data")
        extract = [tar, "-x", "-f", "-", "-C", str(target)]
        download_into_tool(manager, blobs, chain[0], extract, target)
        return target

    def start() -> None:
        hba = manager.layout.conf / "pg_hba.conf"
        manager._write_file(hba, f"local all {ADMIN_USER} trust\n")
        try:
            manager._start_server()
            try:
                conn = psycopg.connect(
                    host=str(manager.layout.run),
                    port=manager.port,
                    user=ADMIN_USER,
                    dbname="postgres",
                    autocommit=True,
                    connect_timeout=10,
                )
            except psycopg.Error as exc:
                raise DatastoreOperationError(
                    f"postgresql: cannot connect to re-key: {exc}"
                ) from None
            with conn:
                conn.execute(
                    sql.SQL("ALTER ROLE {} WITH PASSWORD {}").format(
                        sql.Identifier(ADMIN_USER),
                        sql.Literal(scram_sha256_verifier(admin_password)),
                    )
                )
        finally:
            manager._render_config(manager.effective_settings())
        manager._stop_server()
        manager._start_server()

    restore_volume(
        manager,
        admin_password=admin_password,
        overrides=overrides,
        build_data=build_data,
        start=start,
    )
