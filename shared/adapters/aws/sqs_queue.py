"""The AWS profile's Queue: Amazon SQS standard queues through a boto3 SQS client.

Queue `name` is the SQS queue `prefix + name` (SQS allows 80 characters, queue names 64, so the
prefix is at most 16). Queue URLs are cached; queues are never deleted by this adapter.

Where SQS differs from the local adapter (shared/adapters/local/sqlite_queue.py), and why:

- Seconds are integers in SQS. `visibility_timeout` and `delay_seconds` are rounded up, so a
  sub-second claim lasts 1 s; delays above 900 s and claims above 43200 s raise ValueError
  (SQS limits). A long poll (`wait_seconds`) asks SQS for at most 20 s per call and whole
  seconds, so it may last up to 1 s longer than asked.
- Stale receipts are not detected. SQS (and moto) accept any receipt a message ever had: `ack`
  with a stale receipt may delete the message, `change_visibility` with one may move the claim.
  Only receipts of deleted messages are refused (`ack` ignores them, `change_visibility` raises
  NotFoundError). Consumers must therefore be idempotent, as at-least-once delivery requires
  anyway; the contract suite's stale-receipt checks are skipped for this adapter.
- Dead letters: `ensure_queue` creates the dead-letter queue and sets a RedrivePolicy
  (deadLetterTargetArn + maxReceiveCount); SQS moves the message itself, keeping its id and
  body. Its receive count is not reset (SQS keeps counting).
- `count` is ApproximateNumberOfMessages + NotVisible + Delayed: exact on moto, approximate
  (eventually consistent, within about a minute) on AWS.
- `purge` is SQS PurgeQueue. AWS allows one purge per queue per 60 s and may delete messages
  sent during that minute; a second purge within it raises the ClientError
  PurgeQueueInProgress. moto (by default) has no such limit.
- A body that is not a JSON object is never delivered: it is moved (raw) to the queue's
  dead-letter queue if it has one, else deleted, and an error naming the message id is logged.
  (The local adapter quarantines it in a table instead.)
- Batches: `send_batch` sends 10 messages per SendMessageBatch call; SQS's size limits (per
  message and per batch request) are enforced by SQS, which rejects an oversized call.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections.abc import Sequence
from typing import Any

from botocore.exceptions import ClientError

from shared.adapters.queue_rules import (
    check_dead_letter_arguments,
    check_max_messages,
    check_queue_name,
    check_seconds,
    decode_body,
    encode_body,
)
from shared.errors import InvalidKeyError, NotFoundError, TrovelessError
from shared.observability import get_logger
from shared.ports import JSON, Message

MAX_DELAY_SECONDS = 900
MAX_VISIBILITY_SECONDS = 43200
MAX_WAIT_SECONDS = 20
MAX_PER_CALL = 10  # SQS receives and batch-sends at most 10 messages per call
PREFIX_PATTERN = r"^[A-Za-z0-9_-]{0,16}$"

_MISSING_QUEUE_CODES = {"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"}
_GONE_RECEIPT_CODES = {"ReceiptHandleIsInvalid", "MessageNotInflight"}
_COUNT_ATTRIBUTES = [
    "ApproximateNumberOfMessages",
    "ApproximateNumberOfMessagesNotVisible",
    "ApproximateNumberOfMessagesDelayed",
]

log = get_logger("queue")


class SqsSendError(TrovelessError):
    """SQS refused some messages of a batch; says which and why."""

    def __init__(self, queue: str, failures: list[str]) -> None:
        self.queue = queue
        self.failures = failures
        super().__init__(f"SQS refused messages for queue {queue!r}: {'; '.join(failures)}")


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _whole_seconds(what: str, value: float, limit: float) -> int:
    """`value` rounded up to whole seconds, as SQS takes them; ValueError if out of range
    (`limit` is whole seconds, so checking before rounding up is the same)."""
    return math.ceil(check_seconds(what, value, limit, "SQS"))


class SqsQueue:
    """Queue port on SQS; see the module docstring for where it differs from the local one."""

    def __init__(self, client: Any, prefix: str = "") -> None:
        if re.fullmatch(PREFIX_PATTERN, prefix) is None:
            raise InvalidKeyError(prefix, f"SQS queue prefixes must match {PREFIX_PATTERN}")
        self._client = client
        self._prefix = prefix
        self._urls: dict[str, str] = {}
        self._urls_lock = threading.Lock()

    def close(self) -> None:
        close = getattr(self._client, "close", None)
        if close is not None:
            close()

    # ------------------------------------------------------------------ helpers
    _check_name = staticmethod(check_queue_name)

    def _url(self, name: str) -> str:
        self._check_name(name)
        with self._urls_lock:
            url = self._urls.get(name)
        if url is not None:
            return url
        try:
            url = str(self._client.get_queue_url(QueueName=self._prefix + name)["QueueUrl"])
        except ClientError as exc:
            if _error_code(exc) in _MISSING_QUEUE_CODES:
                raise NotFoundError(name, "queue") from exc
            raise
        with self._urls_lock:
            self._urls[name] = url
        return url

    def _call(self, name: str, operation: str, **kwargs: Any) -> Any:
        """Call `operation` on queue `name`; a vanished queue raises NotFoundError."""
        url = self._url(name)
        try:
            return getattr(self._client, operation)(QueueUrl=url, **kwargs)
        except ClientError as exc:
            if _error_code(exc) in _MISSING_QUEUE_CODES:
                with self._urls_lock:
                    self._urls.pop(name, None)
                raise NotFoundError(name, "queue") from exc
            raise

    def _create(self, name: str) -> str:
        url = str(self._client.create_queue(QueueName=self._prefix + name)["QueueUrl"])
        with self._urls_lock:
            self._urls[name] = url
        return url

    _encode = staticmethod(encode_body)
    _decode = staticmethod(decode_body)

    # ------------------------------------------------------------------ the port
    def ensure_queue(
        self, name: str, *, max_receives: int | None = None, dead_letter_queue: str | None = None
    ) -> None:
        check_dead_letter_arguments(name, max_receives, dead_letter_queue)
        redrive_policy = ""  # empty removes a previous policy: the latest call wins
        if dead_letter_queue is not None:
            # The dead-letter queue must exist before a policy can point at its ARN.
            dlq_url = self._create(dead_letter_queue)
            arn = self._client.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])[
                "Attributes"
            ]["QueueArn"]
            redrive_policy = json.dumps(
                {"deadLetterTargetArn": arn, "maxReceiveCount": str(max_receives)}
            )
        # Created without attributes, so that an existing queue is found, not refused; the
        # policy is set separately.
        url = self._create(name)
        self._client.set_queue_attributes(
            QueueUrl=url, Attributes={"RedrivePolicy": redrive_policy}
        )

    def send(self, queue: str, body: JSON, delay_seconds: float = 0) -> str:
        return self.send_batch(queue, [body], delay_seconds)[0]

    def send_batch(self, queue: str, bodies: Sequence[JSON], delay_seconds: float = 0) -> list[str]:
        delay = _whole_seconds("delay_seconds", delay_seconds, MAX_DELAY_SECONDS)
        self._url(queue)
        encoded = [self._encode(body) for body in bodies]  # fail before sending anything
        ids: list[str] = []
        for start in range(0, len(encoded), MAX_PER_CALL):
            chunk = encoded[start : start + MAX_PER_CALL]
            answer = self._call(
                queue,
                "send_message_batch",
                Entries=[
                    {"Id": str(i), "MessageBody": text, "DelaySeconds": delay}
                    for i, text in enumerate(chunk)
                ],
            )
            failed = answer.get("Failed") or []
            if failed:
                raise SqsSendError(
                    queue,
                    [f"entry {f.get('Id')}: {f.get('Code')} {f.get('Message')}" for f in failed],
                )
            by_entry = {int(ok["Id"]): str(ok["MessageId"]) for ok in answer["Successful"]}
            ids += [by_entry[i] for i in range(len(chunk))]
        return ids

    def receive(
        self,
        queue: str,
        max_messages: int = 1,
        visibility_timeout: float = 30,
        wait_seconds: float = 0,
    ) -> list[Message]:
        check_max_messages(max_messages)
        hidden_for = _whole_seconds(
            "visibility_timeout", visibility_timeout, MAX_VISIBILITY_SECONDS
        )
        _whole_seconds("wait_seconds", wait_seconds, math.inf)
        self._url(queue)
        deadline = time.monotonic() + wait_seconds
        messages: list[Message] = []
        wait = min(MAX_WAIT_SECONDS, math.ceil(wait_seconds))
        while True:
            want = min(MAX_PER_CALL, max_messages - len(messages))
            batch, returned = self._receive_once(queue, want, hidden_for, wait)
            messages += batch
            if len(messages) >= max_messages:
                return messages
            if messages and returned < want:
                return messages  # the queue has no more for us right now
            remaining = deadline - time.monotonic()
            if returned == 0 and remaining <= 0:
                return messages
            # A full batch (there may be more), or only corrupt messages came back: go on,
            # waiting only while we have nothing to return.
            wait = 0 if messages else min(MAX_WAIT_SECONDS, max(0, math.ceil(remaining)))

    def _receive_once(
        self, queue: str, limit: int, hidden_for: int, wait: int
    ) -> tuple[list[Message], int]:
        """One ReceiveMessage call: the well-formed messages, and how many SQS returned."""
        answer = self._call(
            queue,
            "receive_message",
            MaxNumberOfMessages=limit,
            VisibilityTimeout=hidden_for,
            WaitTimeSeconds=wait,
            MessageSystemAttributeNames=["ApproximateReceiveCount", "SentTimestamp"],
        )
        raw_messages = answer.get("Messages") or []
        messages: list[Message] = []
        for raw in raw_messages:
            body, problem = self._decode(raw.get("Body", ""))
            if body is None:
                self._set_aside(queue, raw, problem)
                continue
            attributes = raw.get("Attributes", {})
            messages.append(
                Message(
                    id=str(raw["MessageId"]),
                    body=body,
                    receipt=str(raw["ReceiptHandle"]),
                    receive_count=int(attributes.get("ApproximateReceiveCount", "1")),
                    sent_at=int(attributes.get("SentTimestamp", "0")) / 1000,
                )
            )
        return messages, len(raw_messages)

    def _set_aside(self, queue: str, raw: dict[str, Any], problem: str) -> None:
        """Take a corrupt message out of the queue: into its dead-letter queue, else nowhere."""
        message_id = str(raw.get("MessageId"))
        attributes = self._call(queue, "get_queue_attributes", AttributeNames=["RedrivePolicy"])
        policy = attributes.get("Attributes", {}).get("RedrivePolicy")
        where = "deleted"
        if policy:
            target_arn = str(json.loads(policy)["deadLetterTargetArn"])
            dlq_name = target_arn.rsplit(":", 1)[-1]
            dlq_url = self._client.get_queue_url(QueueName=dlq_name)["QueueUrl"]
            self._client.send_message(QueueUrl=dlq_url, MessageBody=raw.get("Body") or "-")
            where = f"moved to dead-letter queue {dlq_name}"
        self._call(queue, "delete_message", ReceiptHandle=raw["ReceiptHandle"])
        log.error(
            f"message {message_id} in queue {queue} is corrupt and was {where}: {problem}",
            extra={"message_id": message_id, "queue": queue, "reason": problem},
        )

    def ack(self, queue: str, receipt: str) -> None:
        if not isinstance(receipt, str) or not receipt:
            raise InvalidKeyError(str(receipt), "not a receipt handed out by this queue")
        try:
            self._call(queue, "delete_message", ReceiptHandle=receipt)
        except ClientError as exc:
            if _error_code(exc) not in _GONE_RECEIPT_CODES:
                raise
            # Already deleted, or a receipt from another queue: nothing to do.

    def change_visibility(self, queue: str, receipt: str, visibility_timeout: float) -> None:
        hidden_for = _whole_seconds(
            "visibility_timeout", visibility_timeout, MAX_VISIBILITY_SECONDS
        )
        if not isinstance(receipt, str) or not receipt:
            raise InvalidKeyError(str(receipt), "not a receipt handed out by this queue")
        try:
            self._call(
                queue,
                "change_message_visibility",
                ReceiptHandle=receipt,
                VisibilityTimeout=hidden_for,
            )
        except ClientError as exc:
            if _error_code(exc) in _GONE_RECEIPT_CODES:
                raise NotFoundError(receipt, "claim (acked, or received again since)") from exc
            raise

    def purge(self, queue: str) -> None:
        self._call(queue, "purge_queue")

    def count(self, queue: str) -> int:
        answer = self._call(queue, "get_queue_attributes", AttributeNames=_COUNT_ATTRIBUTES)
        attributes = answer.get("Attributes", {})
        return sum(int(attributes.get(key, "0")) for key in _COUNT_ATTRIBUTES)
