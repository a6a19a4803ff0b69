"""MariaDB manager against a real mariadbd: prepare, tenants over TCP, overrides, root, crash."""

from __future__ import annotations

import os
import signal
import threading

import pymysql
import pytest

from guest_agent.datastores.base import DatastoreStatus, OverrideRuleError
from guest_agent.datastores.mariadb import PARAMETERS, MariaDBManager
from shared.errors import NotFoundError
from tests.integration.datastores.conftest import (
    ADMIN_PASSWORD,
    assert_no_plaintext,
    assert_no_process_left,
    listening,
    wait_for,
)

pytestmark = [pytest.mark.datastore, pytest.mark.slow]


def tenant(m: MariaDBManager, user: str, password: str, database: str | None = None):
    """A client connection over TCP to address:3306, as a tenant would make it."""
    return pymysql.connect(
        host=m.address,
        port=m.port,
        user=user,
        password=password,
        database=database,
        connect_timeout=5,
        ssl_disabled=True,
        autocommit=True,
    )


def scalar(conn, query: str, args=None):
    with conn.cursor() as cur:
        cur.execute(query, args)
        row = cur.fetchone()
        return row[0] if row else None


def test_mariadb_lifecycle(make_manager, capfd):
    m: MariaDBManager = make_manager(MariaDBManager)
    m.prepare(
        admin_password=ADMIN_PASSWORD,
        databases=[{"name": "shop"}, {"name": "my_db"}],
        users=[{"name": "alice", "password": "alice-pass-1", "databases": [{"name": "shop"}]}],
        overrides={"max_connections": 50},
    )
    health = m.probe()
    assert health.status is DatastoreStatus.RUNNING, health
    assert listening(m.address, 3306)

    # The tenant writes and reads over TCP, and only where it was granted.
    with tenant(m, "alice", "alice-pass-1", "shop") as conn:
        scalar(conn, "CREATE TABLE orders (id INT PRIMARY KEY, item VARCHAR(20))")
        scalar(conn, "INSERT INTO orders VALUES (1, 'book')")
        assert scalar(conn, "SELECT item FROM orders WHERE id = 1") == "book"
        assert scalar(conn, "SELECT @@max_connections") == 50
    with pytest.raises(pymysql.err.OperationalError, match="denied"):
        tenant(m, "alice", "alice-pass-1", "my_db")
    with pytest.raises(pymysql.err.OperationalError, match="denied"):
        tenant(m, "alice", "wrong-password", "shop")

    # install-db's password-less accounts are gone; only our admin and the tenant remain.
    with m._connect() as cur:
        cur.execute("SELECT User, Host FROM mysql.user WHERE User IN ('root', '')")
        assert cur.fetchall() == ()
    assert m.list_databases() == [
        {"name": "my_db", "character_set": "utf8mb4", "collate": "utf8mb4_general_ci"},
        {"name": "shop", "character_set": "utf8mb4", "collate": "utf8mb4_general_ci"},
    ]
    assert m.list_users() == [{"name": "alice", "host": "%", "databases": ["shop"]}]

    # '_' in a granted name is literal, not GRANT's one-character wildcard.
    m.create_database("myXdb", character_set="latin1", collate="latin1_swedish_ci")
    m.create_user("bob", "bob-pass-123", databases=["my_db"])
    assert m.list_access("bob") == ["my_db"]
    with tenant(m, "bob", "bob-pass-123", "my_db") as conn:
        assert scalar(conn, "SELECT DATABASE()") == "my_db"
    with pytest.raises(pymysql.err.OperationalError, match="denied"):
        tenant(m, "bob", "bob-pass-123", "myXdb")
    m.revoke_access("bob", "my_db")
    m.revoke_access("bob", "my_db")  # repeated: already done, not an error
    assert m.list_access("bob") == []
    m.grant_access("bob", ["shop"])
    m.change_password("bob", "bob-new-pass")
    with tenant(m, "bob", "bob-new-pass", "shop") as conn:
        assert scalar(conn, "SELECT COUNT(*) FROM orders") == 1
    with pytest.raises(NotFoundError):
        m.change_password("nobody", "whatever-123")
    m.delete_user("bob")
    m.delete_user("bob")
    assert [u["name"] for u in m.list_users()] == ["alice"]
    m.delete_database("myXdb")
    assert "myXdb" not in [d["name"] for d in m.list_databases()]

    # Overrides: max_connections goes live, innodb_log_buffer_size waits for a restart.
    with pytest.raises(OverrideRuleError, match=r"overrides\.no_such_key"):
        m.update_overrides({"no_such_key": 1})
    with pytest.raises(OverrideRuleError, match=r"overrides\.max_connections"):
        m.update_overrides({"max_connections": "lots"})
    assert m.update_overrides({"max_connections": 77}) is False
    with tenant(m, "alice", "alice-pass-1") as conn:
        assert scalar(conn, "SELECT @@max_connections") == 77
    assert m.update_overrides({"max_connections": 77, "innodb_log_buffer_size": "32M"}) is True
    assert m.probe().restart_required is True
    # A heartbeat probing during the restart sees STARTING, never a false CRASHED or SHUTDOWN.
    seen: list[DatastoreStatus] = []
    done = threading.Event()

    def heartbeat() -> None:
        while not done.is_set():
            seen.append(m.probe().status)

    watcher = threading.Thread(target=heartbeat)
    watcher.start()
    try:
        m.restart()
    finally:
        done.set()
        watcher.join()
    assert DatastoreStatus.STARTING in seen
    assert set(seen) <= {DatastoreStatus.STARTING, DatastoreStatus.RUNNING}
    assert m.probe().restart_required is False
    with tenant(m, "alice", "alice-pass-1") as conn:
        assert scalar(conn, "SELECT @@innodb_log_buffer_size") == 32 * 1024 * 1024
        assert scalar(conn, "SELECT @@max_connections") == 77
    # Removing both: max_connections resets live, the log buffer size waits for a restart.
    assert m.update_overrides({}) is True
    with tenant(m, "alice", "alice-pass-1") as conn:
        assert scalar(conn, "SELECT @@max_connections") == 151
    # Our table of restart-only keys agrees with the server's own.
    with m._connect() as cur:
        cur.execute(
            "SELECT LOWER(VARIABLE_NAME), READ_ONLY FROM information_schema.SYSTEM_VARIABLES "
            "WHERE LOWER(VARIABLE_NAME) IN (" + ", ".join(["%s"] * len(PARAMETERS)) + ")",
            list(PARAMETERS),
        )
        read_only = {name: flag == "YES" for name, flag in cur.fetchall()}
    assert read_only == {name: p.restart_required for name, p in PARAMETERS.items()}

    # Root: off until enabled, then root@'%' over TCP with the returned password.
    assert m.root_enabled() is False
    root_password = m.enable_root()
    assert m.root_enabled() is True
    with tenant(m, "root", root_password) as conn:
        assert scalar(conn, "SELECT CURRENT_USER()") == "root@%"

    # A restarted agent re-attaches to the running server through the pid file.
    again = MariaDBManager(
        m.data_dir, m.address, run_as=m.run_as.name if m.run_as.switch else None,
        ram_mb=m.ram_mb, admin_password=ADMIN_PASSWORD,
    )  # fmt: skip
    assert again.probe().status is DatastoreStatus.RUNNING
    assert again.server_pid() == m.server_pid()

    # kill -9: reported as CRASHED (not merely silent); start() recovers with the data intact.
    pid = m.server_pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: not m.is_running(), 5)
    crashed = m.probe()
    assert crashed.status is DatastoreStatus.CRASHED, crashed
    assert str(pid) in crashed.detail
    assert again.probe().status is DatastoreStatus.CRASHED
    m.start()
    with tenant(m, "alice", "alice-pass-1", "shop") as conn:
        assert scalar(conn, "SELECT item FROM orders WHERE id = 1") == "book"

    # stop: SHUTDOWN, nothing left running or listening.
    pid = m.server_pid()
    assert pid is not None
    m.stop()
    assert m.probe().status is DatastoreStatus.SHUTDOWN
    assert_no_process_left(pid)
    assert not listening(m.address, 3306)
    info = m.volume_info()
    assert 0 < info["used_bytes"] < info["total_bytes"]
    secrets = [ADMIN_PASSWORD, "alice-pass-1", "bob-pass-123", "bob-new-pass", root_password]
    assert_no_plaintext(m.data_dir, "".join(capfd.readouterr()), secrets)
