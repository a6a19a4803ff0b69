"""A real Swift all-in-one on loopback, for the contract suites of the Swift adapters.

`start_swift_all_in_one()` builds one-replica rings in a temporary directory, writes the
configuration of an account, a container, an object and a proxy server (tempauth + s3api + slo +
dlo + copy, see /work/shared/RECIPES.md), starts them and memcached (from apt) on free loopback
ports, and returns once the proxy's /healthcheck answers and a container can be made and removed
(tempauth token, account and container servers).
`stop()` kills every process and removes the directory. The session fixture `swift_endpoint`
wraps it, so one server serves every Swift-backed test of a run.

Swift runs from its own venv (`.venvs/swift`, made by `make deps`): its pins clash with ours.
"""

from __future__ import annotations

import getpass
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.servers.processes import ServerGroup, free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
SWIFT_VENV = REPO_ROOT / ".venvs" / "swift"
START_TIMEOUT_SECONDS = 60.0
# tempauth's account, user and key, and the same pair as S3 credentials through s3api.
ACCOUNT = "test"
USER = "test:tester"
KEY = "testing"
SERVER_KINDS = ("account", "container", "object")
# The servers share two cores with the tests. Swift's defaults (0.5 s to connect to a backend
# server, 1 s for an object server's container update) make a busy moment answer 503, or defer
# the listing update to an updater that does not run here (the listing would then miss a write).
TIMEOUTS = """conn_timeout = 5
node_timeout = 30
container_update_timeout = 30
"""


@dataclass(frozen=True)
class SwiftEndpoint:
    """Where the all-in-one answers, and the tempauth (v1) credentials it accepts."""

    proxy_url: str  # http://127.0.0.1:port
    user: str = USER
    key: str = KEY

    @property
    def auth_url(self) -> str:
        """tempauth's v1 endpoint: GET it with X-Auth-User / X-Auth-Key for a token."""
        return f"{self.proxy_url}/auth/v1.0"

    @property
    def storage_url(self) -> str:
        """The account's storage URL (what tempauth returns as X-Storage-Url)."""
        return f"{self.proxy_url}/v1/AUTH_{ACCOUNT}"

    @property
    def s3_access_key(self) -> str:
        return self.user

    @property
    def s3_secret_key(self) -> str:
        return self.key


@dataclass
class SwiftAllInOne(ServerGroup):
    """The running processes of one all-in-one and the directory holding all their files."""

    endpoint: SwiftEndpoint = SwiftEndpoint("")


def _server_conf(kind: str, directory: Path, port: int, user: str) -> str:
    return f"""[DEFAULT]
bind_ip = 127.0.0.1
bind_port = {port}
workers = 0
user = {user}
swift_dir = {directory}
devices = {directory / "srv"}
mount_check = false
log_name = {kind}-server
log_facility = LOG_LOCAL0
log_level = WARNING
{TIMEOUTS}
[pipeline:main]
pipeline = {kind}-server

[app:{kind}-server]
use = egg:swift#{kind}
"""


def _proxy_conf(directory: Path, port: int, memcached_port: int, user: str) -> str:
    filters = {
        "catch_errors": "catch_errors",
        "gatekeeper": "gatekeeper",
        "healthcheck": "healthcheck",
        "proxy-logging": "proxy_logging",
        "listing_formats": "listing_formats",
        "copy": "copy",
        "slo": "slo",
        "dlo": "dlo",
    }
    sections = "".join(
        f"\n[filter:{name}]\nuse = egg:swift#{egg}\n" for name, egg in filters.items()
    )
    return f"""[DEFAULT]
bind_ip = 127.0.0.1
bind_port = {port}
workers = 0
user = {user}
swift_dir = {directory}
log_name = proxy-server
log_level = WARNING
{TIMEOUTS}
[pipeline:main]
pipeline = catch_errors gatekeeper healthcheck proxy-logging cache listing_formats s3api \
tempauth copy slo dlo proxy-logging proxy-server

[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true
# With one node, the default 60 s would take the only node out after a single failed request.
error_suppression_interval = 0

[filter:cache]
use = egg:swift#memcache
memcache_servers = 127.0.0.1:{memcached_port}

[filter:tempauth]
use = egg:swift#tempauth
user_{ACCOUNT}_tester = {KEY} .admin
storage_url_scheme = default

[filter:s3api]
use = egg:swift#s3api
{sections}"""


SWIFT_CONF = """[swift-hash]
swift_hash_path_suffix = troveless-tests
swift_hash_path_prefix = troveless

[storage-policy:0]
name = gold
default = yes
"""


def _build_rings(directory: Path, ports: dict[str, int]) -> None:
    builder = str(SWIFT_VENV / "bin" / "swift-ring-builder")
    for kind in SERVER_KINDS:
        ring = str(directory / f"{kind}.builder")
        for args in (
            ["create", "8", "1", "0"],
            ["add", f"r1z1-127.0.0.1:{ports[kind]}/d1", "100"],
            ["rebalance"],
        ):
            result = subprocess.run(
                [builder, ring, *args], capture_output=True, cwd=directory, check=False
            )
            # rebalance exits 1 with a warning on a one-device ring; 2 is an error.
            if result.returncode not in (0, 1):
                raise RuntimeError(
                    f"swift-ring-builder {ring} {' '.join(args)} failed: "
                    f"{result.stdout.decode()}{result.stderr.decode()}"
                )


def _answers(url: str, headers: dict[str, str] | None = None) -> bool:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=1) as response:
            return bool(200 <= response.status < 300)
    except (urllib.error.URLError, OSError):
        return False


def _stores_a_container(endpoint: SwiftEndpoint) -> bool:
    """Whether a container can be made and removed: the account and container servers answer
    through the proxy (the proxy's own health check says nothing about them)."""
    auth = {"X-Auth-User": endpoint.user, "X-Auth-Key": endpoint.key}
    try:
        with urllib.request.urlopen(
            urllib.request.Request(endpoint.auth_url, headers=auth), timeout=2
        ) as reply:
            token = reply.headers["X-Auth-Token"]
        probe = f"{endpoint.storage_url}/readiness-probe"
        for method in ("PUT", "DELETE"):
            request = urllib.request.Request(probe, method=method, headers={"X-Auth-Token": token})
            with urllib.request.urlopen(request, timeout=5) as reply:
                if not 200 <= reply.status < 300:
                    return False
        return True
    except (urllib.error.URLError, OSError):
        return False


def start_swift_all_in_one(
    timeout: float = START_TIMEOUT_SECONDS, parent: Path | None = None
) -> SwiftAllInOne:
    """Start memcached and the four Swift servers; returns once the proxy answers, or raises."""
    if not (SWIFT_VENV / "bin" / "swift-proxy-server").exists():
        raise RuntimeError(f"no Swift in {SWIFT_VENV}: run `make deps` (or `make .stamps/servers`)")
    memcached = shutil.which("memcached")
    if memcached is None:
        raise RuntimeError("memcached is not installed: run `make deps`")
    directory = Path(tempfile.mkdtemp(prefix="troveless-swift-", dir=parent))
    directory.chmod(0o755)
    ports = {name: free_port() for name in (*SERVER_KINDS, "proxy", "memcached")}
    aio = SwiftAllInOne(directory, endpoint=SwiftEndpoint(f"http://127.0.0.1:{ports['proxy']}"))
    user = getpass.getuser()
    with aio.starting():
        (directory / "srv" / "d1").mkdir(parents=True)
        (directory / "swift.conf").write_text(SWIFT_CONF)
        _build_rings(directory, ports)
        aio.start(
            "memcached",
            [memcached, "-l", "127.0.0.1", "-p", str(ports["memcached"]), "-U", "0", "-u", user],
        )
        for kind in SERVER_KINDS:
            conf = directory / f"{kind}-server.conf"
            conf.write_text(_server_conf(kind, directory, ports[kind], user))
            aio.start(kind, [str(SWIFT_VENV / "bin" / f"swift-{kind}-server"), str(conf)])
        conf = directory / "proxy-server.conf"
        conf.write_text(_proxy_conf(directory, ports["proxy"], ports["memcached"], user))
        aio.start("proxy", [str(SWIFT_VENV / "bin" / "swift-proxy-server"), str(conf)])

        endpoint = aio.endpoint
        deadline = time.monotonic() + timeout
        aio.wait_ready(
            lambda: _answers(f"{endpoint.proxy_url}/healthcheck") and _stores_a_container(endpoint),
            "the Swift proxy",
            deadline,
        )
    return aio


@pytest.fixture(scope="session")
def swift_endpoint() -> Iterator[SwiftEndpoint]:
    """One Swift all-in-one shared by the whole test session; killed and removed at the end."""
    aio = start_swift_all_in_one()
    try:
        yield aio.endpoint
    finally:
        aio.stop()
