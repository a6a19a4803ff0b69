"""What each guest command does: its arguments, the datastore manager call, and its result.

Arguments are checked for shape here (a wrong shape is `InvalidArguments`, naming the field);
names and values are checked by the manager against its datastore's rules (`NameRuleError`,
`OverrideRuleError`). Passwords arrive sealed (`encrypted_password`) and are opened only to be
handed to the manager; a password going back (enable_root) is sealed again. Results are plain
JSON without secrets.

Backups (`backup`, and `restore` or `prepare` with a `restore` argument) get each backup's data
key as `encrypted_data_key`: the key's standard base64 text (`shared.crypto.encode_secret`),
sealed for this instance exactly like a password (`seal(keys.passwords, text, password_context
(instance_id))`). The streaming itself is `guest_agent.backup`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, TypeVar

from pydantic import Field, JsonValue, ValidationError

from guest_agent.backup import BackupRequest, ChainLink, backup_datastore, restore_datastore
from guest_agent.backup.stream import DATA_KEY_BYTES
from guest_agent.datastores import logs as guest_logs
from guest_agent.datastores.base import DatastoreManager
from shared.crypto import decode_secret
from shared.errors import TrovelessError
from shared.models.base import DomainModel, EncryptedBlob
from shared.models.guest import GuestCommandName
from shared.ports import BlobStore
from shared.rules.names import validate_database_request, validate_user_request

Host = Annotated[str, Field(min_length=1, max_length=255)]
Text = Annotated[str, Field(min_length=1, max_length=255)]


class CommandRefusedError(TrovelessError):
    """A command refused by the agent itself; `error_type` is what the result reports."""

    def __init__(self, error_type: str, message: str) -> None:
        self.error_type = error_type
        super().__init__(message)


class _Args(DomainModel):
    """Base of argument models: unknown keys are refused (a typo must not be ignored)."""


class _NoArgs(_Args):
    pass


BackupId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,128}$")]
# The BlobStore checks keys fully (KEY_PATTERN; pydantic patterns have no look-ahead).
BlobKey = Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$", max_length=512)]
Sha256Hex = Annotated[str, Field(pattern=r"^[0-9a-fA-F]{64}$")]


class _BackupParent(_Args):
    backup_id: BackupId
    lsn: Annotated[str, Field(max_length=64)] | None = None


class _BackupArgs(_Args):
    backup_id: BackupId
    location: BlobKey
    incremental: bool = False
    parent: _BackupParent | None = None
    encrypted_data_key: EncryptedBlob


class _ChainLinkArgs(_Args):
    backup_id: BackupId
    location: BlobKey
    sha256: Sha256Hex
    size_bytes: Annotated[int, Field(ge=0)]
    encrypted_data_key: EncryptedBlob
    incremental: bool = False


class _RestoreArgs(_Args):
    chain: list[_ChainLinkArgs] = Field(min_length=1, max_length=1000)
    overrides: dict[str, JsonValue] = Field(default_factory=dict)


class _PrepareArgs(_Args):
    databases: list[dict[str, JsonValue]] = Field(default_factory=list)
    users: list[dict[str, JsonValue]] = Field(default_factory=list)
    overrides: dict[str, JsonValue] = Field(default_factory=dict)
    # Restore these backups instead of initialising (and create no databases or users).
    restore: _RestoreArgs | None = None


class _DatabasesArgs(_Args):
    databases: list[dict[str, JsonValue]] = Field(min_length=1)


class _NameArgs(_Args):
    name: Text


class _UsersArgs(_Args):
    users: list[dict[str, JsonValue]] = Field(min_length=1)


class _UserArgs(_Args):
    name: Text
    host: Host = "%"


class _UpdateUserArgs(_Args):
    name: Text
    host: Host = "%"
    encrypted_password: EncryptedBlob


class _AccessArgs(_Args):
    user: Text
    host: Host = "%"


class _GrantArgs(_AccessArgs):
    databases: list[Text] = Field(min_length=1)


class _RevokeArgs(_AccessArgs):
    database: Text


class _OverridesArgs(_Args):
    overrides: dict[str, JsonValue]


class _LogActionArgs(_Args):
    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
    actions: list[Literal["enable", "disable", "discard", "publish"]] = Field(min_length=1)
    # Where published objects go: chosen (and signed) by the control plane.
    blob_prefix: Annotated[str, Field(pattern=r"^logs(/[A-Za-z0-9._-]+){1,8}$", max_length=400)]


class _SealedUser(_Args):
    name: JsonValue = None
    host: JsonValue = None
    databases: JsonValue = None
    encrypted_password: EncryptedBlob


@dataclass
class CommandContext:
    """What commands need besides their arguments."""

    manager: DatastoreManager
    open_password: Callable[[str], str]
    seal_password: Callable[[str], str]
    # prepare: generates and stores the admin password, returns it for the manager
    admin_password_for_prepare: Callable[[], str]
    volume_info: Callable[[], dict[str, Any]]
    blobs: BlobStore | None = None  # for publishing logs, backups and restores
    now: Callable[[], float] = field(default=time.time)


ArgsModel = TypeVar("ArgsModel", bound=_Args)


def _parse(model: type[ArgsModel], args: dict[str, JsonValue]) -> ArgsModel:
    try:
        return model.model_validate(args)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "args"
        raise CommandRefusedError("InvalidArguments", f"args.{where}: {first['msg']}") from None


def _open_users(ctx: CommandContext, users: list[dict[str, JsonValue]]) -> list[dict[str, Any]]:
    """Users as the manager takes them: the sealed password opened, keys otherwise unchanged
    (the manager's rules check names, hosts and databases)."""
    opened = []
    for i, raw in enumerate(users):
        try:
            user = _SealedUser.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise CommandRefusedError(
                "InvalidArguments", f"args.users[{i}].{where}: {first['msg']}"
            ) from None
        entry: dict[str, Any] = {
            k: v for k, v in raw.items() if k != "encrypted_password" and v is not None
        }
        entry["password"] = ctx.open_password(user.encrypted_password)
        opened.append(entry)
    return opened


def _prepare(ctx: CommandContext, args: dict[str, JsonValue]) -> JsonValue:
    """Initialise the datastore, or with `restore: {"chain": [...]}` fill it from backups
    (see `_restore`); a restore takes no databases or users: the backup brings its own."""
    parsed = _parse(_PrepareArgs, args)
    if parsed.restore is not None:
        if parsed.databases or parsed.users:
            raise CommandRefusedError(
                "InvalidArguments", "args.restore: a restore takes no databases or users"
            )
        overrides = {**parsed.overrides, **parsed.restore.overrides}
        return _restore_chain(ctx, parsed.restore.chain, overrides)
    users = _open_users(ctx, parsed.users)
    ctx.manager.prepare(
        admin_password=ctx.admin_password_for_prepare(),
        databases=list(parsed.databases),
        users=users,
        overrides=dict(parsed.overrides),
    )
    return {"datastore": ctx.manager.datastore, "volume": ctx.volume_info()}


def _create_database(ctx: CommandContext, args: dict[str, JsonValue]) -> JsonValue:
    parsed = _parse(_DatabasesArgs, args)
    datastore = ctx.manager.datastore
    checked = [
        validate_database_request(datastore, db, field=f"databases[{i}]")
        for i, db in enumerate(parsed.databases)
    ]
    for db in checked:
        ctx.manager.create_database(db["name"], db["character_set"], db["collate"])
    return {"databases": [db["name"] for db in checked]}


def _delete_database(ctx: CommandContext, args: dict[str, JsonValue]) -> JsonValue:
    ctx.manager.delete_database(_parse(_NameArgs, args).name)
    return None


def _list_databases(ctx: CommandContext, args: dict[str, JsonValue]) -> JsonValue:
    _parse(_NoArgs, args)
    databases: list[JsonValue] = [dict(db) for db in ctx.manager.list_databases()]
    return {"databases": databases}


def _create_user(ctx: CommandContext, args: dict[str, JsonValue]) -> JsonValue:
    parsed = _parse(_UsersArgs, args)
    datastore = ctx.manager.datastore
    checked = [
        validate_user_request(datastore, user, field=f"users[{i}]")
        for i, user in enumerate(_open_users(ctx, parsed.users))
    ]
    for user in checked:
        ctx.manager.create_user(user["name"], user["password"], user["host"], user["databases"])
    return {"users": [{"name": u["name"], "host": u["host"]} for u in checked]}


def _update_user(ctx: CommandContext, args: dict[str, JsonValue]) -> JsonValue:
    parsed = _parse(_UpdateUserArgs, args)
    ctx.manager.change_password(
        parsed.name, ctx.open_password(parsed.encrypted_password), parsed.host
    )
    return None


def _delete_user(ctx: CommandContext, args: dict[str, JsonValue]) -> JsonValue:
    parsed = _parse(_UserArgs, args)
    ctx.manager.delete_user(parsed.name, parsed.host)
    return None


def _list_users(ctx: CommandContext, args: dict[str, JsonValue]) -> JsonValue:
    _parse(_NoArgs, args)
    users: list[JsonValue] = [dict(user) for user in ctx.manager.list_users()]
    return {"users": users}


def _grant_access(ctx: CommandContext, args: dict[str, JsonValue]) -> JsonValue:
    parsed = _parse(_GrantArgs, args)
    ctx.manager.grant_access(parsed.user, list(parsed.databases), parsed.host)
    return None


def _revoke_access(ctx: CommandContext, args: dict[str, JsonValue]) -> JsonValue:
    parsed = _parse(_RevokeArgs, args)
    ctx.manager.revoke_access(parsed.user, parsed.database, parsed.host)
    return None


def _list_access(ctx: CommandContext, args: dict[str, JsonValue]) -> JsonValue:
    parsed = _parse(_AccessArgs, args)
    return {"databases": list(ctx.manager.list_access(parsed.user, parsed.host))}


def _enable_root(ctx: CommandContext, args: dict[str, JsonValue]) -> JsonValue:
    _parse(_NoArgs, args)
    return {"encrypted_password": ctx.seal_password(ctx.manager.enable_root())}


def _disable_root(ctx: CommandContext, args: dict[str, JsonValue]) -> JsonValue:
    _parse(_NoArgs, args)
    ctx.manager.disable_root()
    return None


def _is_root_enabled(ctx: CommandContext, args: dict[str, JsonValue]) -> JsonValue:
    _parse(_NoArgs, args)
    return {"enabled": ctx.manager.root_enabled()}


def _update_overrides(ctx: CommandContext, args: dict[str, JsonValue]) -> JsonValue:
    parsed = _parse(_OverridesArgs, args)
    return {"restart_required": ctx.manager.update_overrides(dict(parsed.overrides))}


def _restart(ctx: CommandContext, args: dict[str, JsonValue]) -> JsonValue:
    _parse(_NoArgs, args)
    ctx.manager.restart()
    return None


def _stop(ctx: CommandContext, args: dict[str, JsonValue]) -> JsonValue:
    _parse(_NoArgs, args)
    ctx.manager.stop()
    return None


def _start(ctx: CommandContext, args: dict[str, JsonValue]) -> JsonValue:
    _parse(_NoArgs, args)
    ctx.manager.start()
    return None


def _get_volume_info(ctx: CommandContext, args: dict[str, JsonValue]) -> JsonValue:
    _parse(_NoArgs, args)
    return ctx.volume_info()


def _guest_log_list(ctx: CommandContext, args: dict[str, JsonValue]) -> JsonValue:
    _parse(_NoArgs, args)
    logs: list[JsonValue] = [dict(entry) for entry in guest_logs.list_logs(ctx.manager)]
    return {"logs": logs}


def _guest_log_action(ctx: CommandContext, args: dict[str, JsonValue]) -> JsonValue:
    """Switch, discard and publish one log, in that order; returns the log's new state and
    the key of the object a publish made (None when there was nothing new)."""
    parsed = _parse(_LogActionArgs, args)
    if "enable" in parsed.actions and "disable" in parsed.actions:
        raise CommandRefusedError("InvalidArguments", "args.actions: both enable and disable")
    guest_logs.describe(ctx.manager, parsed.name)  # NotFoundError for an unknown log
    for switch in ("enable", "disable"):
        if switch in parsed.actions:
            try:
                guest_logs.set_enabled(ctx.manager, parsed.name, switch == "enable")
            except ValueError as exc:
                raise CommandRefusedError("InvalidArguments", str(exc)) from None
    published: str | None = None
    if "discard" in parsed.actions or "publish" in parsed.actions:
        if ctx.blobs is None:
            raise CommandRefusedError("NoBlobStore", "this guest has no blob store configured")
        if "discard" in parsed.actions:
            guest_logs.discard(ctx.manager, ctx.blobs, parsed.name, parsed.blob_prefix)
        if "publish" in parsed.actions:
            published = guest_logs.publish(
                ctx.manager, ctx.blobs, parsed.name, parsed.blob_prefix, ctx.now()
            )
    log: dict[str, JsonValue] = dict(guest_logs.describe(ctx.manager, parsed.name))
    return {"log": log, "published_key": published}


def _data_key(ctx: CommandContext, sealed: str) -> bytes:
    """A backup's data key: sealed for this instance exactly like a password, its plaintext the
    key's standard base64 text (shared.crypto.encode_secret)."""
    try:
        key = decode_secret(ctx.open_password(sealed))
    except ValueError:
        raise CommandRefusedError(
            "InvalidArguments", "args.encrypted_data_key: not a sealed data key"
        ) from None
    if len(key) != DATA_KEY_BYTES:
        raise CommandRefusedError(
            "InvalidArguments", f"args.encrypted_data_key: the key must be {DATA_KEY_BYTES} bytes"
        )
    return key


def _require_blobs(ctx: CommandContext) -> BlobStore:
    if ctx.blobs is None:
        raise CommandRefusedError("NoBlobStore", "this guest has no blob store configured")
    return ctx.blobs


def _backup(ctx: CommandContext, args: dict[str, JsonValue]) -> JsonValue:
    """Stream a physical backup of the running datastore to `location`.

    Args: `{"backup_id", "location", "incremental", "parent": null | {"backup_id", "lsn"},
    "encrypted_data_key"}`. Result: `{"location", "size_bytes" (stored bytes), "sha256" (of the
    stored bytes), "data_size_bytes" (bytes of the uncompressed physical stream, which is what a
    restore writes onto the volume), "lsn" (MariaDB to_lsn / PostgreSQL end LSN / null),
    "position" (GTID / LSN / Redis replication offset, or null), "datastore_version"}`.
    Errors: BackupSourceError (the datastore's tool failed), DatastoreNotRunningError; on any
    error the BlobStore keeps nothing of the object.
    """
    parsed = _parse(_BackupArgs, args)
    if parsed.incremental and parsed.parent is None:
        raise CommandRefusedError("InvalidArguments", "args.parent: an incremental needs one")
    request = BackupRequest(
        backup_id=parsed.backup_id,
        location=parsed.location,
        data_key=_data_key(ctx, parsed.encrypted_data_key),
        incremental=parsed.incremental,
        parent_lsn=parsed.parent.lsn if parsed.parent is not None else None,
    )
    outcome = backup_datastore(ctx.manager, _require_blobs(ctx), request)
    result: dict[str, JsonValue] = dict(outcome.to_result())
    return result


def _restore_chain(
    ctx: CommandContext, links: list[_ChainLinkArgs], overrides: dict[str, JsonValue]
) -> JsonValue:
    if links[0].incremental or not all(link.incremental for link in links[1:]):
        raise CommandRefusedError(
            "InvalidArguments", "args.chain: a full backup first, then incrementals in order"
        )
    blobs = _require_blobs(ctx)
    chain = [
        ChainLink(
            backup_id=link.backup_id,
            location=link.location,
            sha256=link.sha256.lower(),
            size_bytes=link.size_bytes,
            data_key=_data_key(ctx, link.encrypted_data_key),
            incremental=link.incremental,
        )
        for link in links
    ]
    restore_datastore(
        ctx.manager,
        blobs,
        chain,
        admin_password=ctx.admin_password_for_prepare(),
        overrides=dict(overrides),
    )
    return {
        "datastore": ctx.manager.datastore,
        "volume": ctx.volume_info(),
        "restored": [link.backup_id for link in links],
    }


def _restore(ctx: CommandContext, args: dict[str, JsonValue]) -> JsonValue:
    """Fill this fresh instance's volume from backups and start the datastore: the same as
    `prepare` with `{"restore": {"chain": [...]}}`, which is how provisioning passes it.

    Args: `{"chain": [{"backup_id", "location", "sha256", "size_bytes", "encrypted_data_key",
    "incremental"}, ...], "overrides": {}}`, the full backup first, then incrementals in order.
    Each object is verified (sha256 and size of the stored bytes, every record authenticated)
    while it streams into a staging directory; only a fully verified and prepared tree becomes
    the data directory. Errors: BackupChecksumError and BackupNotFoundError name the backup;
    DatastoreAlreadyPreparedError when the volume holds a datastore already.
    """
    parsed = _parse(_RestoreArgs, args)
    return _restore_chain(ctx, parsed.chain, parsed.overrides)


Handler = Callable[[CommandContext, dict[str, JsonValue]], JsonValue]

HANDLERS: dict[GuestCommandName, Handler] = {
    GuestCommandName.PREPARE: _prepare,
    GuestCommandName.CREATE_DATABASE: _create_database,
    GuestCommandName.DELETE_DATABASE: _delete_database,
    GuestCommandName.LIST_DATABASES: _list_databases,
    GuestCommandName.CREATE_USER: _create_user,
    GuestCommandName.UPDATE_USER: _update_user,
    GuestCommandName.DELETE_USER: _delete_user,
    GuestCommandName.LIST_USERS: _list_users,
    GuestCommandName.GRANT_ACCESS: _grant_access,
    GuestCommandName.REVOKE_ACCESS: _revoke_access,
    GuestCommandName.LIST_ACCESS: _list_access,
    GuestCommandName.ENABLE_ROOT: _enable_root,
    GuestCommandName.DISABLE_ROOT: _disable_root,
    GuestCommandName.IS_ROOT_ENABLED: _is_root_enabled,
    GuestCommandName.UPDATE_OVERRIDES: _update_overrides,
    # One call persists the overrides and applies what can be applied live.
    GuestCommandName.APPLY_OVERRIDES: _update_overrides,
    GuestCommandName.RESTART: _restart,
    GuestCommandName.STOP: _stop,
    GuestCommandName.START: _start,
    GuestCommandName.GET_VOLUME_INFO: _get_volume_info,
    GuestCommandName.GUEST_LOG_LIST: _guest_log_list,
    GuestCommandName.GUEST_LOG_ACTION: _guest_log_action,
    GuestCommandName.BACKUP: _backup,
    GuestCommandName.RESTORE: _restore,
}

# Commands whose success leaves the datastore running / stopped (the agent's intent).
STARTS_DATASTORE = frozenset(
    {
        GuestCommandName.PREPARE,
        GuestCommandName.RESTORE,
        GuestCommandName.START,
        GuestCommandName.RESTART,
    }
)
STOPS_DATASTORE = frozenset({GuestCommandName.STOP})


def execute(ctx: CommandContext, name: GuestCommandName, args: dict[str, JsonValue]) -> JsonValue:
    """Run one command; raises CommandRefusedError (or the manager's errors) when it fails."""
    handler = HANDLERS.get(name)
    if handler is None:
        raise CommandRefusedError(
            "CommandNotImplemented",
            f"{name.value}: this guest agent does not implement it yet "
            "(replication and file-system resize come with later releases)",
        )
    return handler(ctx, args)
