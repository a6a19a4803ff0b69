"""Throughput of the local SQLite queue against raw sqlite3 on the same disk, in the same run.

Figures (messages per second, median of REPEATS runs):
- batched: send_batch of BATCH, receive(max_messages=BATCH), then one ack per message (the port
  has no batch ack); goal >= 5000 msg/s (issue #2).
- single: one send, one receive, one ack per message.
The floor is raw sqlite3 (same pragmas: WAL, synchronous=NORMAL) doing the same number of
inserts, selects and single-row deletes with no queue semantics (no claim, receipt, visibility
or dead-letter check); ratio = value / floor, the share of raw SQLite speed the queue keeps.
"""

from __future__ import annotations

import json
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shared.adapters.local.sqlite_queue import SqliteQueue

BATCH = 10  # SQS's largest batch, so the figure means the same on every profile
BATCHED_MESSAGES = 10_000
SINGLE_MESSAGES = 2_000
REPEATS = 3
BODY = {"op": "engine.step", "execution": "exec-0123456789", "state": "CreateServer", "attempt": 1}


def _queue_batched(path: Path, messages: int) -> float:
    with SqliteQueue(path) as queue:
        queue.ensure_queue("bench")
        bodies = [BODY] * BATCH
        started = time.perf_counter()
        for _ in range(messages // BATCH):
            queue.send_batch("bench", bodies)
            for message in queue.receive("bench", max_messages=BATCH, visibility_timeout=60):
                queue.ack("bench", message.receipt)
        elapsed = time.perf_counter() - started
        assert queue.count("bench") == 0
    return messages / elapsed


def _queue_single(path: Path, messages: int) -> float:
    with SqliteQueue(path) as queue:
        queue.ensure_queue("bench")
        started = time.perf_counter()
        for _ in range(messages):
            queue.send("bench", BODY)
            for message in queue.receive("bench", visibility_timeout=60):
                queue.ack("bench", message.receipt)
        elapsed = time.perf_counter() - started
        assert queue.count("bench") == 0
    return messages / elapsed


def _raw_connection(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("CREATE TABLE rows (seq INTEGER PRIMARY KEY, body TEXT NOT NULL)")
    return conn


def _raw_batched(path: Path, messages: int) -> float:
    conn = _raw_connection(path)
    try:
        started = time.perf_counter()
        for _ in range(messages // BATCH):
            text = [(json.dumps(BODY),) for _ in range(BATCH)]
            conn.execute("BEGIN")
            conn.executemany("INSERT INTO rows (body) VALUES (?)", text)
            conn.execute("COMMIT")
            rows = conn.execute("SELECT seq, body FROM rows LIMIT ?", (BATCH,)).fetchall()
            for seq, body in rows:
                json.loads(body)
                conn.execute("DELETE FROM rows WHERE seq = ?", (seq,))
        return messages / (time.perf_counter() - started)
    finally:
        conn.close()


def _raw_single(path: Path, messages: int) -> float:
    conn = _raw_connection(path)
    try:
        started = time.perf_counter()
        for _ in range(messages):
            conn.execute("INSERT INTO rows (body) VALUES (?)", (json.dumps(BODY),))
            for seq, body in conn.execute("SELECT seq, body FROM rows LIMIT 1").fetchall():
                json.loads(body)
                conn.execute("DELETE FROM rows WHERE seq = ?", (seq,))
        return messages / (time.perf_counter() - started)
    finally:
        conn.close()


def _median_rate(measure: Callable[[Path, int], float], messages: int, workdir: Path) -> float:
    rates = []
    for attempt in range(REPEATS):
        rates.append(measure(workdir / f"{measure.__name__}-{attempt}.db", messages))
    return statistics.median(rates)


def run() -> list[dict[str, Any]]:
    """Measure the figures; each row has figure, value, goal, floor and ratio."""
    with tempfile.TemporaryDirectory(prefix="bench-queue-") as tmp:
        workdir = Path(tmp)
        batched = _median_rate(_queue_batched, BATCHED_MESSAGES, workdir)
        batched_floor = _median_rate(_raw_batched, BATCHED_MESSAGES, workdir)
        single = _median_rate(_queue_single, SINGLE_MESSAGES, workdir)
        single_floor = _median_rate(_raw_single, SINGLE_MESSAGES, workdir)
    return [
        {
            "figure": f"queue msg/s batched (send+receive+ack, batches of {BATCH})",
            "value": round(batched),
            "goal": ">= 5000",
            "floor": round(batched_floor),
            "ratio": round(batched / batched_floor, 2),
        },
        {
            "figure": "queue msg/s single (one send, one receive, one ack each)",
            "value": round(single),
            "goal": ">= 1000",
            "floor": round(single_floor),
            "ratio": round(single / single_floor, 2),
        },
    ]


def _print_table(rows: list[dict[str, Any]]) -> None:
    columns = ["figure", "value", "goal", "floor", "ratio"]
    widths = {c: max(len(c), *(len(str(row[c])) for row in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(str(row[c]).ljust(widths[c]) for c in columns))


if __name__ == "__main__":
    _print_table(run())
