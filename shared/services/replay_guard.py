"""Replay and staleness checks for signed guest messages, shared by both ends of the channel.

Sequence numbers. A sender numbers its messages with `SequenceSource`: microseconds of wall
time, forced to grow by at least one per message. Time-based numbers keep growing across
restarts of a stateless sender (a control-plane function, a restarted agent) without any
stored counter; two senders to one receiver (two functions sending to one guest) interleave.

Receivers. Queues do not keep order (SQS, Zaqar, several consumers), so "sequence greater than
the last one seen" would reject honest messages that overtook each other. A receiver keeps a
`ReplayWindow` instead: the sequences it accepted recently, and a floor below which it accepts
nothing. A message is admitted once: its sequence must be above the floor and not among those
seen. Entries leave the window when their message is older than the freshness limit (it would
be refused as stale anyway) or when the window is full; the floor rises to what leaves. With
the freshness check (`check_freshness`) this bounds both what a receiver keeps and how long a
captured message is of any use: replayed inside the window it is a duplicate, replayed later
it is stale or below the floor.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from shared.ports import Clock

DEFAULT_WINDOW_ENTRIES = 1024


class Rejection(StrEnum):
    """Why a guest message was refused (the names the counters and logs use)."""

    MALFORMED = "malformed"  # not a guest message of the expected kind
    WRONG_INSTANCE = "wrong_instance"  # names another instance than the receiver's
    UNKNOWN_INSTANCE = "unknown_instance"  # the receiver knows no secret for it
    UNSIGNED = "unsigned"
    FORGED = "forged"  # the signature does not match
    STALE = "stale"  # timestamp older than the freshness limit
    FROM_FUTURE = "from_future"  # timestamp further ahead than the allowed clock skew
    EXPIRED = "expired"  # a command past its deadline
    REPLAYED = "replayed"  # this sequence was already accepted, or is below the window


def check_freshness(
    timestamp: datetime, now: float, *, max_age: float, max_skew: float
) -> Rejection | None:
    """STALE or FROM_FUTURE when `timestamp` is outside [now - max_age, now + max_skew]."""
    sent = timestamp.timestamp()
    if sent < now - max_age:
        return Rejection.STALE
    if sent > now + max_skew:
        return Rejection.FROM_FUTURE
    return None


class SequenceSource:
    """Strictly increasing sequence numbers from wall time (microseconds); thread-safe."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._last = -1
        self._lock = threading.Lock()

    def next(self) -> int:
        with self._lock:
            self._last = max(self._last + 1, int(self._clock.time() * 1_000_000))
            return self._last


@dataclass
class ReplayWindow:
    """The sequences a receiver accepted recently (see the module docstring).

    `seen` maps each accepted sequence to its message's POSIX timestamp. The window is plain
    data (`to_json` / `from_json`) so a receiver can keep it wherever its state lives.
    """

    floor: int = -1
    seen: dict[int, float] = field(default_factory=dict)

    def admits(self, sequence: int) -> bool:
        return sequence > self.floor and sequence not in self.seen

    def record(
        self,
        sequence: int,
        timestamp: float,
        *,
        now: float,
        max_age: float,
        max_entries: int = DEFAULT_WINDOW_ENTRIES,
    ) -> None:
        """Remember an admitted sequence, then drop entries older than `max_age` and, past
        `max_entries`, the lowest ones; the floor rises to the highest sequence dropped."""
        if not self.admits(sequence):
            raise ValueError(f"sequence {sequence} is not admitted by this window")
        self.seen[sequence] = timestamp
        oldest_allowed = now - max_age
        for old in [s for s, ts in self.seen.items() if ts < oldest_allowed]:
            self._drop(old)
        while len(self.seen) > max(1, max_entries):
            self._drop(min(self.seen))

    def _drop(self, sequence: int) -> None:
        del self.seen[sequence]
        self.floor = max(self.floor, sequence)

    def to_json(self) -> dict[str, Any]:
        return {"floor": self.floor, "seen": [[s, ts] for s, ts in sorted(self.seen.items())]}

    @classmethod
    def from_json(cls, data: Any) -> ReplayWindow:
        """Read what `to_json` wrote; ValueError if it is not that."""
        if not isinstance(data, dict):
            raise ValueError("replay window: expected an object")
        try:
            floor = int(data.get("floor", -1))
            seen = {int(s): float(ts) for s, ts in data.get("seen", [])}
        except (TypeError, ValueError):
            raise ValueError("replay window: malformed entries") from None
        return cls(floor=floor, seen=seen)
