"""PostgreSQL (15) manager.

- init: `initdb -U os_admin` (the agent's superuser) with `--pwfile` holding a SCRAM verifier we
  computed, so not even initdb sees the password in clear; `-N` (no fsync), as a fresh cluster that
  is lost in a host crash is simply prepared again.
- configuration lives in conf/ (postgresql.conf, pg_hba.conf, pg_ident.conf), passed with
  `-c config_file=`; data/ keeps no configuration of its own. pg_hba allows password (SCRAM)
  logins on the socket and from any 127.0.0.0/8 address, plus replication from loopback.
- tenant users are roles WITH LOGIN. A new database's CONNECT is revoked from PUBLIC, so access is
  what grant_access gives: ALL on the database, and ALL on schema public with its existing tables
  and sequences (PostgreSQL 15 no longer lets everyone create in public).
- root: `enable_root()` makes the `postgres` role a SUPERUSER with LOGIN.
- memory: shared_buffers = 25% and effective_cache_size = 75% of the flavor's RAM.
- overrides are applied with a reload when pg_settings.context allows it, else on restart.
"""

from __future__ import annotations

import base64
import contextlib
import glob
import hashlib
import hmac
import os
import signal
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import psycopg
from psycopg import sql

from guest_agent.datastores.base import (
    ConfigParameter,
    DatastoreManager,
    DatastoreOperationError,
    OverrideValue,
    ParameterKind,
    find_binary,
    generate_password,
    parameters_from_rules,
    wait_until,
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

KIB = 1 << 10
MIB = 1 << 20
GIB = 1 << 30
ROOT_USER = "postgres"
RELOAD_TIMEOUT = 10.0

# restart_required mirrors pg_settings.context = 'postmaster' on 15 (checked by the integration
# tests); at run time the live server's pg_settings.context decides.
# The keys, types, bounds and restart_required come from shared.rules.config_parameters.
PARAMETERS: dict[str, ConfigParameter] = parameters_from_rules(guest_rules("postgresql"))

_SYSTEM_DATABASES = rules_for("postgresql").reserved_databases
_SERVICE_USERS = rules_for("postgresql").reserved_users


def scram_sha256_verifier(password: str, iterations: int = 4096, salt: bytes | None = None) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for `password` (RFC 5802 / 7677).

    PostgreSQL stores a verifier given as the password as is, so the clear text never reaches the
    server. Passwords are printable ASCII (shared.rules.names), which SASLprep leaves unchanged.
    """
    salt = os.urandom(16) if salt is None else salt
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    stored_key = hashlib.sha256(client_key).digest()

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def _pg_size(size: int) -> str:
    for unit, factor in (("TB", 1 << 40), ("GB", GIB), ("MB", MIB), ("kB", KIB)):
        if size % factor == 0:
            return f"{size // factor}{unit}"
    return f"{size}B"


def _conf_value(key: str, value: OverrideValue) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if key in PARAMETERS and PARAMETERS[key].kind is ParameterKind.SIZE and isinstance(value, int):
        return f"'{_pg_size(value)}'"
    if isinstance(value, (int, float)):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


def postgres_bin_dirs() -> tuple[str, ...]:
    """Debian keeps server binaries off PATH, one directory per major version (newest first)."""
    return tuple(
        sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(d.split("/")[4]))[::-1]
    )


class PostgreSQLManager(DatastoreManager):
    datastore: ClassVar[str] = "postgresql"
    default_port: ClassVar[int] = 5432
    parameters: ClassVar[Mapping[str, ConfigParameter]] = PARAMETERS
    stop_signal: ClassVar[signal.Signals] = signal.SIGINT  # "fast" shutdown

    @property
    def socket_path(self) -> Path:
        return self.layout.run / f".s.PGSQL.{self.port}"

    @property
    def config_path(self) -> Path:
        return self.layout.conf / "postgresql.conf"

    def memory_settings(self) -> dict[str, OverrideValue]:
        return {
            "shared_buffers": max(16 * MIB, self.ram_mb // 4 * MIB),
            "effective_cache_size": self.ram_mb * 3 // 4 * MIB,
        }

    def _render_config(self, settings: Mapping[str, OverrideValue]) -> None:
        conf = self.layout.conf
        base: dict[str, OverrideValue] = {
            "listen_addresses": self.address,
            "port": self.port,
            "unix_socket_directories": str(self.layout.run),
            "hba_file": str(conf / "pg_hba.conf"),
            "ident_file": str(conf / "pg_ident.conf"),
            "password_encryption": "scram-sha-256",
            "logging_collector": False,  # stderr goes to log/postgresql.out
            "log_line_prefix": "%m [%p] ",
            "log_timezone": "UTC",
            "timezone": "UTC",
            "datestyle": "iso, mdy",
            "lc_messages": "C.UTF-8",
            "lc_monetary": "C.UTF-8",
            "lc_numeric": "C.UTF-8",
            "lc_time": "C.UTF-8",
            "default_text_search_config": "pg_catalog.english",
            "dynamic_shared_memory_type": "posix",
        }
        lines = ["# Rendered by the troveless guest agent; edits are overwritten."]
        lines += [f"{key} = {_conf_value(key, value)}" for key, value in base.items()]
        lines += ["unix_socket_permissions = 0700"]
        lines += [f"{k} = {_conf_value(k, v)}" for k, v in sorted(settings.items())]
        self._write_file(self.config_path, "\n".join(lines) + "\n")
        hba = [
            "# TYPE  DATABASE     USER  ADDRESS       METHOD",
            "local   all          all                 scram-sha-256",
            "host    all          all   127.0.0.0/8   scram-sha-256",
            "host    replication  all   127.0.0.0/8   scram-sha-256",
        ]
        self._write_file(conf / "pg_hba.conf", "\n".join(hba) + "\n")
        self._write_file(conf / "pg_ident.conf", "")

    def _initialize(self, admin_password: str) -> None:
        pwfile = self.layout.run / "initdb.pw"
        self._write_file(pwfile, scram_sha256_verifier(admin_password) + "\n")
        try:
            self._run_command(
                [
                    find_binary("initdb", postgres_bin_dirs()),
                    "-D",
                    str(self.layout.data),
                    "-U",
                    ADMIN_USER,
                    f"--pwfile={pwfile}",
                    "--auth-local=scram-sha-256",
                    "--auth-host=scram-sha-256",
                    "-E",
                    "UTF8",
                    "--locale=C.UTF-8",
                    "-N",
                ],
                "initdb.log",
            )
        finally:
            pwfile.unlink(missing_ok=True)
        for unused in ("postgresql.conf", "pg_hba.conf", "pg_ident.conf"):
            (self.layout.data / unused).unlink(missing_ok=True)  # conf/ is the only configuration

    def _server_command(self) -> list[str]:
        return [
            find_binary("postgres", postgres_bin_dirs()),
            "-D",
            str(self.layout.data),
            "-c",
            f"config_file={self.config_path}",
        ]

    def _is_ready(self) -> bool:
        # postmaster.pid's 8th line is the postmaster's state: starting, ready, stopping...
        try:
            lines = (self.layout.data / "postmaster.pid").read_text().splitlines()
        except FileNotFoundError:
            return False
        return len(lines) >= 8 and lines[7].strip() == "ready"

    def _after_first_start(self, admin_password: str) -> None:
        """initdb already made os_admin with its password; nothing else to secure."""

    # ----------------------------------------------------------------- connections
    @contextlib.contextmanager
    def _connect(
        self, dbname: str = "postgres", *, timeout: float = 10.0
    ) -> Iterator[psycopg.Connection[Any]]:
        """An autocommit admin connection over the socket; errors become DatastoreOperationError."""
        try:
            conn = psycopg.connect(
                host=str(self.layout.run),
                port=self.port,
                user=ADMIN_USER,
                password=self._admin_secret(),
                dbname=dbname,
                connect_timeout=max(2, round(timeout)),
                autocommit=True,
            )
        except psycopg.Error as exc:
            raise DatastoreOperationError(
                f"postgresql: cannot connect to {dbname}: {exc}"
            ) from None
        try:
            yield conn
        except psycopg.Error as exc:
            message = exc.diag.message_primary or str(exc)
            raise DatastoreOperationError(f"postgresql: {message}") from None
        finally:
            conn.close()

    def _probe_query(self, timeout: float) -> None:
        with self._connect(timeout=timeout) as conn:
            conn.execute(
                sql.SQL("SET statement_timeout = {}").format(sql.Literal(int(timeout * 1000)))
            )
            row = conn.execute("SELECT 1").fetchone()
            if row != (1,):
                raise DatastoreOperationError("postgresql: SELECT 1 returned something else")

    def admin_connection_info(self) -> dict[str, Any]:
        return {
            "datastore": self.datastore,
            "user": ADMIN_USER,
            "socket_dir": str(self.layout.run),
            "host": self.address,
            "port": self.port,
            "database": "postgres",
        }

    # ----------------------------------------------------------------- overrides
    def _apply_live(self, changed: Mapping[str, OverrideValue | None]) -> set[str]:
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT name, context FROM pg_settings WHERE name = ANY(%s)", (list(changed),)
            ).fetchall()
            context = {name: ctx for name, ctx in rows}
            restart = {
                key
                for key in changed
                if context.get(key, "postmaster" if PARAMETERS[key].restart_required else "")
                == "postmaster"
            }
            if not set(changed) - restart:
                return restart
            loaded_before = conn.execute("SELECT pg_conf_load_time()").fetchone()
            conn.execute("SELECT pg_reload_conf()")

        def reloaded() -> bool:
            # A new backend inherits the postmaster's load time once it re-read the files.
            with self._connect() as fresh:
                return fresh.execute("SELECT pg_conf_load_time()").fetchone() != loaded_before

        if not wait_until(reloaded, time.monotonic() + RELOAD_TIMEOUT, interval=0.02):
            raise DatastoreOperationError("postgresql: the configuration reload did not happen")
        return restart

    # ----------------------------------------------------------------- databases
    def _database_exists(self, conn: psycopg.Connection[Any], name: str) -> bool:
        row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        return row is not None

    def _role_exists(self, conn: psycopg.Connection[Any], name: str) -> bool:
        return (
            conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone()
            is not None
        )

    def create_database(
        self, name: str, character_set: str | None = None, collate: str | None = None
    ) -> None:
        name = validate_database_name(self.datastore, name)
        query = sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name))
        if character_set is not None:
            encoding = validate_character_set(self.datastore, character_set)
            query += sql.SQL(" ENCODING {}").format(sql.Literal(encoding))
            if collate is None and encoding.upper() not in ("UTF8", "UNICODE"):
                collate = "C"  # the cluster's C.UTF-8 locale only fits UTF8
        if collate is not None:
            locale = sql.Literal(validate_collation(self.datastore, collate))
            query += sql.SQL(" LC_COLLATE {} LC_CTYPE {}").format(locale, locale)
        with self._connect() as conn:
            if self._database_exists(conn, name):
                return
            conn.execute(query)
            conn.execute(
                sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier(name))
            )

    def delete_database(self, name: str) -> None:
        name = validate_database_name(self.datastore, name)
        with self._connect() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    def list_databases(self) -> list[dict[str, Any]]:
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT datname, pg_encoding_to_char(encoding), datcollate FROM pg_database "
                "WHERE NOT datistemplate ORDER BY datname"
            ).fetchall()
        return [
            {"name": name, "character_set": encoding, "collate": collation}
            for name, encoding, collation in rows
            if name.lower() not in _SYSTEM_DATABASES
        ]

    # ----------------------------------------------------------------- users
    def _set_login_password(
        self, conn: psycopg.Connection[Any], name: str, password: str, *, superuser: bool = False
    ) -> None:
        verb = "ALTER" if self._role_exists(conn, name) else "CREATE"
        options = "SUPERUSER LOGIN" if superuser else "LOGIN"
        conn.execute(
            sql.SQL("{} ROLE {} WITH {} PASSWORD {}").format(
                sql.SQL(verb),
                sql.Identifier(name),
                sql.SQL(options),
                sql.Literal(scram_sha256_verifier(password)),
            )
        )

    def _grant(self, conn: psycopg.Connection[Any], user: str, databases: list[str]) -> None:
        role = sql.Identifier(user)
        for db in databases:
            if not self._database_exists(conn, db):
                raise NotFoundError(db, "database")
            conn.execute(
                sql.SQL("GRANT ALL PRIVILEGES ON DATABASE {} TO {}").format(
                    sql.Identifier(db), role
                )
            )
            with self._connect(db) as in_db:
                for statement in (
                    "GRANT ALL ON SCHEMA public TO {}",
                    "GRANT ALL ON ALL TABLES IN SCHEMA public TO {}",
                    "GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {}",
                ):
                    in_db.execute(sql.SQL(statement).format(role))

    def create_user(
        self, name: str, password: str, host: str = "%", databases: list[str] | None = None
    ) -> None:
        name = validate_user_name(self.datastore, name)
        password = validate_password(self.datastore, password)
        validate_host(self.datastore, host)
        dbs = [
            validate_database_name(self.datastore, db, field=f"databases[{i}]")
            for i, db in enumerate(databases or [])
        ]
        with self._connect() as conn:
            self._set_login_password(conn, name, password)
            self._grant(conn, name, dbs)

    def delete_user(self, name: str, host: str = "%") -> None:
        name = validate_user_name(self.datastore, name)
        validate_host(self.datastore, host)
        role = sql.Identifier(name)
        with self._connect() as conn:
            if not self._role_exists(conn, name):
                return
            databases = [
                db
                for (db,) in conn.execute(
                    "SELECT datname FROM pg_database WHERE datallowconn"
                ).fetchall()
            ]
            # DROP ROLE fails while the role owns objects or holds privileges in any database.
            for db in databases:
                with self._connect(db) as in_db:
                    in_db.execute(
                        sql.SQL("REASSIGN OWNED BY {} TO {}").format(
                            role, sql.Identifier(ADMIN_USER)
                        )
                    )
                    in_db.execute(sql.SQL("DROP OWNED BY {}").format(role))
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                (name,),
            )
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(role))

    def _access(self, conn: psycopg.Connection[Any]) -> dict[str, list[str]]:
        rows = conn.execute(
            "SELECT r.rolname, d.datname FROM pg_database d "
            "CROSS JOIN LATERAL aclexplode(d.datacl) a JOIN pg_roles r ON r.oid = a.grantee "
            "WHERE a.privilege_type = 'CONNECT' ORDER BY d.datname"
        ).fetchall()
        access: dict[str, list[str]] = {}
        for role, db in rows:
            access.setdefault(role, []).append(db)
        return access

    def list_users(self) -> list[dict[str, Any]]:
        with self._connect() as conn:
            roles = conn.execute(
                "SELECT rolname FROM pg_roles WHERE rolcanlogin ORDER BY rolname"
            ).fetchall()
            access = self._access(conn)
        return [
            {"name": name, "host": "%", "databases": access.get(name, [])}
            for (name,) in roles
            if name.lower() not in _SERVICE_USERS and not name.startswith("pg_")
        ]

    def change_password(self, name: str, password: str, host: str = "%") -> None:
        name = validate_user_name(self.datastore, name)
        password = validate_password(self.datastore, password)
        validate_host(self.datastore, host)
        with self._connect() as conn:
            if not self._role_exists(conn, name):
                raise NotFoundError(name, "user")
            self._set_login_password(conn, name, password)

    def grant_access(self, user: str, databases: list[str], host: str = "%") -> None:
        user = validate_user_name(self.datastore, user, field="user")
        validate_host(self.datastore, host)
        dbs = [
            validate_database_name(self.datastore, db, field=f"databases[{i}]")
            for i, db in enumerate(databases)
        ]
        with self._connect() as conn:
            if not self._role_exists(conn, user):
                raise NotFoundError(user, "user")
            self._grant(conn, user, dbs)

    def revoke_access(self, user: str, database: str, host: str = "%") -> None:
        user = validate_user_name(self.datastore, user, field="user")
        database = validate_database_name(self.datastore, database, field="database")
        validate_host(self.datastore, host)
        role = sql.Identifier(user)
        with self._connect() as conn:
            if not self._role_exists(conn, user):
                raise NotFoundError(user, "user")
            if not self._database_exists(conn, database):
                return
            conn.execute(
                sql.SQL("REVOKE ALL ON DATABASE {} FROM {}").format(sql.Identifier(database), role)
            )
            with self._connect(database) as in_db:
                for statement in (
                    "REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {}",
                    "REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {}",
                    "REVOKE ALL ON SCHEMA public FROM {}",
                ):
                    in_db.execute(sql.SQL(statement).format(role))
            # Revoking CONNECT does not end sessions that are already open.
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE usename = %s AND datname = %s",
                (user, database),
            )

    def list_access(self, user: str, host: str = "%") -> list[str]:
        user = validate_user_name(self.datastore, user, field="user")
        validate_host(self.datastore, host)
        with self._connect() as conn:
            if not self._role_exists(conn, user):
                raise NotFoundError(user, "user")
            return self._access(conn).get(user, [])

    # ----------------------------------------------------------------- root
    def enable_root(self) -> str:
        password = generate_password()
        with self._connect() as conn:
            self._set_login_password(conn, ROOT_USER, password, superuser=True)
        return password

    def root_enabled(self) -> bool:
        with self._connect() as conn:
            row = conn.execute(
                "SELECT rolcanlogin AND rolsuper FROM pg_roles WHERE rolname = %s", (ROOT_USER,)
            ).fetchone()
        return bool(row and row[0])

    def disable_root(self) -> None:
        with self._connect() as conn:
            if self._role_exists(conn, ROOT_USER):
                conn.execute(
                    sql.SQL("ALTER ROLE {} WITH NOLOGIN PASSWORD NULL").format(
                        sql.Identifier(ROOT_USER)
                    )
                )

    # ----------------------------------------------------------------- guest logs
    guest_logs: ClassVar[Mapping[str, GuestLogSpec]] = {
        # The server writes everything to stderr (logging_collector needs a restart to change);
        # enabling the log adds every statement to it.
        "general": GuestLogSpec(
            "general", LogType.USER, "postgresql.out", "the server log; enabled: every statement"
        ),
    }

    def log_enabled(self, name: str) -> bool:
        if name not in self.guest_logs:
            raise NotFoundError(name, "log")
        with self._connect() as conn:
            row = conn.execute("SHOW log_statement").fetchone()
        return bool(row and row[0] == "all")

    def set_log_enabled(self, name: str, enabled: bool) -> None:
        """Persisted with ALTER SYSTEM, applied by a reload (waited for)."""
        if name not in self.guest_logs:
            raise NotFoundError(name, "log")
        with self._connect() as conn:
            if enabled:
                conn.execute("ALTER SYSTEM SET log_statement = 'all'")
            else:
                conn.execute("ALTER SYSTEM RESET log_statement")
            conn.execute("SELECT pg_reload_conf()")
        if not wait_until(
            lambda: self.log_enabled(name) is enabled,
            time.monotonic() + RELOAD_TIMEOUT,
            interval=0.02,
        ):
            raise DatastoreOperationError("postgresql: the configuration reload did not happen")
