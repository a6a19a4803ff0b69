"""Per-datastore rules for database names, user names, hosts and passwords."""

from __future__ import annotations

import pytest

from shared.rules.names import (
    NameRuleError,
    rules_for,
    validate_character_set,
    validate_collation,
    validate_database_name,
    validate_host,
    validate_password,
    validate_prepare_request,
    validate_user_name,
)

SQL_DATASTORES = ["mariadb", "postgresql"]
ALL = ["mariadb", "postgresql", "redis"]
INJECTIONS = [
    "x'; DROP DATABASE mysql; --",
    "a`b",
    'a"b',
    "a'b",
    "a b",
    "a;b",
    "a\x00b",
    "a\tb",
    "a.b",
    "a/b",
    "a\\b",
    "é",
    "a%",
]


@pytest.mark.parametrize("datastore", SQL_DATASTORES)
@pytest.mark.parametrize("name", ["shop", "Shop_2", "_tmp", "a-b", "a$b", "x" * 63])
def test_sql_names_accepted(datastore, name):
    assert validate_database_name(datastore, name) == name
    assert validate_user_name(datastore, name) == name


@pytest.mark.parametrize("datastore", ALL)
@pytest.mark.parametrize("name", INJECTIONS)
def test_injection_attempts_refused_with_the_field_and_rule(datastore, name):
    with pytest.raises(NameRuleError) as caught:
        validate_user_name(datastore, name, field="users[0].name")
    assert caught.value.field == "users[0].name"
    assert "letters, digits" in caught.value.rule
    assert str(caught.value).startswith("users[0].name: must use letters, digits")
    with pytest.raises(NameRuleError) as caught:
        validate_database_name(datastore, name, field="databases[2].name")
    assert caught.value.field == "databases[2].name"


@pytest.mark.parametrize("datastore", SQL_DATASTORES)
@pytest.mark.parametrize("name", ["1shop", "-shop", "$shop", ""])
def test_names_must_start_with_a_letter_or_underscore(datastore, name):
    with pytest.raises(NameRuleError):
        validate_database_name(datastore, name)


@pytest.mark.parametrize(
    ("datastore", "database_max", "user_max"),
    [("mariadb", 64, 80), ("postgresql", 63, 63)],
)
def test_length_limits(datastore, database_max, user_max):
    assert validate_database_name(datastore, "d" * database_max)
    with pytest.raises(NameRuleError, match=f"at most {database_max} characters"):
        validate_database_name(datastore, "d" * (database_max + 1))
    assert validate_user_name(datastore, "u" * user_max)
    with pytest.raises(NameRuleError, match=f"at most {user_max} characters"):
        validate_user_name(datastore, "u" * (user_max + 1))


@pytest.mark.parametrize(
    ("datastore", "database", "user"),
    [
        ("mariadb", "mysql", "root"),
        ("mariadb", "INFORMATION_SCHEMA", "os_admin"),
        ("mariadb", "performance_schema", "PUBLIC"),
        ("mariadb", "sys", "mysql"),
        ("postgresql", "postgres", "postgres"),
        ("postgresql", "template0", "os_admin"),
        ("postgresql", "Template1", "public"),
    ],
)
def test_reserved_names_refused_whatever_their_case(datastore, database, user):
    with pytest.raises(NameRuleError, match="reserved"):
        validate_database_name(datastore, database)
    with pytest.raises(NameRuleError, match="reserved"):
        validate_user_name(datastore, user)


def test_postgresql_pg_role_prefix_is_reserved():
    with pytest.raises(NameRuleError, match="must not start with 'pg_'"):
        validate_user_name("postgresql", "pg_monitor")
    assert validate_database_name("postgresql", "pg_stuff") == "pg_stuff"  # only roles


def test_redis_databases_are_indexes_below_the_configured_count():
    assert validate_database_name("redis", "0") == "0"
    assert validate_database_name("redis", "15") == "15"
    assert validate_database_name("redis", "31", database_count=32) == "31"
    for bad in ["16", "-1", "01", "1 ", "one", "", "1; FLUSHALL", "99999999"]:
        with pytest.raises(NameRuleError):
            validate_database_name("redis", bad)
    with pytest.raises(NameRuleError, match="must be a string"):
        validate_database_name("redis", 3)
    for reserved in ["default", "os_admin"]:
        with pytest.raises(NameRuleError, match="reserved"):
            validate_user_name("redis", reserved)


@pytest.mark.parametrize("datastore", ALL)
def test_passwords_checked_and_never_echoed(datastore):
    assert validate_password(datastore, "correct horse~!") == "correct horse~!"
    for bad in ["short", "x" * 129, "has\nnewline", "nul\x00byte-pass", "ünicode-pass"]:
        with pytest.raises(NameRuleError) as caught:
            validate_password(datastore, bad, field="users[1].password")
        assert caught.value.field == "users[1].password"
        assert bad not in str(caught.value)
    with pytest.raises(NameRuleError, match="is required"):
        validate_password(datastore, None)
    with pytest.raises(NameRuleError, match="must be a string"):
        validate_password(datastore, 12345678)


def test_hosts():
    for good in ["%", "10.0.%", "192.168.1.7", "192.168.1.0/255.255.255.0", "::1", "%.%"]:
        assert validate_host("mariadb", good) == good
    for bad in ["localhost", "%' OR '1'='1", "..", "a b", "10.0.0.0/24", "", "x" * 256]:
        with pytest.raises(NameRuleError) as caught:
            validate_host("mariadb", bad)
        assert caught.value.field == "host"
    for datastore in ["postgresql", "redis"]:
        assert validate_host(datastore, "%") == "%"
        with pytest.raises(NameRuleError, match="no host restriction"):
            validate_host(datastore, "10.0.%")


def test_character_sets_and_collations():
    assert validate_character_set("mariadb", "utf8mb4") == "utf8mb4"
    assert validate_collation("mariadb", "utf8mb4_general_ci") == "utf8mb4_general_ci"
    assert validate_collation("postgresql", "en_US.UTF-8") == "en_US.UTF-8"
    for bad in ["utf8'; --", "a b", ""]:
        with pytest.raises(NameRuleError):
            validate_character_set("mariadb", bad)
        with pytest.raises(NameRuleError):
            validate_collation("postgresql", bad)
    with pytest.raises(NameRuleError, match="no character set"):
        validate_character_set("redis", "utf8")
    with pytest.raises(NameRuleError, match="no collation"):
        validate_collation("redis", "C")


def test_unknown_datastore():
    with pytest.raises(NameRuleError) as caught:
        rules_for("oracle")
    assert caught.value.field == "datastore"


def test_prepare_request_normalised():
    dbs, users = validate_prepare_request(
        "mariadb",
        [{"name": "shop", "character_set": "utf8mb4"}, {"name": "logs"}],
        [
            {"name": "alice", "password": "alice-pass", "databases": [{"name": "shop"}]},
            {"name": "bob", "password": "bob-pass-1", "host": "10.0.%", "databases": ["logs"]},
        ],
    )
    assert dbs == [
        {"name": "shop", "character_set": "utf8mb4", "collate": None},
        {"name": "logs", "character_set": None, "collate": None},
    ]
    assert users == [
        {"name": "alice", "password": "alice-pass", "host": "%", "databases": ["shop"]},
        {"name": "bob", "password": "bob-pass-1", "host": "10.0.%", "databases": ["logs"]},
    ]
    assert validate_prepare_request("redis", None, None) == ([], [])


@pytest.mark.parametrize(
    ("databases", "users", "field", "rule"),
    [
        ([{"name": "a`b"}], [], "databases[0].name", "must use letters"),
        ([{"name": "ok"}, {"name": "ok"}], [], "databases[1].name", "requested twice"),
        ([{"name": "ok", "owner": "x"}], [], "databases[0].owner", "not a known"),
        ("shop", [], "databases", "must be a list"),
        (["shop"], [], "databases[0]", "must be an object"),
        ([], [{"name": "u"}], "users[0].password", "is required"),
        ([], [{"name": "u", "password": "short"}], "users[0].password", "8 to 128 characters"),
        ([{}], [], "databases[0].name", "is required"),
        ([], [{"name": "u", "password": "p" * 8, "databases": ["x"]}], "users[0].databases[0]",
         "requested with it"),
        ([], [{"name": "u", "password": "p" * 8, "databases": [{"name": "x;"}]}],
         "users[0].databases[0].name", "must use letters"),
        ([], [{"name": "u", "password": "p" * 8}, {"name": "u", "password": "q" * 8}],
         "users[1].name", "requested twice"),
        ([], [{"name": "u", "password": "p" * 8, "host": "%' --"}], "users[0].host", "IP"),
    ],
)  # fmt: skip
def test_prepare_request_errors_name_the_field(databases, users, field, rule):
    with pytest.raises(NameRuleError) as caught:
        validate_prepare_request("mariadb", databases, users)
    assert caught.value.field == field
    assert rule in caught.value.rule


def test_same_user_name_on_two_hosts_is_two_accounts():
    _, users = validate_prepare_request(
        "mariadb",
        [],
        [
            {"name": "u", "password": "p" * 8, "host": "10.0.%"},
            {"name": "u", "password": "p" * 8, "host": "%"},
        ],
    )
    assert [u["host"] for u in users] == ["10.0.%", "%"]
