"""The process handling the test servers (Swift all-in-one, Zaqar) share.

A `ServerGroup` starts named server processes, each leading its own session with its output in
a temporary file, waits for a readiness check while watching for one that exits, and on `stop`
kills every process group and removes the group's directory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (bound and released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@dataclass
class ServerGroup:
    """Processes started in `directory`; `stop()` kills them all and removes the directory."""

    directory: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    logs: dict[str, IO[bytes]] = field(default_factory=dict)

    def start(self, name: str, command: list[str]) -> None:
        log = tempfile.TemporaryFile()  # noqa: SIM115 - closed by stop()
        self.logs[name] = log
        self.processes[name] = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # so stop() kills a server and its workers together
            cwd=self.directory,
        )

    def wait_ready(self, ready: Callable[[], bool], what: str, deadline: float) -> None:
        """Poll `ready` until it holds; RuntimeError as soon as a process exits, TimeoutError
        at `deadline` (a time.monotonic() value)."""
        while not ready():
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited with {process.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} did not answer in time")
            time.sleep(0.05)

    def output(self) -> str:
        """The tail of what each process printed (for failure messages)."""
        tails = []
        for name, log in self.logs.items():
            log.flush()
            log.seek(0)
            tails.append(f"--- {name}\n{log.read().decode(errors='replace')[-2000:]}")
        return "\n".join(tails)

    def stop(self) -> None:
        """Kill every process group, wait for them and remove the directory; idempotent."""
        for process in self.processes.values():
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
        for process in self.processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(10)
        for log in self.logs.values():
            log.close()
        self.processes.clear()
        self.logs.clear()
        shutil.rmtree(self.directory, ignore_errors=True)

    @contextlib.contextmanager
    def starting(self) -> Iterator[None]:
        """Around a start: on any error stop everything; a failed start or readiness check is
        raised again as a RuntimeError carrying the processes' output."""
        try:
            yield
        except (RuntimeError, TimeoutError) as exc:
            output = self.output()
            self.stop()
            raise RuntimeError(f"{exc}; output:\n{output}") from exc
        except BaseException:
            self.stop()
            raise
