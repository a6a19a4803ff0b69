"""Throughput of the Zaqar queue adapter against raw python-zaqarclient, on one real Zaqar server.

Starts a private Zaqar (Redis-backed, noauth; tests/servers/zaqar.py) for the run. Figures
(messages per second, median of REPEATS rounds; each round runs every side once, in turns, and
the ratio is the median of the per-round ratios):
- batched: send_batch of BATCH, receive(max_messages=BATCH), then one ack per message, as in
  bench/queue.py. Floor: raw python-zaqarclient making the same Zaqar calls with its Queue,
  Claim and Message objects (one post of BATCH, one one-message claim per message, one delete
  per message); ratio = the share of the raw client's speed the adapter keeps (goal >= 0.9).
- the same adapter figure against raw python-zaqarclient claiming the whole batch in one claim,
  which is what Zaqar offers but what the adapter must not do (Zaqar 23's Redis driver lets
  such claims take delayed and claimed messages; see shared/adapters/openstack/zaqar_queue.py):
  the ratio is the price of that safety, reported, not gated.
"""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

from zaqarclient.queues.v2 import client as zaqar_client

from shared.adapters.openstack.zaqar_queue import ZaqarQueue
from tests.servers.zaqar import start_zaqar

BATCH = 10  # as bench/queue.py, so the figures compare
MESSAGES = 150
REPEATS = 9
BODY = {"op": "engine.step", "execution": "exec-0123456789", "state": "CreateServer", "attempt": 1}
MESSAGE_TTL = 3600


def _client(endpoint: str) -> Any:
    project = f"bench-{uuid.uuid4().hex[:12]}"  # a fresh project per run: no leftovers
    return zaqar_client.Client(
        endpoint,
        version=2,
        conf={"auth_opts": {"backend": "noauth", "options": {"os_project_id": project}}},
    )


def _adapter_batched(endpoint: str, messages: int) -> float:
    queue = ZaqarQueue(_client(endpoint), message_ttl=MESSAGE_TTL)
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


def _raw_batched(endpoint: str, messages: int, claim_size: int) -> float:
    client = _client(endpoint)
    queue = client.queue("bench", force_create=True)
    posts = [{"body": BODY, "ttl": MESSAGE_TTL} for _ in range(BATCH)]
    started = time.perf_counter()
    for _ in range(messages // BATCH):
        queue.post(posts)
        received = 0
        while received < BATCH:
            claimed = list(queue.claim(ttl=60, grace=60, limit=claim_size))
            if not claimed:
                break
            for message in claimed:
                message.delete()
            received += len(claimed)
    elapsed = time.perf_counter() - started
    assert queue.stats["messages"]["total"] == 0
    return messages / elapsed


def _raw_one_per_claim(endpoint: str, messages: int) -> float:
    return _raw_batched(endpoint, messages, 1)


def _raw_whole_batch_claim(endpoint: str, messages: int) -> float:
    return _raw_batched(endpoint, messages, BATCH)


def _paired_rates(
    measures: list[Callable[[str, int], float]], endpoint: str, messages: int
) -> tuple[list[float], list[float]]:
    """Each measure's median rate, and the median of its per-round ratio to the first measure.

    The measures take turns within each round, in an order that rotates from round to round,
    so that load from other processes on the machine hits them alike; per-round ratios are
    steadier than the ratio of medians when that load comes and goes.
    """
    rates: list[list[float]] = [[] for _ in measures]
    for round_number in range(REPEATS):
        shift = round_number % len(measures)
        for index in list(range(len(measures)))[shift:] + list(range(shift)):
            rates[index].append(measures[index](endpoint, messages))
    medians = [statistics.median(r) for r in rates]
    ratios = [
        statistics.median(first / other for first, other in zip(rates[0], r, strict=True))
        for r in rates
    ]
    return medians, ratios


def run() -> list[dict[str, Any]]:
    """Measure the figures; each row has figure, value, unit, goal, floor and ratio."""
    server = start_zaqar()
    try:
        (adapter, raw_same, raw_batch_claim), (_, vs_same, vs_batch_claim) = _paired_rates(
            [_adapter_batched, _raw_one_per_claim, _raw_whole_batch_claim],
            server.endpoint,
            MESSAGES,
        )
    finally:
        server.stop()
    return [
        {
            "figure": f"zaqar queue msg/s batched (send+receive+ack, batches of {BATCH})"
            " vs raw zaqarclient, same calls",
            "value": round(adapter),
            "unit": "msg/s",
            "goal": "ratio >= 0.9",
            "floor": round(raw_same),
            "ratio": round(vs_same, 2),
        },
        {
            "figure": "zaqar queue msg/s batched vs raw zaqarclient claiming the whole batch"
            " at once (unsafe on Zaqar 23 Redis)",
            "value": round(adapter),
            "unit": "msg/s",
            "goal": "informational",
            "floor": round(raw_batch_claim),
            "ratio": round(vs_batch_claim, 2),
        },
    ]


def _print_table(rows: list[dict[str, Any]]) -> None:
    columns = ["figure", "value", "unit", "goal", "floor", "ratio"]
    widths = {c: max(len(c), *(len(str(row[c])) for row in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(str(row[c]).ljust(widths[c]) for c in columns))


if __name__ == "__main__":
    _print_table(run())
