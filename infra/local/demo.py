"""`make demo`: the embedded cloud doing, for real, what troveless can do today.

It builds the local cloud in a fresh data directory, then for MariaDB and PostgreSQL:
creates a server (loop-mounted ext4 volume, 127.x address, cgroup limits, a guest agent
running as an unprivileged user), sends the guest signed commands (prepare with a database and
a user), connects to the datastore as that user with a real driver and writes and reads rows,
grows one volume offline and reads the rows again, lists the servers and deletes them.
It also runs a state machine through the engine. It finishes by itself and leaves nothing
running: every server is deleted and the data directory removed, even after a failure.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pymysql
from rich.console import Console
from rich.table import Table

from infra.local.cloud import LocalCloud
from shared.crypto import new_instance_secret
from shared.models import GuestResult, Heartbeat, ServiceStatus
from shared.ports import FlavorSpec
from shared.services.guest_channel import EVENTS_QUEUE, GuestClient, GuestEventVerifier
from shared.settings import load_settings

console = Console()
BOOT_TIMEOUT = 60.0
COMMAND_TIMEOUT = 120.0


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


@dataclass
class DemoInstance:
    datastore: str
    port: int
    instance_id: str
    client: GuestClient
    address: str = ""
    password: str = field(default_factory=lambda: "Pw-" + secrets.token_urlsafe(12))


def write_and_read(inst: DemoInstance, rows: list[str] | None) -> list[str]:
    """Insert `rows` (if given) as the tenant user, then read everything back."""
    if inst.datastore == "mariadb":
        conn = pymysql.connect(
            host=inst.address,
            port=inst.port,
            user="app",
            password=inst.password,
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
        host=inst.address,
        port=inst.port,
        user="app",
        password=inst.password,
        dbname="shop",
        connect_timeout=5,
    ) as pg:
        pg.execute("CREATE TABLE IF NOT EXISTS items (name text)")
        if rows:
            with pg.cursor() as cur:
                cur.executemany("INSERT INTO items VALUES (%s)", [(r,) for r in rows])
        return [str(r[0]) for r in pg.execute("SELECT name FROM items ORDER BY name").fetchall()]


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


def main() -> int:
    root = Path(tempfile.mkdtemp(prefix="tl-demo-", dir="/tmp"))
    settings = load_settings(data_dir=root, heartbeat_interval=0.5, heartbeat_expiry=5)
    cloud = LocalCloud.from_settings(settings)
    secrets_by_id: dict[str, bytes] = {}
    pump = EventPump(cloud, GuestEventVerifier(cloud.state, cloud.clock, secrets_by_id.get))
    instances: list[DemoInstance] = []
    try:
        console.rule("[bold]troveless: the embedded cloud")
        for key, value in cloud.compute.describe().items():
            console.print(f"  {key:13} {value}")

        console.rule("state machine engine")
        run_state_machine_demo()

        for datastore, port in (("mariadb", 3306), ("postgresql", 5432)):
            console.rule(f"{datastore}: create a server and prepare it")
            instance_id = str(uuid.uuid4())
            secret = new_instance_secret()
            secrets_by_id[instance_id] = secret
            inst = DemoInstance(
                datastore,
                port,
                instance_id,
                GuestClient(cloud.queue, cloud.clock, instance_id, secret),
            )
            instances.append(inst)
            started = time.monotonic()
            user_data = cloud.guest_user_data(instance_id, datastore, "default", secret)
            server = cloud.compute.create_server(
                instance_id, FlavorSpec(ram_mb=512, vcpus=1), 1, None, user_data
            )
            inst.address = server.address
            console.print(
                f"  server {instance_id[:8]} at {server.address}:{port}, zone {server.zone}, "
                f"volume {server.volume_gb} GB ({server.volume_kind}), "
                f"limits {'enforced' if server.limits_enforced else 'not enforced'}"
            )
            pump.wait_status(instance_id, ServiceStatus.NEW, 0)
            user = {
                "name": "app",
                "encrypted_password": inst.client.seal_password(inst.password),
                "databases": ["shop"],
            }
            pump.call(inst.client, "prepare", {"databases": [{"name": "shop"}], "users": [user]})
            beat = pump.wait_status(instance_id, ServiceStatus.RUNNING, 0)
            console.print(
                f"  ACTIVE in {time.monotonic() - started:.2f} s; heartbeat: "
                f"{beat.datastore_status.value}, disk {beat.disk_used_bytes >> 20} MiB used "
                f"of {beat.disk_total_bytes >> 20} MiB"
            )
            rows = write_and_read(inst, ["apples", "pears", "plums"])
            console.print(f"  as user 'app' over TCP: wrote and read {rows}")

        console.rule("grow a volume offline (postgresql: 1 GB -> 2 GB)")
        pg = instances[1]
        before = time.time()
        server = cloud.compute.resize_volume(pg.instance_id, 2)
        pump.wait_status(pg.instance_id, ServiceStatus.RUNNING, before)
        console.print(f"  volume now {server.volume_gb} GB; rows after: {write_and_read(pg, None)}")

        console.rule("servers")
        table = Table("instance", "address", "zone", "status", "volume", "agent pid")
        for s in cloud.compute.list_servers():
            table.add_row(
                s.instance_id[:8],
                s.address,
                s.zone,
                s.status.value,
                f"{s.volume_gb} GB",
                str(s.agent_pid),
            )
        console.print(table)
    except Exception as exc:  # the demo reports and still cleans up
        console.print(f"[red]demo failed: {exc}[/]")
        return 1
    finally:
        console.rule("delete everything")
        for inst in instances:
            with contextlib.suppress(Exception):
                cloud.compute.delete_server(inst.instance_id)
                console.print(f"  deleted {inst.datastore} server {inst.instance_id[:8]}")
        left = cloud.compute.list_servers()
        cloud.close()
        shutil.rmtree(root, ignore_errors=True)
        console.print(f"  servers left: {len(left)}; data directory removed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
