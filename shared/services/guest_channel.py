"""The control plane's end of the guest channel (DESIGN §6).

`GuestClient` builds, signs and sends commands to one instance's guest agent: each command gets
an id (pass your own for idempotency: a guest executes an id once and answers a repeat with the
recorded result), a sequence number (`SequenceSource`), a timestamp and a deadline, and is
signed with the instance's signing key. It also seals passwords for the guest
(`encrypted_password`) and opens what the guest seals (enable_root's password).

`GuestEventVerifier` checks what arrives on the events queue (results and heartbeats) before
anyone acts on it: the message must parse, be signed under the instance's key, be fresh, and
not be a replay. "Seen" state. The control plane keeps nothing in memory between invocations,
so each instance's replay windows (one per message kind, see `replay_guard`) live in the
StateStore record `guests/<instance_id>/seen`, updated by compare-and-swap: two consumers
handling the same message race on the write and exactly one accepts it. That is one store
write per accepted event; heartbeats every second per instance are cheap for the directory
store but are the first thing to batch if an object store's request bill matters.

Rejections are counted per reason in `GuestEventVerifier.rejections` (this process) and logged
with the instance id, kind and sequence (every process); the guest side counts what it refuses
in its heartbeats.
"""

from __future__ import annotations

import uuid
import weakref
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ValidationError

from shared.crypto import InstanceKeys, open_sealed, password_context, seal
from shared.errors import ConflictError
from shared.models.guest import (
    GuestCommand,
    GuestCommandName,
    GuestResult,
    Heartbeat,
    parse_guest_message,
)
from shared.observability import get_logger
from shared.ports import JSON, Clock, Queue, StateStore
from shared.services.replay_guard import (
    DEFAULT_WINDOW_ENTRIES,
    Rejection,
    ReplayWindow,
    SequenceSource,
    check_freshness,
)

log = get_logger("guest-channel")

EVENTS_QUEUE = "guest-events"
COMMAND_QUEUE_PREFIX = "guest-cmd-"
DEFAULT_COMMAND_TIMEOUT = 300.0
# One source per clock in a process: every client on it draws strictly increasing numbers.
_PROCESS_SEQUENCES: weakref.WeakKeyDictionary[Clock, SequenceSource] = weakref.WeakKeyDictionary()


def command_queue_name(instance_id: str) -> str:
    """The name of an instance's command queue (fits SQS and Zaqar's rules)."""
    return f"{COMMAND_QUEUE_PREFIX}{uuid.UUID(instance_id)}"


def seen_key(instance_id: str) -> str:
    """The StateStore key holding an instance's replay windows."""
    return f"guests/{instance_id}/seen"


def _sequences_for(clock: Clock) -> SequenceSource:
    source = _PROCESS_SEQUENCES.get(clock)
    if source is None:
        source = _PROCESS_SEQUENCES.setdefault(clock, SequenceSource(clock))
    return source


class GuestClient:
    """Sends signed commands to one instance's guest; seals and opens its passwords."""

    def __init__(
        self,
        queue: Queue,
        clock: Clock,
        instance_id: str,
        secret: bytes,
        *,
        command_queue: str | None = None,
        sequences: SequenceSource | None = None,
    ) -> None:
        self.instance_id = str(uuid.UUID(instance_id))
        self.command_queue = command_queue or command_queue_name(self.instance_id)
        self._queue = queue
        self._clock = clock
        self._keys = InstanceKeys.from_secret(secret)
        self._sequences = sequences or _sequences_for(clock)

    def __repr__(self) -> str:
        return f"GuestClient(instance_id={self.instance_id!r})"

    def build(
        self,
        name: GuestCommandName | str,
        args: Mapping[str, Any] | None = None,
        *,
        command_id: str | None = None,
        task_token: str | None = None,
        timeout: float = DEFAULT_COMMAND_TIMEOUT,
    ) -> GuestCommand:
        """A signed command, not sent. `timeout` seconds from now is its deadline."""
        if timeout <= 0:
            raise ValueError(f"timeout: must be positive, got {timeout}")
        now = self._clock.time()
        sent_at = datetime.fromtimestamp(now, UTC)
        command = GuestCommand(
            instance_id=self.instance_id,
            sequence=self._sequences.next(),
            timestamp=sent_at,
            id=command_id or str(uuid.uuid4()),
            name=GuestCommandName(name),
            args=dict(args or {}),
            deadline=sent_at + timedelta(seconds=timeout),
            task_token=task_token,
        )
        return command.sign(self._keys.signing)

    def send(
        self,
        name: GuestCommandName | str,
        args: Mapping[str, Any] | None = None,
        *,
        command_id: str | None = None,
        task_token: str | None = None,
        timeout: float = DEFAULT_COMMAND_TIMEOUT,
    ) -> GuestCommand:
        """Build, sign and send a command; returns what was sent."""
        command = self.build(
            name, args, command_id=command_id, task_token=task_token, timeout=timeout
        )
        self._queue.send(self.command_queue, command.model_dump(mode="json"))
        log.info(
            "guest command sent",
            extra={
                "instance_id": self.instance_id,
                "command": command.name.value,
                "command_id": command.id,
                "sequence": command.sequence,
            },
        )
        return command

    def seal_password(self, password: bytes | str) -> str:
        """`encrypted_password` for a command to this guest (fits `User.sealed`)."""
        raw = password.encode() if isinstance(password, str) else password
        return seal(self._keys.passwords, raw, password_context(self.instance_id))

    def open_password(self, sealed: str) -> str:
        """A password this guest sealed (enable_root's result). SealedDataError if it does not
        open under this instance's key."""
        return open_sealed(
            self._keys.passwords, sealed, password_context(self.instance_id)
        ).decode()


@dataclass(frozen=True)
class EventVerdict:
    """What the verifier made of one events-queue message: the message when accepted,
    otherwise why not (and the instance it claims to be from, when that could be read)."""

    message: GuestResult | Heartbeat | None
    rejection: Rejection | None
    instance_id: str | None
    detail: str = ""

    @property
    def accepted(self) -> bool:
        return self.rejection is None


class GuestEventVerifier:
    """Checks results and heartbeats from guests (see the module docstring).

    `secret_for(instance_id)` returns the instance's secret, or None for an unknown instance.
    Results may wait in the queue while the consumer is down, so they may be older than
    heartbeats, which are only useful fresh.
    """

    def __init__(
        self,
        store: StateStore,
        clock: Clock,
        secret_for: Callable[[str], bytes | None],
        *,
        heartbeat_max_age: float = 30.0,
        result_max_age: float = 3600.0,
        max_skew: float = 30.0,
        window_entries: int = DEFAULT_WINDOW_ENTRIES,
        cas_attempts: int = 8,
    ) -> None:
        self._store = store
        self._clock = clock
        self._secret_for = secret_for
        self._max_age = {"heartbeat": heartbeat_max_age, "result": result_max_age}
        self._max_skew = max_skew
        self._window_entries = window_entries
        self._cas_attempts = max(1, cas_attempts)
        self.rejections: Counter[Rejection] = Counter()

    def verify(self, body: JSON) -> EventVerdict:
        """Accept or reject one message body from the events queue; an accepted message is
        recorded as seen, so the same message is refused (REPLAYED) from then on."""
        claimed = body.get("instance_id") if isinstance(body, Mapping) else None
        claimed_id = claimed if isinstance(claimed, str) else None
        try:
            message = parse_guest_message(body)
        except ValidationError as exc:
            return self._reject(Rejection.MALFORMED, claimed_id, body, _first_error(exc))
        if not isinstance(message, GuestResult | Heartbeat):
            return self._reject(
                Rejection.MALFORMED, message.instance_id, body, "a command on the events queue"
            )
        secret = self._secret_for(message.instance_id)
        if secret is None:
            return self._reject(Rejection.UNKNOWN_INSTANCE, message.instance_id, body)
        if message.signature is None:
            return self._reject(Rejection.UNSIGNED, message.instance_id, body)
        if not message.verify(InstanceKeys.from_secret(secret).signing):
            return self._reject(Rejection.FORGED, message.instance_id, body)
        now = self._clock.time()
        max_age = self._max_age[message.kind]
        stale = check_freshness(message.timestamp, now, max_age=max_age, max_skew=self._max_skew)
        if stale is not None:
            return self._reject(stale, message.instance_id, body)
        if not self._record_seen(message, now, max_age):
            return self._reject(Rejection.REPLAYED, message.instance_id, body)
        return EventVerdict(message, None, message.instance_id)

    def forget(self, instance_id: str) -> None:
        """Drop an instance's seen state (when the instance is deleted)."""
        self._store.delete(seen_key(instance_id))

    def _record_seen(self, message: GuestResult | Heartbeat, now: float, max_age: float) -> bool:
        key = seen_key(message.instance_id)
        for _ in range(self._cas_attempts):
            record = self._store.get(key)
            data = dict(record.data) if record is not None else {}
            window = ReplayWindow.from_json(data.get(message.kind, {}))
            if not window.admits(message.sequence):
                return False
            window.record(
                message.sequence,
                message.timestamp.timestamp(),
                now=now,
                max_age=max_age,
                max_entries=self._window_entries,
            )
            data[message.kind] = window.to_json()
            try:
                self._store.put(key, data, record.revision if record is not None else 0)
                return True
            except ConflictError:
                continue  # another consumer wrote first: look again (it may be this message)
        raise ConflictError(key, record.revision if record is not None else 0)

    def _reject(
        self, reason: Rejection, instance_id: str | None, body: Any, detail: str = ""
    ) -> EventVerdict:
        self.rejections[reason] += 1
        log.warning(
            "guest event rejected",
            extra={
                "instance_id": instance_id,
                "reason": reason.value,
                "kind": body.get("kind") if isinstance(body, Mapping) else None,
                "sequence": body.get("sequence") if isinstance(body, Mapping) else None,
                "detail": detail,
            },
        )
        return EventVerdict(None, reason, instance_id, detail)


def _first_error(exc: ValidationError) -> str:
    errors = exc.errors()
    if not errors:
        return "invalid message"
    first = errors[0]
    where = ".".join(str(p) for p in first["loc"]) or "message"
    return f"{where}: {first['msg']}"[:300]
