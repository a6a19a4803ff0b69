"""The guest agent: one per instance, beside its datastore (DESIGN §6).

It talks only to its command queue, the events queue and the blob store; nothing connects to it.

Commands. Each message from the command queue is checked before anything runs, in this order:
it must parse as a command for this instance (else `malformed` / `wrong_instance`), be signed
(`unsigned`) with this instance's signing key (`forged`). A command id already in the journal
is answered from it (a redelivery never runs twice). Then the command must not be past its
deadline (`expired`), nor too old or from the future by its timestamp (`stale`,
`from_future`), nor a sequence already accepted (`replayed`, see `replay_guard`). Refused
commands are counted (persisted, reported in every heartbeat) and answered with a signed
`RejectedCommand` result when the command could be read; only a command whose signature
verified has its task token echoed, so a forger cannot get the agent to fail someone's task.

An accepted command is journaled ("running") together with the replay window before it runs,
and its outcome after; the result, signed, goes to the events queue, then the message is acked.
A command the previous agent died in is answered `CommandInterrupted` at boot.

Heartbeats, every `heartbeat_interval` from their own thread: the datastore's status from a
real connection (`manager.probe()`), disk use of the volume, replication role, agent version
and rejection counters. A datastore that died while the agent lives shows as CRASHED in the
next heartbeat; while a command changes the datastore, the status says so (BUILDING during
prepare, RESTARTING during start/restart).

Lifecycle. Once its heartbeats run, the agent re-attaches to a datastore that is still running
(its pid record) without preparing again, or starts a prepared datastore that should run but
does not (the server was stopped or rebooted; heartbeats say RESTARTING meanwhile). SIGTERM
stops the datastore cleanly (unless user-data says not to) and exits; SIGKILL leaves the
datastore running.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from typing import Any

from pydantic import JsonValue, ValidationError

from guest_agent import commands
from guest_agent.datastores.base import (
    DatastoreManager,
    DatastoreStatus,
    generate_password,
)
from guest_agent.state import AgentState, JournalEntry, Outcome
from guest_agent.user_data import AgentConfig
from shared.crypto import InstanceKeys, open_sealed, password_context, seal
from shared.errors import TrovelessError
from shared.models.guest import (
    GuestCommand,
    GuestCommandName,
    GuestResult,
    Heartbeat,
    ReplicationState,
    parse_guest_message,
)
from shared.models.instance import ServiceStatus
from shared.observability import get_logger
from shared.ports import JSON, BlobStore, Clock, Message, Queue
from shared.services.replay_guard import Rejection, SequenceSource, check_freshness

log = get_logger("guest-agent")

REJECTED_COMMAND = "RejectedCommand"
COMMAND_INTERRUPTED = "CommandInterrupted"
# How long a received command stays hidden from other receivers while it runs.
COMMAND_VISIBILITY_SECONDS = 300.0
# Directory walks for a soft-quota volume are not repeated more often than this.
SOFT_QUOTA_SCAN_SECONDS = 10.0

_HEALTH_STATUS = {
    DatastoreStatus.RUNNING: ServiceStatus.RUNNING,
    DatastoreStatus.SHUTDOWN: ServiceStatus.SHUTDOWN,
    DatastoreStatus.CRASHED: ServiceStatus.CRASHED,
    # Trove's word for "the process is there but does not answer".
    DatastoreStatus.UNRESPONSIVE: ServiceStatus.BLOCKED,
}
_ACTIVITY = {
    GuestCommandName.PREPARE: ServiceStatus.BUILDING,
    GuestCommandName.START: ServiceStatus.RESTARTING,
    GuestCommandName.RESTART: ServiceStatus.RESTARTING,
}
_REJECTION_TEXT = {
    Rejection.MALFORMED: "not a valid guest command",
    Rejection.WRONG_INSTANCE: "addressed to another instance",
    Rejection.UNSIGNED: "the command carries no signature",
    Rejection.FORGED: "the signature does not match this instance's key",
    Rejection.EXPIRED: "the command's deadline has passed",
    Rejection.STALE: "the command's timestamp is too old",
    Rejection.FROM_FUTURE: "the command's timestamp is ahead of this guest's clock",
    Rejection.REPLAYED: "this sequence number was already accepted",
}


def agent_version() -> str:
    try:
        return metadata.version("troveless")
    except metadata.PackageNotFoundError:
        return "0+unknown"


@dataclass(frozen=True)
class DiskUsage:
    used_bytes: int
    total_bytes: int


class GuestAgent:
    """One instance's agent; `run` serves until told to stop. Methods are also the unit
    tests' handles: `boot`, `poll_once`, `process`, `send_heartbeat`."""

    def __init__(
        self,
        config: AgentConfig,
        queue: Queue,
        manager: DatastoreManager,
        clock: Clock,
        *,
        blobs: BlobStore | None = None,
        probe_timeout: float | None = None,
    ) -> None:
        self.config = config
        self.blobs = blobs  # for backups and restores (later releases)
        self.user_data = config.user_data
        self.instance_id = config.instance_id
        self._queue = queue
        self.manager = manager
        self._clock = clock
        self._keys = InstanceKeys.from_secret(self.user_data.secret_bytes())
        self.state = AgentState(config.volume_path, self._keys.volume, self.instance_id)
        self._sequences = SequenceSource(clock)
        self._version = agent_version()
        interval = self.user_data.heartbeat_interval
        self._probe_timeout = probe_timeout or min(2.0, max(0.2, interval * 0.8))
        self._activity: ServiceStatus | None = None
        self._prepare_error: str | None = None
        self._disk_cache: tuple[float, DiskUsage] | None = None
        self._heartbeat_thread: threading.Thread | None = None

    # ------------------------------------------------------------------ logging
    def _log(self, level: str, message: str, **fields: Any) -> None:
        getattr(log, level)(message, extra={"instance_id": self.instance_id, **fields})

    # ------------------------------------------------------------------ lifecycle
    def boot(self) -> None:
        """Load the on-volume state and answer the commands an earlier agent died in."""
        self.state.load()
        admin_password = self.state.admin_password()
        if admin_password is not None:
            self.manager.set_admin_password(admin_password)
        for entry in self.state.interrupted():
            outcome = Outcome.failure(
                COMMAND_INTERRUPTED,
                f"the guest agent stopped while running {entry.command.value}; "
                "nothing says whether it completed",
            )
            done = self.state.finish(entry.command_id, outcome)
            self._log(
                "warning", "command interrupted by an agent restart", command_id=done.command_id
            )
            with contextlib.suppress(Exception):  # a redelivery is answered from the journal
                self._send(self._result_from_journal(done))
        self._log("info", "guest agent booted", agent_version=self._version)

    def resume_datastore(self) -> None:
        """Re-attach to a datastore that outlived the previous agent, or start a prepared one
        that should run but does not (the server was stopped or rebooted)."""
        if not self.manager.is_prepared():
            return
        if self.manager.is_running():
            self._log("info", "re-attached to the running datastore")
            return
        if not self.state.datastore_wanted:
            return
        self._log("info", "starting the datastore at boot")
        self._activity = ServiceStatus.RESTARTING
        try:
            self.manager.start()
        except Exception as exc:  # the heartbeats report it; the agent stays up
            self._log("error", "datastore failed to start at boot", error=str(exc))
        finally:
            self._activity = None

    def run(self, stop: threading.Event, poll_seconds: float = 1.0) -> None:
        """Send heartbeats, resume the datastore, and serve commands until `stop` is set."""
        self.start_heartbeats(stop)
        try:
            if not stop.is_set():
                self.resume_datastore()
            while not stop.is_set():
                try:
                    self.poll_once(wait_seconds=poll_seconds)
                except Exception as exc:  # a queue outage must not end the agent
                    self._log("error", "receiving commands failed", error=str(exc))
                    stop.wait(poll_seconds)
        finally:
            if self._heartbeat_thread is not None:
                self._heartbeat_thread.join()

    def shutdown(self) -> None:
        """Orderly exit (SIGTERM): stop the datastore if user-data asks for it, and say so
        in a last heartbeat. The datastore's wanted state is kept: the next boot starts it."""
        if self.user_data.stop_datastore_on_exit and self.manager.is_running():
            self._log("info", "stopping the datastore before exiting")
            try:
                self.manager.stop()
            except Exception as exc:
                self._log("error", "datastore did not stop cleanly", error=str(exc))
        with contextlib.suppress(Exception):
            self.send_heartbeat()
        self._log("info", "guest agent stopped")

    # ------------------------------------------------------------------ heartbeats
    def start_heartbeats(self, stop: threading.Event) -> threading.Thread:
        thread = threading.Thread(
            target=self._heartbeat_loop, args=(stop,), name="heartbeat", daemon=True
        )
        self._heartbeat_thread = thread
        thread.start()
        return thread

    def _heartbeat_loop(self, stop: threading.Event) -> None:
        interval = self.user_data.heartbeat_interval
        due = time.monotonic()
        while not stop.is_set():
            try:
                self.send_heartbeat()
            except Exception as exc:  # keep beating: the next one may get through
                self._log("error", "heartbeat failed", error=str(exc))
            due += interval
            now = time.monotonic()
            if due < now:  # a slow probe: skip the beats that are already late
                due = now + interval
            if stop.wait(due - now):
                return

    def heartbeat(self) -> Heartbeat:
        """A signed heartbeat describing the datastore now."""
        status, detail = self.datastore_status()
        disk = self.disk_usage()
        now = self._clock.time()
        beat = Heartbeat(
            instance_id=self.instance_id,
            sequence=self._sequences.next(),
            timestamp=datetime.fromtimestamp(now, UTC),
            agent_version=self._version,
            datastore_status=status,
            datastore_detail=detail[:500] if detail else None,
            disk_used_bytes=disk.used_bytes,
            disk_total_bytes=disk.total_bytes,
            replication=ReplicationState(),
            rejected_commands=self.state.rejected(),
        )
        return beat.sign(self._keys.signing)

    def send_heartbeat(self) -> Heartbeat:
        beat = self.heartbeat()
        self._queue.send(self.user_data.events_queue, beat.model_dump(mode="json"))
        return beat

    def datastore_status(self) -> tuple[ServiceStatus, str]:
        activity = self._activity
        if activity is not None:
            return activity, "a command is changing the datastore"
        try:
            if not self.manager.is_prepared():
                if self._prepare_error is not None:
                    return ServiceStatus.FAILED, f"prepare failed: {self._prepare_error}"
                return ServiceStatus.NEW, "not prepared"
            health = self.manager.probe(timeout=self._probe_timeout)
        except Exception as exc:
            return ServiceStatus.UNKNOWN, f"health probe failed: {type(exc).__name__}: {exc}"
        status = _HEALTH_STATUS[health.status]
        if status is ServiceStatus.RUNNING and health.restart_required:
            status = ServiceStatus.RESTART_REQUIRED
        return status, health.detail

    def disk_usage(self) -> DiskUsage:
        """Use of the volume: the filesystem's, or for a plain-directory volume the bytes
        under it against its nominal size (walked at most every SOFT_QUOTA_SCAN_SECONDS)."""
        quota = self.config.soft_quota_bytes
        if quota is None:
            st = os.statvfs(self.config.volume_path)
            total = st.f_blocks * st.f_frsize
            return DiskUsage(min((st.f_blocks - st.f_bfree) * st.f_frsize, total), total)
        cached = self._disk_cache
        now = time.monotonic()
        if cached is not None and now - cached[0] < SOFT_QUOTA_SCAN_SECONDS:
            return cached[1]
        used = _bytes_under(self.config.volume_path)
        if used > quota:
            self._log("warning", "volume is over its size", used_bytes=used, size_bytes=quota)
        usage = DiskUsage(min(used, quota), quota)
        self._disk_cache = (now, usage)
        return usage

    def volume_info(self) -> dict[str, Any]:
        disk = self.disk_usage()
        return {
            "path": str(self.config.volume_path),
            "total_bytes": disk.total_bytes,
            "used_bytes": disk.used_bytes,
            "free_bytes": disk.total_bytes - disk.used_bytes,
            "soft_quota": self.config.soft_quota_bytes is not None,
        }

    # ------------------------------------------------------------------ commands
    def poll_once(self, wait_seconds: float = 0.0) -> int:
        """Receive and handle at most one command; returns how many were handled."""
        messages = self._queue.receive(
            self.user_data.command_queue,
            max_messages=1,
            visibility_timeout=COMMAND_VISIBILITY_SECONDS,
            wait_seconds=wait_seconds,
        )
        for message in messages:
            self.handle(message)
        return len(messages)

    def handle(self, message: Message) -> GuestResult | None:
        """Process one queue message, send its result, then ack it. If anything fails before
        the result is sent, the message stays unacked and comes back later."""
        try:
            result = self.process(message.body)
            if result is not None:
                self._send(result)
        except Exception as exc:
            self._log("error", "command handling failed; it will be redelivered", error=str(exc))
            return None
        self._queue.ack(self.user_data.command_queue, message.receipt)
        return result

    def process(self, body: JSON) -> GuestResult | None:
        """The signed result of one command message (None when it cannot be answered)."""
        try:
            parsed = parse_guest_message(body)
        except ValidationError as exc:
            self._reject(Rejection.MALFORMED, None, detail=_first_error(exc))
            return None
        if not isinstance(parsed, GuestCommand):
            self._reject(Rejection.MALFORMED, None, detail=f"a {parsed.kind} on the command queue")
            return None
        command = parsed
        if command.instance_id != self.instance_id:
            return self._reject(Rejection.WRONG_INSTANCE, command)
        if command.signature is None:
            return self._reject(Rejection.UNSIGNED, command)
        if not command.verify(self._keys.signing):
            return self._reject(Rejection.FORGED, command)
        entry = self.state.journal_entry(command.id)
        if entry is not None and entry.outcome is not None:
            self._log(
                "info", "command seen before: answering from the journal", command_id=command.id
            )
            return self._result_from_journal(entry)
        now = self._clock.time()
        if command.is_expired(datetime.fromtimestamp(now, UTC)):
            return self._reject(Rejection.EXPIRED, command, verified=True)
        freshness = check_freshness(
            command.timestamp,
            now,
            max_age=self.user_data.command_max_age,
            max_skew=self.user_data.max_clock_skew,
        )
        if freshness is not None:
            return self._reject(freshness, command, verified=True)
        if not self.state.window.admits(command.sequence):
            return self._reject(Rejection.REPLAYED, command, verified=True)
        self.state.window.record(
            command.sequence,
            command.timestamp.timestamp(),
            now=now,
            max_age=self.user_data.command_max_age,
        )
        self.state.begin(JournalEntry(command.id, command.name, command.task_token, None))
        self.state.save()
        outcome = self._execute(command)
        return self._result_from_journal(self.state.finish(command.id, outcome))

    def _execute(self, command: GuestCommand) -> Outcome:
        started = time.monotonic()
        if command.name in commands.STOPS_DATASTORE:
            # Recorded first: an agent that dies while stopping must not start it at boot.
            self.state.want_datastore(False)
        self._activity = _ACTIVITY.get(command.name)
        try:
            result = commands.execute(self._context(), command.name, dict(command.args))
            outcome = self._checked_outcome(command, result)
        except commands.CommandRefusedError as exc:
            outcome = Outcome.failure(exc.error_type, str(exc))
        except ValidationError as exc:  # its text would quote the input, which may be secret
            outcome = Outcome.failure("InvalidArguments", _first_error(exc))
        except (TrovelessError, ValueError) as exc:
            outcome = Outcome.failure(type(exc).__name__, str(exc))
        except Exception as exc:  # an agent bug must still answer the command
            self._log("exception", "command crashed", command_id=command.id)
            outcome = Outcome.failure(type(exc).__name__, str(exc)[:2000] or type(exc).__name__)
        finally:
            self._activity = None
        if outcome.ok:
            if command.name in commands.STARTS_DATASTORE:
                self.state.want_datastore(True)
            if command.name is GuestCommandName.PREPARE:
                self._prepare_error = None
        elif command.name is GuestCommandName.PREPARE and outcome.error is not None:
            self._prepare_error = outcome.error.message[:300]
        self._log(
            "info" if outcome.ok else "warning",
            "command done" if outcome.ok else "command failed",
            command=command.name.value,
            command_id=command.id,
            ok=outcome.ok,
            error_type=outcome.error.type if outcome.error else None,
            seconds=round(time.monotonic() - started, 3),
        )
        return outcome

    def _checked_outcome(self, command: GuestCommand, result: JsonValue) -> Outcome:
        """A result that could not travel (it would carry a plaintext secret, or is not JSON)
        becomes a failure rather than a crash."""
        try:
            GuestResult(
                instance_id=self.instance_id,
                sequence=0,
                timestamp=datetime.fromtimestamp(self._clock.time(), UTC),
                command_id=command.id,
                command=command.name,
                ok=True,
                result=result,
            )
        except ValidationError as exc:
            self._log("error", "command result refused", command_id=command.id)
            return Outcome.failure(
                "InvalidResult", f"the result cannot be sent: {_first_error(exc)}"
            )
        return Outcome(ok=True, result=result)

    def _context(self) -> commands.CommandContext:
        return commands.CommandContext(
            manager=self.manager,
            open_password=self._open_password,
            seal_password=self._seal_password,
            admin_password_for_prepare=self._admin_password_for_prepare,
            volume_info=self.volume_info,
            blobs=self.blobs,
            now=self._clock.time,
        )

    def _open_password(self, sealed: str) -> str:
        return open_sealed(
            self._keys.passwords, sealed, password_context(self.instance_id)
        ).decode()

    def _seal_password(self, password: str) -> str:
        return seal(self._keys.passwords, password.encode(), password_context(self.instance_id))

    def _admin_password_for_prepare(self) -> str:
        """The admin password for prepare: the one a failed attempt stored, or a new one,
        stored sealed on the volume before the datastore ever sees it."""
        existing = self.state.admin_password()
        if existing is not None:
            return existing
        password = generate_password()
        self.state.store_admin_password(password)
        return password

    # ------------------------------------------------------------------ results
    def _result_from_journal(self, entry: JournalEntry) -> GuestResult:
        assert entry.outcome is not None
        return self._signed_result(entry.command_id, entry.command, entry.outcome, entry.task_token)

    def _signed_result(
        self,
        command_id: str,
        name: GuestCommandName,
        outcome: Outcome,
        task_token: str | None,
    ) -> GuestResult:
        result = GuestResult(
            instance_id=self.instance_id,
            sequence=self._sequences.next(),
            timestamp=datetime.fromtimestamp(self._clock.time(), UTC),
            command_id=command_id,
            command=name,
            ok=outcome.ok,
            result=outcome.result if outcome.ok else None,
            error=outcome.error,
            task_token=task_token,
        )
        return result.sign(self._keys.signing)

    def _send(self, result: GuestResult) -> None:
        self._queue.send(self.user_data.events_queue, result.model_dump(mode="json"))

    def _reject(
        self,
        reason: Rejection,
        command: GuestCommand | None,
        *,
        verified: bool = False,
        detail: str = "",
    ) -> GuestResult | None:
        self.state.count_rejection(reason.value)
        self._log(
            "warning",
            "command rejected",
            reason=reason.value,
            command_id=command.id if command else None,
            command=command.name.value if command else None,
            sequence=command.sequence if command else None,
            detail=detail,
        )
        if command is None:
            return None
        outcome = Outcome.failure(REJECTED_COMMAND, f"{reason.value}: {_REJECTION_TEXT[reason]}")
        # Only a verified command's task token is echoed (see the module docstring).
        token = command.task_token if verified else None
        return self._signed_result(command.id, command.name, outcome, token)


def _bytes_under(root: os.PathLike[str] | str) -> int:
    """Disk space used by the files under `root` (allocated blocks, hard links counted once)."""
    total = 0
    seen: set[tuple[int, int]] = set()
    for directory, _dirs, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(directory, name))
                if (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    total += st.st_blocks * 512
    return total


def _first_error(exc: ValidationError) -> str:
    errors = exc.errors()
    if not errors:
        return "invalid"
    first = errors[0]
    where = ".".join(str(p) for p in first["loc"]) or "message"
    return f"{where}: {first['msg']}"[:300]
