"""MariaDB (10.11) manager.

- init: `mariadb-install-db --auth-root-authentication-method=normal --skip-test-db`; on first
  start we create `os_admin@localhost` (the agent's account, socket only) and drop every root and
  anonymous account install-db made (they have empty passwords).
- tenant users are `'name'@'host'` (host `%` by default) with `ALL PRIVILEGES ON db.*`; `_` in a
  database name is escaped in GRANT, where it would otherwise be a wildcard.
- root: `enable_root()` creates `root@'%'` with all privileges.
- passwords are sent as native-password hashes (`IDENTIFIED BY PASSWORD '*...'`), never in clear.
- memory: `innodb_buffer_pool_size` = 50% of the flavor's RAM.
- the server listens on `address:3306` and `run/mysqld.sock`.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import pymysql

from guest_agent.datastores.base import (
    ConfigParameter,
    DatastoreManager,
    DatastoreOperationError,
    OverrideValue,
    find_binary,
    generate_password,
    parameters_from_rules,
)
from guest_agent.datastores.logs import GuestLogSpec, LogType
from shared.errors import NotFoundError
from shared.rules.config_parameters import guest_rules
from shared.rules.names import (
    ADMIN_USER,
    rules_for,
    validate_character_set,
    validate_collation,
    validate_database_name,
    validate_host,
    validate_password,
    validate_user_name,
)

MIB = 1 << 20
GIB = 1 << 30
# MariaDB error codes we treat as "already done".
_ER_NONEXISTING_GRANT = 1141
_ER_NONEXISTING_TABLE_GRANT = 1147

# restart_required mirrors information_schema.SYSTEM_VARIABLES.READ_ONLY on 10.11 (checked by the
# integration tests). innodb_buffer_pool_size (10.2) and innodb_log_file_size (10.9) are dynamic;
# a new buffer pool size is applied in the background, rounded to the pool's chunk size.
# The keys, types, bounds and restart_required come from shared.rules.config_parameters.
PARAMETERS: dict[str, ConfigParameter] = parameters_from_rules(guest_rules("mariadb"))

_SYSTEM_DATABASES = rules_for("mariadb").reserved_databases
_SERVICE_USERS = rules_for("mariadb").reserved_users


def native_password_hash(password: str) -> str:
    """MariaDB's mysql_native_password hash: '*' + hex(SHA1(SHA1(password)))."""
    return "*" + hashlib.sha1(hashlib.sha1(password.encode()).digest()).hexdigest().upper()


def quote_identifier(name: str) -> str:
    """A backtick-quoted identifier (backticks doubled)."""
    return "`" + name.replace("`", "``") + "`"


def grant_pattern(database: str) -> str:
    """A database name as a GRANT target: '_' and '%' are wildcards there unless escaped."""
    escaped = database.replace("\\", "\\\\").replace("_", "\\_").replace("%", "\\%")
    return quote_identifier(escaped)


def _unescape_grant(pattern: str) -> str:
    return re.sub(r"\\(.)", r"\1", pattern)


def _live_value(value: OverrideValue) -> OverrideValue:
    return int(value) if isinstance(value, bool) else value


def _cnf_value(value: OverrideValue) -> str:
    if isinstance(value, bool):
        return "ON" if value else "OFF"
    return str(value)


class MariaDBManager(DatastoreManager):
    datastore: ClassVar[str] = "mariadb"
    default_port: ClassVar[int] = 3306
    parameters: ClassVar[Mapping[str, ConfigParameter]] = PARAMETERS

    @property
    def socket_path(self) -> Path:
        return self.layout.run / "mysqld.sock"

    @property
    def config_path(self) -> Path:
        return self.layout.conf / "my.cnf"

    def memory_settings(self) -> dict[str, OverrideValue]:
        return {"innodb_buffer_pool_size": max(8 * MIB, self.ram_mb * MIB // 2 // MIB * MIB)}

    def _render_config(self, settings: Mapping[str, OverrideValue]) -> None:
        lines = [
            "# Rendered by the troveless guest agent; edits are overwritten.",
            "[mysqld]",
            f"datadir = {self.layout.data}",
            f"socket = {self.socket_path}",
            f"pid-file = {self.layout.run / 'mariadbd.pid'}",
            f"log-error = {self.layout.log / 'error.log'}",
            f"port = {self.port}",
            f"bind-address = {self.address}",
            "skip-name-resolve",
            "character-set-server = utf8mb4",
            "collation-server = utf8mb4_general_ci",
        ]
        lines += [f"{key} = {_cnf_value(value)}" for key, value in sorted(settings.items())]
        lines += ["", "[client]", f"socket = {self.socket_path}", f"port = {self.port}", ""]
        self._write_file(self.config_path, "\n".join(lines))

    def _initialize(self, admin_password: str) -> None:
        self._run_command(
            [
                find_binary("mariadb-install-db"),
                f"--defaults-file={self.config_path}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ],
            "install-db.log",
        )

    def _server_command(self) -> list[str]:
        return [find_binary("mariadbd"), f"--defaults-file={self.config_path}"]

    def _after_first_start(self, admin_password: str) -> None:
        # install-db left root@localhost (and root@<hostname>, @127.0.0.1, @::1) without a password.
        with self._connect(user="root", password="") as cur:
            cur.execute(
                "CREATE USER IF NOT EXISTS %s@'localhost' IDENTIFIED BY PASSWORD %s",
                (ADMIN_USER, native_password_hash(admin_password)),
            )
            cur.execute(
                "GRANT ALL PRIVILEGES ON *.* TO %s@'localhost' WITH GRANT OPTION", (ADMIN_USER,)
            )
            cur.execute("SELECT User, Host FROM mysql.user WHERE User IN ('root', '')")
            for user, host in cur.fetchall():
                cur.execute("DROP USER %s@%s", (user, host))

    # ----------------------------------------------------------------- connections
    @contextlib.contextmanager
    def _connect(
        self,
        *,
        user: str = ADMIN_USER,
        password: str | None = None,
        timeout: float = 10.0,
        read_timeout: float | None = None,
    ) -> Iterator[Any]:
        """A cursor on an autocommit admin connection over the socket; errors become
        DatastoreOperationError (the server's message; statements are never included)."""
        try:
            conn = pymysql.connect(
                unix_socket=str(self.socket_path),
                user=user,
                password=self._admin_secret() if password is None else password,
                connect_timeout=timeout,
                read_timeout=read_timeout,
                write_timeout=read_timeout,
                autocommit=True,
                charset="utf8mb4",
                ssl_disabled=True,  # a local socket; PyMySQL would build a TLS context (~25 ms)
            )
        except pymysql.MySQLError as exc:
            raise DatastoreOperationError(f"mariadb: cannot connect as {user}: {exc}") from None
        try:
            with conn.cursor() as cur:
                yield cur
        except pymysql.MySQLError as exc:
            raise DatastoreOperationError(f"mariadb: {exc.args[-1]}") from None
        finally:
            conn.close()

    def _probe_query(self, timeout: float) -> None:
        with self._connect(timeout=timeout, read_timeout=timeout) as cur:
            cur.execute("SELECT 1")
            if cur.fetchone() != (1,):
                raise DatastoreOperationError("mariadb: SELECT 1 returned something else")

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
        with self._connect() as cur:
            for key, value in changed.items():
                if PARAMETERS[key].restart_required:
                    restart.add(key)
                elif value is None:
                    cur.execute(f"SET GLOBAL {key} = DEFAULT")  # key is from PARAMETERS
                else:
                    cur.execute(f"SET GLOBAL {key} = %s", (_live_value(value),))
        return restart

    # ----------------------------------------------------------------- databases
    def create_database(
        self, name: str, character_set: str | None = None, collate: str | None = None
    ) -> None:
        name = validate_database_name(self.datastore, name)
        sql = f"CREATE DATABASE IF NOT EXISTS {quote_identifier(name)}"
        if character_set is not None:
            charset = validate_character_set(self.datastore, character_set)
            sql += f" CHARACTER SET {quote_identifier(charset)}"
        if collate is not None:
            sql += f" COLLATE {quote_identifier(validate_collation(self.datastore, collate))}"
        with self._connect() as cur:
            cur.execute(sql)

    def delete_database(self, name: str) -> None:
        name = validate_database_name(self.datastore, name)
        with self._connect() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {quote_identifier(name)}")

    def list_databases(self) -> list[dict[str, Any]]:
        with self._connect() as cur:
            cur.execute(
                "SELECT SCHEMA_NAME, DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME "
                "FROM information_schema.SCHEMATA ORDER BY SCHEMA_NAME"
            )
            rows = cur.fetchall()
        return [
            {"name": name, "character_set": charset, "collate": collation}
            for name, charset, collation in rows
            if name.lower() not in _SYSTEM_DATABASES
        ]

    # ----------------------------------------------------------------- users
    def _user_exists(self, cur: Any, name: str, host: str) -> bool:
        cur.execute("SELECT 1 FROM mysql.user WHERE User = %s AND Host = %s", (name, host))
        return cur.fetchone() is not None

    def _grant(self, cur: Any, name: str, host: str, databases: list[str]) -> None:
        for db in databases:
            cur.execute(f"GRANT ALL PRIVILEGES ON {grant_pattern(db)}.* TO %s@%s", (name, host))

    def create_user(
        self, name: str, password: str, host: str = "%", databases: list[str] | None = None
    ) -> None:
        name = validate_user_name(self.datastore, name)
        password = validate_password(self.datastore, password)
        host = validate_host(self.datastore, host)
        dbs = [
            validate_database_name(self.datastore, db, field=f"databases[{i}]")
            for i, db in enumerate(databases or [])
        ]
        pw_hash = native_password_hash(password)
        with self._connect() as cur:
            cur.execute(
                "CREATE USER IF NOT EXISTS %s@%s IDENTIFIED BY PASSWORD %s", (name, host, pw_hash)
            )
            # A repeated create (redelivered command) still ends with the requested password.
            cur.execute("ALTER USER %s@%s IDENTIFIED BY PASSWORD %s", (name, host, pw_hash))
            self._grant(cur, name, host, dbs)

    def delete_user(self, name: str, host: str = "%") -> None:
        name = validate_user_name(self.datastore, name)
        host = validate_host(self.datastore, host)
        with self._connect() as cur:
            cur.execute("DROP USER IF EXISTS %s@%s", (name, host))

    def list_users(self) -> list[dict[str, Any]]:
        with self._connect() as cur:
            cur.execute(
                "SELECT User, Host FROM mysql.user WHERE is_role = 'N' AND User <> '' "
                "ORDER BY User, Host"
            )
            accounts = [(u, h) for u, h in cur.fetchall() if u.lower() not in _SERVICE_USERS]
            cur.execute("SELECT User, Host, Db FROM mysql.db ORDER BY Db")
            grants: dict[tuple[str, str], list[str]] = {}
            for user, host, db in cur.fetchall():
                grants.setdefault((user, host), []).append(_unescape_grant(db))
        return [{"name": u, "host": h, "databases": grants.get((u, h), [])} for u, h in accounts]

    def change_password(self, name: str, password: str, host: str = "%") -> None:
        name = validate_user_name(self.datastore, name)
        password = validate_password(self.datastore, password)
        host = validate_host(self.datastore, host)
        with self._connect() as cur:
            if not self._user_exists(cur, name, host):
                raise NotFoundError(f"{name}@{host}", "user")
            cur.execute(
                "ALTER USER %s@%s IDENTIFIED BY PASSWORD %s",
                (name, host, native_password_hash(password)),
            )

    def grant_access(self, user: str, databases: list[str], host: str = "%") -> None:
        user = validate_user_name(self.datastore, user, field="user")
        host = validate_host(self.datastore, host)
        dbs = [
            validate_database_name(self.datastore, db, field=f"databases[{i}]")
            for i, db in enumerate(databases)
        ]
        with self._connect() as cur:
            if not self._user_exists(cur, user, host):
                raise NotFoundError(f"{user}@{host}", "user")
            self._grant(cur, user, host, dbs)

    def revoke_access(self, user: str, database: str, host: str = "%") -> None:
        user = validate_user_name(self.datastore, user, field="user")
        database = validate_database_name(self.datastore, database, field="database")
        host = validate_host(self.datastore, host)
        with self._connect() as cur:
            if not self._user_exists(cur, user, host):
                raise NotFoundError(f"{user}@{host}", "user")
            try:
                cur.execute(
                    f"REVOKE ALL PRIVILEGES ON {grant_pattern(database)}.* FROM %s@%s",
                    (user, host),
                )
            except pymysql.MySQLError as exc:
                if exc.args[0] not in (_ER_NONEXISTING_GRANT, _ER_NONEXISTING_TABLE_GRANT):
                    raise

    def list_access(self, user: str, host: str = "%") -> list[str]:
        user = validate_user_name(self.datastore, user, field="user")
        host = validate_host(self.datastore, host)
        with self._connect() as cur:
            if not self._user_exists(cur, user, host):
                raise NotFoundError(f"{user}@{host}", "user")
            cur.execute(
                "SELECT Db FROM mysql.db WHERE User = %s AND Host = %s ORDER BY Db", (user, host)
            )
            return [_unescape_grant(db) for (db,) in cur.fetchall()]

    # ----------------------------------------------------------------- root
    def enable_root(self) -> str:
        password = generate_password()
        pw_hash = native_password_hash(password)
        with self._connect() as cur:
            cur.execute(
                "CREATE USER IF NOT EXISTS 'root'@'%%' IDENTIFIED BY PASSWORD %s", (pw_hash,)
            )
            cur.execute("ALTER USER 'root'@'%%' IDENTIFIED BY PASSWORD %s", (pw_hash,))
            cur.execute("GRANT ALL PRIVILEGES ON *.* TO 'root'@'%' WITH GRANT OPTION")
        return password

    def root_enabled(self) -> bool:
        with self._connect() as cur:
            return self._user_exists(cur, "root", "%")

    def disable_root(self) -> None:
        with self._connect() as cur:
            cur.execute("DROP USER IF EXISTS 'root'@'%'")

    # ----------------------------------------------------------------- guest logs
    guest_logs: ClassVar[Mapping[str, GuestLogSpec]] = {
        "error": GuestLogSpec("error", LogType.SYS, "error.log", "the server's error log"),
        "slow_query": GuestLogSpec(
            "slow_query", LogType.USER, "slow_query.log", "statements slower than long_query_time"
        ),
        "general": GuestLogSpec("general", LogType.USER, "general.log", "every statement"),
    }
    # log name -> (switch variable, file variable); names come only from this table.
    _LOG_VARIABLES: ClassVar[dict[str, tuple[str, str]]] = {
        "slow_query": ("slow_query_log", "slow_query_log_file"),
        "general": ("general_log", "general_log_file"),
    }

    def log_enabled(self, name: str) -> bool:
        switch, _ = self._LOG_VARIABLES[name]
        with self._connect() as cur:
            cur.execute(f"SELECT @@GLOBAL.{switch}")
            row = cur.fetchone()
        return bool(row and int(row[0]))

    def set_log_enabled(self, name: str, enabled: bool) -> None:
        """Live only: after a restart the log is as the configuration says."""
        switch, file_variable = self._LOG_VARIABLES[name]
        path = str(self.layout.log / self.guest_logs[name].file)
        with self._connect() as cur:
            cur.execute(f"SET GLOBAL {file_variable} = %s", (path,))
            cur.execute(f"SET GLOBAL {switch} = %s", (1 if enabled else 0,))
