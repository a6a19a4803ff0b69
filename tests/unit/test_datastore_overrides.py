"""Override validation of the datastore managers, password hashing, and the manager registry
(no processes: the real servers are exercised in tests/integration/datastores)."""

from __future__ import annotations

import base64
import os
import pwd
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from guest_agent.datastores import UnknownDatastoreError, manager_for
from guest_agent.datastores.base import (
    ConfigParameter,
    DatastoreOperationError,
    OverrideRuleError,
    OverrideValue,
    ParameterKind,
    validate_overrides,
)
from guest_agent.datastores.mariadb import PARAMETERS as MARIADB
from guest_agent.datastores.mariadb import MariaDBManager, grant_pattern, native_password_hash
from guest_agent.datastores.postgresql import PARAMETERS as POSTGRESQL
from guest_agent.datastores.postgresql import PostgreSQLManager, scram_sha256_verifier
from guest_agent.datastores.redis import PARAMETERS as REDIS
from guest_agent.datastores.redis import RedisManager, redis_password_hash

MIB = 1 << 20


def test_registry():
    assert manager_for("mariadb") is MariaDBManager
    assert manager_for("postgresql") is PostgreSQLManager
    assert manager_for("redis") is RedisManager
    with pytest.raises(UnknownDatastoreError, match="known: mariadb, postgresql, redis"):
        manager_for("mongodb")


def test_sizes_accept_bytes_and_units():
    size = MARIADB["innodb_buffer_pool_size"]
    assert size.coerce(64 * MIB) == 64 * MIB
    assert size.coerce("64M") == 64 * MIB
    assert size.coerce("64MB") == 64 * MIB
    assert size.coerce("1g") == 1024 * MIB
    assert POSTGRESQL["work_mem"].coerce("512kB") == 512 * 1024
    for bad in ["lots", "64 XB", "-1M", 1.5, True]:
        with pytest.raises(OverrideRuleError) as caught:
            size.coerce(bad)
        assert caught.value.key == "innodb_buffer_pool_size"


def test_ranges_and_types():
    with pytest.raises(OverrideRuleError, match="at least 10"):
        MARIADB["max_connections"].coerce(1)
    with pytest.raises(OverrideRuleError, match="at most 100000"):
        MARIADB["max_connections"].coerce("100001")
    with pytest.raises(OverrideRuleError, match="must be an integer"):
        MARIADB["max_connections"].coerce(True)
    assert MARIADB["max_connections"].coerce("200") == 200
    assert POSTGRESQL["random_page_cost"].coerce("1.5") == 1.5
    assert POSTGRESQL["autovacuum"].coerce("off") is False
    assert REDIS["appendonly"].coerce(1) is True
    with pytest.raises(OverrideRuleError, match="boolean"):
        REDIS["appendonly"].coerce("maybe")
    assert REDIS["maxmemory-policy"].coerce("AllKeys-LRU") == "allkeys-lru"
    with pytest.raises(OverrideRuleError, match="one of noeviction"):
        REDIS["maxmemory-policy"].coerce("sometimes")


def test_validate_overrides_names_the_key():
    assert validate_overrides(MARIADB, None) == {}
    assert validate_overrides(MARIADB, {"max_connections": "50"}) == {"max_connections": 50}
    with pytest.raises(OverrideRuleError) as caught:
        validate_overrides(MARIADB, {"max_connections": 50, "datadir": "/etc"})
    assert caught.value.key == "datadir"
    assert str(caught.value) == "overrides.datadir: is not a configuration parameter we manage"
    with pytest.raises(OverrideRuleError):
        validate_overrides(REDIS, ["maxmemory"])


def test_restart_only_keys():
    assert {k for k, p in MARIADB.items() if p.restart_required} == {
        "innodb_log_buffer_size",
        "performance_schema",
    }
    assert {k for k, p in POSTGRESQL.items() if p.restart_required} == {
        "max_connections",
        "shared_buffers",
    }
    assert {k for k, p in REDIS.items() if p.restart_required} == {"databases", "io-threads"}
    live_redis = [p for p in REDIS.values() if not p.restart_required]
    assert all(p.default is not None for p in live_redis)  # removal needs a value to go back to


def test_parameter_kinds_cover_every_table():
    kinds = {p.kind for table in (MARIADB, POSTGRESQL, REDIS) for p in table.values()}
    assert kinds == set(ParameterKind)
    assert isinstance(next(iter(MARIADB.values())), ConfigParameter)


def test_password_hashes():
    # Known values: MariaDB's PASSWORD('password') and SHA-256('password').
    assert native_password_hash("password") == "*2470C0C06DEE42FD1618BB99005ADCA2EC9D1E19"
    assert redis_password_hash("password") == (
        "#5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8"
    )
    verifier = scram_sha256_verifier("password", salt=b"0123456789abcdef")
    method, rest = verifier.split("$", 1)
    iterations_salt, keys = rest.split("$")
    iterations, salt = iterations_salt.split(":")
    stored_key, server_key = keys.split(":")
    assert method == "SCRAM-SHA-256"
    assert iterations == "4096"
    assert base64.b64decode(salt) == b"0123456789abcdef"
    assert len(base64.b64decode(stored_key)) == len(base64.b64decode(server_key)) == 32
    assert scram_sha256_verifier("password") != scram_sha256_verifier("password")  # fresh salt


def test_grant_pattern_escapes_wildcards():
    assert grant_pattern("my_db") == "`my\\_db`"
    assert grant_pattern("a`b") == "`a``b`"


class _FakeServer(MariaDBManager):
    """A MariaDB manager whose 'server' is a dict: no process, no socket."""

    def __init__(self, volume: Path, refuse: str | None = None) -> None:
        super().__init__(volume, "127.0.0.1", run_as=_unprivileged_user(), ram_mb=64)
        self.live: dict[str, object] = {}
        self.refuse = refuse

    def is_running(self) -> bool:
        return True

    def _apply_live(self, changed: Mapping[str, OverrideValue | None]) -> set[str]:
        restart = set()
        for key, value in changed.items():
            if key == self.refuse and value is not None:
                raise DatastoreOperationError(f"server refused {key}")
            if MARIADB[key].restart_required:
                restart.add(key)
            else:
                self.live[key] = value
        return restart


def _unprivileged_user() -> str | None:
    return pwd.getpwuid(65534).pw_name if os.geteuid() == 0 else None  # nobody


@pytest.fixture
def fake_server(tmp_path: Path) -> Callable[..., _FakeServer]:
    def make(refuse: str | None = None) -> _FakeServer:
        server = _FakeServer(tmp_path, refuse)
        server.layout.conf.mkdir(exist_ok=True)
        server.layout.run.mkdir(exist_ok=True)
        (server.layout.conf / "prepared.json").write_text('{"datastore": "mariadb"}')
        return server

    return make


def test_update_overrides_applies_live_and_tracks_restart(fake_server):
    server = fake_server()
    assert server.update_overrides({"max_connections": 80}) is False
    assert server.live == {"max_connections": 80}
    assert "max_connections = 80" in server.config_path.read_text()
    assert server.update_overrides({"max_connections": 80, "performance_schema": "on"}) is True
    assert server.probe().restart_required is True
    # Still pending on the next update, even one that changes nothing new.
    assert server.update_overrides({"max_connections": 80, "performance_schema": True}) is True
    assert server.overrides() == {"max_connections": 80, "performance_schema": True}
    # Dropping a memory override goes back to the flavor's value, not to nothing.
    server.update_overrides({"innodb_buffer_pool_size": "16M"})
    server.update_overrides({})
    assert server.live["innodb_buffer_pool_size"] == 32 * MIB  # 50% of ram_mb=64
    assert server.live["max_connections"] is None  # back to the server default


def test_refused_override_leaves_old_configuration(fake_server):
    server = fake_server(refuse="wait_timeout")
    server.update_overrides({"max_connections": 80})
    with pytest.raises(DatastoreOperationError, match="refused wait_timeout"):
        server.update_overrides({"max_connections": 90, "wait_timeout": 60})
    assert server.overrides() == {"max_connections": 80}
    assert "max_connections = 80" in server.config_path.read_text()
    assert "wait_timeout" not in server.config_path.read_text()
