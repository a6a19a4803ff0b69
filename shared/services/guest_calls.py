"""Synchronous calls to an instance's guest agent: send a signed command, wait for its result.

The API answers database, user, root and log requests while the caller waits, so it cannot
hand the guest a task token the way a state machine does. Instead: `GuestCalls.call` sends the
command with a fresh id, then waits (with a deadline) for the guest-events consumer to store
the verified result at `guests/<instance_id>/results/<command_id>` (`result_key`). It reads
the record once, deletes it, and turns a failure into the error the API should answer:

- the guest's name rules (`NameRuleError`) and argument checks (`InvalidArguments`) become a
  `RequestError` (400) naming the field;
- `NotFoundError` (a user that does not exist) stays a `NotFoundError` (404);
- `UnsupportedOperationError` (no per-database grants in Redis...) becomes `NotSupportedError`;
- anything else is a `GuestCommandFailedError`, and no answer in time a `GuestTimeoutError`.

Only verified results are ever stored at those keys (the consumer checks signature, freshness
and replay), so reading the record needs no second verification.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import ValidationError

from shared.errors import NotFoundError, NotSupportedError, RequestError, TrovelessError
from shared.models.guest import GuestCommandName, GuestResult
from shared.models.instance import Instance
from shared.observability import get_logger
from shared.ports import Clock, Queue, StateStore
from shared.services.guest_channel import GuestClient
from shared.services.instance_secrets import guest_secret

log = get_logger("guest-calls")

DEFAULT_CALL_TIMEOUT = 30.0
# A local guest answers in tens of milliseconds; reading one record is cheap, so poll often.
_FIRST_POLL = 0.002
_MAX_POLL = 0.02
# "users[0].name: must use ... (got 'x')" -> field "users[0].name", rule "must use ..."
_FIELD_MESSAGE = re.compile(r"^(?P<field>[A-Za-z0-9_.\[\]]+): (?P<rule>.*)$", re.DOTALL)
_REQUEST_ERRORS = frozenset({"NameRuleError", "InvalidArguments", "OverrideRuleError"})


def result_key(instance_id: str, command_id: str) -> str:
    """Where the guest-events consumer stores a verified result for synchronous callers."""
    return f"guests/{instance_id}/results/{command_id}"


class GuestTimeoutError(TrovelessError):
    """The guest did not answer a command before the caller's deadline."""

    def __init__(self, instance_id: str, command: str, timeout: float) -> None:
        self.instance_id = instance_id
        self.command = command
        self.timeout = timeout
        super().__init__(
            f"instance {instance_id}: the guest did not answer {command} within {timeout:g} s"
        )


class GuestCommandFailedError(TrovelessError):
    """The guest ran a command and it failed; `error_type` is the guest's error class."""

    def __init__(self, instance_id: str, command: str, error_type: str, message: str) -> None:
        self.instance_id = instance_id
        self.command = command
        self.error_type = error_type
        self.message = message
        super().__init__(f"instance {instance_id}: {command} failed ({error_type}): {message}")


def _error_for(instance_id: str, result: GuestResult) -> TrovelessError:
    """The exception a failed result means to the API caller."""
    error = result.error
    assert error is not None  # GuestResult guarantees it for ok=False
    if error.type in _REQUEST_ERRORS:
        text = error.message.removeprefix("args.")
        match = _FIELD_MESSAGE.match(text)
        if match is not None:
            return RequestError(match["field"], match["rule"])
        return RequestError("request", text)
    if error.type == "NotFoundError":
        found = re.match(r"^(?P<what>\w+) '(?P<key>.*)' not found$", error.message)
        if found is not None:
            return NotFoundError(found["key"], found["what"])
        return NotFoundError(error.message, "object")
    if error.type in {"UnsupportedOperationError", "CommandNotImplemented"}:
        return NotSupportedError(result.command.value, error.message)
    return GuestCommandFailedError(instance_id, result.command.value, error.type, error.message)


class GuestCalls:
    """Request/response calls to guests over the command and events queues."""

    def __init__(
        self,
        store: StateStore,
        queue: Queue,
        clock: Clock,
        master_key: bytes,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._store = store
        self._queue = queue
        self._clock = clock
        self._master_key = master_key
        self._sleep = sleep

    def client(self, instance: Instance) -> GuestClient:
        """A GuestClient for `instance` (to seal or open its passwords)."""
        return GuestClient(
            self._queue, self._clock, instance.id, guest_secret(instance, self._master_key)
        )

    def call(
        self,
        instance: Instance,
        name: GuestCommandName | str,
        args: Mapping[str, Any] | None = None,
        *,
        timeout: float = DEFAULT_CALL_TIMEOUT,
        client: GuestClient | None = None,
    ) -> GuestResult:
        """Send `name(args)` to the instance's guest and return its successful result.

        The command's own deadline is the same `timeout`: a guest that reaches it late drops
        it rather than acting after the caller gave up. Raises GuestTimeoutError,
        RequestError, NotFoundError, NotSupportedError or GuestCommandFailedError.
        """
        guest = client or self.client(instance)
        command = guest.send(name, args, timeout=timeout)
        result = self._wait(instance.id, command.id, command.name.value, timeout)
        if not result.ok:
            raise _error_for(instance.id, result)
        return result

    def _wait(self, instance_id: str, command_id: str, command: str, timeout: float) -> GuestResult:
        key = result_key(instance_id, command_id)
        deadline = self._clock.monotonic() + timeout
        pause = _FIRST_POLL
        while True:
            record = self._store.get(key)
            if record is not None:
                self._store.delete(key)
                try:
                    return GuestResult.model_validate(record.data)
                except ValidationError:
                    raise GuestCommandFailedError(
                        instance_id, command, "CorruptResult", f"unreadable result at {key}"
                    ) from None
            remaining = deadline - self._clock.monotonic()
            if remaining <= 0:
                log.warning(
                    "guest call timed out",
                    extra={
                        "instance_id": instance_id,
                        "command": command,
                        "command_id": command_id,
                    },
                )
                raise GuestTimeoutError(instance_id, command, timeout)
            self._sleep(min(pause, remaining))
            pause = min(pause * 2, _MAX_POLL)
