"""Redis manager against a real redis-server: ACL users, logical databases, overrides, crash, and
a server that outlives the process that prepared it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from guest_agent.datastores.base import (
    DatastoreError,
    DatastoreStatus,
    UnsupportedOperationError,
)
from guest_agent.datastores.redis import RedisManager
from shared.errors import NotFoundError
from shared.rules.names import NameRuleError
from tests.integration.datastores.conftest import (
    ADMIN_PASSWORD,
    assert_no_plaintext,
    assert_no_process_left,
    listening,
    wait_for,
)

pytestmark = [pytest.mark.datastore]


def tenant(m: RedisManager, user: str | None, password: str, db: int = 0) -> redis.Redis:
    """A client over TCP to address:6379, as a tenant would connect."""
    return redis.Redis(
        host=m.address,
        port=m.port,
        username=user,
        password=password,
        db=db,
        socket_timeout=5,
        retry=Retry(NoBackoff(), 0),  # a refused login must fail at once, not after backoff
    )


def test_redis_lifecycle(make_manager, capfd):
    m: RedisManager = make_manager(RedisManager)
    m.prepare(
        admin_password=ADMIN_PASSWORD,
        databases=[{"name": "1"}],
        users=[{"name": "alice", "password": "alice-pass-1", "databases": ["1"]}],
        overrides={"maxmemory-policy": "allkeys-lru"},
    )
    assert m.probe().status is DatastoreStatus.RUNNING
    assert listening(m.address, 6379)

    # No anonymous access: the default user is off until root is enabled.
    with pytest.raises(redis.AuthenticationError):
        tenant(m, None, "").ping()
    alice = tenant(m, "alice", "alice-pass-1", db=1)
    alice.set("greeting", "hello")
    assert alice.get("greeting") == b"hello"
    with pytest.raises(redis.exceptions.NoPermissionError):
        alice.config_get("maxmemory")  # @dangerous is not granted to tenants
    with pytest.raises(redis.AuthenticationError):
        tenant(m, "alice", "wrong-password").ping()

    databases = m.list_databases()
    assert len(databases) == 16
    assert databases[1] == {"name": "1", "keys": 1}
    m.create_database("5")
    with pytest.raises(NameRuleError, match="below the server's 16"):
        m.create_database("16")
    m.delete_database("1")  # FLUSHDB
    assert alice.get("greeting") is None

    m.create_user("bob", "bob-pass-123")
    assert [u["name"] for u in m.list_users()] == ["alice", "bob"]
    m.change_password("bob", "bob-new-pass")
    assert tenant(m, "bob", "bob-new-pass").ping() is True
    with pytest.raises(redis.AuthenticationError):
        tenant(m, "bob", "bob-pass-123").ping()
    m.grant_access("bob", ["3"])
    assert m.list_access("bob") == [str(i) for i in range(16)]
    with pytest.raises(UnsupportedOperationError):
        m.revoke_access("bob", "3")
    with pytest.raises(NotFoundError):
        m.change_password("nobody", "whatever-123")
    m.delete_user("bob")
    assert [u["name"] for u in m.list_users()] == ["alice"]

    # Overrides: maxmemory live (CONFIG SET); databases only after a restart.
    assert m.update_overrides({"maxmemory": "40M"}) is False
    with m._connect() as admin:
        assert admin.config_get("maxmemory") == {"maxmemory": str(40 * 1024 * 1024)}
        assert admin.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
    assert m.update_overrides({"maxmemory": "40M", "databases": 32}) is True
    assert m.probe().restart_required is True
    m.restart()
    assert m.probe().restart_required is False
    with m._connect() as admin:
        assert admin.config_get("databases") == {"databases": "32"}
        assert admin.config_get("maxmemory") == {"maxmemory": str(40 * 1024 * 1024)}
    # ACL users were saved to the ACL file: alice survived the restart.
    assert tenant(m, "alice", "alice-pass-1").ping() is True

    # Root is the default user: a plain AUTH <password>.
    assert m.root_enabled() is False
    root_password = m.enable_root()
    assert m.root_enabled() is True
    assert tenant(m, None, root_password).config_get("port") == {"port": "6379"}

    pid = m.server_pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: not m.is_running(), 5)
    assert m.probe().status is DatastoreStatus.CRASHED
    m.stop()
    assert m.probe().status is DatastoreStatus.SHUTDOWN
    assert_no_process_left(pid)
    assert not listening(m.address, 6379)
    secrets = [ADMIN_PASSWORD, "alice-pass-1", "bob-pass-123", "bob-new-pass", root_password]
    assert_no_plaintext(m.data_dir, "".join(capfd.readouterr()), secrets)


def test_redis_outlives_the_process_that_started_it(make_manager, run_as):
    """The datastore is the 'VM's' database: it keeps running when the agent process exits."""
    m: RedisManager = make_manager(RedisManager, admin_password=ADMIN_PASSWORD)
    agent = textwrap.dedent(
        f"""
        from pathlib import Path
        from guest_agent.datastores.redis import RedisManager
        m = RedisManager(Path({str(m.data_dir)!r}), {m.address!r}, run_as={run_as!r}, ram_mb=64)
        m.prepare(admin_password={ADMIN_PASSWORD!r}, databases=[], users=[], overrides={{}})
        """
    )
    repo = Path(__file__).resolve().parents[3]
    subprocess.run(
        [sys.executable, "-c", agent], check=True, timeout=60, capture_output=True, cwd=repo
    )
    health = m.probe()
    assert health.status is DatastoreStatus.RUNNING, health
    m.stop()
    assert m.probe().status is DatastoreStatus.SHUTDOWN


def test_prepare_never_wipes_files_it_did_not_make(make_manager):
    m: RedisManager = make_manager(RedisManager)
    (m.data_dir / "data").mkdir()
    (m.data_dir / "data" / "appendonly.aof").write_text("tenant data from elsewhere")
    with pytest.raises(DatastoreError, match="refusing to wipe"):
        m.prepare(admin_password=ADMIN_PASSWORD, databases=[], users=[], overrides={})
    assert (m.data_dir / "data" / "appendonly.aof").read_text() == "tenant data from elsewhere"
    assert not m.is_running()


@pytest.mark.parametrize("reattached", [False, True], ids=["own-child", "reattached"])
def test_stop_kills_a_server_that_ignores_its_stop_signal(make_manager, run_as, reattached):
    m: RedisManager = make_manager(RedisManager)
    m.prepare(admin_password=ADMIN_PASSWORD, databases=[], users=[], overrides={})
    pid = m.server_pid()
    assert pid is not None
    stopper = m
    if reattached:  # as after an agent restart: the server is not this manager's child
        stopper = RedisManager(m.data_dir, m.address, run_as=run_as, ram_mb=m.ram_mb)
    stopper.stop_timeout = 0.3  # type: ignore[misc]
    os.kill(pid, signal.SIGSTOP)  # a hung server: SIGTERM stays pending
    stopper.stop()
    assert_no_process_left(pid)
    assert stopper.probe().status is DatastoreStatus.SHUTDOWN
    assert m.probe().status is DatastoreStatus.SHUTDOWN
