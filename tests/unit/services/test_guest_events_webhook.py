"""The guest-events HTTP trigger: Zaqar's webhook notifications in, proxy responses out.

(`world` installs the runtime the handler finds with get_runtime(); the events reach the
handler exactly as Zaqar 23's webhook notifier POSTs them.)
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest

from functions import guest_events
from infra.local.server import GUEST_EVENTS_PATH, proxy_event
from shared.models.instance import ServiceStatus
from shared.ports import JSON
from shared.services.guest_channel import EVENTS_QUEUE
from shared.services.guest_liveness import liveness_key
from shared.services.replay_guard import Rejection
from tests.unit.services.conftest import World
from tests.unit.services.test_instances import provisioned


def zaqar_post(document: Any) -> dict[str, Any]:
    """The proxy event of one POST by Zaqar's webhook notifier carrying `document`."""
    text = document if isinstance(document, str) else json.dumps(document)
    headers = {"Content-Type": "application/json"}
    return proxy_event("POST", GUEST_EVENTS_PATH, headers, text.encode(), "127.0.0.1")


def notification(body: JSON) -> dict[str, Any]:
    """A message as the notifier sends it: as posted (body, ttl, delay) + queue and type."""
    return {
        "body": body,
        "ttl": 1209600,
        "delay": 0,
        "queue_name": EVENTS_QUEUE,
        "Message_Type": "Notification",
    }


def signed_heartbeat(world: World, instance_id: str, status: ServiceStatus) -> JSON:
    """A heartbeat signed by the instance's guest (taken off the queue the fake guest uses)."""
    world.guest.heartbeat(instance_id, status)
    [message] = world.queue.receive(EVENTS_QUEUE, 10, 30)
    world.queue.ack(EVENTS_QUEUE, message.receipt)
    return message.body


def test_a_pushed_heartbeat_is_handled(world: World) -> None:
    instance_id = provisioned(world)
    beat = signed_heartbeat(world, instance_id, ServiceStatus.RUNNING)

    response = guest_events.webhook_handler(zaqar_post(notification(beat)), None)

    assert response["statusCode"] == 204
    assert world.service.get("p1", instance_id).operating_status is ServiceStatus.RUNNING
    assert liveness_key(instance_id) in world.store.records


def test_forged_and_replayed_events_are_rejected_but_answered_204(world: World) -> None:
    instance_id = provisioned(world)
    beat = signed_heartbeat(world, instance_id, ServiceStatus.RUNNING)
    assert isinstance(beat, dict)
    forged = {**beat, "datastore_status": ServiceStatus.CRASHED.value}  # signature now wrong
    before = guest_events.service().verifier.rejections.copy()

    answers = [
        guest_events.webhook_handler(zaqar_post(notification(forged)), None),
        guest_events.webhook_handler(zaqar_post(notification(beat)), None),
        guest_events.webhook_handler(zaqar_post(notification(beat)), None),  # a replay
    ]

    assert [a["statusCode"] for a in answers] == [204, 204, 204]
    assert world.service.get("p1", instance_id).operating_status is ServiceStatus.RUNNING
    rejected = guest_events.service().verifier.rejections - before
    assert rejected == Counter({Rejection.FORGED: 1, Rejection.REPLAYED: 1})


@pytest.mark.parametrize(
    ("document", "field"),
    [
        ("{not json", "body"),
        ('["a", "list"]', "body"),
        ({**notification({"kind": "heartbeat"}), "body": "a string"}, "body"),
        ({**notification({"kind": "heartbeat"}), "queue_name": 7}, "queue_name"),
        ({**notification({"kind": "heartbeat"}), "queue_name": "other-queue"}, "queue_name"),
        ({k: v for k, v in notification({}).items() if k != "body"}, "body"),
    ],
)
def test_a_malformed_notification_is_refused_naming_the_field(
    world: World, document: Any, field: str
) -> None:
    response = guest_events.webhook_handler(zaqar_post(document), None)

    assert response["statusCode"] == 400
    assert json.loads(response["body"])["error"].startswith(f"{field}:")


def test_a_processing_failure_answers_503(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    def unreachable(body: JSON) -> str:
        raise ConnectionError("the state store is unreachable")

    monkeypatch.setattr(guest_events.service(), "process", unreachable)

    response = guest_events.webhook_handler(zaqar_post(notification({"kind": "x"})), None)

    assert response["statusCode"] == 503


def test_a_subscription_confirmation_is_ignored(world: World) -> None:
    confirmation = {"Message_Type": "SubscriptionConfirmation", "Message": "You have chosen..."}

    assert guest_events.webhook_handler(zaqar_post(confirmation), None)["statusCode"] == 204
