"""Backups and restores through the guest's command handlers, with real datastores, real data
and the real directory BlobStore.

Each scenario fills a source instance (more than 50 MB of table data or values in each
datastore), backs it up with the `backup` command (data key sealed for the source instance, as
the control plane sends it), restores it with `prepare` + `restore` on a NEW instance (new
volume, new address, new instance key, new admin password) and compares row counts and a
checksum of the rows; Redis also brings its tenant ACL users along. MariaDB also restores an
incremental chain of three. A corrupted object, a missing object and an upload that breaks
mid-way are refused, leaving no object, no server and no data behind.
"""

from __future__ import annotations

import hashlib
import secrets
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from guest_agent import commands
from guest_agent.backup.redis import _loaded as redis_loaded
from guest_agent.backup.stream import new_data_key
from guest_agent.datastores.base import DatastoreManager
from guest_agent.datastores.mariadb import MariaDBManager
from guest_agent.datastores.postgresql import PostgreSQLManager
from guest_agent.datastores.redis import RedisManager, redis_password_hash
from shared.adapters.local.blob_store import DirectoryBlobStore
from shared.crypto import (
    InstanceKeys,
    encode_secret,
    new_instance_secret,
    open_sealed,
    password_context,
    seal,
)
from shared.models.guest import GuestCommandName
from shared.ports import BlobInfo
from tests.integration.datastores.conftest import ADMIN_PASSWORD, ManagerFactory, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.datastore]

MB = 1_000_000
REDIS_USER_PASSWORD = "App-user-Pw-31"


@dataclass
class Instance:
    """One guest: its manager, its key (sealing data keys as the control plane would)."""

    manager: DatastoreManager
    blobs: Any
    instance_id: str
    keys: InstanceKeys

    def context(self) -> commands.CommandContext:
        return commands.CommandContext(
            manager=self.manager,
            open_password=lambda sealed: open_sealed(
                self.keys.passwords, sealed, password_context(self.instance_id)
            ).decode(),
            seal_password=lambda pw: seal(
                self.keys.passwords, pw.encode(), password_context(self.instance_id)
            ),
            admin_password_for_prepare=lambda: f"admin-{self.instance_id[:8]}-Pw",
            volume_info=lambda: {"path": str(self.manager.data_dir)},
            blobs=self.blobs,
        )

    def sealed_key(self, data_key: bytes) -> str:
        """How the control plane sends a data key to this instance."""
        return seal(
            self.keys.passwords,
            encode_secret(data_key).encode(),
            password_context(self.instance_id),
        )

    def run(self, name: GuestCommandName, args: dict[str, Any]) -> Any:
        return commands.execute(self.context(), name, args)


@dataclass(frozen=True)
class Taken:
    backup_id: str
    data_key: bytes
    result: dict[str, Any]
    incremental: bool = False


class FailingUploads:
    """The blob store, except that every put breaks after `limit` bytes."""

    def __init__(self, inner: DirectoryBlobStore, limit: int) -> None:
        self.inner = inner
        self.limit = limit

    def put(
        self, key: str, chunks: Iterable[bytes], metadata: dict[str, str] | None = None
    ) -> BlobInfo:
        def cut() -> Iterator[bytes]:
            sent = 0
            for chunk in chunks:
                sent += len(chunk)
                if sent > self.limit:
                    raise ConnectionError(f"the upload broke after {self.limit} bytes")
                yield chunk

        return self.inner.put(key, cut(), metadata)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.fixture
def blobs() -> Iterator[DirectoryBlobStore]:
    root = Path(tempfile.mkdtemp(prefix="tl-blobs-"))
    try:
        yield DirectoryBlobStore(root, fsync=False)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def factory(run_as: str | None) -> Iterator[ManagerFactory]:
    made = ManagerFactory(run_as)
    try:
        yield made
    finally:
        made.cleanup()


@pytest.fixture(scope="session")
def run_as() -> str | None:
    from tests.integration.datastores.conftest import ensure_run_as_user

    return ensure_run_as_user()


def new_instance(factory: ManagerFactory, cls: type[DatastoreManager], blobs: Any) -> Instance:
    return Instance(
        factory(cls), blobs, str(uuid.uuid4()), InstanceKeys.from_secret(new_instance_secret())
    )


def take_backup(source: Instance, parent: Taken | None = None) -> Taken:
    backup_id = str(uuid.uuid4())
    data_key = new_data_key()
    args: dict[str, Any] = {
        "backup_id": backup_id,
        "location": f"backups/{source.instance_id}/{backup_id}",
        "incremental": parent is not None,
        "parent": None
        if parent is None
        else {"backup_id": parent.backup_id, "lsn": parent.result["lsn"]},
        "encrypted_data_key": source.sealed_key(data_key),
    }
    result = source.run(GuestCommandName.BACKUP, args)
    info = source.blobs.head(result["location"])
    assert (info.size, info.sha256) == (result["size_bytes"], result["sha256"])
    return Taken(backup_id, data_key, result, parent is not None)


def chain_args(target: Instance, chain: list[Taken]) -> dict[str, Any]:
    return {
        "chain": [
            {
                "backup_id": taken.backup_id,
                "location": taken.result["location"],
                "sha256": taken.result["sha256"],
                "size_bytes": taken.result["size_bytes"],
                "encrypted_data_key": target.sealed_key(taken.data_key),
                "incremental": taken.incremental,
            }
            for taken in chain
        ]
    }


def restore_into(target: Instance, chain: list[Taken]) -> Any:
    """Restore as provisioning does: prepare with a restore argument."""
    return target.run(GuestCommandName.PREPARE, {"restore": chain_args(target, chain)})


def assert_nothing_served(target: Instance) -> None:
    manager = target.manager
    assert not manager.is_prepared()
    assert not manager.is_running()
    assert list(manager.layout.data.iterdir()) == []
    assert not (manager.layout.root / "restore").exists()


# --------------------------------------------------------------------------- MariaDB
def mariadb_fingerprint(manager: MariaDBManager) -> tuple[int, int, int]:
    with manager._connect() as cur:
        cur.execute("SELECT COUNT(*) FROM shop.orders")
        (count,) = cur.fetchone()
        cur.execute("CHECKSUM TABLE shop.orders")
        (_, checksum) = cur.fetchone()
        cur.execute("ANALYZE TABLE shop.orders")  # DATA_LENGTH is a statistic
        cur.fetchall()
        cur.execute(
            "SELECT DATA_LENGTH FROM information_schema.TABLES "
            "WHERE TABLE_SCHEMA = 'shop' AND TABLE_NAME = 'orders'"
        )
        (size,) = cur.fetchone()
    return int(count), int(checksum), int(size)


def mariadb_insert(manager: MariaDBManager, first: int, last: int) -> None:
    with manager._connect(read_timeout=120) as cur:
        cur.execute("USE shop")
        cur.execute(
            "INSERT INTO orders SELECT seq, MD5(seq), REPEAT(SHA2(seq, 256), 2) "
            f"FROM seq_{first}_to_{last}"
        )


def test_mariadb_full_and_incremental_chain_restore(
    factory: ManagerFactory, blobs: DirectoryBlobStore
) -> None:
    source = new_instance(factory, MariaDBManager, blobs)
    source.manager.prepare(
        admin_password=ADMIN_PASSWORD, databases=[{"name": "shop"}], users=[], overrides={}
    )
    with source.manager._connect() as cur:  # type: ignore[attr-defined]
        cur.execute(
            "CREATE TABLE shop.orders (id BIGINT PRIMARY KEY, ref CHAR(32), body VARCHAR(200))"
        )
    manager: MariaDBManager = source.manager  # type: ignore[assignment]
    mariadb_insert(manager, 1, 300_000)
    full_state = mariadb_fingerprint(manager)
    assert full_state[2] >= 50 * MB  # real data, not an empty server
    full = take_backup(source)
    assert full.result["data_size_bytes"] >= 50 * MB
    assert full.result["lsn"] and full.result["datastore_version"].startswith("10.")

    mariadb_insert(manager, 300_001, 320_000)
    inc1 = take_backup(source, full)
    with manager._connect() as cur:
        cur.execute("DELETE FROM shop.orders WHERE id BETWEEN 1000 AND 1999")
        cur.execute("UPDATE shop.orders SET ref = 'changed' WHERE id BETWEEN 5000 AND 6999")
    final_state = mariadb_fingerprint(manager)
    inc2 = take_backup(source, inc1)
    assert inc2.result["size_bytes"] < full.result["size_bytes"]

    only_full = new_instance(factory, MariaDBManager, blobs)
    result = restore_into(only_full, [full])
    assert result["restored"] == [full.backup_id]
    assert mariadb_fingerprint(only_full.manager) == full_state  # type: ignore[arg-type]

    chained = new_instance(factory, MariaDBManager, blobs)
    restore_into(chained, [full, inc1, inc2])
    restored: MariaDBManager = chained.manager  # type: ignore[assignment]
    assert mariadb_fingerprint(restored)[:2] == final_state[:2]
    assert restored.probe().status.value == "RUNNING"  # the new admin password works
    restored.restart()  # and the restored datastore is an ordinary one afterwards
    assert mariadb_fingerprint(restored)[:2] == final_state[:2]

    # A corrupted link anywhere in the chain refuses the whole restore.
    path = blobs.data_path(inc1.result["location"])
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x04
    path.write_bytes(bytes(raw))
    corrupt = new_instance(factory, MariaDBManager, blobs)
    with pytest.raises(Exception, match=inc1.backup_id) as refused:
        restore_into(corrupt, [full, inc1, inc2])
    assert type(refused.value).__name__ == "BackupChecksumError"
    assert_nothing_served(corrupt)


# --------------------------------------------------------------------------- PostgreSQL
def postgresql_fingerprint(manager: PostgreSQLManager) -> tuple[int, str, int]:
    with manager._connect("shop") as conn:
        row = conn.execute(
            "SELECT count(*), md5(string_agg(id::text || ref || body, ',' ORDER BY id)), "
            "pg_total_relation_size('orders') FROM orders"
        ).fetchone()
    assert row is not None
    return int(row[0]), str(row[1]), int(row[2])


def test_postgresql_backup_restores_identical_rows(
    factory: ManagerFactory, blobs: DirectoryBlobStore
) -> None:
    source = new_instance(factory, PostgreSQLManager, blobs)
    manager: PostgreSQLManager = source.manager  # type: ignore[assignment]
    manager.prepare(
        admin_password=ADMIN_PASSWORD, databases=[{"name": "shop"}], users=[], overrides={}
    )
    with manager._connect("shop") as conn:
        conn.execute(
            "CREATE TABLE orders AS SELECT g AS id, md5(g::text) AS ref, "
            "repeat(md5((g * 7)::text), 4) AS body FROM generate_series(1, 250000) g"
        )
        conn.execute("ALTER TABLE orders ADD PRIMARY KEY (id)")
    state = postgresql_fingerprint(manager)
    assert state[2] >= 50 * MB
    taken = take_backup(source)
    assert taken.result["data_size_bytes"] >= 50 * MB
    assert "/" in taken.result["lsn"] and taken.result["position"] == taken.result["lsn"]
    # Written after the backup: must not appear in the restore.
    with manager._connect("shop") as conn:
        conn.execute("DELETE FROM orders WHERE id <= 1000")

    target = new_instance(factory, PostgreSQLManager, blobs)
    restore_into(target, [taken])
    restored: PostgreSQLManager = target.manager  # type: ignore[assignment]
    assert postgresql_fingerprint(restored)[:2] == state[:2]
    assert restored.probe().status.value == "RUNNING"
    hba = (restored.layout.conf / "pg_hba.conf").read_text()
    assert "trust" not in hba  # the re-keying window is closed

    # A missing object: refused before anything is made.
    gone = new_instance(factory, PostgreSQLManager, blobs)
    blobs.delete(taken.result["location"])
    with pytest.raises(Exception, match=taken.backup_id) as refused:
        restore_into(gone, [taken])
    assert type(refused.value).__name__ == "BackupNotFoundError"
    assert_nothing_served(gone)


def test_a_backup_whose_upload_breaks_leaves_no_object(
    factory: ManagerFactory, blobs: DirectoryBlobStore
) -> None:
    source = new_instance(factory, PostgreSQLManager, FailingUploads(blobs, 256 * 1024))
    source.manager.prepare(admin_password=ADMIN_PASSWORD, databases=[], users=[], overrides={})
    with pytest.raises(ConnectionError):
        take_backup(source)
    assert list(blobs.list()) == []
    assert not any(p.is_file() for p in (blobs.root / "blobs").rglob("*"))
    assert source.manager.probe().status.value == "RUNNING"
    assert not list(source.manager.layout.run.glob("backup-*"))  # no passfile left


# --------------------------------------------------------------------------- Redis
def redis_fingerprint(manager: RedisManager) -> tuple[int, str]:
    digest = hashlib.sha256()
    with manager._connect() as client:
        keys = sorted(client.scan_iter(count=1000))
        for i in range(0, len(keys), 1000):
            batch = keys[i : i + 1000]
            for key, value in zip(batch, client.mget(batch), strict=True):
                digest.update(f"{key}={value};".encode())
    return len(keys), digest.hexdigest()


def test_redis_backup_restores_identical_keys_and_users(
    factory: ManagerFactory, blobs: DirectoryBlobStore
) -> None:
    source = new_instance(factory, RedisManager, blobs)
    manager: RedisManager = source.manager  # type: ignore[assignment]
    manager.prepare(admin_password=ADMIN_PASSWORD, databases=[], users=[], overrides={})
    with manager._connect() as client:
        pipe = client.pipeline(transaction=False)
        for i in range(50_000):
            pipe.set(f"key:{i}", secrets.token_hex(512))  # RDB compression gains nothing
        pipe.execute()
        assert client.config_get("repl-diskless-sync-delay") == {"repl-diskless-sync-delay": "0"}
    manager.create_user("app", REDIS_USER_PASSWORD)
    state = redis_fingerprint(manager)
    taken = take_backup(source)
    assert taken.result["data_size_bytes"] >= 50 * MB
    with manager._connect() as client:
        client.flushall()

    target = new_instance(factory, RedisManager, blobs)
    restore_into(target, [taken])
    restored: RedisManager = target.manager  # type: ignore[assignment]
    assert redis_fingerprint(restored) == state
    with restored._connect() as client:
        assert client.config_get("appendonly") == {"appendonly": "yes"}
    # The tenant's user came along: it logs in with its password and reads the data; the ACL
    # file holds its password hashed only.
    assert [u["name"] for u in restored.list_users()] == ["app"]
    assert redis_login(restored, "app", REDIS_USER_PASSWORD) == str(state[0])
    acl_text = restored.acl_path.read_text()
    assert (
        REDIS_USER_PASSWORD not in acl_text and redis_password_hash(REDIS_USER_PASSWORD) in acl_text
    )
    restored.restart()  # the AOF written after the restore holds the data, the ACL file the user
    assert wait_for(lambda: redis_loaded(restored), 30)
    assert redis_fingerprint(restored) == state
    assert redis_login(restored, "app", REDIS_USER_PASSWORD) == str(state[0])


def redis_login(manager: RedisManager, user: str, password: str) -> str:
    """Log in over TCP as `user`; returns the key count it sees."""
    client = redis.Redis(
        host=manager.address, port=manager.port, username=user, password=password, socket_timeout=10
    )
    try:
        return str(client.dbsize())
    finally:
        client.close()
