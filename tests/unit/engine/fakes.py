"""Small in-memory fakes of the StateStore and Queue ports, with the semantics the durable
driver relies on (compare-and-swap revisions; visibility timeout, delay, redelivery, stale
receipts, dead-letter), driven by a ManualClock so tests control time."""

from __future__ import annotations

import copy
import itertools
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from shared.clock import ManualClock
from shared.errors import ConflictError, LeaseHeldError, LeaseLostError, NotFoundError
from shared.ports import JSON, Lease, Message, Record


class MemoryStateStore:
    def __init__(self, clock: ManualClock | None = None) -> None:
        self.clock = clock or ManualClock()
        self.records: dict[str, Record] = {}
        self.puts = 0

    def get(self, key: str) -> Record | None:
        record = self.records.get(key)
        return (
            None
            if record is None
            else Record(record.key, record.revision, copy.deepcopy(record.data))
        )

    def put(self, key: str, data: JSON, expected_revision: int) -> Record:
        current = self.records.get(key)
        actual = current.revision if current else 0
        if actual != expected_revision:
            raise ConflictError(key, expected_revision, actual)
        json.dumps(data)  # the real stores only take JSON
        record = Record(key, expected_revision + 1, copy.deepcopy(data))
        self.records[key] = record
        self.puts += 1
        return record

    def list(self, prefix: str = "") -> Iterator[str]:
        return iter(sorted(k for k in self.records if k.startswith(prefix)))

    def delete(self, key: str) -> None:
        self.records.pop(key, None)

    def acquire_lease(self, name: str, owner: str, ttl_seconds: float) -> Lease:
        raise LeaseHeldError(name, owner, 0)

    def renew_lease(self, lease: Lease, ttl_seconds: float) -> Lease:
        raise LeaseLostError(lease.name, lease.owner)

    def release_lease(self, lease: Lease) -> None:
        return None


@dataclass
class _Stored:
    id: str
    body: JSON
    visible_at: float
    sent_at: float
    receive_count: int = 0
    receipt: str = ""
    seq: int = 0


class MemoryQueue:
    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.queues: dict[str, list[_Stored]] = {}
        self.redrive: dict[str, tuple[int | None, str | None]] = {}
        self._ids = itertools.count(1)
        self.sent = 0

    def ensure_queue(
        self, name: str, *, max_receives: int | None = None, dead_letter_queue: str | None = None
    ) -> None:
        self.queues.setdefault(name, [])
        self.redrive[name] = (max_receives, dead_letter_queue)

    def _q(self, name: str) -> list[_Stored]:
        if name not in self.queues:
            raise NotFoundError(name, "queue")
        return self.queues[name]

    def send(self, queue: str, body: JSON, delay_seconds: float = 0) -> str:
        json.dumps(body)
        now = self.clock.time()
        n = next(self._ids)
        self._q(queue).append(
            _Stored(f"m{n}", copy.deepcopy(body), now + delay_seconds, now, seq=n)
        )
        self.sent += 1
        return f"m{n}"

    def send_batch(self, queue: str, bodies: Sequence[JSON], delay_seconds: float = 0) -> list[str]:
        return [self.send(queue, body, delay_seconds) for body in bodies]

    def receive(
        self,
        queue: str,
        max_messages: int = 1,
        visibility_timeout: float = 30,
        wait_seconds: float = 0,
    ) -> list[Message]:
        now = self.clock.time()
        messages = self._q(queue)
        visible = sorted(
            (m for m in messages if m.visible_at <= now), key=lambda m: (m.visible_at, m.seq)
        )
        out: list[Message] = []
        for stored in visible[:max_messages]:
            max_receives, dlq = self.redrive.get(queue, (None, None))
            if max_receives is not None and stored.receive_count >= max_receives and dlq:
                messages.remove(stored)
                stored.receive_count = 0
                self._q(dlq).append(stored)
                continue
            stored.receive_count += 1
            stored.receipt = f"{stored.id}:{stored.receive_count}"
            stored.visible_at = now + visibility_timeout
            out.append(
                Message(
                    stored.id,
                    copy.deepcopy(stored.body),
                    stored.receipt,
                    stored.receive_count,
                    stored.sent_at,
                )
            )
        return out

    def ack(self, queue: str, receipt: str) -> None:
        messages = self._q(queue)
        for stored in messages:
            if stored.receipt == receipt:
                messages.remove(stored)
                return

    def change_visibility(self, queue: str, receipt: str, visibility_timeout: float) -> None:
        for stored in self._q(queue):
            if stored.receipt == receipt:
                stored.visible_at = self.clock.time() + visibility_timeout
                return
        raise NotFoundError(receipt, "receipt")

    def purge(self, queue: str) -> None:
        self._q(queue).clear()

    def count(self, queue: str) -> int:
        return len(self._q(queue))

    def next_visible_at(self, queue: str) -> float | None:
        messages = self._q(queue)
        return min((m.visible_at for m in messages), default=None)
