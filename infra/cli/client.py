"""`troveless instance|database|user|configuration|flavor|datastore ...`: the client commands,
mirroring `openstack database ...`, over the Trove v1.0 HTTP API.

Every command takes `--os-cloud` (default `troveless`, or `OS_CLOUD`) and `-f table|json`.
`--wait` follows a long operation with a progress display until it settles (ACTIVE), fails
(ERROR: the fault is shown, exit 1) or, for a delete, the instance is gone, within `--timeout`.
An error prints the API's message and exits 1, never a traceback.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from enum import StrEnum
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from infra.cli.client_api import DEFAULT_CLOUD, ClientError, TroveApi

WAIT_POLL_SECONDS = 1.0
DEFAULT_WAIT_SECONDS = 600.0
SETTLED = "ACTIVE"
FAILED = "ERROR"

out = Console(soft_wrap=True)
err = Console(stderr=True)


class OutputFormat(StrEnum):
    TABLE = "table"
    JSON = "json"


CloudOption = Annotated[
    str, typer.Option("--os-cloud", envvar="OS_CLOUD", help="Cloud name in clouds.yaml")
]
FormatOption = Annotated[OutputFormat, typer.Option("-f", "--format", help="Output format")]
WaitOption = Annotated[bool, typer.Option("--wait", help="Follow the operation until it ends")]
TimeoutOption = Annotated[
    float, typer.Option("--timeout", help="Seconds --wait waits at most", min=1)
]

instance_app = typer.Typer(help="Database instances.", no_args_is_help=True)
resize_app = typer.Typer(help="Resize an instance (flavor or volume).", no_args_is_help=True)
database_app = typer.Typer(help="Databases on an instance.", no_args_is_help=True)
user_app = typer.Typer(help="Users on an instance.", no_args_is_help=True)
configuration_app = typer.Typer(help="Configuration groups.", no_args_is_help=True)
flavor_app = typer.Typer(help="Flavors.", no_args_is_help=True)
datastore_app = typer.Typer(help="Datastores and their versions.", no_args_is_help=True)
instance_app.add_typer(resize_app, name="resize")

CLIENT_GROUPS = {
    "instance": instance_app,
    "database": database_app,
    "user": user_app,
    "configuration": configuration_app,
    "flavor": flavor_app,
    "datastore": datastore_app,
}


def register(app: typer.Typer) -> None:
    """Add the client command groups to the `troveless` command line."""
    for name, group in CLIENT_GROUPS.items():
        app.add_typer(group, name=name)


# ------------------------------------------------------------------ plumbing
@contextmanager
def api_errors() -> Iterator[None]:
    """Turn a ClientError into its message on stderr and exit status 1."""
    try:
        yield
    except ClientError as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False)
        raise typer.Exit(1) from None


@contextmanager
def connected(cloud: str) -> Iterator[TroveApi]:
    with api_errors():
        yield TroveApi.connect(cloud)


def _cell(value: Any) -> str:
    if isinstance(value, list | dict):
        return json.dumps(value)
    return "" if value is None else str(value)


def emit_rows(rows: Sequence[dict[str, Any]], columns: Sequence[str], fmt: OutputFormat) -> None:
    """A list: a table of `columns`, or the rows as JSON (those fields only)."""
    picked = [{c: row.get(c) for c in columns} for row in rows]
    if fmt is OutputFormat.JSON:
        sys.stdout.write(json.dumps(picked, indent=2) + "\n")
        return
    table = Table(*columns)
    for row in picked:
        table.add_row(*(_cell(row[c]) for c in columns))
    out.print(table)


def emit_one(item: dict[str, Any], fmt: OutputFormat) -> None:
    """One resource: a field/value table, or its JSON."""
    if fmt is OutputFormat.JSON:
        sys.stdout.write(json.dumps(item, indent=2) + "\n")
        return
    table = Table("Field", "Value")
    for key in sorted(item):
        if key != "links":
            table.add_row(key, _cell(item[key]))
    out.print(table)


def instance_summary(instance: dict[str, Any]) -> dict[str, Any]:
    """The columns `openstack database instance list` shows."""
    datastore = instance.get("datastore") or {}
    return {
        "id": instance.get("id"),
        "name": instance.get("name"),
        "datastore": datastore.get("type"),
        "datastore_version": datastore.get("version"),
        "status": instance.get("status"),
        "operating_status": instance.get("operating_status"),
        "addresses": ",".join(instance.get("ip") or []),
        "port": instance.get("port"),
        "flavor_id": (instance.get("flavor") or {}).get("id"),
        "size": (instance.get("volume") or {}).get("size"),
    }


INSTANCE_COLUMNS = list(instance_summary({}))


def wait_for_instance(
    api: TroveApi,
    instance_id: str,
    *,
    gone: bool,
    timeout: float,
    poll: float = WAIT_POLL_SECONDS,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, Any] | None:
    """Follow the instance until it is ACTIVE (or gone, with `gone`), showing its status.
    ClientError when it ends in ERROR or the deadline passes."""
    deadline = clock() + timeout
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as progress:
        task = progress.add_task(f"instance {instance_id[:8]}: waiting", total=None)
        while True:
            found = api.call("GET", f"/instances/{instance_id}", allow_404=True)
            instance = None if found is None else dict(found["instance"])
            if instance is None:
                if gone:
                    err.print(f"instance {instance_id} deleted")
                    return None
                raise ClientError(f"instance {instance_id} disappeared")
            status = str(instance.get("status"))
            progress.update(
                task,
                description=f"instance {instance_id[:8]}: {status} "
                f"({instance.get('operating_status', '')})",
            )
            if status == FAILED and not gone:
                fault = (instance.get("fault") or {}).get("message", "no fault recorded")
                raise ClientError(f"instance {instance_id} is in ERROR: {fault}")
            if status == SETTLED and not gone:
                err.print(f"instance {instance_id} is {status}")
                return instance
            if clock() > deadline:
                raise ClientError(
                    f"timed out after {timeout:.0f} s: instance {instance_id} is {status}"
                )
            time.sleep(poll)


def _parse_user(text: str, databases: list[str]) -> dict[str, Any]:
    name, sep, password = text.partition(":")
    if not sep or not name or not password:
        raise typer.BadParameter(f"{text!r}: expected user:password", param_hint="--users")
    return {"name": name, "password": password, "databases": [{"name": d} for d in databases]}


# ------------------------------------------------------------------ instances
@instance_app.command("create")
def instance_create(
    name: Annotated[str, typer.Argument(help="Instance name")],
    *,
    flavor: Annotated[str, typer.Option("--flavor", help="Flavor id or name")],
    size: Annotated[int, typer.Option("--size", help="Volume size in GB", min=1)],
    datastore: Annotated[str, typer.Option("--datastore", help="mariadb, postgresql, redis")],
    datastore_version: Annotated[str | None, typer.Option("--datastore-version")] = None,
    database: Annotated[
        list[str] | None, typer.Option("--database", help="A database to create (repeatable)")
    ] = None,
    users: Annotated[
        list[str] | None,
        typer.Option("--users", help="user:password, with access to the databases (repeatable)"),
    ] = None,
    availability_zone: Annotated[str | None, typer.Option("--availability-zone")] = None,
    configuration: Annotated[
        str | None, typer.Option("--configuration", help="Configuration group id or name")
    ] = None,
    wait: WaitOption = False,
    timeout: TimeoutOption = DEFAULT_WAIT_SECONDS,
    cloud: CloudOption = DEFAULT_CLOUD,
    fmt: FormatOption = OutputFormat.TABLE,
) -> None:
    """Create an instance."""
    databases = list(database or [])
    user_list = [_parse_user(u, databases) for u in users or []]
    with connected(cloud) as api:
        body: dict[str, Any] = {
            "name": name,
            "flavorRef": api.resolve_flavor(flavor),
            "volume": {"size": size},
            "datastore": {"type": datastore}
            | ({"version": datastore_version} if datastore_version else {}),
            "databases": [{"name": d} for d in databases],
            "users": user_list,
        }
        if availability_zone:
            body["availability_zone"] = availability_zone
        if configuration:
            body["configuration"] = api.resolve_configuration(configuration)
        instance = api.create_instance(body)
        if wait:
            settled = wait_for_instance(api, str(instance["id"]), gone=False, timeout=timeout)
            instance = settled if settled is not None else instance
    emit_one(instance_summary(instance), fmt)


@instance_app.command("list")
def instance_list(
    cloud: CloudOption = DEFAULT_CLOUD, fmt: FormatOption = OutputFormat.TABLE
) -> None:
    """List the project's instances."""
    with connected(cloud) as api:
        rows = [instance_summary(i) for i in api.instances()]
    emit_rows(rows, INSTANCE_COLUMNS, fmt)


@instance_app.command("show")
def instance_show(
    instance: Annotated[str, typer.Argument(help="Instance id or name")],
    cloud: CloudOption = DEFAULT_CLOUD,
    fmt: FormatOption = OutputFormat.TABLE,
) -> None:
    """Show an instance."""
    with connected(cloud) as api:
        found = api.find_instance(instance)
        if found is None:
            raise ClientError(f"no instance {instance!r}")
    emit_one(found, fmt)


@instance_app.command("delete")
def instance_delete(
    instance: Annotated[str, typer.Argument(help="Instance id or name")],
    wait: WaitOption = False,
    timeout: TimeoutOption = DEFAULT_WAIT_SECONDS,
    cloud: CloudOption = DEFAULT_CLOUD,
) -> None:
    """Delete an instance."""
    with connected(cloud) as api:
        instance_id = api.resolve_instance(instance)
        api.delete_instance(instance_id)
        err.print(f"instance {instance_id} is being deleted")
        if wait:
            wait_for_instance(api, instance_id, gone=True, timeout=timeout)


def _act(
    cloud: str,
    instance: str,
    action: Callable[[TroveApi], dict[str, Any]],
    wait: bool,
    timeout: float,
) -> None:
    """Post the action body `action(api)` makes, then follow the instance with `wait`."""
    with connected(cloud) as api:
        instance_id = api.resolve_instance(instance)
        body = action(api)
        api.instance_action(instance_id, body)
        err.print(f"instance {instance_id}: {next(iter(body))} accepted")
        if wait:
            wait_for_instance(api, instance_id, gone=False, timeout=timeout)


@instance_app.command("restart")
def instance_restart(
    instance: Annotated[str, typer.Argument(help="Instance id or name")],
    wait: WaitOption = False,
    timeout: TimeoutOption = DEFAULT_WAIT_SECONDS,
    cloud: CloudOption = DEFAULT_CLOUD,
) -> None:
    """Restart the datastore of an instance."""
    _act(cloud, instance, lambda api: {"restart": {}}, wait, timeout)


@resize_app.command("flavor")
def instance_resize_flavor(
    instance: Annotated[str, typer.Argument(help="Instance id or name")],
    flavor: Annotated[str, typer.Argument(help="New flavor id or name")],
    wait: WaitOption = False,
    timeout: TimeoutOption = DEFAULT_WAIT_SECONDS,
    cloud: CloudOption = DEFAULT_CLOUD,
) -> None:
    """Give an instance another flavor (RAM and CPUs); the datastore restarts."""
    _act(
        cloud,
        instance,
        lambda api: {"resize": {"flavorRef": api.resolve_flavor(flavor)}},
        wait,
        timeout,
    )


@resize_app.command("volume")
def instance_resize_volume(
    instance: Annotated[str, typer.Argument(help="Instance id or name")],
    size: Annotated[int, typer.Argument(help="New volume size in GB (volumes only grow)", min=1)],
    wait: WaitOption = False,
    timeout: TimeoutOption = DEFAULT_WAIT_SECONDS,
    cloud: CloudOption = DEFAULT_CLOUD,
) -> None:
    """Grow an instance's volume."""
    _act(cloud, instance, lambda api: {"resize": {"volume": {"size": size}}}, wait, timeout)


# ------------------------------------------------------------------ databases
@database_app.command("create")
def database_create(
    instance: Annotated[str, typer.Argument(help="Instance id or name")],
    name: Annotated[str, typer.Argument(help="Database name")],
    character_set: Annotated[str | None, typer.Option("--character-set")] = None,
    collate: Annotated[str | None, typer.Option("--collate")] = None,
    cloud: CloudOption = DEFAULT_CLOUD,
) -> None:
    """Create a database on an instance."""
    database: dict[str, Any] = {"name": name}
    if character_set:
        database["character_set"] = character_set
    if collate:
        database["collate"] = collate
    with connected(cloud) as api:
        api.create_databases(api.resolve_instance(instance), [database])
    err.print(f"database {name} created")


@database_app.command("list")
def database_list(
    instance: Annotated[str, typer.Argument(help="Instance id or name")],
    cloud: CloudOption = DEFAULT_CLOUD,
    fmt: FormatOption = OutputFormat.TABLE,
) -> None:
    """List the databases of an instance."""
    with connected(cloud) as api:
        rows = api.databases(api.resolve_instance(instance))
    emit_rows(rows, ["name"], fmt)


@database_app.command("delete")
def database_delete(
    instance: Annotated[str, typer.Argument(help="Instance id or name")],
    name: Annotated[str, typer.Argument(help="Database name")],
    cloud: CloudOption = DEFAULT_CLOUD,
) -> None:
    """Delete a database from an instance."""
    with connected(cloud) as api:
        api.delete_database(api.resolve_instance(instance), name)
    err.print(f"database {name} deleted")


# ------------------------------------------------------------------ users
@user_app.command("create")
def user_create(
    instance: Annotated[str, typer.Argument(help="Instance id or name")],
    name: Annotated[str, typer.Argument(help="User name")],
    password: Annotated[str, typer.Argument(help="Password")],
    *,
    host: Annotated[str | None, typer.Option("--host", help="Host the user connects from")] = None,
    databases: Annotated[
        list[str] | None, typer.Option("--databases", help="Grant access (repeatable)")
    ] = None,
    cloud: CloudOption = DEFAULT_CLOUD,
) -> None:
    """Create a user on an instance."""
    user: dict[str, Any] = {
        "name": name,
        "password": password,
        "databases": [{"name": d} for d in databases or []],
    }
    if host:
        user["host"] = host
    with connected(cloud) as api:
        api.create_users(api.resolve_instance(instance), [user])
    err.print(f"user {name} created")


@user_app.command("list")
def user_list(
    instance: Annotated[str, typer.Argument(help="Instance id or name")],
    cloud: CloudOption = DEFAULT_CLOUD,
    fmt: FormatOption = OutputFormat.TABLE,
) -> None:
    """List the users of an instance."""
    with connected(cloud) as api:
        users = api.users(api.resolve_instance(instance))
    rows = [
        {
            "name": u.get("name"),
            "host": u.get("host"),
            "databases": ",".join(d.get("name", "") for d in u.get("databases") or []),
        }
        for u in users
    ]
    emit_rows(rows, ["name", "host", "databases"], fmt)


@user_app.command("delete")
def user_delete(
    instance: Annotated[str, typer.Argument(help="Instance id or name")],
    name: Annotated[str, typer.Argument(help="User name")],
    host: Annotated[str | None, typer.Option("--host")] = None,
    cloud: CloudOption = DEFAULT_CLOUD,
) -> None:
    """Delete a user from an instance."""
    with connected(cloud) as api:
        api.delete_user(api.resolve_instance(instance), name, host)
    err.print(f"user {name} deleted")


# ------------------------------------------------------------------ configurations
CONFIGURATION_COLUMNS = ["id", "name", "description", "datastore_name", "datastore_version_name"]


@configuration_app.command("create")
def configuration_create(
    name: Annotated[str, typer.Argument(help="Group name")],
    values: Annotated[
        str, typer.Argument(help="Parameters as JSON, e.g. '{\"max_connections\": 50}'")
    ],
    *,
    datastore: Annotated[str | None, typer.Option("--datastore")] = None,
    datastore_version: Annotated[str | None, typer.Option("--datastore-version")] = None,
    description: Annotated[str | None, typer.Option("--description")] = None,
    cloud: CloudOption = DEFAULT_CLOUD,
    fmt: FormatOption = OutputFormat.TABLE,
) -> None:
    """Create a configuration group."""
    try:
        parsed = json.loads(values)
    except ValueError as exc:
        raise typer.BadParameter(f"not JSON: {exc}", param_hint="VALUES") from None
    if not isinstance(parsed, dict):
        raise typer.BadParameter("must be a JSON object", param_hint="VALUES")
    body: dict[str, Any] = {"name": name, "values": parsed}
    if description:
        body["description"] = description
    if datastore or datastore_version:
        body["datastore"] = {
            k: v for k, v in (("type", datastore), ("version", datastore_version)) if v
        }
    with connected(cloud) as api:
        group = api.create_configuration(body)
    emit_one(group, fmt)


@configuration_app.command("list")
def configuration_list(
    cloud: CloudOption = DEFAULT_CLOUD, fmt: FormatOption = OutputFormat.TABLE
) -> None:
    """List the project's configuration groups."""
    with connected(cloud) as api:
        rows = api.configurations()
    emit_rows(rows, CONFIGURATION_COLUMNS, fmt)


@configuration_app.command("show")
def configuration_show(
    configuration: Annotated[str, typer.Argument(help="Group id or name")],
    cloud: CloudOption = DEFAULT_CLOUD,
    fmt: FormatOption = OutputFormat.TABLE,
) -> None:
    """Show a configuration group with its values."""
    with connected(cloud) as api:
        group = api.configuration(api.resolve_configuration(configuration))
    emit_one(group, fmt)


@configuration_app.command("attach")
def configuration_attach(
    instance: Annotated[str, typer.Argument(help="Instance id or name")],
    configuration: Annotated[str, typer.Argument(help="Group id or name")],
    cloud: CloudOption = DEFAULT_CLOUD,
) -> None:
    """Attach a configuration group to an instance."""
    with connected(cloud) as api:
        instance_id = api.resolve_instance(instance)
        api.update_instance(
            instance_id, {"configuration": api.resolve_configuration(configuration)}
        )
    err.print(f"configuration attached to instance {instance_id}")


@configuration_app.command("detach")
def configuration_detach(
    instance: Annotated[str, typer.Argument(help="Instance id or name")],
    cloud: CloudOption = DEFAULT_CLOUD,
) -> None:
    """Detach the configuration group of an instance."""
    with connected(cloud) as api:
        instance_id = api.resolve_instance(instance)
        api.update_instance(instance_id, {"remove_configuration": True})
    err.print(f"configuration detached from instance {instance_id}")


@configuration_app.command("delete")
def configuration_delete(
    configuration: Annotated[str, typer.Argument(help="Group id or name")],
    cloud: CloudOption = DEFAULT_CLOUD,
) -> None:
    """Delete a configuration group (refused while instances use it)."""
    with connected(cloud) as api:
        api.delete_configuration(api.resolve_configuration(configuration))
    err.print(f"configuration {configuration} deleted")


# ------------------------------------------------------------------ catalog
@flavor_app.command("list")
def flavor_list(cloud: CloudOption = DEFAULT_CLOUD, fmt: FormatOption = OutputFormat.TABLE) -> None:
    """List the flavors."""
    with connected(cloud) as api:
        rows = api.flavors()
    emit_rows(rows, ["id", "name", "ram", "vcpus"], fmt)


@datastore_app.command("list")
def datastore_list(
    cloud: CloudOption = DEFAULT_CLOUD, fmt: FormatOption = OutputFormat.TABLE
) -> None:
    """List the datastores whose binaries are installed, with their versions."""
    with connected(cloud) as api:
        datastores = api.datastores()
    rows = [
        {
            "id": d.get("id"),
            "name": d.get("name"),
            "versions": ",".join(str(v.get("name")) for v in d.get("versions") or []),
            "default_version": d.get("default_version"),
        }
        for d in datastores
    ]
    emit_rows(rows, ["id", "name", "versions", "default_version"], fmt)
