"""Configuration-group parameter rules per datastore version, and checking values against them.

One table per datastore version says which keys a tenant may set, their type (Trove's names:
integer, float, string, boolean), bounds, allowed values and whether a new value only takes
effect after a restart. The control plane checks a configuration group's `values` here (`validate`,
422 naming the key); the guest agent builds its own override table from the same rules
(`guest_agent.datastores.base.parameters_from_rules`), so both sides always agree on the keys.

`restart_required` mirrors the servers themselves: MariaDB 10.11's
information_schema.SYSTEM_VARIABLES.READ_ONLY, PostgreSQL 15's pg_settings.context = 'postmaster',
Redis 7.0's immutable CONFIG keys (the guest's integration tests compare them with live servers).

Sizes are integers in bytes (`unit="bytes"`); the guest also accepts "64M" from its own callers,
the API does not: Trove's integer parameters take integers. Booleans are JSON true/false only, and
never count as integers.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shared.errors import NotFoundError, RequestError
from shared.models.configuration import ConfigurationParameter, ConfigValue, ParameterType

KIB = 1 << 10
MIB = 1 << 20
GIB = 1 << 30
MAX_STRING_LENGTH = 255
_UNPROCESSABLE = 422


@dataclass(frozen=True)
class ParameterRule:
    """The rule for one key. `pattern` (strings only) is a full-match regular expression for
    values that are not from a fixed list; `unit` documents integers ("bytes", "ms", "s");
    `default` is what a removed override reverts to where the datastore cannot reset a key to
    its built-in default by itself (Redis)."""

    name: str
    type: ParameterType
    restart_required: bool
    description: str
    min: int | float | None = None
    max: int | float | None = None
    allowed_values: tuple[str, ...] | None = None
    pattern: str | None = None
    unit: str | None = None
    default: ConfigValue | None = None

    def model(self) -> ConfigurationParameter:
        """The rule as Trove's configuration-parameter resource shows it."""
        return ConfigurationParameter(
            name=self.name,
            type=self.type,
            min=self.min,
            max=self.max,
            allowed_values=list(self.allowed_values) if self.allowed_values else None,
            restart_required=self.restart_required,
            description=self.description,
        )

    def check(self, value: object, field: str) -> ConfigValue:
        """`value` in canonical form, or RequestError(422) naming `field`."""
        if self.type is ParameterType.BOOLEAN:
            if not isinstance(value, bool):
                raise RequestError(
                    field, "must be a boolean (true or false)", status=_UNPROCESSABLE
                )
            return value
        if self.type is ParameterType.INTEGER:
            if isinstance(value, bool) or not isinstance(value, int):
                raise RequestError(field, "must be an integer", status=_UNPROCESSABLE)
            self._check_bounds(value, field)
            return value
        if self.type is ParameterType.FLOAT:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise RequestError(field, "must be a number", status=_UNPROCESSABLE)
            if not math.isfinite(value):
                raise RequestError(field, "must be a finite number", status=_UNPROCESSABLE)
            self._check_bounds(value, field)
            return float(value)
        return self._check_string(value, field)

    def _check_bounds(self, value: int | float, field: str) -> None:
        if self.min is not None and value < self.min:
            raise RequestError(field, f"must be at least {self.min:g}", status=_UNPROCESSABLE)
        if self.max is not None and value > self.max:
            raise RequestError(field, f"must be at most {self.max:g}", status=_UNPROCESSABLE)

    def _check_string(self, value: object, field: str) -> str:
        if not isinstance(value, str):
            raise RequestError(field, "must be a string", status=_UNPROCESSABLE)
        if self.allowed_values is not None:
            # The datastores take these case-insensitively; we store the canonical spelling.
            text = value.lower()
            if text not in self.allowed_values:
                raise RequestError(
                    field,
                    f"must be one of {', '.join(self.allowed_values)}",
                    status=_UNPROCESSABLE,
                )
            return text
        if len(value) > MAX_STRING_LENGTH:
            raise RequestError(
                field, f"must be at most {MAX_STRING_LENGTH} characters", status=_UNPROCESSABLE
            )
        # Free text would reach configuration files: only patterns that exclude line breaks.
        if self.pattern is None or not re.fullmatch(self.pattern, value):
            raise RequestError(field, f"must match {self.pattern}", status=_UNPROCESSABLE)
        return value


@dataclass(frozen=True)
class VersionRules:
    """The rules of one datastore version, by key."""

    datastore: str
    version: str
    rules: Mapping[str, ParameterRule]


def _table(*rules: ParameterRule) -> dict[str, ParameterRule]:
    table = {rule.name: rule for rule in rules}
    if len(table) != len(rules):
        raise ValueError("a parameter is listed twice")
    return table


_I = ParameterType.INTEGER
_F = ParameterType.FLOAT
_S = ParameterType.STRING
_B = ParameterType.BOOLEAN

_MARIADB_CHARSETS = ("utf8mb4", "utf8mb3", "latin1", "ascii")
_MARIADB_COLLATIONS = (
    "utf8mb4_general_ci",
    "utf8mb4_unicode_ci",
    "utf8mb4_unicode_520_ci",
    "utf8mb4_bin",
    "utf8mb3_general_ci",
    "utf8mb3_unicode_ci",
    "utf8mb3_bin",
    "latin1_swedish_ci",
    "latin1_general_ci",
    "latin1_bin",
    "ascii_general_ci",
    "ascii_bin",
)

# MariaDB 10.11. innodb_buffer_pool_size (since 10.2) and innodb_log_file_size (since 10.9)
# are dynamic; a new buffer pool size is applied in the background, rounded to the chunk size.
MARIADB_10_11 = _table(
    ParameterRule(
        "max_connections", _I, False, "Most simultaneous client connections.", 10, 100_000
    ),
    ParameterRule(
        "max_allowed_packet", _I, False, "Largest packet or row, in bytes.", KIB, GIB, unit="bytes"
    ),
    ParameterRule(
        "wait_timeout", _I, False, "Seconds an idle connection is kept.", 1, 31_536_000, unit="s"
    ),
    ParameterRule(
        "interactive_timeout",
        _I,
        False,
        "Seconds an idle interactive connection is kept.",
        1,
        31_536_000,
        unit="s",
    ),
    ParameterRule(
        "innodb_buffer_pool_size",
        _I,
        False,
        "InnoDB data and index cache, in bytes.",
        8 * MIB,
        1 << 44,
        unit="bytes",
    ),
    ParameterRule(
        "innodb_log_file_size",
        _I,
        False,
        "InnoDB redo log size, in bytes.",
        4 * MIB,
        512 * GIB,
        unit="bytes",
    ),
    ParameterRule(
        "innodb_flush_log_at_trx_commit",
        _I,
        False,
        "1: flush the redo log at each commit (durable); 0, 2: once a second.",
        0,
        3,
    ),
    ParameterRule(
        "innodb_log_buffer_size",
        _I,
        True,
        "InnoDB redo log buffer, in bytes.",
        256 * KIB,
        4 * GIB,
        unit="bytes",
    ),
    ParameterRule("performance_schema", _B, True, "Collect Performance Schema statistics."),
    ParameterRule("slow_query_log", _B, False, "Log queries slower than long_query_time."),
    ParameterRule(
        "long_query_time",
        _F,
        False,
        "Seconds after which a query counts as slow.",
        0,
        31_536_000,
        unit="s",
    ),
    ParameterRule(
        "tmp_table_size",
        _I,
        False,
        "Largest in-memory temporary table, in bytes.",
        KIB,
        1 << 44,
        unit="bytes",
    ),
    ParameterRule(
        "max_heap_table_size",
        _I,
        False,
        "Largest MEMORY table, in bytes.",
        16 * KIB,
        1 << 44,
        unit="bytes",
    ),
    ParameterRule(
        "table_open_cache", _I, False, "Open tables kept for all threads.", 10, 1_048_576
    ),
    ParameterRule("thread_cache_size", _I, False, "Threads kept for reuse.", 0, 16_384),
    ParameterRule(
        "sync_binlog",
        _I,
        False,
        "Sync the binary log every N commits (0: let the OS).",
        0,
        4_294_967_295,
    ),
    ParameterRule(
        "character_set_server",
        _S,
        False,
        "Default character set of new databases.",
        allowed_values=_MARIADB_CHARSETS,
    ),
    ParameterRule(
        "collation_server",
        _S,
        False,
        "Default collation of new databases (needs character_set_server).",
        allowed_values=_MARIADB_COLLATIONS,
    ),
)

# PostgreSQL 15. Sizes in bytes (the guest writes them with units); times in milliseconds
# except checkpoint_timeout (seconds), as pg_settings' units.
POSTGRESQL_15 = _table(
    ParameterRule("max_connections", _I, True, "Most simultaneous client connections.", 5, 262_143),
    ParameterRule(
        "shared_buffers",
        _I,
        True,
        "Shared memory buffers, in bytes.",
        128 * KIB,
        1 << 43,
        unit="bytes",
    ),
    ParameterRule(
        "work_mem",
        _I,
        False,
        "Memory per sort or hash before spilling to disk, in bytes.",
        64 * KIB,
        1 << 41,
        unit="bytes",
    ),
    ParameterRule(
        "maintenance_work_mem",
        _I,
        False,
        "Memory for VACUUM, CREATE INDEX..., in bytes.",
        MIB,
        1 << 41,
        unit="bytes",
    ),
    ParameterRule(
        "effective_cache_size",
        _I,
        False,
        "The planner's guess of the disk cache, in bytes.",
        8 * KIB,
        1 << 44,
        unit="bytes",
    ),
    ParameterRule(
        "random_page_cost", _F, False, "Planner cost of a non-sequential page read.", 0, 1_000_000
    ),
    ParameterRule(
        "statement_timeout",
        _I,
        False,
        "Abort statements running longer (ms; 0: never).",
        0,
        2_147_483_647,
        unit="ms",
    ),
    ParameterRule(
        "log_min_duration_statement",
        _I,
        False,
        "Log statements running at least this long (ms; -1: off).",
        -1,
        2_147_483_647,
        unit="ms",
    ),
    ParameterRule(
        "checkpoint_timeout",
        _I,
        False,
        "Most time between automatic checkpoints (s).",
        30,
        86_400,
        unit="s",
    ),
    ParameterRule(
        "max_wal_size",
        _I,
        False,
        "WAL size that triggers a checkpoint, in bytes.",
        2 * MIB,
        1 << 44,
        unit="bytes",
    ),
    ParameterRule("autovacuum", _B, False, "Run the autovacuum launcher."),
)

_REDIS_KEYSPACE_EVENTS = r"[KEg$lshzxetdmnA]*"
REDIS_7 = _table(
    ParameterRule(
        "maxmemory",
        _I,
        False,
        "Memory limit for data, in bytes (0: none).",
        0,
        1 << 44,
        unit="bytes",
        default=0,
    ),
    ParameterRule(
        "maxmemory-policy",
        _S,
        False,
        "What to evict when maxmemory is reached.",
        allowed_values=(
            "noeviction",
            "allkeys-lru",
            "allkeys-lfu",
            "allkeys-random",
            "volatile-lru",
            "volatile-lfu",
            "volatile-random",
            "volatile-ttl",
        ),
        default="noeviction",
    ),
    ParameterRule(
        "timeout",
        _I,
        False,
        "Close a client idle this many seconds (0: never).",
        0,
        2_147_483_647,
        unit="s",
        default=0,
    ),
    ParameterRule(
        "tcp-keepalive",
        _I,
        False,
        "TCP keepalive interval (s; 0: off).",
        0,
        2_147_483_647,
        unit="s",
        default=300,
    ),
    ParameterRule("appendonly", _B, False, "Keep an append-only file (durability).", default=True),
    ParameterRule(
        "appendfsync",
        _S,
        False,
        "When to fsync the append-only file.",
        allowed_values=("always", "everysec", "no"),
        default="everysec",
    ),
    ParameterRule("hz", _I, False, "Background task frequency (per second).", 1, 500, default=10),
    ParameterRule(
        "slowlog-log-slower-than",
        _I,
        False,
        "Log commands slower than this (µs; -1: off).",
        -1,
        2**62,
        default=10_000,
    ),
    ParameterRule(
        "notify-keyspace-events",
        _S,
        False,
        "Keyspace notification classes (K, E, g, $, l, s, h, z, x, e, t, d, m, n, A).",
        pattern=_REDIS_KEYSPACE_EVENTS,
        default="",
    ),
    ParameterRule("maxmemory-samples", _I, False, "Keys sampled per eviction.", 1, 64, default=5),
    ParameterRule(
        "lazyfree-lazy-eviction", _B, False, "Free evicted keys in the background.", default=False
    ),
    ParameterRule("databases", _I, True, "Number of logical databases.", 1, 10_000, default=16),
    ParameterRule("io-threads", _I, True, "Threads for client I/O.", 1, 128, default=1),
)

_VERSIONS: dict[str, dict[str, Mapping[str, ParameterRule]]] = {
    "mariadb": {"10.11": MARIADB_10_11},
    "postgresql": {"15": POSTGRESQL_15},
    "redis": {"7": REDIS_7, "7.0": REDIS_7},
}
# The version whose rules the guest agent enforces (one per datastore on a guest image).
_GUEST_VERSION = {"mariadb": "10.11", "postgresql": "15", "redis": "7"}


def _version_key(datastore: str, version: str) -> str | None:
    """The rules table a version uses: its exact name, else the longest known prefix
    ("10.11.6" -> "10.11", "7.2" -> "7")."""
    versions = _VERSIONS.get(datastore, {})
    if version in versions:
        return version
    candidates = [v for v in versions if version.startswith(v + ".")]
    return max(candidates, key=len) if candidates else None


def rules_for(datastore: str, version: str) -> VersionRules:
    """The rules of a datastore version; NotFoundError when it has none."""
    key = _version_key(datastore.lower(), version)
    if key is None:
        raise NotFoundError(f"{datastore} {version}", "configuration parameters of datastore")
    return VersionRules(datastore.lower(), version, _VERSIONS[datastore.lower()][key])


def guest_rules(datastore: str) -> Mapping[str, ParameterRule]:
    """The rules the guest agent of `datastore` enforces."""
    return _VERSIONS[datastore][_GUEST_VERSION[datastore]]


def parameters(datastore: str, version: str) -> list[ConfigurationParameter]:
    """Every parameter of a datastore version, by name."""
    table = rules_for(datastore, version).rules
    return [table[name].model() for name in sorted(table)]


def parameter(datastore: str, version: str, name: str) -> ConfigurationParameter:
    """One parameter; NotFoundError when the version has no such key."""
    rule = rules_for(datastore, version).rules.get(name)
    if rule is None:
        raise NotFoundError(name, f"configuration parameter of {datastore} {version}")
    return rule.model()


def validate(datastore: str, version: str, values: object) -> dict[str, ConfigValue]:
    """`values` checked against the rules of `datastore` `version`, in canonical form.

    Raises RequestError(422) with `field="values.<key>"` for an unknown key, a value of the
    wrong type (booleans are not integers) or out of range; 400 when `values` is not an object.
    """
    if not isinstance(values, Mapping):
        raise RequestError("values", "must be an object of parameter: value")
    version_rules = rules_for(datastore, version)
    checked: dict[str, ConfigValue] = {}
    for key, value in values.items():
        field = f"values.{key}"
        rule = version_rules.rules.get(key) if isinstance(key, str) else None
        if rule is None:
            raise RequestError(
                field,
                f"is not a configuration parameter of {datastore} {version}",
                status=_UNPROCESSABLE,
            )
        checked[key] = rule.check(value, field)
    _check_combinations(datastore.lower(), checked)
    return checked


def _check_combinations(datastore: str, values: Mapping[str, Any]) -> None:
    """Rules across keys: values a server would refuse to start with."""
    if datastore == "mariadb" and "collation_server" in values:
        charset = values.get("character_set_server")
        collation = str(values["collation_server"])
        if charset is None:
            raise RequestError(
                "values.collation_server",
                "needs character_set_server in the same group",
                status=_UNPROCESSABLE,
            )
        if not collation.startswith(f"{charset}_"):
            raise RequestError(
                "values.collation_server",
                f"{collation} is not a collation of character set {charset}",
                status=_UNPROCESSABLE,
            )
