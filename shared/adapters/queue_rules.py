"""Rules every Queue adapter applies the same way: names, dead-letter arguments, bodies.

The port (shared/ports.py) promises one behaviour whatever the service behind it; these checks
run before any adapter talks to its service, so a bad argument fails alike everywhere and
nothing is half-sent.
"""

from __future__ import annotations

import json
import math
import re

from shared.errors import InvalidKeyError
from shared.ports import JSON, QUEUE_NAME_PATTERN


def check_queue_name(name: str) -> None:
    """Raise InvalidKeyError unless `name` is a queue name the port allows."""
    if not isinstance(name, str) or re.fullmatch(QUEUE_NAME_PATTERN, name) is None:
        raise InvalidKeyError(str(name), f"queue names must match {QUEUE_NAME_PATTERN}")


def check_dead_letter_arguments(
    name: str, max_receives: int | None, dead_letter_queue: str | None
) -> None:
    """`ensure_queue`'s arguments: both dead-letter settings or neither, a sane count, and a
    dead-letter queue that is a valid name other than the queue itself."""
    check_queue_name(name)
    if (max_receives is None) != (dead_letter_queue is None):
        raise ValueError(
            "max_receives and dead_letter_queue go together: a message that was received "
            "too often must go somewhere, it is never dropped"
        )
    if max_receives is not None and (
        isinstance(max_receives, bool) or not isinstance(max_receives, int) or max_receives < 1
    ):
        raise ValueError(f"max_receives must be an integer >= 1, got {max_receives!r}")
    if dead_letter_queue is not None:
        check_queue_name(dead_letter_queue)
        if dead_letter_queue == name:
            raise ValueError(f"queue {name!r} cannot be its own dead-letter queue")


def check_max_messages(max_messages: int) -> None:
    """`receive`'s batch size: a positive integer (a bool is not a count)."""
    if isinstance(max_messages, bool) or not isinstance(max_messages, int) or max_messages < 1:
        raise ValueError(f"max_messages must be an integer >= 1, got {max_messages!r}")


def check_seconds(what: str, value: float, limit: float = math.inf, service: str = "") -> float:
    """A duration argument: a finite number of seconds >= 0 (a bool is not one), at most
    `limit` (the service's own bound, named in the message)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
    ):
        raise ValueError(f"{what} must be a finite number of seconds >= 0, got {value!r}")
    if value > limit:
        raise ValueError(f"{what} must be at most {limit} s on {service}, got {value!r}")
    return float(value)


def encode_body(body: JSON) -> str:
    """A message body as compact JSON text; only JSON objects without NaN/Infinity pass."""
    if not isinstance(body, dict):
        raise TypeError(f"message bodies must be JSON objects (dict), got {type(body)}")
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def decode_body(raw: str | bytes | None) -> tuple[JSON | None, str]:
    """(body, "") for a stored JSON object, else (None, why): the caller quarantines it."""
    if raw is None:
        return None, "body is missing"
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        return None, f"body does not parse as JSON ({type(exc).__name__}: {exc})"
    if not isinstance(body, dict):
        return None, f"body is JSON {type(body).__name__}, not an object"
    return body, ""
