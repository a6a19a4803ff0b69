"""PostgreSQL manager against a real postgres: prepare, tenants over TCP, overrides, root, crash."""

from __future__ import annotations

import os
import signal

import psycopg
import pytest

from guest_agent.datastores.base import (
    DatastoreAlreadyPreparedError,
    DatastoreOperationError,
    DatastoreStatus,
)
from guest_agent.datastores.postgresql import PARAMETERS, PostgreSQLManager
from shared.errors import NotFoundError
from tests.integration.datastores.conftest import (
    ADMIN_PASSWORD,
    assert_no_plaintext,
    assert_no_process_left,
    listening,
    wait_for,
)

pytestmark = [pytest.mark.datastore, pytest.mark.slow]


def tenant(m: PostgreSQLManager, user: str, password: str, dbname: str = "postgres"):
    """A client connection over TCP to address:5432, as a tenant would make it."""
    return psycopg.connect(
        host=m.address,
        port=m.port,
        user=user,
        password=password,
        dbname=dbname,
        connect_timeout=5,
        autocommit=True,
    )


def scalar(conn, query: str):
    row = conn.execute(query).fetchone()
    return row[0] if row else None


def test_postgresql_lifecycle(make_manager, capfd):
    m: PostgreSQLManager = make_manager(PostgreSQLManager)
    m.prepare(
        admin_password=ADMIN_PASSWORD,
        databases=[{"name": "shop"}, {"name": "Other-DB"}],
        users=[{"name": "alice", "password": "alice-pass-1", "databases": ["shop"]}],
        overrides={"work_mem": "2MB"},
    )
    health = m.probe()
    assert health.status is DatastoreStatus.RUNNING, health
    assert listening(m.address, 5432)

    # The tenant creates a table in schema public (needs PG15's explicit grant) over TCP.
    with tenant(m, "alice", "alice-pass-1", "shop") as conn:
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY, item text)")
        conn.execute("INSERT INTO orders VALUES (1, 'book')")
        assert scalar(conn, "SELECT item FROM orders WHERE id = 1") == "book"
        assert scalar(conn, "SHOW work_mem") == "2MB"
    # CONNECT was revoked from PUBLIC: no access to a database that was not granted.
    with pytest.raises(psycopg.OperationalError, match="permission denied"):
        tenant(m, "alice", "alice-pass-1", "Other-DB")
    with pytest.raises(psycopg.OperationalError, match="authentication failed"):
        tenant(m, "alice", "wrong-password", "shop")

    names = [d["name"] for d in m.list_databases()]
    assert names == ["Other-DB", "shop"]
    assert m.list_users() == [{"name": "alice", "host": "%", "databases": ["shop"]}]

    m.create_database("latin", character_set="LATIN1")
    assert {"name": "latin", "character_set": "LATIN1", "collate": "C"} in m.list_databases()
    m.create_user("bob", "bob-pass-123", databases=["Other-DB"])
    assert m.list_access("bob") == ["Other-DB"]
    with tenant(m, "bob", "bob-pass-123", "Other-DB") as conn:
        conn.execute("CREATE TABLE notes (body text)")  # owned by bob: delete_user must cope
    m.grant_access("bob", ["shop"])
    with tenant(m, "bob", "bob-pass-123", "shop") as conn:
        assert scalar(conn, "SELECT count(*) FROM orders") == 1  # existing tables are granted
    m.revoke_access("bob", "shop")
    assert m.list_access("bob") == ["Other-DB"]
    with pytest.raises(psycopg.OperationalError, match="permission denied"):
        tenant(m, "bob", "bob-pass-123", "shop")
    m.change_password("bob", "bob-new-pass")
    tenant(m, "bob", "bob-new-pass", "Other-DB").close()
    with pytest.raises(NotFoundError):
        m.grant_access("nobody", ["shop"])
    with pytest.raises(NotFoundError):
        m.grant_access("bob", ["no_such_db"])
    m.delete_user("bob")
    m.delete_user("bob")
    assert [u["name"] for u in m.list_users()] == ["alice"]
    m.delete_database("latin")
    m.delete_database("latin")
    assert "latin" not in [d["name"] for d in m.list_databases()]

    # Overrides: work_mem reloads live, shared_buffers needs a restart.
    assert m.update_overrides({"work_mem": "8MB"}) is False
    with tenant(m, "alice", "alice-pass-1", "shop") as conn:
        assert scalar(conn, "SHOW work_mem") == "8MB"
    assert m.update_overrides({"work_mem": "8MB", "shared_buffers": "24MB"}) is True
    assert m.probe().restart_required is True
    m.restart()
    assert m.probe().restart_required is False
    with tenant(m, "alice", "alice-pass-1", "shop") as conn:
        assert scalar(conn, "SHOW shared_buffers") == "24MB"
        assert scalar(conn, "SHOW work_mem") == "8MB"
    # Our table of restart-only keys agrees with pg_settings.context.
    with m._connect() as conn:
        rows = conn.execute(
            "SELECT name, context FROM pg_settings WHERE name = ANY(%s)", (list(PARAMETERS),)
        ).fetchall()
    assert {name: ctx == "postmaster" for name, ctx in rows} == {
        name: p.restart_required for name, p in PARAMETERS.items()
    }

    # Root: the postgres role, a superuser, over TCP.
    assert m.root_enabled() is False
    root_password = m.enable_root()
    assert m.root_enabled() is True
    with tenant(m, "postgres", root_password) as conn:
        assert scalar(conn, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user") is True

    # kill -9 of the postmaster: CRASHED; start() clears its orphans and recovers the data.
    pid = m.server_pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: not m.is_running(), 5)
    crashed = m.probe()
    assert crashed.status is DatastoreStatus.CRASHED, crashed
    m.start()
    assert_no_process_left(pid)
    with tenant(m, "alice", "alice-pass-1", "shop") as conn:
        assert scalar(conn, "SELECT item FROM orders WHERE id = 1") == "book"

    pid = m.server_pid()
    assert pid is not None
    m.stop()
    assert m.probe().status is DatastoreStatus.SHUTDOWN
    assert_no_process_left(pid)
    assert not listening(m.address, 5432)
    secrets = [ADMIN_PASSWORD, "alice-pass-1", "bob-pass-123", "bob-new-pass", root_password]
    assert_no_plaintext(m.data_dir, "".join(capfd.readouterr()), secrets)


def test_failed_prepare_is_undone_and_can_be_retried(make_manager):
    """A server-side refusal after init (an unknown locale) leaves no server running and no
    prepared volume; the retried prepare starts over."""
    m: PostgreSQLManager = make_manager(PostgreSQLManager)
    with pytest.raises(DatastoreOperationError, match="locale"):
        m.prepare(
            admin_password=ADMIN_PASSWORD,
            databases=[{"name": "shop", "collate": "xx_NOWHERE.UTF-8"}],
            users=[],
            overrides={},
        )
    assert not m.is_running()
    assert not m.is_prepared()
    assert m.probe().status is DatastoreStatus.SHUTDOWN
    m.prepare(admin_password=ADMIN_PASSWORD, databases=[{"name": "shop"}], users=[], overrides={})
    assert [d["name"] for d in m.list_databases()] == ["shop"]
    with pytest.raises(DatastoreAlreadyPreparedError):
        m.prepare(admin_password=ADMIN_PASSWORD, databases=[], users=[], overrides={})
