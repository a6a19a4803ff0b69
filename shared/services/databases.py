"""Databases, users, access and root inside an instance (Trove's /databases, /users, /root).

Every request is checked here with the datastore's name rules (`shared.rules.names`) before
anything is sent, so a bad name is a 400 naming the field (`databases[0].name`) and never
reaches a guest; the guest checks again before touching its datastore. The work itself is a
signed guest command answered while the caller waits (`GuestCalls`).

Passwords. A tenant's password is sealed for the instance's guest (`encrypted_password`) as
soon as it is validated; only the sealed form travels through the queue. The root password
comes back sealed by the guest, is opened here, and returned once to the caller: it is never
stored or logged (the guest's result record is deleted as soon as it is read).

An instance must be running (ACTIVE, HEALTHY or RESTART_REQUIRED, as in Trove) with no other
action under way: otherwise ActionInProgressError (409), or RequestError 422 for an instance
that is in ERROR or shut down.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from shared.errors import ActionInProgressError, NotFoundError, NotSupportedError, RequestError
from shared.models.database import Database, User
from shared.models.guest import GuestCommandName
from shared.models.instance import Instance, InstanceStatus, InstanceTask
from shared.ports import Clock, Queue, StateStore
from shared.rules.names import (
    NameRuleError,
    validate_database_name,
    validate_database_request,
    validate_host,
    validate_password,
    validate_user_name,
    validate_user_request,
)
from shared.services.guest_calls import (
    DEFAULT_CALL_TIMEOUT,
    GuestCalls,
    GuestCommandFailedError,
)

# Statuses in which Trove lets a tenant manage databases and users.
USABLE_STATUSES = frozenset(
    {InstanceStatus.ACTIVE, InstanceStatus.HEALTHY, InstanceStatus.RESTART_REQUIRED}
)
# Statuses that mean an action is under way: wait for it (409), rather than a broken instance.
BUSY_STATUSES = frozenset(
    {
        InstanceStatus.BUILD,
        InstanceStatus.REBOOT,
        InstanceStatus.RESIZE,
        InstanceStatus.BACKUP,
        InstanceStatus.PROMOTE,
        InstanceStatus.EJECT,
        InstanceStatus.UPGRADE,
        InstanceStatus.DETACH,
        InstanceStatus.LOGGING,
    }
)


# The account enable_root() enables, per datastore (Trove shows it in its answer).
ROOT_USER_NAMES = {"mariadb": "root", "postgresql": "postgres", "redis": "default"}


@dataclass(frozen=True)
class RootUser:
    """The root account and its new password (masked in repr: it must reach no log)."""

    name: str
    password: str = field(repr=False)


def instance_key(instance_id: str) -> str:
    """Where helper A's InstanceService keeps an instance record."""
    return f"instances/{instance_id}"


def split_user_reference(reference: str, host: str | None = None) -> tuple[str, str]:
    """Trove names a user in URLs as `name` or `name@host`; names never contain '@'."""
    if host is not None:
        return reference, host
    name, at, user_host = reference.rpartition("@")
    if at and name:
        return name, user_host
    return reference, "%"


def load_instance(store: StateStore, project_id: str, instance_id: str) -> Instance:
    """The instance, if it belongs to `project_id`; NotFoundError otherwise (another
    project's instance is as invisible as a missing one)."""
    try:
        record = store.get(instance_key(instance_id))
    except ValueError:  # not even a valid key: it cannot exist
        record = None
    if record is None:
        raise NotFoundError(instance_id, "instance")
    try:
        instance = Instance.model_validate(record.data)
    except ValidationError:
        raise NotFoundError(instance_id, "instance") from None
    if instance.project_id != project_id:
        raise NotFoundError(instance_id, "instance")
    return instance


def require_usable(instance: Instance) -> Instance:
    """`instance` if it can take guest commands now: running, no other action under way."""
    if instance.task is not InstanceTask.NONE:
        raise ActionInProgressError(instance.id, instance.task.value.lower())
    if instance.status in BUSY_STATUSES:
        raise ActionInProgressError(instance.id, instance.status.value.lower())
    if instance.status not in USABLE_STATUSES:
        raise RequestError(
            "instance",
            f"must be ACTIVE for this request (it is {instance.status.value})",
            status=422,
        )
    if instance.encrypted_guest_secret is None:
        raise RequestError("instance", "has no guest yet", status=422)
    return instance


def _request_error(exc: NameRuleError) -> RequestError:
    return RequestError(exc.field, exc.rule)


def _require_list(value: object, field: str) -> Sequence[Any]:
    if value is None or isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Sequence):
        raise RequestError(field, "must be a list")
    if not value:
        raise RequestError(field, "must name at least one entry")
    return value


class DatabaseService:
    """Databases, users, access and root of one project's instances."""

    def __init__(
        self,
        store: StateStore,
        queue: Queue,
        clock: Clock,
        master_key: bytes,
        *,
        calls: GuestCalls | None = None,
        timeout: float = DEFAULT_CALL_TIMEOUT,
    ) -> None:
        self._store = store
        self._calls = calls or GuestCalls(store, queue, clock, master_key)
        self._timeout = timeout

    # ------------------------------------------------------------------ instances
    def instance(self, project_id: str, instance_id: str) -> Instance:
        """The instance, if it belongs to `project_id` (NotFoundError otherwise)."""
        return load_instance(self._store, project_id, instance_id)

    def usable_instance(self, project_id: str, instance_id: str) -> Instance:
        """The instance, if it can take database and user commands now."""
        return require_usable(self.instance(project_id, instance_id))

    def _call(
        self, instance: Instance, name: GuestCommandName, args: Mapping[str, Any] | None = None
    ) -> Any:
        return self._calls.call(instance, name, args, timeout=self._timeout).result

    # ------------------------------------------------------------------ databases
    def list_databases(self, project_id: str, instance_id: str) -> list[Database]:
        instance = self.usable_instance(project_id, instance_id)
        result = self._call(instance, GuestCommandName.LIST_DATABASES)
        return [Database.model_validate(db) for db in result["databases"]]

    def create_databases(
        self, project_id: str, instance_id: str, databases: object
    ) -> list[Database]:
        """Create each of Trove's `[{"name", "character_set"?, "collate"?}]`."""
        instance = self.usable_instance(project_id, instance_id)
        datastore = instance.datastore.type
        entries = _require_list(databases, "databases")
        try:
            checked = [
                validate_database_request(datastore, db, field=f"databases[{i}]")
                for i, db in enumerate(entries)
            ]
        except NameRuleError as exc:
            raise _request_error(exc) from None
        names = [db["name"] for db in checked]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise RequestError(f"databases[{i}].name", "is requested twice")
        args = [{k: v for k, v in db.items() if v is not None} for db in checked]
        self._call(instance, GuestCommandName.CREATE_DATABASE, {"databases": args})
        return [Database.model_validate(db) for db in checked]

    def delete_database(self, project_id: str, instance_id: str, name: str) -> None:
        instance = self.usable_instance(project_id, instance_id)
        try:
            name = validate_database_name(instance.datastore.type, name, field="name")
        except NameRuleError as exc:
            raise _request_error(exc) from None
        self._call(instance, GuestCommandName.DELETE_DATABASE, {"name": name})

    # ------------------------------------------------------------------ users
    def list_users(self, project_id: str, instance_id: str) -> list[User]:
        instance = self.usable_instance(project_id, instance_id)
        result = self._call(instance, GuestCommandName.LIST_USERS)
        return [User.model_validate(user) for user in result["users"]]

    def create_users(self, project_id: str, instance_id: str, users: object) -> list[User]:
        """Create each of Trove's `[{"name", "password", "host"?, "databases"?}]`."""
        instance = self.usable_instance(project_id, instance_id)
        datastore = instance.datastore.type
        entries = _require_list(users, "users")
        try:
            checked = [
                validate_user_request(datastore, user, field=f"users[{i}]")
                for i, user in enumerate(entries)
            ]
        except NameRuleError as exc:
            raise _request_error(exc) from None
        accounts = [(u["name"], u["host"]) for u in checked]
        for i, account in enumerate(accounts):
            if account in accounts[:i]:
                raise RequestError(f"users[{i}].name", "is requested twice")
        guest = self._calls.client(instance)
        sealed = [
            {
                "name": u["name"],
                "host": u["host"],
                "databases": u["databases"],
                "encrypted_password": guest.seal_password(u["password"]),
            }
            for u in checked
        ]
        self._calls.call(
            instance,
            GuestCommandName.CREATE_USER,
            {"users": sealed},
            timeout=self._timeout,
            client=guest,
        )
        return [User(name=u["name"], host=u["host"], databases=u["databases"]) for u in checked]

    def _user_ref(self, datastore: str, name: str, host: str) -> tuple[str, str]:
        try:
            return (
                validate_user_name(datastore, name, field="name"),
                validate_host(datastore, host, field="host"),
            )
        except NameRuleError as exc:
            raise _request_error(exc) from None

    def get_user(self, project_id: str, instance_id: str, name: str, host: str = "%") -> User:
        instance = self.usable_instance(project_id, instance_id)
        name, host = self._user_ref(instance.datastore.type, name, host)
        for user in self.list_users(project_id, instance_id):
            if user.name == name and user.host == host:
                return user
        raise NotFoundError(f"{name}@{host}", "user")

    def delete_user(self, project_id: str, instance_id: str, name: str, host: str = "%") -> None:
        instance = self.usable_instance(project_id, instance_id)
        name, host = self._user_ref(instance.datastore.type, name, host)
        self._call(instance, GuestCommandName.DELETE_USER, {"name": name, "host": host})

    def update_user(
        self,
        project_id: str,
        instance_id: str,
        name: str,
        host: str = "%",
        *,
        new_name: str | None = None,
        new_host: str | None = None,
        password: str | None = None,
    ) -> None:
        """Trove's PUT /users/<name>: a new password; renaming is not supported yet."""
        instance = self.usable_instance(project_id, instance_id)
        datastore = instance.datastore.type
        name, host = self._user_ref(datastore, name, host)
        if (new_name is not None and new_name != name) or (
            new_host is not None and new_host != host
        ):
            raise NotSupportedError(
                "renaming a user or changing its host",
                "create a new user and grant it the same databases instead",
            )
        if password is None:
            raise RequestError("user.password", "is required (the only attribute that changes)")
        self.change_passwords(
            project_id, instance_id, [{"name": name, "host": host, "password": password}]
        )

    def change_passwords(self, project_id: str, instance_id: str, users: object) -> None:
        """Trove's PUT /users: `[{"name", "password", "host"?}]`, all checked before any
        is changed."""
        instance = self.usable_instance(project_id, instance_id)
        datastore = instance.datastore.type
        entries = _require_list(users, "users")
        checked: list[tuple[str, str, str]] = []
        try:
            for i, user in enumerate(entries):
                if not isinstance(user, Mapping):
                    raise RequestError(f"users[{i}]", "must be an object with a name and password")
                unknown = set(user) - {"name", "host", "password"}
                if unknown:
                    raise RequestError(f"users[{i}].{sorted(unknown)[0]}", "is not allowed here")
                host = user.get("host")
                checked.append(
                    (
                        validate_user_name(datastore, user.get("name"), field=f"users[{i}].name"),
                        validate_host(
                            datastore, "%" if host is None else host, field=f"users[{i}].host"
                        ),
                        validate_password(
                            datastore, user.get("password"), field=f"users[{i}].password"
                        ),
                    )
                )
        except NameRuleError as exc:
            raise _request_error(exc) from None
        guest = self._calls.client(instance)
        for name, host, password in checked:
            self._calls.call(
                instance,
                GuestCommandName.UPDATE_USER,
                {
                    "name": name,
                    "host": host,
                    "encrypted_password": guest.seal_password(password),
                },
                timeout=self._timeout,
                client=guest,
            )

    # ------------------------------------------------------------------ access
    def list_access(
        self, project_id: str, instance_id: str, name: str, host: str = "%"
    ) -> list[str]:
        instance = self.usable_instance(project_id, instance_id)
        name, host = self._user_ref(instance.datastore.type, name, host)
        result = self._call(instance, GuestCommandName.LIST_ACCESS, {"user": name, "host": host})
        return [str(db) for db in result["databases"]]

    def grant_access(
        self, project_id: str, instance_id: str, name: str, databases: object, host: str = "%"
    ) -> None:
        """Trove's PUT /users/<name>/databases with `[{"name": db}]` (or plain names)."""
        instance = self.usable_instance(project_id, instance_id)
        datastore = instance.datastore.type
        name, host = self._user_ref(datastore, name, host)
        entries = _require_list(databases, "databases")
        names = []
        try:
            for i, entry in enumerate(entries):
                value, field = entry, f"databases[{i}]"
                if isinstance(entry, Mapping):
                    value, field = entry.get("name"), f"databases[{i}].name"
                names.append(validate_database_name(datastore, value, field=field))
        except NameRuleError as exc:
            raise _request_error(exc) from None
        self._call(
            instance,
            GuestCommandName.GRANT_ACCESS,
            {"user": name, "host": host, "databases": names},
        )

    def revoke_access(
        self, project_id: str, instance_id: str, name: str, database: str, host: str = "%"
    ) -> None:
        instance = self.usable_instance(project_id, instance_id)
        datastore = instance.datastore.type
        name, host = self._user_ref(datastore, name, host)
        try:
            database = validate_database_name(datastore, database, field="database")
        except NameRuleError as exc:
            raise _request_error(exc) from None
        self._call(
            instance,
            GuestCommandName.REVOKE_ACCESS,
            {"user": name, "host": host, "database": database},
        )

    # ------------------------------------------------------------------ root
    def enable_root(self, project_id: str, instance_id: str) -> RootUser:
        """Enable the datastore's root user with a new password, returned once, never kept."""
        instance = self.usable_instance(project_id, instance_id)
        guest = self._calls.client(instance)
        result = self._calls.call(
            instance, GuestCommandName.ENABLE_ROOT, {}, timeout=self._timeout, client=guest
        ).result
        sealed = result.get("encrypted_password") if isinstance(result, Mapping) else None
        if not isinstance(sealed, str):
            raise GuestCommandFailedError(
                instance.id, "enable_root", "InvalidResult", "the guest returned no password"
            )
        name = ROOT_USER_NAMES.get(instance.datastore.type, "root")
        return RootUser(name, guest.open_password(sealed))

    def disable_root(self, project_id: str, instance_id: str) -> None:
        instance = self.usable_instance(project_id, instance_id)
        self._call(instance, GuestCommandName.DISABLE_ROOT)

    def root_enabled(self, project_id: str, instance_id: str) -> bool:
        instance = self.usable_instance(project_id, instance_id)
        result = self._call(instance, GuestCommandName.IS_ROOT_ENABLED)
        return bool(result["enabled"])
