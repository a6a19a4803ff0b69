"""The guest agent as a real process, over the real SQLite queue, driving a real datastore
through its real manager; the control plane's side is the real GuestClient and
GuestEventVerifier (over the directory StateStore).

One scenario per datastore, in order: first heartbeat -> signed prepare -> create a database
and a user -> connect with the datastore's driver as that user and write/read -> a forged
command is rejected and counted -> kill -9 of the datastore shows as CRASHED within two
heartbeat intervals -> start it again -> SIGKILL of the agent stops the heartbeats while the
datastore keeps serving -> a new agent re-attaches to it without preparing again, answers a
redelivered prepare from its journal -> SIGTERM stops agent and datastore cleanly.

The agent runs as this test's user (root here) and its datastore as the unprivileged guest
user. (The compute driver runs the agent itself as that user; on this machine the venv's
interpreter lives under /root, which that user cannot reach, so that path is for the
compute driver's own tests.)
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pymysql
import pytest
import redis

from guest_agent.datastores.base import DatastoreError, find_binary, kill_process_group
from guest_agent.state import AgentState
from shared.adapters.local.sqlite_queue import SqliteQueue
from shared.adapters.local.state_store import DirectoryStateStore
from shared.adapters.local.system_user import DEFAULT_GUEST_USER, ensure_system_user
from shared.clock import SystemClock
from shared.crypto import InstanceKeys, encode_secret, new_instance_secret
from shared.models import ServiceStatus
from shared.services.guest_channel import (
    EVENTS_QUEUE,
    GuestClient,
    GuestEventVerifier,
    command_queue_name,
)
from shared.settings import REPO_ROOT
from tests.integration.guest_control_plane import ControlPlane

pytestmark = [pytest.mark.slow, pytest.mark.datastore]

INTERVAL = 0.5  # heartbeat interval: short, so the timing assertions stay fast
AGENT_BOOT_TIMEOUT = 30.0


@dataclass(frozen=True)
class Datastore:
    type: str
    binary: str
    port: int
    prepare_databases: list[dict[str, Any]]
    user_databases: list[str]
    new_database: str
    write_and_read: Callable[[str, int, str, str, str], str]


def mariadb_write_and_read(address: str, port: int, user: str, password: str, db: str) -> str:
    conn = pymysql.connect(
        host=address, port=port, user=user, password=password, database=db, connect_timeout=5
    )
    try:
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE IF NOT EXISTS t (v VARCHAR(20))")
            cur.execute("INSERT INTO t VALUES (%s)", ("hello",))
            conn.commit()
            cur.execute("SELECT v FROM t LIMIT 1")
            row = cur.fetchone()
            return str(row[0]) if row else ""
    finally:
        conn.close()


def redis_write_and_read(address: str, port: int, user: str, password: str, db: str) -> str:
    client = redis.Redis(
        host=address, port=port, username=user, password=password, db=int(db), socket_timeout=5
    )
    try:
        client.set("k", "hello")
        value = client.get("k")
        return value.decode() if value else ""
    finally:
        client.close()


DATASTORES = [
    Datastore(
        "mariadb", "mariadbd", 3306, [{"name": "shop"}], ["crm"], "crm", mariadb_write_and_read
    ),
    Datastore("redis", "redis-server", 6379, [], ["3"], "3", redis_write_and_read),
]


def free_address(port: int) -> str:
    """A loopback address in 127.30.0.0/16 where nothing listens on `port`."""
    base = os.getpid() % 200
    for n in range(250):
        address = f"127.30.{base + 1}.{n + 1}"
        with socket.socket() as probe:
            probe.settimeout(0.2)
            if probe.connect_ex((address, port)) != 0:
                return address
    raise RuntimeError("no free loopback address in 127.30.0.0/16")


@dataclass
class Sandbox:
    """Everything one scenario makes; `cleanup` removes it all, even after a failure."""

    root: Path
    volume: Path
    user_data_path: Path
    queue: SqliteQueue
    secret: bytes
    agents: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start_agent(self) -> subprocess.Popen[bytes]:
        log = (self.root / "agent.log").open("ab")
        env = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG": "C.UTF-8",
            "TROVELESS_LOG_LEVEL": "INFO",
        }
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "guest_agent", "--user-data", str(self.user_data_path)],
                cwd=REPO_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()
        self.agents.append(proc)
        return proc

    def agent_log(self, limit: int | None = 6000) -> str:
        with contextlib.suppress(FileNotFoundError):
            text = (self.root / "agent.log").read_text()
            return text if limit is None else text[-limit:]
        return ""

    def datastore_pid(self) -> int | None:
        with contextlib.suppress(FileNotFoundError, ValueError):
            return int((self.volume / "run" / "server.pid").read_text().split()[0])
        return None

    def cleanup(self) -> None:
        for proc in self.agents:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        pid = self.datastore_pid()
        if pid is not None:
            kill_process_group(pid)
        self.queue.close()
        shutil.rmtree(self.root, ignore_errors=True)


def process_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


@pytest.fixture(params=DATASTORES, ids=lambda d: d.type)
def datastore(request: pytest.FixtureRequest) -> Datastore:
    spec: Datastore = request.param
    try:
        find_binary(spec.binary)
    except DatastoreError:
        pytest.skip(f"{spec.binary} is not installed")
    return spec


@pytest.fixture
def sandbox(datastore: Datastore) -> Iterator[tuple[Sandbox, ControlPlane, dict[str, Any]]]:
    run_as = ensure_system_user(DEFAULT_GUEST_USER).name if os.geteuid() == 0 else None
    # Under /tmp, not pytest's 0700 tmp_path: the datastore's user must traverse to its volume.
    root = Path(tempfile.mkdtemp(prefix="tl-agent-", dir="/tmp"))
    os.chmod(root, 0o755)
    volume = root / "volume"
    volume.mkdir(mode=0o755)
    instance_id = str(uuid.uuid4())
    secret = new_instance_secret()
    clock = SystemClock()
    queue = SqliteQueue(root / "queues.db", clock)
    box = Sandbox(root, volume, root / "user-data.json", queue, secret)
    try:
        commands = command_queue_name(instance_id)
        queue.ensure_queue(commands)
        queue.ensure_queue(EVENTS_QUEUE)
        user_data = {
            "instance_id": instance_id,
            "datastore_type": datastore.type,
            "datastore_version": "default",
            "command_queue": commands,
            "events_queue": EVENTS_QUEUE,
            "secret": encode_secret(secret),
            "local": {"queue_path": str(root / "queues.db"), "blob_dir": str(root / "blobs")},
            "heartbeat_interval": INTERVAL,
            "run_as": run_as,
            "address": free_address(datastore.port),
            "ram_mb": 128,
            "volume_path": str(volume),
        }
        fd = os.open(box.user_data_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(user_data, f)
        plane = ControlPlane(
            queue,
            GuestClient(queue, clock, instance_id, secret),
            GuestEventVerifier(
                DirectoryStateStore(root / "state"), clock, {instance_id: secret}.get
            ),
        )
        yield box, plane, user_data
    finally:
        box.cleanup()


def test_agent_end_to_end(
    datastore: Datastore, sandbox: tuple[Sandbox, ControlPlane, dict[str, Any]]
) -> None:
    box, plane, user_data = sandbox
    address, port = user_data["address"], datastore.port
    agent = box.start_agent()
    try:
        # ---- boot: heartbeats start, datastore not prepared yet
        plane.wait_until(lambda: bool(plane.heartbeats), AGENT_BOOT_TIMEOUT, "first heartbeat")
        assert plane.heartbeats[0].datastore_status is ServiceStatus.NEW

        # ---- prepare, signed, with a sealed user password; the task token comes back
        app_user = {
            "name": "app",
            "encrypted_password": plane.client.seal_password("app-Password-1"),
            "databases": [d["name"] for d in datastore.prepare_databases],
        }
        started = time.monotonic()
        prepare = plane.client.send(
            "prepare",
            {"databases": datastore.prepare_databases, "users": [app_user]},
            task_token="token-prepare",
        )
        prepared = plane.result_of(prepare.id)
        prepare_seconds = time.monotonic() - started
        assert prepared.ok, prepared.error
        assert prepared.task_token == "token-prepare"
        assert plane.next_heartbeat_after(time.time(), 5).datastore_status is ServiceStatus.RUNNING

        # ---- create a database and a user, then use them with the real driver
        assert plane.call("create_database", {"databases": [{"name": datastore.new_database}]}).ok
        bob = {
            "name": "bob",
            "encrypted_password": plane.client.seal_password("bob-Password-1"),
            "databases": datastore.user_databases,
        }
        created = plane.call("create_user", {"users": [bob]})
        assert created.ok, created.error
        assert (
            datastore.write_and_read(address, port, "bob", "bob-Password-1", datastore.new_database)
            == "hello"
        )

        # ---- a forged command is rejected, reported and counted; nothing runs
        forger = GuestClient(
            plane.queue, SystemClock(), plane.client.instance_id, new_instance_secret()
        )
        forged = forger.send("stop", task_token="someone-elses-task")
        rejected = plane.result_of(forged.id)
        assert not rejected.ok and rejected.error is not None
        assert (rejected.error.type, rejected.task_token) == ("RejectedCommand", None)
        assert rejected.error.message.startswith("forged")
        after = time.time()
        beat = plane.next_heartbeat_after(after, 5)
        assert beat.rejected_commands == {"forged": 1}
        assert beat.datastore_status is ServiceStatus.RUNNING

        # ---- kill -9 the datastore: CRASHED within two heartbeat intervals
        pid = box.datastore_pid()
        assert pid is not None and process_alive(pid)
        killed_at = time.time()
        os.kill(pid, signal.SIGKILL)
        plane.wait_until(
            lambda: any(
                h.datastore_status is ServiceStatus.CRASHED and h.timestamp.timestamp() > killed_at
                for h in plane.heartbeats
            ),
            5,
            "a CRASHED heartbeat",
        )
        crashed = next(
            h
            for h in plane.heartbeats
            if h.datastore_status is ServiceStatus.CRASHED and h.timestamp.timestamp() > killed_at
        )
        crash_latency = crashed.timestamp.timestamp() - killed_at
        assert crash_latency <= 2 * INTERVAL, f"CRASHED reported {crash_latency:.2f}s after kill"

        # ---- start it again; the data survived
        restarted = plane.call("start")
        assert restarted.ok, restarted.error
        assert plane.next_heartbeat_after(time.time(), 5).datastore_status is ServiceStatus.RUNNING
        datastore_pid = box.datastore_pid()
        assert datastore_pid is not None and datastore_pid != pid

        # ---- SIGKILL the agent: heartbeats stop, the datastore keeps serving
        agent_killed_at = time.time()
        os.killpg(agent.pid, signal.SIGKILL)
        assert agent.wait(timeout=10) == -signal.SIGKILL
        plane.pump_for(3 * INTERVAL)  # a bounded wait for something that must not happen
        late = [h for h in plane.heartbeats if h.timestamp.timestamp() > agent_killed_at]
        assert late == [], "heartbeats continued after SIGKILL of the agent"
        assert process_alive(datastore_pid)
        assert (
            datastore.write_and_read(address, port, "bob", "bob-Password-1", datastore.new_database)
            == "hello"
        )

        # ---- a new agent re-attaches without preparing again
        reborn_at = time.time()
        agent = box.start_agent()
        first = plane.next_heartbeat_after(reborn_at, AGENT_BOOT_TIMEOUT)
        assert first.datastore_status is ServiceStatus.RUNNING
        assert first.rejected_commands == {"forged": 1}  # counters live on the volume
        assert box.datastore_pid() == datastore_pid
        # The original prepare, redelivered: answered from the journal, not run again.
        plane.queue.send(plane.client.command_queue, prepare.model_dump(mode="json"))
        del plane.results[prepare.id]
        again = plane.result_of(prepare.id)
        assert again.ok and again.task_token == "token-prepare"
        assert box.datastore_pid() == datastore_pid

        # ---- SIGTERM: the agent stops the datastore cleanly and exits 0
        os.kill(agent.pid, signal.SIGTERM)
        assert agent.wait(timeout=30) == 0
        assert not process_alive(datastore_pid)
        plane.pump_for(0.3)
        assert plane.heartbeats[-1].datastore_status is ServiceStatus.SHUTDOWN
        assert plane.rejected == [], "every event of the genuine agent must verify"

        # ---- the logs name the instance and hold no secret
        log = box.agent_log(limit=None)
        admin_password = AgentState(
            box.volume, InstanceKeys.from_secret(box.secret).volume, plane.client.instance_id
        ).admin_password()
        assert admin_password
        assert plane.client.instance_id in log and "command done" in log
        for secret_text in (
            admin_password,
            "app-Password-1",
            "bob-Password-1",
            user_data["secret"],
        ):
            assert secret_text not in log
    except BaseException:
        print(box.agent_log(), file=sys.stderr)
        raise
    inside = [
        json.loads(line)["seconds"]
        for line in log.splitlines()
        if '"command done"' in line and '"command":"prepare"' in line
    ]
    print(
        f"\n{datastore.type}: prepare {prepare_seconds:.2f}s round trip "
        f"({inside[0]:.2f}s in the agent), CRASHED reported {crash_latency:.2f}s after kill -9"
    )
