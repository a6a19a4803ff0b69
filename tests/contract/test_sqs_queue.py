"""What the SQS adapter does beyond the Queue contract, against the real moto server:
corrupt bodies are set aside (to the dead-letter queue, else deleted), SQS's whole-second limits.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from shared.adapters.aws.sqs_queue import SqsQueue
from shared.errors import InvalidKeyError
from tests.contract.queue_adapters import QueueUnderTest, SqsQueueBackend, sqs_on_moto


@pytest.fixture
def sqs(request: pytest.FixtureRequest) -> Iterator[QueueUnderTest]:
    yield from sqs_on_moto(request)


def _send_raw(backend: SqsQueueBackend, queue: str, body: str) -> str:
    """Put bytes the adapter never wrote into the queue, as a foreign producer might."""
    client: Any = backend.client()
    try:
        url = client.get_queue_url(QueueName=backend.prefix + queue)["QueueUrl"]
        return str(client.send_message(QueueUrl=url, MessageBody=body)["MessageId"])
    finally:
        client.close()


@pytest.mark.parametrize("raw", ["{not json", "[1, 2]"])
def test_a_corrupt_body_goes_to_the_dead_letter_queue(
    sqs: QueueUnderTest, caplog: pytest.LogCaptureFixture, raw: str
) -> None:
    assert isinstance(sqs.backend, SqsQueueBackend)
    queue = sqs.open()
    queue.ensure_queue("jobs", max_receives=3, dead_letter_queue="jobs-dlq")
    bad_id = _send_raw(sqs.backend, "jobs", raw)
    good_id = queue.send("jobs", {"ok": True})

    got = queue.receive("jobs", max_messages=10, wait_seconds=5)
    assert [m.id for m in got] == [good_id]
    assert queue.count("jobs") == 1  # the good one, claimed; the bad one is gone
    assert queue.count("jobs-dlq") == 1
    assert bad_id in caplog.text  # the error names the message


def test_a_corrupt_body_without_dead_letter_queue_is_deleted(
    sqs: QueueUnderTest, caplog: pytest.LogCaptureFixture
) -> None:
    assert isinstance(sqs.backend, SqsQueueBackend)
    queue = sqs.open()
    queue.ensure_queue("plain")
    bad_id = _send_raw(sqs.backend, "plain", "\x01garbage")

    assert queue.receive("plain", max_messages=10, wait_seconds=1) == []
    assert queue.count("plain") == 0
    assert bad_id in caplog.text  # the error names the message


def test_seconds_beyond_sqs_limits_are_refused(sqs: QueueUnderTest) -> None:
    queue = sqs.open()
    queue.ensure_queue("limits")
    with pytest.raises(ValueError):
        queue.send("limits", {"x": 1}, delay_seconds=901)
    with pytest.raises(ValueError):
        queue.receive("limits", visibility_timeout=43201)
    assert queue.count("limits") == 0


def test_sub_second_delay_rounds_up_to_one_second(sqs: QueueUnderTest) -> None:
    queue = sqs.open()
    queue.ensure_queue("rounding")
    queue.send("rounding", {"x": 1}, delay_seconds=0.2)
    assert queue.receive("rounding") == []  # still delayed: 0.2 s became 1 s
    assert len(queue.receive("rounding", wait_seconds=5)) == 1


def test_prefix_must_fit_sqs_names() -> None:
    with pytest.raises(InvalidKeyError):
        SqsQueue(client=None, prefix="x" * 17)
    with pytest.raises(InvalidKeyError):
        SqsQueue(client=None, prefix="a.b")
