"""MariaDB physical backups: `mariadb-backup --backup --stream=xbstream`, full or incremental.

Backup. mariadb-backup runs as the datastore's user with a temporary defaults file in run/
(mode 0600) that includes the server's my.cnf and adds the admin credentials, so the password
never appears on a command line. `--extra-lsndir` keeps a copy of `xtrabackup_checkpoints`
(its `to_lsn` is the backup's LSN, the next incremental's `--incremental-lsn`) and of
`mariadb_backup_binlog_info` (the GTID position, when the binlog is on).

Restore. Every link is extracted with `mbstream -x` into its own directory under the staging
area and verified; then `mariadb-backup --prepare` on the full backup and
`--prepare --incremental-dir` for each incremental, in order. The server's first start runs an
init file that re-keys the admin account (`os_admin`) with this instance's password (as a native
hash); the tenant's databases and users are those of the backup.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import time
from pathlib import Path

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
from guest_agent.backup.process import ToolProcess, run_tool
from guest_agent.backup.stream import BackupSourceError
from guest_agent.datastores.base import (
    DatastoreError,
    DatastoreStartError,
    find_binary,
    tail,
    wait_until,
)
from guest_agent.datastores.mariadb import MariaDBManager, native_password_hash
from shared.ports import BlobStore
from shared.rules.names import ADMIN_USER

PREPARE_MEMORY = "256M"
_LSN = re.compile(r"^\d+$")


def _checkpoint_value(path: Path, key: str) -> str | None:
    with contextlib.suppress(FileNotFoundError):
        for line in path.read_text().splitlines():
            name, _, value = line.partition("=")
            if name.strip() == key:
                return value.strip()
    return None


def _admin_login_works(manager: MariaDBManager) -> bool:
    try:
        manager._probe_query(2.0)
    except DatastoreError:
        return False
    return True


def _server_version(manager: MariaDBManager) -> str:
    with manager._connect() as cur:
        cur.execute("SELECT VERSION()")
        row = cur.fetchone()
    return str(row[0]) if row else "unknown"


def backup(manager: MariaDBManager, blobs: BlobStore, request: BackupRequest) -> BackupOutcome:
    manager._require_running()
    if request.incremental and not (request.parent_lsn and _LSN.match(request.parent_lsn)):
        raise ValueError("parent.lsn: an incremental MariaDB backup needs its parent's LSN")
    remove_stale_backup_files(manager)
    run = manager.layout.run
    work = make_private_dir(manager, run / f"backup-{request.backup_id}")
    defaults = run / f"backup-{request.backup_id}.cnf"
    try:
        manager._write_file(
            defaults,
            f"!include {manager.config_path}\n[client]\nuser = {ADMIN_USER}\n"
            f'password = "{manager._admin_secret()}"\n',
            durable=False,
        )
        command = [
            find_binary("mariadb-backup"),
            f"--defaults-file={defaults}",
            "--backup",
            "--stream=xbstream",
            f"--target-dir={work}",
            f"--extra-lsndir={work}",
        ]
        if request.incremental:
            command.append(f"--incremental-lsn={request.parent_lsn}")
        with ToolProcess(manager, command, stdout_pipe=True, cwd=work) as tool:
            stored = upload_tool_output(
                blobs, tool, request, datastore="mariadb", stream_format="xbstream-zstd-aesgcm"
            )
        to_lsn = _checkpoint_value(work / "xtrabackup_checkpoints", "to_lsn")
        if to_lsn is None:
            blobs.delete(request.location)
            raise BackupSourceError("mariadb-backup wrote no to_lsn in xtrabackup_checkpoints")
        position = None
        with contextlib.suppress(FileNotFoundError):
            fields = (work / "mariadb_backup_binlog_info").read_text().split()
            # binlog file, offset, GTID (the GTID is absent when no transaction was logged)
            position = fields[2] if len(fields) >= 3 else None
        return BackupOutcome(stored, to_lsn, position, _server_version(manager))
    finally:
        defaults.unlink(missing_ok=True)
        shutil.rmtree(work, ignore_errors=True)


def restore(
    manager: MariaDBManager,
    blobs: BlobStore,
    chain: list[ChainLink],
    *,
    admin_password: str,
    overrides: dict[str, object],
) -> None:
    backup_tool = find_binary("mariadb-backup")
    mbstream = find_binary("mbstream")

    def build_data(staging: Path) -> Path:
        directories = []
        for i, link in enumerate(chain):
            target = make_private_dir(manager, staging / f"{i:03d}-{link.backup_id}")
            download_into_tool(manager, blobs, link, [mbstream, "-x", "-C", str(target)], target)
            directories.append(target)
        base = directories[0]
        prepare = [backup_tool, "--prepare", f"--use-memory={PREPARE_MEMORY}"]
        run_tool(manager, [*prepare, f"--target-dir={base}"])
        for incremental in directories[1:]:
            run_tool(
                manager, [*prepare, f"--target-dir={base}", f"--incremental-dir={incremental}"]
            )
            shutil.rmtree(incremental)
        return base

    def start() -> None:
        init_file = manager.layout.run / "restore-init.sql"
        pw_hash = native_password_hash(admin_password)
        manager._write_file(
            init_file,
            f"CREATE USER IF NOT EXISTS '{ADMIN_USER}'@'localhost';\n"
            f"ALTER USER '{ADMIN_USER}'@'localhost' IDENTIFIED BY PASSWORD '{pw_hash}';\n"
            f"GRANT ALL PRIVILEGES ON *.* TO '{ADMIN_USER}'@'localhost' WITH GRANT OPTION;\n",
            durable=False,
        )
        try:
            config = manager.config_path.read_text()
            manager._write_file(
                manager.config_path,
                config.replace("[mysqld]\n", f"[mysqld]\ninit-file = {init_file}\n", 1),
            )
            manager._start_server()
            # The socket accepts before the init file has run: wait until the new password works.
            deadline = time.monotonic() + manager.start_timeout
            if not wait_until(lambda: _admin_login_works(manager), deadline, interval=0.05):
                raise DatastoreStartError(
                    f"mariadb: the restored server did not accept {ADMIN_USER}: "
                    f"{tail(manager.layout.log / 'error.log', 800)}"
                )
        finally:
            init_file.unlink(missing_ok=True)
            manager._render_config(manager.effective_settings())

    restore_volume(
        manager,
        admin_password=admin_password,
        overrides=overrides,
        build_data=build_data,
        start=start,
    )
