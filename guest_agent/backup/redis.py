"""Redis backups: an RDB snapshot streamed from the server (`redis-cli --rdb -`), preceded by
the tenant's ACL users.

Backup. redis-cli asks the server for a replica's full synchronisation and writes the RDB it
receives to stdout; the server forks and streams the snapshot, so nothing is written on the
volume. redis-cli runs as the datastore's user over the private socket, as the admin user, its
password in REDISCLI_AUTH (never on a command line). The server starts the transfer at once:
our configuration sets `repl-diskless-sync-delay 0` (Redis waits 5 s by default for more
replicas to share the fork), and a backup sets it live too for a server started before that.
Redis has no LSN: the backup's position is the server's `master_repl_offset` at the end.

ACL users are not part of an RDB, so the logical stream starts with an ACL section::

    b"TLACL\x01" | length (4 bytes, big-endian) | JSON {"users": [ACL LIST lines]}

followed by the RDB bytes (which start with b"REDIS": a stream without the section, from an
older backup, restores as before). The lines are `ACL LIST`'s: passwords only as `#<sha256>`
hashes, never in plaintext; the admin and `default` users are left out (the restored instance
has its own admin, and root stays off). The section is compressed, encrypted and checksummed
with the rest of the stream.

Restore. The snapshot becomes `dump.rdb` in the new data/ (verified first, like every restore).
With `appendonly yes` Redis would load the (absent) AOF instead of the RDB and start empty, so the
first start runs with `appendonly no`, loads the RDB, and then `CONFIG SET appendonly yes`
rewrites an AOF from the loaded data (waited for) before the normal configuration is back.
The tenant ACL users of the backup are appended to the new ACL file (after the new admin)
before the first start.
"""

from __future__ import annotations

import json
import re
import struct
import time
from pathlib import Path
from typing import BinaryIO

from guest_agent.backup.common import (
    BackupOutcome,
    BackupRequest,
    ChainLink,
    make_private_dir,
    restore_volume,
)
from guest_agent.backup.process import ToolProcess
from guest_agent.backup.stream import BackupChecksumError, download_backup, upload_backup
from guest_agent.datastores.base import DatastoreOperationError, find_binary, wait_until
from guest_agent.datastores.redis import ROOT_USER, RedisManager
from shared.ports import BlobStore
from shared.rules.names import ADMIN_USER

AOF_REWRITE_TIMEOUT = 600.0
DISKLESS_DELAY = "repl-diskless-sync-delay"
ACL_MAGIC = b"TLACL\x01"
_ACL_LENGTH = struct.Struct(">I")
MAX_ACL_SECTION_BYTES = 16 << 20
# An ACL LIST line we carry: a user name, then rules, with passwords only as #<sha256>.
_ACL_LINE = re.compile(r"^user (?P<name>\S+)(?: \S+)*$")
_PLAINTEXT_PASSWORD = re.compile(r"(?:^| )>")


def tenant_acl_lines(manager: RedisManager) -> list[str]:
    """The ACL LIST lines of the tenant's users (not the admin, not `default`)."""
    with manager._connect() as client:
        lines = [str(line) for line in client.acl_list()]
    kept = []
    for line in lines:
        match = _ACL_LINE.match(line)
        if match is None or match["name"] in (ADMIN_USER, ROOT_USER):
            continue
        if _PLAINTEXT_PASSWORD.search(line):
            raise DatastoreOperationError("redis: ACL LIST showed a plaintext password")
        kept.append(line)
    return kept


def acl_section(lines: list[str]) -> bytes:
    body = json.dumps({"users": lines}, separators=(",", ":")).encode()
    return ACL_MAGIC + _ACL_LENGTH.pack(len(body)) + body


class _Prefixed:
    """A readable stream: `prefix`, then everything `source` gives."""

    def __init__(self, prefix: bytes, source: BinaryIO) -> None:
        self._prefix = prefix
        self._source = source

    def read(self, size: int = -1) -> bytes:
        if self._prefix:
            head, self._prefix = self._prefix, b""
            return head
        return self._source.read(size)


class AclSplitter:
    """A sink for a restored stream: takes the ACL section off the front (when there is one)
    and writes the RDB bytes after it into `rdb`; `lines` holds the users afterwards."""

    def __init__(self, rdb: BinaryIO, backup_id: str) -> None:
        self._rdb = rdb
        self._backup_id = backup_id
        self._head = bytearray()
        self._done = False
        self.lines: list[str] = []

    def write(self, data: bytes) -> int:
        if self._done:
            return self._rdb.write(data)
        self._head += data
        if len(self._head) < len(ACL_MAGIC) + _ACL_LENGTH.size:
            return len(data)
        if bytes(self._head[: len(ACL_MAGIC)]) != ACL_MAGIC:
            self._finish(bytes(self._head))  # a backup without the section: all RDB
            return len(data)
        (length,) = _ACL_LENGTH.unpack_from(self._head, len(ACL_MAGIC))
        if length > MAX_ACL_SECTION_BYTES:
            raise BackupChecksumError(self._backup_id, "the ACL section is malformed")
        start = len(ACL_MAGIC) + _ACL_LENGTH.size
        if len(self._head) < start + length:
            return len(data)
        try:
            users = json.loads(bytes(self._head[start : start + length]))["users"]
        except (ValueError, KeyError, TypeError):
            raise BackupChecksumError(self._backup_id, "the ACL section is malformed") from None
        self.lines = [str(line) for line in users]
        self._finish(bytes(self._head[start + length :]))
        return len(data)

    def _finish(self, rest: bytes) -> None:
        self._done = True
        self._head = bytearray()
        if rest:
            self._rdb.write(rest)

    def close(self) -> None:
        if not self._done:
            self._finish(bytes(self._head))


def restorable_acl_lines(lines: list[str]) -> list[str]:
    """The lines to append to the new ACL file: tenant users only, hashed passwords only."""
    kept = []
    for line in lines:
        match = _ACL_LINE.match(line)
        if match is None or "\n" in line or match["name"] in (ADMIN_USER, ROOT_USER):
            continue
        if _PLAINTEXT_PASSWORD.search(line):
            continue
        kept.append(line)
    return kept


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
    section = acl_section(tenant_acl_lines(manager))
    with manager._connect() as client:
        delay = client.config_get(DISKLESS_DELAY).get(DISKLESS_DELAY)
        if str(delay) != "0":
            client.config_set(DISKLESS_DELAY, 0)  # a server started with an older config
    with ToolProcess(
        manager, command, stdout_pipe=True, env={"REDISCLI_AUTH": manager._admin_secret()}
    ) as tool:

        def source_done() -> None:
            tool.finish()  # redis-cli must exit cleanly before the object commits

        stored = upload_backup(
            blobs,
            _Prefixed(section, tool.stdout),  # type: ignore[arg-type]
            backup_id=request.backup_id,
            location=request.location,
            data_key=request.data_key,
            on_end=source_done,
            metadata={"datastore": "redis", "format": "acl-rdb-zstd-aesgcm"},
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
    users: list[str] = []

    def build_data(staging: Path) -> Path:
        target = make_private_dir(manager, staging / "data")
        dump = target / "dump.rdb"
        with dump.open("wb") as rdb:
            sink = AclSplitter(rdb, link.backup_id)
            download_backup(
                blobs,
                sink,  # type: ignore[arg-type]
                backup_id=link.backup_id,
                location=link.location,
                sha256=link.sha256,
                size_bytes=link.size_bytes,
                data_key=link.data_key,
            )
            sink.close()
        users.extend(restorable_acl_lines(sink.lines))
        dump.chmod(0o600)
        manager.run_as.chown(dump)
        return target

    def start() -> None:
        manager._initialize(admin_password)  # the ACL file with this instance's admin
        if users:  # ...and the tenant's users of the backup after it
            admin_only = manager.acl_path.read_text()
            manager._write_file(manager.acl_path, admin_only + "\n".join(users) + "\n")
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
