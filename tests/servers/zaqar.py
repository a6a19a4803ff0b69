"""A real Zaqar server on loopback, for the contract suite of the Zaqar queue adapter.

`start_zaqar()` starts a private `redis-server` (from apt: no persistence, free port, its own
temporary directory) and `zaqar-server` from `.venvs/zaqar` (made by `make deps`; Zaqar's pins
clash with ours) with Redis as both message and management store, no authentication, and the
notifier pipeline that delivers webhook subscriptions. It returns once Zaqar answers its health
check; `stop()` kills both processes and removes the directory. The session fixture
`zaqar_endpoint` wraps it, so one server serves every Zaqar-backed test of a run; tests keep
apart by using a project id of their own (the `X-Project-ID` header).
"""

from __future__ import annotations

import shutil
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.servers.processes import ServerGroup, accepts_connections, free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
ZAQAR_VENV = REPO_ROOT / ".venvs" / "zaqar"
START_TIMEOUT_SECONDS = 30.0

_CONFIG = """\
[DEFAULT]
# Empty: no authentication (noauth); the project comes from the X-Project-ID header.
auth_strategy =
pooling = false
# Redis is not a production-grade message store in Zaqar's eyes; this says we know.
unreliable = true
debug = false

[drivers]
transport = wsgi
message_store = redis
management_store = redis

[drivers:transport:wsgi]
bind = 127.0.0.1
port = {zaqar_port}

[drivers:message_store:redis]
uri = redis://127.0.0.1:{redis_port}

[drivers:management_store:redis]
uri = redis://127.0.0.1:{redis_port}

[storage]
# Without the notifier, subscriptions are stored but nothing is ever delivered to them.
message_pipeline = zaqar.notification.notifier
"""


def _zaqar_answers(endpoint: str) -> bool:
    request = urllib.request.Request(
        f"{endpoint}/v2/ping",
        headers={"Client-ID": str(uuid.uuid4()), "X-Project-ID": "health-check"},
    )
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return bool(response.status in {200, 204})
    except (urllib.error.URLError, OSError):
        return False


@dataclass
class ZaqarServer(ServerGroup):
    """A running Zaqar (and its Redis); `endpoint` is Zaqar's base URL (http://127.0.0.1:port)."""

    endpoint: str = ""


def start_zaqar(timeout: float = START_TIMEOUT_SECONDS) -> ZaqarServer:
    """Start Redis and Zaqar on free loopback ports; returns once Zaqar answers, or raises."""
    zaqar_server = ZAQAR_VENV / "bin" / "zaqar-server"
    if not zaqar_server.exists():
        raise RuntimeError(f"{zaqar_server} is missing: run `make deps` to build the server venvs")
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        raise RuntimeError("redis-server is not installed: run `make deps` (it comes from apt)")
    workdir = Path(tempfile.mkdtemp(prefix="zaqar-"))
    redis_port, zaqar_port = free_port(), free_port()
    server = ZaqarServer(workdir, endpoint=f"http://127.0.0.1:{zaqar_port}")
    deadline = time.monotonic() + timeout
    redis_command = [redis_server, "--port", str(redis_port), "--bind", "127.0.0.1"]
    # No persistence: the data lives as long as the test session.
    redis_command += ["--save", "", "--appendonly", "no", "--dir", str(workdir)]
    with server.starting():
        server.start("redis-server", redis_command)
        server.wait_ready(lambda: accepts_connections(redis_port), "redis-server", deadline)
        config = workdir / "zaqar.conf"
        config.write_text(_CONFIG.format(zaqar_port=zaqar_port, redis_port=redis_port))
        server.start("zaqar-server", [str(zaqar_server), "--config-file", str(config)])
        server.wait_ready(lambda: _zaqar_answers(server.endpoint), "zaqar-server", deadline)
    return server


@pytest.fixture(scope="session")
def zaqar_endpoint() -> Iterator[str]:
    """Base URL of one Zaqar server (noauth, Redis-backed) shared by the whole test session."""
    server = start_zaqar()
    try:
        yield server.endpoint
    finally:
        server.stop()
