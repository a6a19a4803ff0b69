"""The guest-events consumer: queue-triggered, a batch of events-queue messages at a time.

Four entry points, one behaviour (`GuestEventService`):

- `handler(event, context)`: an SQS-shaped trigger (`{"Records": [{"messageId", "body"}]}`),
  answering powertools' partial-batch response (`{"batchItemFailures": [...]}`) so only
  the failed messages come back.
- `consume(messages)`: a batch already received from the Queue port; acknowledges the
  messages handled and leaves the failed ones for redelivery; returns the failed ids.
- `work(should_stop)`: the embedded cloud's queue trigger, a receive/consume loop for a
  thread of `troveless up` (and the integration tests).
- `webhook_handler(event, context)`: an HTTP trigger (API Gateway proxy event) for the
  messages Zaqar pushes to a webhook subscription, one per request.
"""

from __future__ import annotations

import base64
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
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from functions.runtime import Runtime, get_runtime
from shared.observability import get_logger
from shared.ports import Message
from shared.services.guest_channel import EVENTS_QUEUE
from shared.services.guest_events import GuestEventService
from shared.services.guest_liveness import liveness_refresh_seconds

log = get_logger("guest-events-consumer")

NOTIFICATION = "Notification"  # Zaqar's Message_Type of a pushed message

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


# ---------------------------------------------------------------------- push (HTTP) trigger


class ZaqarNotification(BaseModel):
    """One message as Zaqar 23's webhook notifier POSTs it (zaqar/notification/notifier.py and
    tasks/webhook.py): the message as its sender posted it (`body`, `ttl`, `delay` if given)
    plus `queue_name` and `Message_Type`. It carries no message id: the notifier runs in the
    message pipeline before the message is stored."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    message_type: str = Field(default=NOTIFICATION, alias="Message_Type")
    queue_name: str | None = None
    body: dict[str, Any] | None = None


def _answer(status: int, problem: str | None = None) -> dict[str, Any]:
    if problem is None:
        return {"statusCode": status, "headers": {}, "body": ""}
    return {
        "statusCode": status,
        "headers": {"Content-Type": "application/json"},
        "body": json.dumps({"error": problem}),
    }


def _request_text(event: dict[str, Any]) -> str:
    raw = event.get("body") or ""
    if event.get("isBase64Encoded"):
        return base64.b64decode(raw).decode("utf-8")
    return str(raw)


def webhook_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """HTTP trigger (API Gateway proxy event): one Zaqar webhook notification per request.

    No authentication on purpose: what matters is the guest event inside, and it is HMAC-signed
    under its instance's key and checked for freshness and replay by the same
    `GuestEventService.process` as the pull path. A forged or replayed event is therefore
    verified, counted as rejected and answered 204 (handled: delivering it again changes
    nothing). 400 names the field of a malformed notification; 503 says processing failed
    (the store was unreachable...). Zaqar 23 only retries a POST that raised (connection
    refused or reset): its `if response and ...` is false for every 4xx/5xx answer, since a
    `requests` response is falsy then. The message stays in the queue all the same, where
    the openstack profile's push-mode backstop (infra/openstack/wiring.py) finds it.
    """
    try:
        document = json.loads(_request_text(event))
    except (ValueError, UnicodeDecodeError):
        return _answer(400, "body: not a JSON document")
    if not isinstance(document, dict):
        return _answer(400, "body: not a JSON object")
    try:
        notification = ZaqarNotification.model_validate(document)
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(part) for part in err['loc'])}: {err['msg']}" for err in exc.errors()
        ]
        return _answer(400, "; ".join(problems))
    if notification.message_type != NOTIFICATION:
        # (Un)subscription confirmations: sent only when Zaqar requires confirmation, which
        # the deployments troveless makes do not; nothing to confirm here.
        log.info("zaqar notification ignored", extra={"type": notification.message_type})
        return _answer(204)
    if notification.queue_name != EVENTS_QUEUE:
        return _answer(400, f"queue_name: not the {EVENTS_QUEUE} queue")
    if notification.body is None:
        return _answer(400, "body: missing")
    try:
        outcome = service().process(notification.body)
    except Exception:
        log.exception("pushed guest event failed")
        return _answer(503, "processing failed; logged")
    log.debug("pushed guest event handled", extra={"outcome": outcome})
    return _answer(204)


def drain(runtime: Runtime | None = None, *, batch: int = 10) -> int:
    """Receive and consume until the events queue has nothing visible; returns how many
    messages were handled. (Push mode's backstop: see infra/openstack/wiring.py.)"""
    runtime = runtime or get_runtime()
    handled = 0
    while True:
        messages = runtime.queue.receive(
            EVENTS_QUEUE, batch, runtime.settings.queue_visibility_timeout, 0
        )
        if not messages:
            return handled
        handled += len(messages) - len(consume(messages, runtime))
