"""What only the SQLite queue promises: storage settings, corrupt rows, receipts, waiting costs.

The port's behaviour is covered by tests/contract/test_queue.py; these tests reach into the
database file directly, which no other adapter allows.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.adapters.local.sqlite_queue import QueueSchemaError, SqliteQueue
from shared.clock import ManualClock
from shared.errors import InvalidKeyError


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "queues.db"


@pytest.fixture
def queue(db_path: Path) -> Iterator[SqliteQueue]:
    with SqliteQueue(db_path, ManualClock()) as q:
        q.ensure_queue("jobs")
        yield q


def corrupt_body(db_path: Path, message_id: str, body: bytes | str) -> None:
    with sqlite3.connect(db_path) as raw:
        changed = raw.execute(
            "UPDATE messages SET body = ? WHERE id = ?", (body, message_id)
        ).rowcount
    raw.close()
    assert changed == 1


def test_database_is_in_wal_mode_with_a_versioned_schema(queue: SqliteQueue, db_path: Path) -> None:
    raw = sqlite3.connect(db_path)
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert raw.execute("PRAGMA user_version").fetchone()[0] == 1
    finally:
        raw.close()


def test_a_newer_schema_is_refused(db_path: Path) -> None:
    SqliteQueue(db_path).close()
    raw = sqlite3.connect(db_path)
    raw.execute("PRAGMA user_version = 99")
    raw.close()
    with pytest.raises(QueueSchemaError, match="99"):
        SqliteQueue(db_path)


@pytest.mark.parametrize(
    ("stored", "reason"),
    [
        ("{not json", "does not parse"),
        (b"\xff\xfe{}", "does not parse"),  # not even UTF-8
        ("[1, 2, 3]", "not an object"),
        ("null", "not an object"),
    ],
)
def test_a_corrupt_body_is_quarantined_and_logged_never_delivered(
    queue: SqliteQueue,
    db_path: Path,
    caplog: pytest.LogCaptureFixture,
    stored: bytes | str,
    reason: str,
) -> None:
    bad = queue.send("jobs", {"i": 0})
    good = queue.send_batch("jobs", [{"i": 1}, {"i": 2}])
    corrupt_body(db_path, bad, stored)

    with caplog.at_level(logging.ERROR, logger="queue"):
        delivered = queue.receive("jobs", max_messages=10)
    assert sorted(m.id for m in delivered) == sorted(good)  # the others flow on
    assert any(bad in record.getMessage() for record in caplog.records)

    [held] = queue.quarantined("jobs")
    assert held.id == bad
    assert reason in held.reason
    assert held.body == (stored if isinstance(stored, bytes) else stored.encode())
    assert queue.count("jobs") == 2  # the corrupt one left the queue
    assert queue.receive("jobs") == []  # and never comes back


def test_a_corrupt_body_alone_does_not_block_a_long_poll(queue: SqliteQueue, db_path: Path) -> None:
    bad = queue.send("jobs", {"i": 0})
    corrupt_body(db_path, bad, "{")
    late_sender = threading.Timer(0.2, queue.send, args=("jobs", {"after": True}))
    late_sender.start()
    try:
        messages = queue.receive("jobs", wait_seconds=5)
    finally:
        late_sender.join()
    assert [m.body for m in messages] == [{"after": True}]


@pytest.mark.parametrize("receipt", ["", "nonsense", "1.xyz", "12", "1.0123456789abcdef.9", 42])
def test_a_string_that_is_no_receipt_is_refused(queue: SqliteQueue, receipt: str) -> None:
    with pytest.raises(InvalidKeyError):
        queue.ack("jobs", receipt)
    with pytest.raises(InvalidKeyError):
        queue.change_visibility("jobs", receipt, 5)


def test_locally_delivery_is_oldest_first(queue: SqliteQueue) -> None:
    ids = queue.send_batch("jobs", [{"i": i} for i in range(20)])
    got = [m.id for _ in range(4) for m in queue.receive("jobs", max_messages=5)]
    assert got == ids  # the local adapter's habit, not a promise of the port


def test_the_manual_clock_alone_decides_visibility(db_path: Path) -> None:
    clock = ManualClock()
    with SqliteQueue(db_path, clock) as q:
        q.ensure_queue("jobs")
        q.send("jobs", {"i": 1}, delay_seconds=3600)
        assert q.receive("jobs") == []
        clock.advance(3599)
        assert q.receive("jobs") == []
        clock.advance(1)
        [message] = q.receive("jobs", visibility_timeout=60)
        clock.advance(59.9)
        assert q.receive("jobs") == []
        clock.advance(0.1)
        assert q.receive("jobs")[0].id == message.id


def test_an_idle_long_poll_does_not_spin(queue: SqliteQueue) -> None:
    cpu_before = time.thread_time()
    started = time.monotonic()
    assert queue.receive("jobs", wait_seconds=1.0) == []
    assert time.monotonic() - started >= 0.95
    assert time.thread_time() - cpu_before < 0.25  # about 20 cheap probes, not thousands


def test_a_send_in_this_process_wakes_a_long_poll_at_once(db_path: Path) -> None:
    # A poll interval longer than the whole test: only the in-process wake-up can end the wait.
    with (
        SqliteQueue(db_path, poll_interval=30) as consumer,
        SqliteQueue(db_path) as producer,
    ):
        consumer.ensure_queue("jobs")
        late_sender = threading.Timer(0.2, producer.send, args=("jobs", {"wake": True}))
        started = time.monotonic()
        late_sender.start()
        try:
            messages = consumer.receive("jobs", wait_seconds=20)
        finally:
            late_sender.join()
        assert [m.body for m in messages] == [{"wake": True}]
        assert time.monotonic() - started < 5


def test_a_closed_queue_refuses_work(db_path: Path) -> None:
    q = SqliteQueue(db_path)
    q.ensure_queue("jobs")
    q.close()
    q.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        q.count("jobs")
