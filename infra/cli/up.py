"""`troveless up`: the whole embedded cloud in the foreground.

It builds the embedded cloud's runtime (`--profile local`: everything under the data
directory; `--profile openstack`: records and backups in Swift, queues in Zaqar, servers still
made by local compute, see infra/openstack/wiring.py), takes charge of the servers a previous
run left (`adopt`), serves the Trove API and a minimal Keystone on one port, runs the queue
triggers and the timer, and writes `<data_dir>/clouds.yaml` (cloud `troveless`) so that
`openstack --os-cloud troveless database instance list` works as is. Ctrl-C or SIGTERM stops
it cleanly; database servers keep running (and are adopted by the next `up`) unless
`--stop-servers` is given, in which case the next `up` starts them again.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from functions.runtime import set_runtime
from infra.local.keystone import PREFIX as IDENTITY_PREFIX
from infra.local.keystone import LocalKeystone, local_identity
from infra.local.server import EmbeddedServer
from infra.wiring import WiringError, build_embedded
from shared.observability import get_logger
from shared.ports import Compute, ServerStatus
from shared.services.tokens import TokenService
from shared.settings import Profile, Settings, SettingsError, load_settings

log = get_logger("up")

CLOUD_NAME = "troveless"
CLOUDS_FILE = "clouds.yaml"
STOPPED_SERVERS_FILE = "stopped-servers.json"


def clouds_yaml(settings: Settings, url: str, user: str, password: str, project: str) -> str:
    """A clouds.yaml for the local cloud (values JSON-quoted: valid YAML, no escaping bugs)."""
    q = json.dumps
    return (
        "# Written by `troveless up`: export OS_CLIENT_CONFIG_FILE=<this file>\n"
        "clouds:\n"
        f"  {CLOUD_NAME}:\n"
        "    auth:\n"
        f"      auth_url: {q(url + IDENTITY_PREFIX + '/v3')}\n"
        f"      username: {q(user)}\n"
        f"      password: {q(password)}\n"
        f"      project_name: {q(project)}\n"
        '      user_domain_name: "Default"\n'
        '      project_domain_name: "Default"\n'
        f"    region_name: {q(settings.region)}\n"
        "    identity_api_version: 3\n"
        '    interface: "public"\n'
    )


def write_private(path: Path, text: str) -> None:
    """Write `text` readable by the owner only (it holds a password)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def up(
    data_dir: Annotated[
        Path | None, typer.Option(help="Where everything is kept (default: settings' data_dir)")
    ] = None,
    host: Annotated[
        str | None, typer.Option(help="Address to serve on (default: api_host)")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port to serve on (default: api_port)")] = None,
    stop_servers: Annotated[
        bool, typer.Option("--stop-servers", help="Stop the database servers on exit")
    ] = False,
    profile: Annotated[
        Profile | None,
        typer.Option(help="local, or openstack (Swift + Zaqar; TROVELESS_OPENSTACK_*)"),
    ] = None,
) -> None:
    """Start the embedded cloud in the foreground: API, Keystone, triggers, compute."""
    overrides: dict[str, object] = {}
    if data_dir is not None:
        overrides["data_dir"] = data_dir.resolve()
    if host is not None:
        overrides["api_host"] = host
    if port is not None:
        overrides["api_port"] = port
    if profile is not None:
        overrides["profile"] = profile
    try:
        settings = load_settings(**overrides)
    except SettingsError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None

    try:
        runtime, cloud, driver = build_embedded(settings)
    except WiringError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    set_runtime(runtime)
    stopped = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopped.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    server: EmbeddedServer | None = None
    try:
        adopted = cloud.compute.adopt()
        restart_stopped_servers(settings, cloud.compute)
        tokens = TokenService(runtime.master_key, runtime.clock, settings.token_ttl_seconds)
        identity, passwords = local_identity(settings, tokens)
        keystone = LocalKeystone(identity, settings.region)
        server = EmbeddedServer(runtime, driver, keystone, settings.api_host, settings.api_port)
        server.start()
        first = settings.local_users[0]
        clouds = settings.data_dir / CLOUDS_FILE
        write_private(
            clouds,
            clouds_yaml(settings, server.url, first.name, passwords[first.name], first.project),
        )
        typer.echo(
            f"troveless is up: {server.url}  (Trove API /v1.0, Keystone {IDENTITY_PREFIX}/v3)"
        )
        typer.echo(
            f"  profile: {settings.profile.value}; data directory: {settings.data_dir}; "
            f"servers adopted: {len(adopted)}"
        )
        typer.echo(f"  credentials for user {first.name!r} (project {first.project!r}): {clouds}")
        typer.echo(f"export OS_CLIENT_CONFIG_FILE={clouds}")
        typer.echo("then: openstack --os-cloud troveless database instance list   (Ctrl-C stops)")
        stopped.wait()
        typer.echo("stopping...")
    finally:
        if server is not None:
            server.stop()
        if stop_servers:
            stop_all_servers(settings, cloud.compute)
        cloud.close()
        set_runtime(None)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    typer.echo("stopped" + (" (database servers stopped)" if stop_servers else ""))


def stop_all_servers(settings: Settings, compute: Compute) -> None:
    """Stop every running server and remember which, so the next `up` starts them again."""
    halted = []
    for info in compute.list_servers():
        if info.status is ServerStatus.ACTIVE:
            try:
                compute.stop_server(info.instance_id)
                halted.append(info.instance_id)
            except Exception:
                log.exception("could not stop a server", extra={"instance_id": info.instance_id})
    write_private(settings.data_dir / STOPPED_SERVERS_FILE, json.dumps(halted))


def restart_stopped_servers(settings: Settings, compute: Compute) -> None:
    """Start the servers a previous `up --stop-servers` stopped."""
    path = settings.data_dir / STOPPED_SERVERS_FILE
    try:
        halted = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return
    for instance_id in halted:
        info = compute.get_server(str(instance_id))
        if info is not None and info.status is ServerStatus.SHUTOFF:
            try:
                compute.start_server(info.instance_id)
            except Exception:
                log.exception("could not start a server", extra={"instance_id": instance_id})
    path.unlink()
