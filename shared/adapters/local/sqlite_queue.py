"""The local profile's Queue: every queue in one SQLite database in WAL mode.

Safe across threads and processes. Each thread (and each process after a fork) opens its own
connection; every write takes the database lock up front (`BEGIN IMMEDIATE`) so two consumers
can never claim the same message, and `busy_timeout` makes writers wait for the lock instead of
failing. With `synchronous=NORMAL` a commit survives a process crash (SIGKILL); only a power
loss may drop the last few commits.

Behaviour the contract suite (tests/contract/test_queue.py) pins down:

- Queues exist only after `ensure_queue`; every other call on an unknown queue raises
  NotFoundError, so a misspelled queue name fails loudly instead of swallowing messages.
  `ensure_queue` is declarative: calling it again keeps the messages and applies the new
  redrive settings (the latest call wins).
- `max_receives` and `dead_letter_queue` go together (nothing is ever dropped). The receive
  that would deliver a message for the (max_receives + 1)-th time moves it to the dead-letter
  queue instead, with its id, body and sent_at kept and its receive count reset to 0.
- Each receive hands out a fresh receipt. `ack` with a stale receipt (the message was received
  again since) is ignored; `change_visibility` with one raises NotFoundError, so a worker
  extending its claim learns it lost it. A string that is not a receipt at all raises
  InvalidKeyError.
- Visibility, delay and sent_at use the injected clock, so tests can move time by hand. A long
  poll (`wait_seconds`) always waits in real monotonic time: it sleeps until the next message is
  due (by the injected clock), at most `poll_interval` so that sends from other processes are
  noticed; sends from the same process wake it at once.
- Order is roughly oldest-visible first, but that is not part of the contract.
- A row whose body is not a JSON object (corrupted on disk) is never delivered and never blocks
  the queue: the receive that meets it moves it to the `quarantined_messages` table and logs an
  error naming the message id; `quarantined()` lists them (`count` no longer includes them).
"""

from __future__ import annotations

import os
import re
import secrets
import sqlite3
import threading
import time
import uuid
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.adapters.queue_rules import (
    check_dead_letter_arguments,
    check_max_messages,
    check_queue_name,
    check_seconds,
    decode_body,
    encode_body,
)
from shared.clock import SystemClock
from shared.errors import InvalidKeyError, NotFoundError, TrovelessError
from shared.observability import get_logger
from shared.ports import JSON, Clock, Message

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS queues (
    name TEXT PRIMARY KEY,
    max_receives INTEGER,
    dead_letter_queue TEXT,
    created_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL,
    queue TEXT NOT NULL,
    body TEXT NOT NULL,
    sent_at REAL NOT NULL,
    visible_at REAL NOT NULL,
    receive_count INTEGER NOT NULL DEFAULT 0,
    receipt TEXT
);
CREATE INDEX IF NOT EXISTS messages_by_visibility ON messages (queue, visible_at);
CREATE TABLE IF NOT EXISTS quarantined_messages (
    id TEXT NOT NULL,
    queue TEXT NOT NULL,
    body BLOB,
    sent_at REAL,
    receive_count INTEGER,
    reason TEXT NOT NULL,
    quarantined_at REAL NOT NULL
);
"""

# Moves messages that were already received max_receives times to the dead-letter queue, but
# only among those the claim below would look at, so a receive does bounded work.
_REDRIVE_SQL = """
UPDATE messages
SET queue = :dead_letter_queue, receive_count = 0, receipt = NULL, visible_at = :now
WHERE seq IN (
    SELECT seq FROM messages WHERE queue = :queue AND visible_at <= :now
    ORDER BY visible_at LIMIT :limit
) AND receive_count >= :max_receives
RETURNING id, receive_count
"""

# One statement claims the whole batch: the subquery walks the (queue, visible_at) index.
_CLAIM_SQL = """
UPDATE messages
SET receive_count = receive_count + 1, receipt = :token, visible_at = :hidden_until
WHERE seq IN (
    SELECT seq FROM messages
    WHERE queue = :queue AND visible_at <= :now
      AND (:max_receives IS NULL OR receive_count < :max_receives)
    ORDER BY visible_at LIMIT :limit
)
RETURNING seq, id, CAST(body AS BLOB), sent_at, receive_count
"""

_RECEIPT_PATTERN = re.compile(r"([0-9]{1,19})\.([0-9a-f]{16})")

log = get_logger("queue")


class QueueSchemaError(TrovelessError):
    """The database file cannot serve as a queue (no WAL support, or a newer schema)."""


@dataclass(frozen=True)
class QuarantinedMessage:
    """A message whose stored body did not parse; kept for an operator to inspect."""

    id: str
    queue: str
    body: bytes | None
    reason: str
    quarantined_at: float


class _Doorbell:
    """Wakes long polls in this process when a message may have become visible.

    The ring counter closes the gap between "looked, found nothing" and "started waiting":
    a waiter passes the count it saw before looking and returns at once if it has moved.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._rings = 0

    def renew_lock(self) -> None:
        self._cond = threading.Condition()

    def rings(self) -> int:
        with self._cond:
            return self._rings

    def ring(self) -> None:
        with self._cond:
            self._rings += 1
            self._cond.notify_all()

    def wait(self, seen: int, timeout: float) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._rings != seen, timeout)


_doorbells: dict[Path, _Doorbell] = {}
_doorbells_lock = threading.Lock()


def _doorbell_for(path: Path) -> _Doorbell:
    with _doorbells_lock:
        bell = _doorbells.get(path)
        if bell is None:
            bell = _doorbells[path] = _Doorbell()
        return bell


def _renew_locks_after_fork() -> None:
    # A lock some other thread held at fork time would stay held forever in the child.
    global _doorbells_lock
    _doorbells_lock = threading.Lock()
    for bell in _doorbells.values():
        bell.renew_lock()


os.register_at_fork(after_in_child=_renew_locks_after_fork)


class _ThreadConnection:
    """Holds one thread's connection; weak-referenceable (sqlite3.Connection is not)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.pid = os.getpid()


class SqliteQueue:
    """Queue port on one SQLite file; see the module docstring for the exact semantics."""

    def __init__(
        self,
        path: Path,
        clock: Clock | None = None,
        *,
        poll_interval: float = 0.05,
        busy_timeout: float = 30.0,
    ) -> None:
        self._path = Path(path).resolve()
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._poll_interval = poll_interval
        self._busy_timeout = busy_timeout
        self._local = threading.local()
        self._connections: weakref.WeakSet[_ThreadConnection] = weakref.WeakSet()
        self._connections_lock = threading.Lock()
        self._known_queues: set[str] = set()
        self._closed = False
        self._doorbell = _doorbell_for(self._path)
        try:
            self._create_schema()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ connections
    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise RuntimeError(f"queue database {self._path} is closed")
        holder: _ThreadConnection | None = getattr(self._local, "holder", None)
        if holder is None or holder.pid != os.getpid():
            # After a fork the parent's connection must not be touched; open a fresh one.
            conn = sqlite3.connect(
                self._path,
                timeout=self._busy_timeout,
                isolation_level=None,
                check_same_thread=False,
            )
            conn.execute("PRAGMA synchronous = NORMAL")
            holder = _ThreadConnection(conn)
            self._local.holder = holder
            with self._connections_lock:
                self._connections.add(holder)
        return holder.conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction holding the database lock from its first statement."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _create_schema(self) -> None:
        if sqlite3.sqlite_version_info < (3, 35):  # claims use UPDATE ... RETURNING
            raise QueueSchemaError(f"SQLite {sqlite3.sqlite_version} is too old: need >= 3.35")
        self._path.parent.mkdir(parents=True, exist_ok=True)
        conn = self._conn()
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise QueueSchemaError(f"{self._path}: WAL mode unavailable (journal_mode={mode})")
        with self._write() as tx:
            version = tx.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise QueueSchemaError(
                    f"{self._path}: schema version {version} is newer than {SCHEMA_VERSION}"
                )
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    tx.execute(statement)
            tx.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def close(self) -> None:
        """Close every connection this object opened, in any thread. Idempotent."""
        self._closed = True
        with self._connections_lock:
            holders = list(self._connections)
            self._connections.clear()
        for holder in holders:
            if holder.pid == os.getpid():
                holder.conn.close()

    def __enter__(self) -> SqliteQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ validation
    _check_name = staticmethod(check_queue_name)

    def _require_queue(self, name: str) -> None:
        self._check_name(name)
        if name in self._known_queues:
            return  # queues are never deleted, so once seen it stays valid
        row = self._conn().execute("SELECT 1 FROM queues WHERE name = ?", (name,)).fetchall()
        if not row:
            raise NotFoundError(name, "queue")
        self._known_queues.add(name)

    _check_seconds = staticmethod(check_seconds)

    @staticmethod
    def _parse_receipt(receipt: str) -> tuple[int, str]:
        match = _RECEIPT_PATTERN.fullmatch(receipt) if isinstance(receipt, str) else None
        if match is None:
            raise InvalidKeyError(str(receipt), "not a receipt handed out by this queue")
        return int(match.group(1)), match.group(2)

    _encode = staticmethod(encode_body)

    # ------------------------------------------------------------------ the port
    def ensure_queue(
        self, name: str, *, max_receives: int | None = None, dead_letter_queue: str | None = None
    ) -> None:
        check_dead_letter_arguments(name, max_receives, dead_letter_queue)
        with self._write() as tx:
            now = self._clock.time()
            if dead_letter_queue is not None:
                tx.execute(
                    "INSERT OR IGNORE INTO queues (name, created_at) VALUES (?, ?)",
                    (dead_letter_queue, now),
                )
            tx.execute(
                "INSERT INTO queues (name, max_receives, dead_letter_queue, created_at)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET"
                " max_receives = excluded.max_receives,"
                " dead_letter_queue = excluded.dead_letter_queue",
                (name, max_receives, dead_letter_queue, now),
            )
        self._known_queues.add(name)
        if dead_letter_queue is not None:
            self._known_queues.add(dead_letter_queue)

    def send(self, queue: str, body: JSON, delay_seconds: float = 0) -> str:
        return self.send_batch(queue, [body], delay_seconds)[0]

    def send_batch(self, queue: str, bodies: Sequence[JSON], delay_seconds: float = 0) -> list[str]:
        delay = self._check_seconds("delay_seconds", delay_seconds)
        self._require_queue(queue)
        encoded = [self._encode(body) for body in bodies]  # fail before touching the database
        if not encoded:
            return []
        ids = [uuid.uuid4().hex for _ in encoded]
        with self._write() as tx:
            now = self._clock.time()
            tx.executemany(
                "INSERT INTO messages (id, queue, body, sent_at, visible_at)"
                " VALUES (?, ?, ?, ?, ?)",
                [
                    (mid, queue, text, now, now + delay)
                    for mid, text in zip(ids, encoded, strict=True)
                ],
            )
        self._doorbell.ring()
        return ids

    def receive(
        self,
        queue: str,
        max_messages: int = 1,
        visibility_timeout: float = 30,
        wait_seconds: float = 0,
    ) -> list[Message]:
        check_max_messages(max_messages)
        hidden_for = self._check_seconds("visibility_timeout", visibility_timeout)
        wait = self._check_seconds("wait_seconds", wait_seconds)
        self._require_queue(queue)
        # The wait is real time even under a manual clock: a test that moves the clock by hand
        # from another thread still sees the poll end when the wait is over.
        deadline = time.monotonic() + wait
        seen = self._doorbell.rings()
        messages = self._claim(queue, max_messages, hidden_for)
        while not messages:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            seen = self._doorbell.rings()
            next_visible = self._next_visible_at(queue)
            now = self._clock.time()
            if next_visible is None or next_visible > now:
                pause = min(remaining, self._poll_interval)
                if next_visible is not None:
                    pause = min(pause, max(next_visible - now, 0.001))
                self._doorbell.wait(seen, pause)
                continue
            messages = self._claim(queue, max_messages, hidden_for)
        return messages

    def _next_visible_at(self, queue: str) -> float | None:
        # Read-only, so idle pollers never take the write lock producers need.
        rows = (
            self._conn()
            .execute("SELECT MIN(visible_at) FROM messages WHERE queue = ?", (queue,))
            .fetchall()
        )
        value = rows[0][0] if rows else None
        return float(value) if value is not None else None

    def _claim(self, queue: str, limit: int, hidden_for: float) -> list[Message]:
        token = secrets.token_hex(8)
        redriven: list[tuple[str, int]] = []
        corrupt: list[tuple[int, str, bytes | None, Any, int, str]] = []
        messages: list[Message] = []
        with self._write() as tx:
            now = self._clock.time()
            config = tx.execute(
                "SELECT max_receives, dead_letter_queue FROM queues WHERE name = ?", (queue,)
            ).fetchall()
            if not config:
                raise NotFoundError(queue, "queue")
            max_receives, dead_letter_queue = config[0]
            if max_receives is not None and dead_letter_queue is not None:
                redriven = tx.execute(
                    _REDRIVE_SQL,
                    {
                        "dead_letter_queue": dead_letter_queue,
                        "now": now,
                        "queue": queue,
                        "limit": limit,
                        "max_receives": max_receives,
                    },
                ).fetchall()
            else:
                max_receives = None
            rows = tx.execute(
                _CLAIM_SQL,
                {
                    "token": token,
                    "hidden_until": now + hidden_for,
                    "queue": queue,
                    "now": now,
                    "max_receives": max_receives,
                    "limit": limit,
                },
            ).fetchall()
            for seq, mid, raw, sent_at, receive_count in sorted(rows):
                body, problem = self._decode(raw)
                if body is None:
                    corrupt.append((seq, mid, raw, sent_at, receive_count, problem))
                    continue
                messages.append(
                    Message(
                        id=mid,
                        body=body,
                        receipt=f"{seq}.{token}",
                        receive_count=receive_count,
                        sent_at=sent_at,
                    )
                )
            if corrupt:
                tx.executemany(
                    "INSERT INTO quarantined_messages (id, queue, body, sent_at, receive_count,"
                    " reason, quarantined_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [
                        (mid, queue, raw, sent, count, why, now)
                        for _, mid, raw, sent, count, why in corrupt
                    ],
                )
                tx.executemany("DELETE FROM messages WHERE seq = ?", [(row[0],) for row in corrupt])
        for mid, _ in redriven:
            log.warning(
                f"message {mid} moved from queue {queue} to dead-letter queue "
                f"{dead_letter_queue} after {max_receives} receives",
                extra={"message_id": mid, "queue": queue, "dead_letter_queue": dead_letter_queue},
            )
        for _, mid, _, _, _, why in corrupt:
            log.error(
                f"message {mid} in queue {queue} is corrupt and was quarantined: {why}",
                extra={"message_id": mid, "queue": queue, "reason": why},
            )
        return messages

    _decode = staticmethod(decode_body)

    def ack(self, queue: str, receipt: str) -> None:
        seq, token = self._parse_receipt(receipt)
        self._require_queue(queue)
        # A single statement is its own transaction; a stale receipt simply matches nothing.
        self._conn().execute(
            "DELETE FROM messages WHERE seq = ? AND receipt = ? AND queue = ?",
            (seq, token, queue),
        )

    def change_visibility(self, queue: str, receipt: str, visibility_timeout: float) -> None:
        hidden_for = self._check_seconds("visibility_timeout", visibility_timeout)
        seq, token = self._parse_receipt(receipt)
        self._require_queue(queue)
        cursor = self._conn().execute(
            "UPDATE messages SET visible_at = ? WHERE seq = ? AND receipt = ? AND queue = ?",
            (self._clock.time() + hidden_for, seq, token, queue),
        )
        if cursor.rowcount == 0:
            raise NotFoundError(receipt, "claim (acked, or received again since)")
        if hidden_for == 0:
            self._doorbell.ring()

    def purge(self, queue: str) -> None:
        self._require_queue(queue)
        self._conn().execute("DELETE FROM messages WHERE queue = ?", (queue,))

    def count(self, queue: str) -> int:
        self._require_queue(queue)
        rows = (
            self._conn()
            .execute("SELECT COUNT(*) FROM messages WHERE queue = ?", (queue,))
            .fetchall()
        )
        return int(rows[0][0])

    # ------------------------------------------------------------------ beyond the port
    def quarantined(self, queue: str) -> list[QuarantinedMessage]:
        """Messages of `queue` set aside because their stored body was corrupt, oldest first."""
        self._require_queue(queue)
        rows = (
            self._conn()
            .execute(
                "SELECT id, queue, body, reason, quarantined_at FROM quarantined_messages"
                " WHERE queue = ? ORDER BY rowid",
                (queue,),
            )
            .fetchall()
        )
        return [
            QuarantinedMessage(
                id=mid,
                queue=q,
                body=bytes(body) if body is not None else None,
                reason=reason,
                quarantined_at=at,
            )
            for mid, q, body, reason, at in rows
        ]
