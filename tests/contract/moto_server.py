"""A real moto server (S3, SQS...) on loopback, for the contract suites of the AWS adapters.

`start_moto_server()` starts `moto_server` from this venv on a free port and returns once it
answers HTTP; `stop()` kills it. `tests/contract/conftest.py` wraps it in the session fixture
`moto_endpoint`, so one server serves every AWS-backed test of a run.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from tests.servers.processes import free_port

START_TIMEOUT_SECONDS = 30.0
# Any credentials do for moto; boto3 needs some to sign requests.
ACCESS_KEY = "testing"
SECRET_KEY = "testing"
REGION = "us-east-1"


def _answers(endpoint: str) -> bool:
    try:
        with urllib.request.urlopen(f"{endpoint}/moto-api/data.json", timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@dataclass
class MotoServer:
    """One running moto server process; `endpoint` is its base URL (http://127.0.0.1:port)."""

    endpoint: str
    process: subprocess.Popen[bytes]
    log: IO[bytes]

    def stop(self) -> None:
        """Kill the server and wait for it; safe to call twice."""
        if self.process.poll() is None:
            self.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)
        self.log.close()

    def output(self) -> str:
        """What the server printed so far (for failure messages)."""
        self.log.flush()
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-4000:]


def start_moto_server(timeout: float = START_TIMEOUT_SECONDS) -> MotoServer:
    """Start moto_server on a free loopback port; returns once it answers, or raises."""
    executable = Path(sys.executable).parent / "moto_server"
    port = free_port()
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed by stop()
    process = subprocess.Popen(
        [str(executable), "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    server = MotoServer(f"http://127.0.0.1:{port}", process, log)
    deadline = time.monotonic() + timeout
    try:
        while not _answers(server.endpoint):
            if process.poll() is not None:
                raise RuntimeError(f"moto_server exited with {process.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"moto_server did not answer within {timeout} s")
            time.sleep(0.05)
    except BaseException as exc:
        output = server.output()
        server.stop()
        if isinstance(exc, RuntimeError | TimeoutError):
            raise RuntimeError(f"{exc}; its output:\n{output}") from exc
        raise
    return server
