"""Configuration parameter rules: what the API accepts, and that the guest agent agrees."""

from __future__ import annotations

import pytest

from guest_agent.datastores.mariadb import PARAMETERS as GUEST_MARIADB
from guest_agent.datastores.postgresql import PARAMETERS as GUEST_POSTGRESQL
from guest_agent.datastores.redis import PARAMETERS as GUEST_REDIS
from shared.errors import NotFoundError, RequestError
from shared.models.configuration import ParameterType
from shared.rules.config_parameters import (
    MARIADB_10_11,
    POSTGRESQL_15,
    REDIS_7,
    parameter,
    parameters,
    rules_for,
    validate,
)


def refused(datastore: str, version: str, values: object) -> RequestError:
    with pytest.raises(RequestError) as caught:
        validate(datastore, version, values)
    return caught.value


def test_valid_values_come_back_canonical():
    assert validate(
        "mariadb",
        "10.11",
        {"max_connections": 200, "slow_query_log": True, "long_query_time": 2, "sync_binlog": 1},
    ) == {"max_connections": 200, "slow_query_log": True, "long_query_time": 2.0, "sync_binlog": 1}
    assert validate("redis", "7", {"maxmemory-policy": "AllKeys-LRU"}) == {
        "maxmemory-policy": "allkeys-lru"
    }
    assert validate("postgresql", "15", {}) == {}


def test_unknown_key_is_422_naming_it():
    error = refused("mariadb", "10.11", {"max_connections": 50, "datadir": "/etc"})
    assert (error.field, error.status) == ("values.datadir", 422)
    assert "not a configuration parameter of mariadb 10.11" in error.rule
    # A PostgreSQL key is unknown to Redis.
    assert refused("redis", "7", {"work_mem": 1024}).field == "values.work_mem"


@pytest.mark.parametrize(
    ("datastore", "version", "key", "value", "rule"),
    [
        ("mariadb", "10.11", "max_connections", True, "must be an integer"),  # bool is no int
        ("mariadb", "10.11", "max_connections", "200", "must be an integer"),
        ("mariadb", "10.11", "max_connections", 2.5, "must be an integer"),
        ("mariadb", "10.11", "max_connections", 9, "must be at least 10"),
        ("mariadb", "10.11", "max_connections", 100_001, "must be at most 100000"),
        ("mariadb", "10.11", "slow_query_log", 1, "must be a boolean"),
        ("mariadb", "10.11", "slow_query_log", "ON", "must be a boolean"),
        ("mariadb", "10.11", "long_query_time", False, "must be a number"),
        ("mariadb", "10.11", "long_query_time", -0.5, "must be at least 0"),
        ("mariadb", "10.11", "character_set_server", "klingon", "must be one of utf8mb4"),
        ("mariadb", "10.11", "character_set_server", 8, "must be a string"),
        ("postgresql", "15", "random_page_cost", "fast", "must be a number"),
        ("postgresql", "15", "log_min_duration_statement", -2, "must be at least -1"),
        ("redis", "7", "notify-keyspace-events", "Ex\nrequirepass x", "must match"),
        ("redis", "7", "hz", 501, "must be at most 500"),
    ],
)
def test_bad_values_are_422_naming_the_key(datastore, version, key, value, rule):
    error = refused(datastore, version, {key: value})
    assert error.field == f"values.{key}"
    assert error.status == 422
    assert rule in error.rule


def test_values_must_be_an_object():
    error = refused("mariadb", "10.11", ["max_connections"])
    assert (error.field, error.status) == ("values", 400)


def test_collation_must_belong_to_the_character_set():
    assert validate(
        "mariadb",
        "10.11",
        {"character_set_server": "latin1", "collation_server": "latin1_bin"},
    ) == {"character_set_server": "latin1", "collation_server": "latin1_bin"}
    error = refused(
        "mariadb",
        "10.11",
        {"character_set_server": "utf8mb4", "collation_server": "latin1_bin"},
    )
    assert error.field == "values.collation_server"
    assert "not a collation of character set utf8mb4" in error.rule
    assert (
        "needs character_set_server"
        in refused("mariadb", "10.11", {"collation_server": "utf8mb4_bin"}).rule
    )


def test_versions_resolve_by_name_or_patch_release():
    assert rules_for("mariadb", "10.11.6").rules is MARIADB_10_11
    assert rules_for("redis", "7.0.15").rules is REDIS_7
    assert rules_for("PostgreSQL", "15").rules is POSTGRESQL_15
    for datastore, version in [("mariadb", "10.6"), ("mongodb", "7"), ("postgresql", "155")]:
        with pytest.raises(NotFoundError):
            rules_for(datastore, version)


def test_parameters_as_trove_shows_them():
    listed = parameters("postgresql", "15")
    assert [p.name for p in listed] == sorted(POSTGRESQL_15)
    shared_buffers = parameter("postgresql", "15", "shared_buffers")
    assert shared_buffers.type is ParameterType.INTEGER
    assert shared_buffers.restart_required is True
    assert shared_buffers.min == 128 * 1024
    policy = parameter("redis", "7", "maxmemory-policy")
    assert policy.allowed_values is not None and "allkeys-lru" in policy.allowed_values
    with pytest.raises(NotFoundError):
        parameter("redis", "7", "requirepass")


def test_the_real_parameter_sets_are_there():
    for key in [
        "max_connections",
        "innodb_buffer_pool_size",
        "innodb_log_file_size",
        "wait_timeout",
        "interactive_timeout",
        "max_allowed_packet",
        "long_query_time",
        "slow_query_log",
        "character_set_server",
        "collation_server",
        "tmp_table_size",
        "max_heap_table_size",
        "table_open_cache",
        "thread_cache_size",
        "innodb_flush_log_at_trx_commit",
        "sync_binlog",
    ]:
        assert key in MARIADB_10_11
    for key in ["work_mem", "effective_cache_size", "statement_timeout", "max_wal_size"]:
        assert key in POSTGRESQL_15
    for key in ["maxmemory", "timeout", "tcp-keepalive", "appendfsync", "databases", "hz"]:
        assert key in REDIS_7


@pytest.mark.parametrize(
    ("rules", "guest"),
    [(MARIADB_10_11, GUEST_MARIADB), (POSTGRESQL_15, GUEST_POSTGRESQL), (REDIS_7, GUEST_REDIS)],
)
def test_the_guest_accepts_exactly_what_the_api_accepts(rules, guest):
    assert set(rules) == set(guest)
    for name, rule in rules.items():
        assert guest[name].restart_required == rule.restart_required, name
        if rule.min is not None:
            # The API's smallest value is one the guest takes as it is.
            assert guest[name].coerce(rule.min) == rule.min, name
        if rule.allowed_values:
            for value in rule.allowed_values:
                assert guest[name].coerce(value) == value, name
