"""Hostile names never reach a datastore: every manager operation refuses them with a
NameRuleError naming the field and the rule, and the running servers are left untouched."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from guest_agent.datastores.base import DatastoreManager
from guest_agent.datastores.mariadb import MariaDBManager
from guest_agent.datastores.postgresql import PostgreSQLManager
from guest_agent.datastores.redis import RedisManager
from shared.rules.names import NameRuleError
from tests.integration.datastores.conftest import ADMIN_PASSWORD, ManagerFactory

pytestmark = [pytest.mark.datastore]

MANAGERS: dict[str, type[DatastoreManager]] = {
    "mariadb": MariaDBManager,
    "postgresql": PostgreSQLManager,
    "redis": RedisManager,
}
PASSWORD = "good-pass-123"
HOSTILE_NAMES = [
    "x'; DROP DATABASE mysql; --",
    "x'; DROP ROLE os_admin; --",
    "a`b",
    'a"b',
    "a'b",
    "a;b",
    "a b",
    "a\x00b",
    "a\nb",
    "a\\b",
    "$(reboot)",
    "%",
    "*",
    "..",
    "",
    "x" * 100,
    "1; FLUSHALL",
    "-1",
    "é",
]
HOSTILE_PASSWORDS = ["pw'); DROP DATABASE mysql; --\x00", "short", "new\nline-password", "ü" * 10]


@pytest.fixture(scope="module")
def servers(make_module_manager: ManagerFactory) -> dict[str, DatastoreManager]:
    """One prepared server per datastore with one database and the user alice."""
    out = {}
    for datastore, cls in MANAGERS.items():
        manager = make_module_manager(cls, ram_mb=64)
        db = "1" if datastore == "redis" else "shop"
        manager.prepare(
            admin_password=ADMIN_PASSWORD,
            databases=[{"name": db}],
            users=[{"name": "alice", "password": PASSWORD, "databases": [db]}],
            overrides={},
        )
        out[datastore] = manager
    return out


def snapshot(manager: DatastoreManager) -> tuple[Any, ...]:
    return (manager.list_databases(), manager.list_users(), manager.root_enabled())


def _operations(m: DatastoreManager, bad: str) -> list[tuple[str, Callable[[], object]]]:
    db = "1" if m.datastore == "redis" else "shop"
    ops: list[tuple[str, Callable[[], object]]] = [
        ("name", lambda: m.create_database(bad)),
        ("name", lambda: m.delete_database(bad)),
        ("name", lambda: m.create_user(bad, PASSWORD)),
        ("name", lambda: m.delete_user(bad)),
        ("name", lambda: m.change_password(bad, PASSWORD)),
        ("user", lambda: m.grant_access(bad, [db])),
        ("databases[0]", lambda: m.grant_access("alice", [bad])),
        ("databases[0]", lambda: m.create_user("mallory", PASSWORD, databases=[bad])),
        ("user", lambda: m.revoke_access(bad, db)),
        ("database", lambda: m.revoke_access("alice", bad)),
        ("user", lambda: m.list_access(bad)),
        ("host", lambda: m.create_user("mallory", PASSWORD, host=bad)),
    ]
    return ops


@pytest.mark.parametrize("datastore", sorted(MANAGERS))
def test_hostile_names_are_refused_before_reaching_the_server(servers, datastore):
    m = servers[datastore]
    before = snapshot(m)
    for bad in HOSTILE_NAMES:
        for field, operation in _operations(m, bad):
            if bad == "%" and field == "host":
                continue  # '%' is the any-host pattern, a valid host
            with pytest.raises(NameRuleError) as caught:
                operation()
            error = caught.value
            assert error.field == field, (bad, field, str(error))
            assert error.rule
            assert str(error).startswith(f"{field}: ")
    for bad in HOSTILE_PASSWORDS:
        with pytest.raises(NameRuleError) as caught:
            m.create_user("mallory", bad)
        assert caught.value.field == "password"
        assert bad not in str(caught.value)  # a refused password is never echoed
        with pytest.raises(NameRuleError, match=r"^password: "):
            m.change_password("alice", bad)
    assert snapshot(m) == before
    assert m.list_access("alice") == (
        [str(i) for i in range(16)] if datastore == "redis" else ["shop"]
    )


def test_system_schemas_survive(servers):
    with servers["mariadb"]._connect() as cur:
        cur.execute("SHOW DATABASES")
        assert {"mysql", "information_schema", "performance_schema", "sys"} <= {
            name for (name,) in cur.fetchall()
        }
    with servers["postgresql"]._connect() as conn:
        roles = {r for (r,) in conn.execute("SELECT rolname FROM pg_roles").fetchall()}
        assert "os_admin" in roles


@pytest.mark.parametrize("datastore", sorted(MANAGERS))
def test_prepare_refuses_hostile_names_before_creating_anything(
    make_manager: ManagerFactory, datastore: str
) -> None:
    m = make_manager(MANAGERS[datastore])
    with pytest.raises(NameRuleError) as caught:
        m.prepare(
            admin_password=ADMIN_PASSWORD,
            databases=[{"name": "x'; DROP DATABASE mysql; --"}],
            users=[],
            overrides={},
        )
    assert caught.value.field == "databases[0].name"
    with pytest.raises(NameRuleError) as caught:
        m.prepare(
            admin_password=ADMIN_PASSWORD,
            databases=[],
            users=[{"name": "a`b", "password": PASSWORD}],
            overrides={},
        )
    assert caught.value.field == "users[0].name"
    assert not (m.data_dir / "data").exists()  # nothing was initialised
