"""The guest-events Lambda handler reports SQS partial batch failures record by record.

(`world` installs the runtime the handler finds with get_runtime().)
"""

from __future__ import annotations

import json

from functions import guest_events
from tests.unit.services.conftest import World


def _record(message_id: str, body: str) -> dict[str, object]:
    return {
        "messageId": message_id,
        "receiptHandle": f"receipt-{message_id}",
        "body": body,
        "attributes": {},
        "messageAttributes": {},
        "md5OfBody": "",
        "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:troveless-guest-events",
        "awsRegion": "us-east-1",
    }


def test_only_the_record_that_failed_is_reported_for_redelivery(world: World) -> None:
    forged = {"kind": "heartbeat", "instance_id": "0" * 8, "signature": "not-a-signature"}
    event = {
        "Records": [
            _record("bad-json", "{not json"),
            _record("forged", json.dumps(forged)),  # verified and rejected: handled, not retried
        ]
    }

    response = guest_events.handler(event, None)

    assert response == {"batchItemFailures": [{"itemIdentifier": "bad-json"}]}


def test_a_batch_that_all_succeeds_reports_no_failures(world: World) -> None:
    event = {"Records": [_record("forged", json.dumps({"kind": "heartbeat"}))]}

    assert guest_events.handler(event, None) == {"batchItemFailures": []}
