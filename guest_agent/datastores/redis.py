"""Redis (7) manager.

- no init command: prepare writes redis.conf and the ACL file `conf/users.acl`, which holds the
  admin user `os_admin` (all commands, all keys) with a SHA-256 password hash and the `default` user
  switched off, so an unauthenticated connection can do nothing. Every ACL change is saved to the
  file (`ACL SAVE`) so it survives restarts; passwords are always sent as `#<sha256>` hashes.
- databases are the logical DB indexes 0..databases-1 (the `databases` setting, 16 by default).
  They always exist: `create_database` only validates the index, `delete_database` empties it
  (FLUSHDB), `list_databases` lists every index with its key count.
- users are ACL users with `~* &* +@all -@dangerous` (every key and channel, no admin commands).
  Redis ACLs cannot restrict a user to some DB indexes: `grant_access` validates the indexes and
  changes nothing, `list_access` lists every index, and `revoke_access` is refused
  (UnsupportedOperationError).
- root: `enable_root()` switches the `default` user on with a generated password and all commands,
  so a client's plain `AUTH <password>` (or requirepass-style URL) is root.
- memory: maxmemory = 75% of the flavor's RAM. Overrides go live with CONFIG SET unless immutable.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from guest_agent.datastores.base import (
    ConfigParameter,
    DatastoreManager,
    DatastoreOperationError,
    OverrideValue,
    UnsupportedOperationError,
    find_binary,
    generate_password,
    parameters_from_rules,
)
from guest_agent.datastores.logs import GuestLogSpec, LogType
from shared.errors import NotFoundError
from shared.rules.config_parameters import guest_rules
from shared.rules.names import (
    ADMIN_USER,
    NameRuleError,
    validate_database_name,
    validate_host,
    validate_password,
    validate_prepare_request,
    validate_user_name,
)

MIB = 1 << 20
ROOT_USER = "default"
TENANT_CATEGORIES = ["+@all", "-@dangerous"]  # with every key (~*) and channel (&*)
DEFAULT_DATABASES = 16

# The keys, types, bounds, defaults and restart_required come from shared.rules.config_parameters.
PARAMETERS: dict[str, ConfigParameter] = parameters_from_rules(guest_rules("redis"))


def redis_password_hash(password: str) -> str:
    """The form ACL SETUSER and ACL files take a password in: '#' + hex(SHA-256)."""
    return "#" + hashlib.sha256(password.encode()).hexdigest()


def _set_acl_user(
    client: redis.Redis, name: str, password: str, categories: list[str], *, reset: bool
) -> None:
    """ACL SETUSER with a hashed password; `reset` first clears every other right the user had."""
    client.acl_setuser(
        name,
        enabled=True,
        reset=reset,
        reset_passwords=True,
        hashed_passwords=["+" + redis_password_hash(password)[1:]],
        keys=None if not reset else ["*"],
        channels=None if not reset else ["*"],
        categories=categories if reset else None,
    )
    client.acl_save()


def _conf_value(value: OverrideValue | str) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    # An empty value must still be an argument in redis.conf (notify-keyspace-events "").
    return str(value) or '""'


class RedisManager(DatastoreManager):
    datastore: ClassVar[str] = "redis"
    default_port: ClassVar[int] = 6379
    parameters: ClassVar[Mapping[str, ConfigParameter]] = PARAMETERS

    @property
    def socket_path(self) -> Path:
        return self.layout.run / "redis.sock"

    @property
    def config_path(self) -> Path:
        return self.layout.conf / "redis.conf"

    @property
    def acl_path(self) -> Path:
        return self.layout.conf / "users.acl"

    def memory_settings(self) -> dict[str, OverrideValue]:
        return {"maxmemory": self.ram_mb * 3 // 4 * MIB}

    def database_count(self) -> int:
        """How many logical databases the configuration gives (what the next start will have)."""
        return int(self.effective_settings().get("databases", DEFAULT_DATABASES))

    def _validate_prepare_request(
        self, databases: object, users: object
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        return validate_prepare_request(
            self.datastore, databases, users, database_count=self.database_count()
        )

    def _render_config(self, settings: Mapping[str, OverrideValue]) -> None:
        base: dict[str, OverrideValue | str] = {
            "bind": self.address,
            "port": self.port,
            "unixsocket": str(self.socket_path),
            "unixsocketperm": "700",
            "dir": str(self.layout.data),
            "daemonize": False,
            "pidfile": str(self.layout.run / "redis.pid"),
            "logfile": str(self.layout.log / "redis.log"),
            "aclfile": str(self.acl_path),
            "save": '""',
            "appendonly": True,
            # A backup (`redis-cli --rdb`) is a replica's full sync: start it at once instead
            # of waiting 5 s for more replicas to share the fork.
            "repl-diskless-sync-delay": 0,
        }
        merged = {**base, **settings}
        lines = ["# Rendered by the troveless guest agent; edits are overwritten."]
        lines += [f"{key} {_conf_value(value)}" for key, value in merged.items()]
        self._write_file(self.config_path, "\n".join(lines) + "\n")

    def _initialize(self, admin_password: str) -> None:
        acl = [
            f"user {ROOT_USER} off resetchannels -@all",
            f"user {ADMIN_USER} on {redis_password_hash(admin_password)} ~* &* +@all",
        ]
        self._write_file(self.acl_path, "\n".join(acl) + "\n")

    def _server_command(self) -> list[str]:
        return [find_binary("redis-server"), str(self.config_path)]

    def _after_first_start(self, admin_password: str) -> None:
        """The ACL file already holds the admin user; nothing else to secure."""

    # ----------------------------------------------------------------- connections
    @contextlib.contextmanager
    def _connect(self, db: int = 0, *, timeout: float = 10.0) -> Iterator[redis.Redis]:
        client = redis.Redis(
            unix_socket_path=str(self.socket_path),
            username=ADMIN_USER,
            password=self._admin_secret(),
            db=db,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            decode_responses=True,
            # redis-py retries refused/failed connections (auth errors too) with backoff; a probe
            # must report a dead server at once, and commands are never worth repeating blindly.
            retry=Retry(NoBackoff(), 0),
        )
        try:
            yield client
        except redis.RedisError as exc:
            raise DatastoreOperationError(f"redis: {exc}") from None
        finally:
            client.close()

    def _probe_query(self, timeout: float) -> None:
        with self._connect(timeout=timeout) as client:
            if client.ping() is not True:
                raise DatastoreOperationError("redis: PING did not answer PONG")

    def admin_connection_info(self) -> dict[str, Any]:
        return {
            "datastore": self.datastore,
            "user": ADMIN_USER,
            "socket": str(self.socket_path),
            "host": self.address,
            "port": self.port,
        }

    # ----------------------------------------------------------------- overrides
    def _apply_live(self, changed: Mapping[str, OverrideValue | None]) -> set[str]:
        restart: set[str] = set()
        with self._connect() as client:
            for key, value in changed.items():
                parameter = PARAMETERS[key]
                if parameter.restart_required:
                    restart.add(key)
                    continue
                live = value if value is not None else parameter.default
                if live is None:
                    restart.add(key)
                    continue
                client.config_set(key, _conf_value(live))
        return restart

    # ----------------------------------------------------------------- databases
    def _index(self, name: str, field: str = "name") -> int:
        return int(
            validate_database_name(
                self.datastore, name, field=field, database_count=self.database_count()
            )
        )

    def _running_database_count(self, client: redis.Redis) -> int:
        return int(str(client.config_get("databases")["databases"]))

    def create_database(
        self, name: str, character_set: str | None = None, collate: str | None = None
    ) -> None:
        """Logical databases always exist: validate the index (and that no charset is asked)."""
        self._index(name)
        if character_set is not None or collate is not None:
            field = "character_set" if character_set is not None else "collate"
            raise NameRuleError(field, "redis databases have no character set or collation")

    def delete_database(self, name: str) -> None:
        """Empty logical database `name` (FLUSHDB)."""
        with self._connect(self._index(name)) as client:
            client.flushdb()

    def list_databases(self) -> list[dict[str, Any]]:
        with self._connect() as client:
            count = self._running_database_count(client)
            keyspace = client.info("keyspace")
        return [
            {"name": str(i), "keys": int(keyspace.get(f"db{i}", {}).get("keys", 0))}
            for i in range(count)
        ]

    # ----------------------------------------------------------------- users
    def _user_exists(self, client: redis.Redis, name: str) -> bool:
        return client.acl_getuser(name) is not None

    def _all_indexes(self, client: redis.Redis) -> list[str]:
        return [str(i) for i in range(self._running_database_count(client))]

    def create_user(
        self, name: str, password: str, host: str = "%", databases: list[str] | None = None
    ) -> None:
        name = validate_user_name(self.datastore, name)
        password = validate_password(self.datastore, password)
        validate_host(self.datastore, host)
        for i, db in enumerate(databases or []):
            self._index(db, field=f"databases[{i}]")
        with self._connect() as client:
            _set_acl_user(client, name, password, TENANT_CATEGORIES, reset=True)

    def delete_user(self, name: str, host: str = "%") -> None:
        name = validate_user_name(self.datastore, name)
        validate_host(self.datastore, host)
        with self._connect() as client:
            client.acl_deluser(name)  # also disconnects its clients
            client.acl_save()

    def list_users(self) -> list[dict[str, Any]]:
        with self._connect() as client:
            names = client.acl_users()
            indexes = self._all_indexes(client)
        return [
            {"name": name, "host": "%", "databases": indexes}
            for name in sorted(names)
            if name not in (ROOT_USER, ADMIN_USER)
        ]

    def change_password(self, name: str, password: str, host: str = "%") -> None:
        name = validate_user_name(self.datastore, name)
        password = validate_password(self.datastore, password)
        validate_host(self.datastore, host)
        with self._connect() as client:
            if not self._user_exists(client, name):
                raise NotFoundError(name, "user")
            _set_acl_user(client, name, password, [], reset=False)

    def grant_access(self, user: str, databases: list[str], host: str = "%") -> None:
        """Validates the indexes only: every ACL user can SELECT every logical database."""
        user = validate_user_name(self.datastore, user, field="user")
        validate_host(self.datastore, host)
        for i, db in enumerate(databases):
            self._index(db, field=f"databases[{i}]")
        with self._connect() as client:
            if not self._user_exists(client, user):
                raise NotFoundError(user, "user")

    def revoke_access(self, user: str, database: str, host: str = "%") -> None:
        validate_user_name(self.datastore, user, field="user")
        self._index(database, field="database")
        validate_host(self.datastore, host)
        raise UnsupportedOperationError(
            "redis ACLs cannot keep a user out of one logical database; delete the user instead"
        )

    def list_access(self, user: str, host: str = "%") -> list[str]:
        user = validate_user_name(self.datastore, user, field="user")
        validate_host(self.datastore, host)
        with self._connect() as client:
            if not self._user_exists(client, user):
                raise NotFoundError(user, "user")
            return self._all_indexes(client)

    # ----------------------------------------------------------------- root
    def enable_root(self) -> str:
        password = generate_password()
        with self._connect() as client:
            _set_acl_user(client, ROOT_USER, password, ["+@all"], reset=True)
        return password

    def root_enabled(self) -> bool:
        with self._connect() as client:
            user = client.acl_getuser(ROOT_USER)
        flags = user.get("flags", []) if isinstance(user, dict) else []
        return isinstance(flags, list) and "on" in flags

    def disable_root(self) -> None:
        with self._connect() as client:
            client.acl_setuser(ROOT_USER, enabled=False, reset_passwords=True)
            client.acl_save()

    # ----------------------------------------------------------------- guest logs
    guest_logs: ClassVar[Mapping[str, GuestLogSpec]] = {
        "redis": GuestLogSpec("redis", LogType.SYS, "redis.log", "the server log"),
    }
