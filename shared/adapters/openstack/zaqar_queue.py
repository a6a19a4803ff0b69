"""The OpenStack profile's Queue: Zaqar (OpenStack Messaging) v2 through python-zaqarclient.

The adapter takes a built `zaqarclient.queues.v2.client.Client` (wiring makes it: noauth in
tests, a Keystone session on a cloud); every queue lives in that client's project. It calls the
client's v2 core functions (`zaqarclient.queues.v2.core`) with the client's own request and
transport, as the client's Queue and Claim objects do, because those objects lack what the port
needs: they cannot set queue metadata without clobbering it (their JSON-patch removes the
reserved keys it just added), cannot delete a message by id and claim id without fetching it
first, and cannot list claimed or delayed messages.

How the port maps onto Zaqar, and where Zaqar differs from the local adapter
(shared/adapters/local/sqlite_queue.py):

- A queue exists once `ensure_queue` has put the marker `troveless_queue` into its metadata.
  Zaqar itself creates queues lazily (a post to any name succeeds), so the adapter checks the
  marker once per queue and adapter object and raises NotFoundError when it is missing. A queue
  deleted behind the adapter's back is recreated, without its settings, by the next send.
- receive = create claims (claim TTL = visibility timeout, grace 60 s), one message per claim;
  the receipt is `queue/message id/claim id`; ack = delete the message with its claim id;
  change_visibility = update (or, with 0, delete) its claim.
- Why one message per claim: Zaqar 23's Redis driver claims, after the first free message it
  finds, every later message of the queue without looking at them, so a claim of several
  messages can take messages that are still delayed or held by another live claim (a release
  or an expired claim ahead of them is enough). A one-message claim takes exactly the first
  free message. The price is one request per message received instead of one per batch.
- Claims last at least 60 s and at most 43200 s: Zaqar refuses shorter ones (MIN_CLAIM_TTL is a
  constant, not a setting). A `visibility_timeout` between 0 and 60 s is therefore held for 60 s,
  so a message whose consumer died comes back after a minute, not sooner. 0 is honoured: the
  claim is deleted at once. Zaqar counts whole seconds of its own clock, so one second is added
  to every claim and delay to keep "hidden for at least the time asked".
- Stale receipts are detected: Zaqar refuses a delete whose claim id is not the message's current
  claim, and the adapter ignores that refusal (ack) or raises NotFoundError (change_visibility).
  Releasing (0) a claim that already ran out succeeds if nobody received the message since;
  extending one raises NotFoundError (Zaqar cannot revive a claim).
- `receive_count` cannot come from Zaqar: its v2 API never returns a message's claim count. The
  adapter object counts the deliveries it made itself (exact while one process keeps getting a
  message back), and reports at least 2 for a message 60 s old or more: a message whose claim
  ran out has been in the queue for at least the shortest claim, so a message redelivered to
  another process after its consumer died always counts as redelivered (`receive_count > 1`).
  The price: a message that waited a minute or more before its first delivery also reports 2.
  The one redelivery reported as 1: another process released the message (visibility 0)
  within its first minute. Beyond "1 or more than 1", the count is exact only in-process.
- Dead letters are Zaqar's own: `_max_claim_count` and `_dead_letter_queue` in the queue's
  metadata. The claim that would deliver a message for the (max_receives + 1)-th time moves it,
  same id and body, to the dead-letter queue instead (Zaqar keeps counting its claims there).
  Zaqar leaves that claim on the moved message, hiding it in the dead-letter queue for the
  claim's TTL; the receive that met nothing then deletes the claim on the dead-letter queue's
  newest message if it is the source queue's (one or two more requests per empty receive on a
  queue with a dead-letter queue). That finds the dead letter unless several messages are moved
  at the same moment; one it misses becomes receivable when its claim runs out (at least 60 s).
  `count` sees dead letters at once. Redrive settings are read once per queue and adapter
  object, so another process's later `ensure_queue` may go unnoticed here.
- Delays: Zaqar accepts a per-message `delay` (at most 900 s, so at most 899 s here after the
  added second) only on queues with a non-zero `_default_message_delay`; `ensure_queue` sets it
  to 1, so messages that other clients post without a delay wait 1 s.
- Messages live for `message_ttl` seconds (Zaqar's largest by default: 14 days), then Zaqar
  drops them. Bodies must be JSON objects; a message whose body is not one is never delivered:
  it is copied to the dead-letter queue if the queue has one, deleted, and logged.
- Long polls poll: Zaqar has no waiting claim, so an empty receive with `wait_seconds` retries
  every `poll_interval` seconds until a message comes or the time is up.
- `count` is Zaqar's queue stats total (visible, claimed and delayed). `purge` lists and deletes
  every message, claimed and delayed ones included (Zaqar's own purge skips both); messages sent
  while it runs may survive it. At most 20 messages go in one post, list or bulk delete
  (Zaqar's default page limits).
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from zaqarclient.queues.v2 import core
from zaqarclient.transport import errors as zaqar_errors

from shared.adapters.queue_rules import (
    check_dead_letter_arguments,
    check_max_messages,
    check_queue_name,
    check_seconds,
)
from shared.errors import InvalidKeyError, NotFoundError, TrovelessError
from shared.observability import get_logger
from shared.ports import JSON, Message

MIN_CLAIM_SECONDS = 60  # Zaqar's MIN_CLAIM_TTL (also its smallest grace)
MAX_CLAIM_SECONDS = 43200  # Zaqar's default max_claim_ttl
MAX_DELAY_SECONDS = 899  # Zaqar's default max_message_delay (900) less the added second
DEFAULT_MESSAGE_TTL = 1209600  # Zaqar's default max_message_ttl: 14 days
MAX_PER_CALL = 20  # Zaqar's default max_messages_per_page and max_messages_per_claim_or_pop
QUEUE_MARKER = "troveless_queue"
_REMEMBERED_DELIVERIES = 100_000

log = get_logger("queue")


def _seconds(what: str, value: float, limit: float) -> float:
    return check_seconds(what, value, limit, "Zaqar")


def _claim_seconds(visibility_timeout: float) -> int:
    """The claim TTL Zaqar is asked for: at least the time asked, and at least Zaqar's minimum."""
    return min(MAX_CLAIM_SECONDS, max(MIN_CLAIM_SECONDS, math.ceil(visibility_timeout) + 1))


class ZaqarQueue:
    """Queue port on Zaqar v2; see the module docstring for where it differs from the local one."""

    def __init__(
        self,
        client: Any,
        *,
        message_ttl: int = DEFAULT_MESSAGE_TTL,
        poll_interval: float = 0.1,
    ) -> None:
        if not isinstance(message_ttl, int) or message_ttl < 60:
            raise ValueError(f"message_ttl must be an integer >= 60 s, got {message_ttl!r}")
        self._client = client
        self._message_ttl = message_ttl
        self._poll_interval = poll_interval
        self._known: set[str] = set()
        # queue -> its dead-letter queue (None: no redrive), as this object last saw it
        self._redrive: dict[str, str | None] = {}
        self._lock = threading.Lock()
        # message id -> deliveries made by this object (see the module docstring)
        self._deliveries: OrderedDict[str, int] = OrderedDict()

    def close(self) -> None:
        """Nothing to release: the client holds no connection between calls."""

    # ------------------------------------------------------------------ helpers
    def _call(self, operation: Any, *args: Any, **kwargs: Any) -> Any:
        # Each call needs a fresh request: the core functions write into it.
        request, transport = self._client._request_and_transport()
        return operation(transport, request, *args, **kwargs)

    _check_name = staticmethod(check_queue_name)

    def _metadata(self, name: str) -> dict[str, Any]:
        return dict(self._call(core.queue_get, name) or {})

    def _require_queue(self, name: str) -> None:
        self._check_name(name)
        with self._lock:
            if name in self._known:
                return
        metadata = self._metadata(name)
        if not metadata.get(QUEUE_MARKER):
            raise NotFoundError(name, "queue")
        with self._lock:
            self._known.add(name)
            self._redrive[name] = _dead_letter_queue_of(metadata)

    def _declare(self, name: str, settings: dict[str, Any], removed: Sequence[str] = ()) -> None:
        """Create queue `name` if missing, then set `settings` and drop `removed` keys."""
        self._call(core.queue_create, name, metadata=settings)
        changes = [
            {"op": "add", "path": f"/metadata/{key}", "value": value}
            for key, value in settings.items()
        ] + [{"op": "remove", "path": f"/metadata/{key}"} for key in removed]
        metadata = self._call(core.queue_update, name, metadata=changes)
        with self._lock:
            self._known.add(name)
            self._redrive[name] = _dead_letter_queue_of(metadata or {})

    @staticmethod
    def _encode(body: JSON) -> JSON:
        if not isinstance(body, dict):
            raise TypeError(f"message bodies must be JSON objects (dict), got {type(body)}")
        json.dumps(body, allow_nan=False)  # refuse what Zaqar could not store, before sending
        return body

    @staticmethod
    def _receipt(queue: str, message_id: str, claim_id: str) -> str:
        return f"{queue}/{message_id}/{claim_id}"

    @staticmethod
    def _parse_receipt(receipt: str) -> tuple[str, str, str]:
        parts = receipt.split("/") if isinstance(receipt, str) else []
        if len(parts) != 3 or not all(re.fullmatch(r"[A-Za-z0-9_-]{1,64}", p) for p in parts):
            raise InvalidKeyError(str(receipt), "not a receipt handed out by this queue")
        return parts[0], parts[1], parts[2]

    def _count_delivery(self, message_id: str) -> int:
        with self._lock:
            count = self._deliveries.pop(message_id, 0) + 1
            self._deliveries[message_id] = count
            while len(self._deliveries) > _REMEMBERED_DELIVERIES:
                self._deliveries.popitem(last=False)
            return count

    # ------------------------------------------------------------------ the port
    def ensure_queue(
        self, name: str, *, max_receives: int | None = None, dead_letter_queue: str | None = None
    ) -> None:
        check_dead_letter_arguments(name, max_receives, dead_letter_queue)
        base = {QUEUE_MARKER: 1, "_default_message_delay": 1}
        if dead_letter_queue is None:
            # Reserved keys: Zaqar accepts their removal even when they are not set.
            self._declare(name, base, removed=["_max_claim_count", "_dead_letter_queue"])
            return
        self._declare(dead_letter_queue, base)
        self._declare(
            name,
            {**base, "_max_claim_count": max_receives, "_dead_letter_queue": dead_letter_queue},
        )

    def send(self, queue: str, body: JSON, delay_seconds: float = 0) -> str:
        return self.send_batch(queue, [body], delay_seconds)[0]

    def send_batch(self, queue: str, bodies: Sequence[JSON], delay_seconds: float = 0) -> list[str]:
        delay = _seconds("delay_seconds", delay_seconds, MAX_DELAY_SECONDS)
        self._require_queue(queue)
        encoded = [self._encode(body) for body in bodies]  # fail before sending anything
        delay_field = math.ceil(delay) + 1 if delay > 0 else 0
        ids: list[str] = []
        for start in range(0, len(encoded), MAX_PER_CALL):
            chunk = encoded[start : start + MAX_PER_CALL]
            answer = self._call(
                core.message_post,
                queue,
                {
                    "messages": [
                        {"body": body, "ttl": self._message_ttl, "delay": delay_field}
                        for body in chunk
                    ]
                },
            )
            ids += [str(href).rsplit("/", 1)[-1] for href in answer["resources"]]
        return ids

    def receive(
        self,
        queue: str,
        max_messages: int = 1,
        visibility_timeout: float = 30,
        wait_seconds: float = 0,
    ) -> list[Message]:
        check_max_messages(max_messages)
        hidden_for = _seconds("visibility_timeout", visibility_timeout, MAX_CLAIM_SECONDS - 1)
        wait = _seconds("wait_seconds", wait_seconds, math.inf)
        self._require_queue(queue)
        deadline = time.monotonic() + wait
        while True:
            messages: list[Message] = []
            # One message per claim: see the module docstring (Zaqar's multi-message claims
            # can take claimed and delayed messages).
            while len(messages) < max_messages:
                claimed, message = self._claim_one(queue, hidden_for)
                if not claimed:
                    break
                if message is not None:
                    messages.append(message)
            if hidden_for == 0:
                # Released only now, so that this receive does not claim them again.
                for message in messages:
                    self._call(core.claim_delete, queue, self._parse_receipt(message.receipt)[2])
            remaining = deadline - time.monotonic()
            if messages or remaining <= 0:
                return messages
            time.sleep(min(self._poll_interval, remaining))

    def _claim_one(self, queue: str, hidden_for: float) -> tuple[bool, Message | None]:
        """Claim one message: whether Zaqar handed one out, and it unless it was set aside."""
        answer = self._call(
            core.claim_create,
            queue,
            ttl=_claim_seconds(hidden_for),
            grace=MIN_CLAIM_SECONDS,
            limit=1,
        )
        raw_messages = (answer or {}).get("messages") or []
        if not raw_messages:
            # Empty, or the claimed message went to the dead-letter queue instead.
            self._free_dead_letters(queue)
            return False, None
        raw = raw_messages[0]
        message_id = str(raw["id"])
        claim_id = _claim_of(raw)
        if claim_id is None:
            raise TrovelessError(f"Zaqar claimed message {message_id} without a claim id")
        body = raw.get("body")
        if not isinstance(body, dict):
            self._set_aside(queue, message_id, claim_id, body)
            return True, None
        age = float(raw.get("age", 0))
        count = self._count_delivery(message_id)
        if age >= MIN_CLAIM_SECONDS:
            count = max(count, 2)  # may have been delivered before: see the module docstring
        return True, Message(
            id=message_id,
            body=body,
            receipt=self._receipt(queue, message_id, claim_id),
            receive_count=count,
            sent_at=time.time() - age,
        )

    def _free_dead_letters(self, queue: str) -> None:
        """Lift the claim Zaqar leaves on a message it moved to `queue`'s dead-letter queue.

        The claim that moved it belongs to `queue` and holds nothing else (claims take one
        message), so deleting it frees just the dead letter. Zaqar says neither which message
        moved nor which claim moved it, so this looks at the dead-letter queue's newest message:
        best effort; a dead letter it misses becomes receivable when its claim runs out."""
        with self._lock:
            dead_letter_queue = self._redrive.get(queue)
        if dead_letter_queue is None:
            return
        try:
            stats = self._call(core.queue_get_stats, dead_letter_queue)
        except zaqar_errors.ResourceNotFound:
            return
        newest = stats.get("messages", {}).get("newest") or {}
        claim_id = newest.get("claim_id")
        if claim_id:
            # A claim of the dead-letter queue's own consumers is not in `queue`: Zaqar
            # ignores the delete then.
            self._call(core.claim_delete, queue, str(claim_id))

    def _set_aside(self, queue: str, message_id: str, claim_id: str, body: Any) -> None:
        """Take a message whose body is not a JSON object out of the queue, into its DLQ if any."""
        dead_letter_queue = _dead_letter_queue_of(self._metadata(queue))
        where = "deleted"
        if dead_letter_queue is not None:
            self._call(
                core.message_post,
                dead_letter_queue,
                {"messages": [{"body": body, "ttl": self._message_ttl, "delay": 0}]},
            )
            where = f"copied to dead-letter queue {dead_letter_queue} and deleted"
        self._call(core.message_delete, queue, message_id, claim_id)
        problem = f"body is JSON {type(body).__name__}, not an object"
        log.error(
            f"message {message_id} in queue {queue} is corrupt and was {where}: {problem}",
            extra={"message_id": message_id, "queue": queue, "reason": problem},
        )

    def ack(self, queue: str, receipt: str) -> None:
        receipt_queue, message_id, claim_id = self._parse_receipt(receipt)
        self._require_queue(queue)
        if receipt_queue != queue:
            # Zaqar finds messages by id alone: deleting from the wrong queue would destroy it.
            return
        try:
            self._call(core.message_delete, queue, message_id, claim_id)
        except (zaqar_errors.MalformedRequest, zaqar_errors.ForbiddenError):
            return  # 400/403: the claim ran out or was replaced: a stale receipt, ignored
        with self._lock:
            self._deliveries.pop(message_id, None)

    def change_visibility(self, queue: str, receipt: str, visibility_timeout: float) -> None:
        hidden_for = _seconds("visibility_timeout", visibility_timeout, MAX_CLAIM_SECONDS - 1)
        receipt_queue, message_id, claim_id = self._parse_receipt(receipt)
        self._require_queue(queue)
        gone = NotFoundError(receipt, "claim (acked, or received again since)")
        if receipt_queue != queue:
            raise gone
        try:
            current = self._call(core.message_get, queue, message_id)
        except zaqar_errors.ResourceNotFound as exc:
            raise gone from exc
        current_claim = _claim_of(current)
        if hidden_for == 0:
            if current_claim is None:
                return  # already free (the claim ran out, or was released): nothing to do
            if current_claim != claim_id:
                raise gone
            self._call(core.claim_delete, queue, claim_id)
            return
        if current_claim != claim_id:
            raise gone
        try:
            self._call(
                core.claim_update,
                queue,
                claim_id,
                ttl=_claim_seconds(hidden_for),
                grace=MIN_CLAIM_SECONDS,
            )
        except zaqar_errors.ResourceNotFound as exc:
            raise gone from exc

    def purge(self, queue: str) -> None:
        self._require_queue(queue)
        previous: list[str] = []
        while True:
            listed = self._call(
                core.message_list,
                queue,
                # Zaqar 23's Redis driver fails listing claimed messages without a marker; an
                # id that is not in the queue starts the listing at the beginning.
                marker="0",
                limit=MAX_PER_CALL,
                echo="true",
                include_claimed="true",
                include_delayed="true",
            )
            ids = [str(m["id"]) for m in (listed or {}).get("messages") or []]
            if not ids:
                return
            if ids == previous:
                raise TrovelessError(f"Zaqar did not delete messages {ids} of queue {queue!r}")
            self._call(core.message_delete_many, queue, ids)
            previous = ids

    def count(self, queue: str) -> int:
        self._require_queue(queue)
        stats = self._call(core.queue_get_stats, queue)
        return int(stats["messages"]["total"])

    # ------------------------------------------------------------------ beyond the port
    def subscribe_webhook(self, queue: str, url: str, ttl_seconds: int = 3600) -> str:
        """Make Zaqar POST every message sent to `queue` from now on to `url`; returns the
        subscription id. Zaqar posts each message (its body under "body", plus "queue_name")
        as JSON when it is sent, delayed or not, and whether or not anyone receives it."""
        self._require_queue(queue)
        if not isinstance(ttl_seconds, int) or ttl_seconds < 60:
            raise ValueError(f"ttl_seconds must be an integer >= 60, got {ttl_seconds!r}")
        answer = self._call(
            core.subscription_create,
            queue,
            {"subscriber": url, "ttl": ttl_seconds, "options": {}},
        )
        return str(answer["subscription_id"])

    def unsubscribe(self, queue: str, subscription_id: str) -> None:
        """Remove a subscription; removing one that is gone already is not an error."""
        self._require_queue(queue)
        self._call(core.subscription_delete, queue, subscription_id)


def _claim_of(message: dict[str, Any]) -> str | None:
    """The id of the live claim on a message Zaqar returned, from its href; None if unclaimed."""
    href = str(message.get("href", ""))
    return href.rsplit("claim_id=", 1)[-1] if "claim_id=" in href else None


def _dead_letter_queue_of(metadata: dict[str, Any]) -> str | None:
    """The dead-letter queue Zaqar moves a queue's messages to, from the queue's metadata."""
    name = metadata.get("_dead_letter_queue")
    return str(name) if name and metadata.get("_max_claim_count") else None
