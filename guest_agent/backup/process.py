"""Child processes of backups and restores: the datastore's own tools (mariadb-backup, mbstream,
pg_basebackup, tar, redis-cli) run as the datastore's user, with one end piped to the agent.

Their stderr goes to an anonymous temporary file, whose tail makes the error message when they
fail. Leaving the context kills what is still running (its whole process group) and reaps it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType
from typing import IO, BinaryIO

from guest_agent.backup.stream import BackupSourceError
from guest_agent.datastores.base import DatastoreManager, wait_child

ERROR_TAIL_BYTES = 800
PIPE_BYTES = 1 << 20
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)  # Linux's value; named in Python 3.10+


def _widen(fd: int) -> None:
    """A 1 MiB pipe instead of 64 KiB: the tool and the agent hand each other whole chunks,
    with a fraction of the wake-ups (best effort: the size is capped by fs.pipe-max-size)."""
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, F_SETPIPE_SZ, PIPE_BYTES)


class ToolProcess:
    """One tool run as the datastore's user; `stdout` or `stdin` is a pipe when asked for."""

    def __init__(
        self,
        manager: DatastoreManager,
        command: list[str],
        *,
        stdout_pipe: bool = False,
        stdin_pipe: bool = False,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = Path(command[0]).name
        self._stderr: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 (closed in __exit__)
        run_as = manager.run_as
        self.proc = subprocess.Popen(
            command,
            stdin=subprocess.PIPE if stdin_pipe else subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdout_pipe else subprocess.DEVNULL,
            stderr=self._stderr,
            cwd=cwd or manager.layout.run,
            env={**manager._child_env(), **(env or {})},
            start_new_session=True,  # one group to kill
            close_fds=True,
            user=run_as.uid if run_as.switch else None,
            group=run_as.gid if run_as.switch else None,
            extra_groups=[] if run_as.switch else None,
        )
        for pipe in (self.proc.stdout, self.proc.stdin):
            if pipe is not None:
                _widen(pipe.fileno())

    @property
    def stdout(self) -> BinaryIO:
        assert self.proc.stdout is not None
        return self.proc.stdout  # type: ignore[return-value]

    @property
    def stdin(self) -> BinaryIO:
        assert self.proc.stdin is not None
        return self.proc.stdin  # type: ignore[return-value]

    def stderr_text(self) -> str:
        self._stderr.flush()
        size = self._stderr.seek(0, os.SEEK_END)
        self._stderr.seek(max(0, size - ERROR_TAIL_BYTES))
        return self._stderr.read().decode(errors="replace").strip()

    def finish(self, timeout: float = 3600.0) -> str:
        """Wait for a clean exit and return its stderr; BackupSourceError otherwise."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                self.proc.stdin.close()
        if not wait_child(self.proc, timeout):
            raise BackupSourceError(f"{self.name} did not finish in {timeout:g}s")
        if self.proc.returncode != 0:
            raise BackupSourceError(
                f"{self.name} failed with exit code {self.proc.returncode}: {self.stderr_text()}"
            )
        return self.stderr_text()

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        self.proc.wait()

    def __enter__(self) -> ToolProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.kill()
        self._stderr.close()


def run_tool(manager: DatastoreManager, command: list[str], timeout: float = 3600.0) -> str:
    """Run a tool to its end as the datastore's user; its stderr, or BackupSourceError."""
    with ToolProcess(manager, command) as tool:
        return tool.finish(timeout)
