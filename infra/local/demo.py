"""`make demo`: the embedded cloud, used through its API as a tenant would.

It starts `troveless up` (a process of its own, on a free port, with a fresh data directory
under /tmp), signs in with the clouds.yaml it writes, and through the Trove API with
python-troveclient: creates a MariaDB and a PostgreSQL instance, a database and a user in each,
writes and reads rows as that user with a real driver (PyMySQL, psycopg) at the address the
API reports, grows one volume, lists the instances and deletes them. It also runs a state
machine through the engine. It finishes by itself and leaves nothing behind, even after a
failure: `up` is stopped, every server deleted (volumes, mounts and loop devices with them)
and the data directory removed.
EventPump (below) is the guest-event loop bench.server uses without the control plane.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pymysql
import yaml
from keystoneauth1 import loading, session
from rich.console import Console
from rich.table import Table
from troveclient.v1 import client as trove_client

from infra.local.cloud import LocalCloud
from shared.models import GuestResult, Heartbeat, ServiceStatus
from shared.services.guest_channel import EVENTS_QUEUE, GuestClient, GuestEventVerifier
from shared.settings import load_settings

console = Console(soft_wrap=True)  # whole lines: readable logs, greppable tests
BOOT_TIMEOUT = 60.0
COMMAND_TIMEOUT = 120.0
UP_TIMEOUT = 60.0
ACTIVE_TIMEOUT = 180.0
POLL_SECONDS = 0.5
REPO = Path(__file__).resolve().parents[2]
DATASTORES = (("mariadb", "demo-mariadb"), ("postgresql", "demo-postgresql"))
ROWS = ["apples", "pears", "plums"]


@dataclass
class EventPump:
    """Reads the events queue, verifies every message, keeps results and the last heartbeats.
    (The control plane's event-consumer function does this on queue triggers.)"""

    cloud: LocalCloud
    verifier: GuestEventVerifier
    results: dict[str, GuestResult] = field(default_factory=dict)
    heartbeats: dict[str, Heartbeat] = field(default_factory=dict)

    def pump(self, wait: float = 0.2) -> None:
        for message in self.cloud.queue.receive(EVENTS_QUEUE, 10, 30, wait):
            verdict = self.verifier.verify(message.body)
            self.cloud.queue.ack(EVENTS_QUEUE, message.receipt)
            if isinstance(verdict.message, Heartbeat):
                self.heartbeats[verdict.message.instance_id] = verdict.message
            elif isinstance(verdict.message, GuestResult):
                self.results[verdict.message.command_id] = verdict.message

    def wait_for(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
            self.pump()

    def call(self, client: GuestClient, name: str, args: dict[str, Any]) -> GuestResult:
        command = client.send(name, args, timeout=COMMAND_TIMEOUT)
        self.wait_for(lambda: command.id in self.results, COMMAND_TIMEOUT, f"{name} result")
        result = self.results[command.id]
        if not result.ok:
            raise RuntimeError(f"{name} failed: {result.error}")
        return result

    def wait_status(self, instance_id: str, status: ServiceStatus, after: float) -> Heartbeat:
        def seen() -> bool:
            beat = self.heartbeats.get(instance_id)
            return (
                beat is not None
                and beat.timestamp.timestamp() > after
                and beat.datastore_status is status
            )

        self.wait_for(seen, BOOT_TIMEOUT, f"{instance_id} to report {status.value}")
        return self.heartbeats[instance_id]


def run_state_machine_demo() -> None:
    """The engine runs an ASL flow (Map, Choice, intrinsics) in memory."""
    try:
        from shared.engine import run_in_memory
    except ImportError:  # the engine lands separately
        console.print("[yellow]engine not available yet: skipped[/]")
        return
    definition = {
        "StartAt": "Sizes",
        "States": {
            "Sizes": {
                "Type": "Map",
                "ItemsPath": "$.volumes",
                "ItemProcessor": {
                    "StartAt": "Check",
                    "States": {
                        "Check": {
                            "Type": "Choice",
                            "Choices": [
                                {"Variable": "$", "NumericGreaterThan": 40, "Next": "TooBig"}
                            ],
                            "Default": "Ok",
                        },
                        "TooBig": {"Type": "Pass", "Result": "refused", "End": True},
                        "Ok": {
                            "Type": "Pass",
                            "Parameters": {"v.$": "States.Format('{} GB accepted', $)"},
                            "OutputPath": "$.v",
                            "End": True,
                        },
                    },
                },
                "End": True,
            }
        },
    }
    result = run_in_memory(definition, {"volumes": [1, 20, 80]})
    console.print(f"  execution {result.status}: {result.output}")


def wait_until(condition: Callable[[], Any], what: str, timeout: float) -> Any:
    """Poll `condition` until it returns something truthy; TimeoutError at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(POLL_SECONDS)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class EmbeddedCloud:
    """`troveless up` as a child process, its data directory and its output."""

    root: Path
    process: subprocess.Popen[bytes] | None = None
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.root.parent / f"{self.root.name}.log"

    def start(self) -> Path:
        """Start it and wait until it prints its clouds.yaml; returns that file."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TROVELESS_", "OS_"))}
        env["TROVELESS_HEARTBEAT_INTERVAL"] = "0.5"
        env["TROVELESS_LOG_LEVEL"] = "WARNING"
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "infra.cli.main",
                    "up",
                    "--data-dir",
                    str(self.root),
                    "--port",
                    str(free_port()),
                    "--stop-servers",
                ],
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        process = self.process

        def started() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"troveless up exited:\n{self.log.read_text()[-3000:]}")
            return b"OS_CLIENT_CONFIG_FILE=" in self.log.read_bytes()

        wait_until(started, "troveless up to start", UP_TIMEOUT)
        return self.root / "clouds.yaml"

    def output(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    def stop(self) -> None:
        """Stop `up`, delete every server it left, remove the data directory."""
        process = self.process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        cloud = LocalCloud.from_settings(load_settings(data_dir=self.root))
        try:
            for server in cloud.compute.list_servers():
                cloud.compute.delete_server(server.instance_id)
            left = cloud.compute.list_servers()
        finally:
            cloud.close()
        shutil.rmtree(self.root, ignore_errors=True)
        self.log.unlink(missing_ok=True)
        console.print(f"  servers left: {len(left)}; data directory removed")


def trove_from(clouds: Path) -> trove_client.Client:
    """python-troveclient signed in with the credentials `up` wrote (cloud `troveless`)."""
    cloud = yaml.safe_load(clouds.read_text())["clouds"]["troveless"]
    auth = cloud["auth"]
    plugin: Any = loading.get_plugin_loader("password").load_from_options(
        auth_url=auth["auth_url"],
        username=auth["username"],
        password=auth["password"],
        project_name=auth["project_name"],
        user_domain_name=auth["user_domain_name"],
        project_domain_name=auth["project_domain_name"],
    )
    return trove_client.Client(
        session=session.Session(auth=plugin), region_name=cloud["region_name"]
    )


def wait_status(trove: trove_client.Client, instance_id: str, status: str) -> Any:
    def reached() -> Any:
        found = trove.instances.get(instance_id)
        if found.status == "ERROR":
            raise RuntimeError(f"instance {instance_id} failed: {getattr(found, 'fault', '')}")
        return found if found.status == status else None

    return wait_until(reached, f"instance {instance_id[:8]} to be {status}", ACTIVE_TIMEOUT)


def wait_gone(trove: trove_client.Client, instance_id: str) -> None:
    wait_until(
        lambda: instance_id not in [i.id for i in trove.instances.list()],
        f"instance {instance_id[:8]} to be deleted",
        ACTIVE_TIMEOUT,
    )


@dataclass
class TenantDatabase:
    """Where and as whom the tenant connects: what the API reported and what they chose."""

    datastore: str
    address: str
    port: int
    password: str = field(default_factory=lambda: "Pw-" + secrets.token_urlsafe(12))


def write_and_read(db: TenantDatabase, rows: list[str] | None) -> list[str]:
    """Insert `rows` (if given) as user 'app' in database 'shop', then read everything back."""
    if db.datastore == "mariadb":
        conn = pymysql.connect(
            host=db.address,
            port=db.port,
            user="app",
            password=db.password,
            database="shop",
            connect_timeout=5,
        )
        with conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE IF NOT EXISTS items (name VARCHAR(40))")
            if rows:
                cur.executemany("INSERT INTO items VALUES (%s)", [(r,) for r in rows])
            conn.commit()
            cur.execute("SELECT name FROM items ORDER BY name")
            return [str(r[0]) for r in cur.fetchall()]
    with psycopg.connect(
        host=db.address,
        port=db.port,
        user="app",
        password=db.password,
        dbname="shop",
        connect_timeout=5,
    ) as pg:
        pg.execute("CREATE TABLE IF NOT EXISTS items (name text)")
        if rows:
            with pg.cursor() as cur:
                cur.executemany("INSERT INTO items VALUES (%s)", [(r,) for r in rows])
        return [str(r[0]) for r in pg.execute("SELECT name FROM items ORDER BY name").fetchall()]


@contextlib.contextmanager
def step(what: str) -> Iterator[None]:
    """Print `what`, then how long it took."""
    started = time.monotonic()
    yield
    console.print(f"  {what} [dim]({time.monotonic() - started:.2f} s)[/]")


def run_lifecycle(trove: trove_client.Client, made: dict[str, str]) -> None:
    """The tenant's session; `made` collects (name -> id) so cleanup knows what exists."""
    console.rule("create a MariaDB and a PostgreSQL instance through the API")
    started = time.monotonic()
    for datastore, name in DATASTORES:
        created = trove.instances.create(name, "2", volume={"size": 1}, datastore=datastore)
        made[name] = created.id
        console.print(f"  POST /instances {name}: {created.status}, id {created.id}")
    databases: dict[str, TenantDatabase] = {}
    for datastore, name in DATASTORES:
        active = wait_status(trove, made[name], "ACTIVE")
        databases[name] = TenantDatabase(datastore, active.ip[0], int(active.port))
        console.print(
            f"  {name} ACTIVE at {active.ip[0]}:{active.port} "
            f"[dim]({time.monotonic() - started:.2f} s after the first create)[/]"
        )

    for datastore, name in DATASTORES:
        console.rule(f"{datastore}: a database, a user, rows")
        db = databases[name]
        with step("POST /databases shop"):
            trove.databases.create(made[name], [{"name": "shop"}])
        with step("POST /users app (access to shop)"):
            trove.users.create(
                made[name],
                [{"name": "app", "password": db.password, "databases": [{"name": "shop"}]}],
            )
        started = time.monotonic()
        rows = write_and_read(db, ROWS)
        console.print(
            f"  as user 'app' over TCP: wrote and read {rows} "
            f"[dim]({time.monotonic() - started:.2f} s)[/]"
        )

    console.rule("grow a volume (postgresql: 1 GB -> 2 GB)")
    pg_name = DATASTORES[1][1]
    with step("resize volume"):
        trove.instances.resize_volume(made[pg_name], 2)
        resized = wait_status(trove, made[pg_name], "ACTIVE")
    rows = write_and_read(databases[pg_name], None)
    console.print(f"  volume now {resized.volume['size']} GB; rows after: {rows}")

    console.rule("GET /instances")
    table = Table("name", "datastore", "status", "address", "volume", "flavor")
    for instance in trove.instances.list():
        table.add_row(
            instance.name,
            f"{instance.datastore['type']} {instance.datastore['version']}",
            instance.status,
            f"{(instance.ip or ['-'])[0]}:{getattr(instance, 'port', '-')}",
            f"{instance.volume['size']} GB",
            instance.flavor["id"],
        )
    console.print(table)

    console.rule("delete them")
    for name, instance_id in list(made.items()):
        with step(f"DELETE {name}: gone"):
            trove.instances.delete(instance_id)
            wait_gone(trove, instance_id)
        del made[name]


def main() -> int:
    root = Path(tempfile.mkdtemp(prefix="tl-demo-", dir="/tmp"))
    embedded = EmbeddedCloud(root)
    made: dict[str, str] = {}
    status = 0
    try:
        console.rule("[bold]troveless: the embedded cloud")
        with step("troveless up: API, Keystone, engine workers, local compute"):
            clouds = embedded.start()
        for line in embedded.output():
            if line.startswith(("troveless is up", "export OS_CLIENT_CONFIG_FILE")):
                console.print(f"  [dim]{line}[/]", highlight=False)
        trove = trove_from(clouds)
        console.print(
            f"  signed in as the clouds.yaml user; flavors: "
            f"{', '.join(f.name for f in trove.flavors.list())}; datastores: "
            f"{', '.join(d.name for d in trove.datastores.list())}"
        )
        console.rule("state machine engine")
        run_state_machine_demo()
        run_lifecycle(trove, made)
    except Exception as exc:  # the demo reports and still cleans up
        console.print(f"[red]demo failed: {exc}[/]")
        for line in embedded.output()[-20:]:
            console.print(f"  [dim]up: {line}[/]", highlight=False)
        status = 1
    finally:
        console.rule("stop everything")
        try:
            embedded.stop()
        except Exception as exc:
            console.print(f"[red]cleanup failed: {exc}[/]")
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
