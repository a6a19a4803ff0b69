"""Per-datastore rules for database names, user names, hosts and passwords.

Every name a tenant chooses reaches a datastore as a quoted identifier or a bound parameter, but it
is checked here first: a name that breaks a rule is refused with a `NameRuleError` naming the field
(`users[0].name`) and the rule, before anything is created. The rules are deliberately narrower than
what the datastores accept, so a name means the same thing in every client and tool:

- database and user names: ASCII letters, digits, `_`, `$`, `-`; first character a letter or `_`;
  at most 64 (MariaDB databases), 80 (MariaDB users: 10.11 allows 128, we keep the older limit so
  names survive dumps into other MariaDB/MySQL servers), 63 (PostgreSQL: NAMEDATALEN-1 bytes) or
  64 (Redis ACL users) characters.
- Redis databases are logical indexes: a decimal number below the server's `databases` setting.
- passwords: 8 to 128 printable ASCII characters (space to `~`). ASCII keeps the hashes we compute
  client-side (MariaDB native, PostgreSQL SCRAM, Redis SHA-256) identical to what clients send.
- hosts: MariaDB accepts IP patterns (`%`, `10.0.%`, `192.168.1.0/255.255.255.0`, IPv6);
  PostgreSQL and Redis have no per-user host, so only `%` is accepted there.
- names the service itself uses (system schemas, `root`, our `os_admin`, PostgreSQL's `pg_`
  roles...) are refused whatever their case.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from shared.errors import TrovelessError

ADMIN_USER = "os_admin"  # the account the guest agent manages each datastore with

_SQL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_$-]*")
_SQL_NAME_RULE = "letters, digits, '_', '$' and '-' only, starting with a letter or '_'"
_REDIS_INDEX = re.compile(r"0|[1-9][0-9]{0,4}")
_IPV4_PATTERN = re.compile(r"[0-9%_]{1,3}(?:\.[0-9%_]{1,3}){0,3}")  # 10.0.%, 192.168.1._
_CHARSET = re.compile(r"[A-Za-z0-9_]+")
_PG_LOCALE = re.compile(r"[A-Za-z0-9_.@-]+")
_PASSWORD = re.compile(r"[\x20-\x7e]*")


class NameRuleError(TrovelessError, ValueError):
    """A name, host or password breaks its datastore's rule. `field` says which one, `rule` why."""

    def __init__(self, field: str, rule: str, value: object = None, *, show_value: bool = True):
        self.field = field
        self.rule = rule
        suffix = f" (got {value!r})" if show_value and value is not None else ""
        super().__init__(f"{field}: {rule}{suffix}")


@dataclass(frozen=True)
class NameRules:
    """The naming rules of one datastore."""

    datastore: str
    database_max_length: int
    user_max_length: int
    reserved_databases: frozenset[str]
    reserved_users: frozenset[str]
    reserved_user_prefixes: tuple[str, ...] = ()
    databases_are_indexes: bool = False  # Redis: databases are numbered, not named
    per_user_hosts: bool = False  # MariaDB: accounts are user@host
    has_character_sets: bool = True
    password_min_length: int = 8
    password_max_length: int = 128


RULES: dict[str, NameRules] = {
    "mariadb": NameRules(
        datastore="mariadb",
        database_max_length=64,
        user_max_length=80,
        reserved_databases=frozenset(
            {"mysql", "information_schema", "performance_schema", "sys", "lost+found"}
        ),
        reserved_users=frozenset(
            {"root", ADMIN_USER, "mysql", "mariadb.sys", "public", "debian-sys-maint"}
        ),
        per_user_hosts=True,
    ),
    "postgresql": NameRules(
        datastore="postgresql",
        database_max_length=63,
        user_max_length=63,
        reserved_databases=frozenset({"postgres", "template0", "template1"}),
        reserved_users=frozenset(
            {
                "postgres",
                ADMIN_USER,
                "public",
                "none",
                "current_user",
                "session_user",
                "current_role",
            }
        ),
        reserved_user_prefixes=("pg_",),
    ),
    "redis": NameRules(
        datastore="redis",
        database_max_length=5,
        user_max_length=64,
        reserved_databases=frozenset(),
        reserved_users=frozenset({"default", ADMIN_USER}),
        databases_are_indexes=True,
        has_character_sets=False,
    ),
}


def rules_for(datastore: str) -> NameRules:
    """The rules of `datastore`; an unknown datastore is itself a rule violation."""
    rules = RULES.get(datastore)
    if rules is None:
        raise NameRuleError("datastore", f"must be one of {', '.join(sorted(RULES))}", datastore)
    return rules


def _require_str(value: object, field: str) -> str:
    if value is None:
        raise NameRuleError(field, "is required")
    if not isinstance(value, str):
        raise NameRuleError(field, "must be a string", type(value).__name__)
    return value


def _check_identifier(
    value: object, field: str, max_length: int, reserved: frozenset[str], prefixes: tuple[str, ...]
) -> str:
    name = _require_str(value, field)
    if not name:
        raise NameRuleError(field, "must not be empty")
    if len(name) > max_length:
        raise NameRuleError(field, f"must be at most {max_length} characters", name)
    if not _SQL_NAME.fullmatch(name):
        raise NameRuleError(field, f"must use {_SQL_NAME_RULE}", name)
    if name.lower() in reserved:
        raise NameRuleError(field, "is reserved for the service", name)
    for prefix in prefixes:
        if name.lower().startswith(prefix):
            raise NameRuleError(field, f"must not start with {prefix!r} (reserved)", name)
    return name


def validate_database_name(
    datastore: str, name: object, *, field: str = "name", database_count: int = 16
) -> str:
    """Return `name` if it is a valid database name for `datastore`, else raise NameRuleError.

    For Redis the name is a logical database index below `database_count`.
    """
    rules = rules_for(datastore)
    if rules.databases_are_indexes:
        text = _require_str(name, field)
        if not _REDIS_INDEX.fullmatch(text):
            raise NameRuleError(field, "must be a database index: a decimal number", text)
        if int(text) >= database_count:
            raise NameRuleError(
                field, f"must be below the server's {database_count} databases", text
            )
        return text
    return _check_identifier(name, field, rules.database_max_length, rules.reserved_databases, ())


def validate_user_name(datastore: str, name: object, *, field: str = "name") -> str:
    """Return `name` if it is a valid user name for `datastore`, else raise NameRuleError."""
    rules = rules_for(datastore)
    return _check_identifier(
        name, field, rules.user_max_length, rules.reserved_users, rules.reserved_user_prefixes
    )


def validate_password(datastore: str, password: object, *, field: str = "password") -> str:
    """Return `password` if acceptable; the error never repeats the password itself."""
    rules = rules_for(datastore)
    if password is None:
        raise NameRuleError(field, "is required")
    if not isinstance(password, str):
        raise NameRuleError(field, "must be a string")
    if not rules.password_min_length <= len(password) <= rules.password_max_length:
        raise NameRuleError(
            field,
            f"must be {rules.password_min_length} to {rules.password_max_length} characters long",
        )
    if not _PASSWORD.fullmatch(password):
        raise NameRuleError(field, "must use printable ASCII characters only (space to '~')")
    return password


def validate_host(datastore: str, host: object, *, field: str = "host") -> str:
    """Return the user's host pattern; `%` (any host) is the default everywhere."""
    rules = rules_for(datastore)
    text = _require_str(host, field)
    if not rules.per_user_hosts:
        if text != "%":
            raise NameRuleError(field, f"{datastore} users have no host restriction: use '%'", text)
        return text
    if not _is_host_pattern(text):
        raise NameRuleError(
            field,
            "must be '%', an IP address, an IPv4 wildcard pattern like 10.0.% "
            "or address/netmask like 10.0.0.0/255.255.0.0",
            text,
        )
    return text


def _is_host_pattern(text: str) -> bool:
    if len(text) > 255:
        return False
    if _IPV4_PATTERN.fullmatch(text):
        return True
    candidates = text.split("/", 1) if "/" in text else [text]
    try:
        return all(ipaddress.ip_address(part) for part in candidates) and (
            len(candidates) == 1 or ipaddress.ip_address(candidates[0]).version == 4
        )
    except ValueError:
        return False


def validate_character_set(datastore: str, value: object, *, field: str = "character_set") -> str:
    """A character set (MariaDB) or encoding (PostgreSQL) name; Redis has none."""
    rules = rules_for(datastore)
    if not rules.has_character_sets:
        raise NameRuleError(field, f"{datastore} databases have no character set", value)
    text = _require_str(value, field)
    if not 0 < len(text) <= 64 or not _CHARSET.fullmatch(text):
        raise NameRuleError(field, "must be 1 to 64 letters, digits or '_'", text)
    return text


def validate_collation(datastore: str, value: object, *, field: str = "collate") -> str:
    """A collation (MariaDB) or locale (PostgreSQL, e.g. `C.UTF-8`) name; Redis has none."""
    rules = rules_for(datastore)
    if not rules.has_character_sets:
        raise NameRuleError(field, f"{datastore} databases have no collation", value)
    text = _require_str(value, field)
    pattern = _CHARSET if datastore == "mariadb" else _PG_LOCALE
    if not 0 < len(text) <= 64 or not pattern.fullmatch(text):
        raise NameRuleError(field, "must be 1 to 64 letters, digits, '_' (or '.', '@', '-')", text)
    return text


def _database_names(datastore: str, value: object, field: str, database_count: int) -> list[str]:
    """A user's database list: names, or Trove's `[{"name": ...}]` form."""
    if value is None:
        return []
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise NameRuleError(field, "must be a list of database names")
    names = []
    for i, item in enumerate(value):
        name, item_field = item, f"{field}[{i}]"
        if isinstance(item, Mapping):
            name, item_field = item.get("name"), f"{item_field}.name"
        names.append(
            validate_database_name(datastore, name, field=item_field, database_count=database_count)
        )
    return names


def validate_database_request(
    datastore: str, database: object, *, field: str = "database", database_count: int = 16
) -> dict[str, Any]:
    """Normalise one requested database `{"name", "character_set"?, "collate"?}`."""
    if not isinstance(database, Mapping):
        raise NameRuleError(field, "must be an object with a 'name'")
    unknown = set(database) - {"name", "character_set", "collate"}
    if unknown:
        raise NameRuleError(f"{field}.{sorted(unknown)[0]}", "is not a known database attribute")
    out: dict[str, Any] = {
        "name": validate_database_name(
            datastore, database.get("name"), field=f"{field}.name", database_count=database_count
        ),
        "character_set": None,
        "collate": None,
    }
    if database.get("character_set") is not None:
        out["character_set"] = validate_character_set(
            datastore, database["character_set"], field=f"{field}.character_set"
        )
    if database.get("collate") is not None:
        out["collate"] = validate_collation(
            datastore, database["collate"], field=f"{field}.collate"
        )
    return out


def validate_user_request(
    datastore: str, user: object, *, field: str = "user", database_count: int = 16
) -> dict[str, Any]:
    """Normalise one requested user `{"name", "password", "host"?, "databases"?}`."""
    if not isinstance(user, Mapping):
        raise NameRuleError(field, "must be an object with a 'name' and a 'password'")
    unknown = set(user) - {"name", "password", "host", "databases"}
    if unknown:
        raise NameRuleError(f"{field}.{sorted(unknown)[0]}", "is not a known user attribute")
    host = user.get("host")
    return {
        "name": validate_user_name(datastore, user.get("name"), field=f"{field}.name"),
        "password": validate_password(datastore, user.get("password"), field=f"{field}.password"),
        "host": validate_host(datastore, "%" if host is None else host, field=f"{field}.host"),
        "databases": _database_names(
            datastore, user.get("databases"), f"{field}.databases", database_count
        ),
    }


def validate_prepare_request(
    datastore: str,
    databases: object,
    users: object,
    *,
    database_count: int = 16,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Check everything a `prepare` will create before anything is created.

    Names must be unique, and the databases a user is given must be among those requested.
    """
    dbs_in = [] if databases is None else databases
    users_in = [] if users is None else users
    if not isinstance(dbs_in, Sequence) or isinstance(dbs_in, (str, bytes)):
        raise NameRuleError("databases", "must be a list")
    if not isinstance(users_in, Sequence) or isinstance(users_in, (str, bytes)):
        raise NameRuleError("users", "must be a list")
    dbs = [
        validate_database_request(
            datastore, d, field=f"databases[{i}]", database_count=database_count
        )
        for i, d in enumerate(dbs_in)
    ]
    names = [d["name"] for d in dbs]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise NameRuleError(f"databases[{i}].name", "is requested twice", name)
    checked_users = [
        validate_user_request(datastore, u, field=f"users[{i}]", database_count=database_count)
        for i, u in enumerate(users_in)
    ]
    accounts = [(u["name"], u["host"]) for u in checked_users]
    for i, user in enumerate(checked_users):
        if accounts[i] in accounts[:i]:
            raise NameRuleError(f"users[{i}].name", "is requested twice", user["name"])
        if rules_for(datastore).databases_are_indexes:
            continue  # Redis indexes always exist
        for j, db in enumerate(user["databases"]):
            if db not in names:
                raise NameRuleError(
                    f"users[{i}].databases[{j}]",
                    "must name one of the databases requested with it",
                    db,
                )
    return dbs, checked_users
