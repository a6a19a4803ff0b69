"""The guest-events consumer: queue-triggered, a batch of events-queue messages at a time.

Three entry points, one behaviour (`GuestEventService`):

- `handler(event, context)`: an SQS-shaped trigger (`{"Records": [{"messageId", "body"}]}`),
  answering powertools' partial-batch response (`{"batchItemFailures": [...]}`) so only
  the failed messages come back.
- `consume(messages)`: a batch already received from the Queue port; acknowledges the
  messages handled and leaves the failed ones for redelivery; returns the failed ids.
- `work(should_stop)`: the embedded cloud's queue trigger, a receive/consume loop for a
  thread of `troveless up` (and the integration tests).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
    process_partial_response,
)
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from functions.runtime import Runtime, get_runtime
from shared.observability import get_logger
from shared.ports import Message
from shared.services.guest_channel import EVENTS_QUEUE
from shared.services.guest_events import GuestEventService
from shared.services.guest_liveness import liveness_refresh_seconds

log = get_logger("guest-events-consumer")

_lock = threading.Lock()
_services: dict[int, tuple[Runtime, GuestEventService]] = {}


def service(runtime: Runtime | None = None) -> GuestEventService:
    """The process's consumer for `runtime` (kept, so rejection counters accumulate)."""
    runtime = runtime or get_runtime()
    with _lock:
        cached = _services.get(id(runtime))
        if cached is None or cached[0] is not runtime:
            built = GuestEventService(
                runtime.store,
                runtime.clock,
                runtime.workflows,
                runtime.master_key,
                heartbeat_max_age=max(30.0, runtime.settings.heartbeat_expiry * 2),
                liveness_refresh=liveness_refresh_seconds(
                    runtime.settings.heartbeat_expiry, runtime.settings.heartbeat_interval
                ),
            )
            cached = (runtime, built)
            _services[id(runtime)] = cached
        return cached[1]


def consume(messages: list[Message], runtime: Runtime | None = None) -> list[str]:
    """Handle a received batch, acknowledge what was handled; returns the ids left for
    redelivery."""
    runtime = runtime or get_runtime()
    outcome = service(runtime).process_batch(messages)
    failed = set(outcome.failed)
    for message in messages:
        if message.id not in failed:
            runtime.queue.ack(EVENTS_QUEUE, message.receipt)
    return outcome.failed


def work(
    should_stop: Callable[[], bool],
    *,
    runtime: Runtime | None = None,
    batch: int = 10,
    wait_seconds: float = 0.5,
) -> int:
    """Receive and consume until `should_stop()`; returns how many messages were handled.
    (A long-poll receive, not a sleep: it returns as soon as a message arrives.)"""
    runtime = runtime or get_runtime()
    handled = 0
    while not should_stop():
        try:
            messages = runtime.queue.receive(
                EVENTS_QUEUE,
                batch,
                runtime.settings.queue_visibility_timeout,
                wait_seconds,
            )
            if messages:
                handled += len(messages) - len(consume(messages, runtime))
        except Exception:  # the queue or store hiccuped: keep the trigger alive
            log.exception("guest-events receive failed")
    return handled


def _record_handler(record: SQSRecord) -> None:
    service().process(json.loads(record.body))


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Queue trigger (SQS-shaped event): partial batch failures, as powertools reports them."""
    processor = BatchProcessor(event_type=EventType.SQS)
    response = process_partial_response(
        event=event, record_handler=_record_handler, processor=processor, context=context
    )
    return dict(response)
