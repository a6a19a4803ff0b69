"""What the Zaqar queue adapter does beyond (or differently from) the Queue contract.

The contract itself runs against Zaqar in test_queue.py (backend "zaqar"); these tests pin down
Zaqar-only behaviour, on the same real server (tests/servers/zaqar.py): webhook subscriptions,
claims of at least a minute, claims shared by the messages of one receive, where dead letters
go, and queues that exist in Zaqar but were never ensured.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from shared.adapters.openstack.zaqar_queue import ZaqarQueue
from shared.errors import NotFoundError
from shared.ports import Message
from tests.contract.queue_adapters import SPAWN, ZaqarQueueBackend, receive_then_hang

DEADLINE = 10.0


@pytest.fixture
def backend(zaqar_endpoint: str) -> Iterator[ZaqarQueueBackend]:
    project = ZaqarQueueBackend(zaqar_endpoint, project=f"troveless-{uuid.uuid4().hex[:12]}")
    try:
        yield project
    finally:
        project.delete_queues()


@pytest.fixture
def queue(backend: ZaqarQueueBackend) -> ZaqarQueue:
    return ZaqarQueue(backend.client())


@pytest.fixture
def name(queue: ZaqarQueue) -> str:
    queue_name = f"t-{uuid.uuid4().hex[:12]}"
    queue.ensure_queue(queue_name)
    return queue_name


class WebhookReceiver:
    """A local HTTP endpoint that records the JSON documents POSTed to it."""

    def __init__(self) -> None:
        self.posts: list[Any] = []
        self._changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                document = json.loads(self.rfile.read(length))
                with receiver._changed:
                    receiver.posts.append(document)
                    receiver._changed.notify_all()
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep test output quiet

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hook"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def wait_for(self, count: int, timeout: float = DEADLINE) -> list[Any]:
        """The first `count` posts, waiting up to `timeout` for them; fails if they do not come."""
        with self._changed:
            arrived = self._changed.wait_for(lambda: len(self.posts) >= count, timeout)
            assert arrived, f"{len(self.posts)} of {count} webhook posts within {timeout} s"
            return list(self.posts[:count])

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=DEADLINE)


@pytest.fixture
def webhook() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    try:
        yield receiver
    finally:
        receiver.close()


def test_a_webhook_subscription_gets_every_message_sent(
    backend: ZaqarQueueBackend, queue: ZaqarQueue, name: str, webhook: WebhookReceiver
) -> None:
    subscription_id = queue.subscribe_webhook(name, webhook.url, ttl_seconds=600)
    queue.send(name, {"op": "provision", "n": 1})
    queue.send_batch(name, [{"op": "resize", "n": 2}, {"op": "delete", "n": 3}])

    posts = webhook.wait_for(3)
    assert sorted(post["body"]["n"] for post in posts) == [1, 2, 3]
    assert {post["queue_name"] for post in posts} == {name}
    assert queue.count(name) == 3  # a notification does not consume the message

    queue.unsubscribe(name, subscription_id)
    assert list(backend.client().subscriptions(name)) == []


def test_claims_shorter_than_a_minute_are_held_for_a_minute(queue: ZaqarQueue, name: str) -> None:
    queue.send(name, {"job": 1})
    [first] = queue.receive(name, visibility_timeout=1)
    # Zaqar refuses claims under 60 s, so the message stays hidden well past the 1 s asked.
    assert queue.receive(name, wait_seconds=2.5) == []

    queue.change_visibility(name, first.receipt, 0)
    [again] = queue.receive(name, wait_seconds=DEADLINE)
    assert (again.id, again.receive_count) == (first.id, 2)


@pytest.mark.slow  # waits out Zaqar's shortest claim: a minute
def test_a_dead_consumers_message_comes_back_after_a_minute_as_redelivered(
    backend: ZaqarQueueBackend, queue: ZaqarQueue, name: str
) -> None:
    message_id = queue.send(name, {"job": "resize"})
    reader, writer = SPAWN.Pipe(duplex=False)
    worker = SPAWN.Process(target=receive_then_hang, args=(backend, name, 1.0, writer), daemon=True)
    worker.start()
    try:
        assert reader.poll(DEADLINE), "the worker never reported its message"
        assert reader.recv() == [(message_id, 1)]
        killed_at = time.monotonic()
        worker.kill()
        worker.join(DEADLINE)
        fresh = ZaqarQueue(backend.client(), poll_interval=0.5)  # as in another process
        [message] = fresh.receive(name, wait_seconds=90)
        waited = time.monotonic() - killed_at
    finally:
        if worker.is_alive():
            worker.kill()
        worker.join(DEADLINE)
    assert (message.id, message.body) == (message_id, {"job": "resize"})
    assert message.receive_count >= 2  # redelivered, though this adapter never saw it before
    assert waited >= 50  # the 1 s asked for was held as Zaqar's shortest claim, 60 s


def test_each_message_of_a_receive_has_a_claim_of_its_own(queue: ZaqarQueue, name: str) -> None:
    ids = set(queue.send_batch(name, [{"i": 1}, {"i": 2}]))
    first, second = queue.receive(name, max_messages=2, visibility_timeout=600)
    assert {first.id, second.id} == ids
    assert first.receipt.split("/")[2] != second.receipt.split("/")[2]

    queue.change_visibility(name, first.receipt, 0)  # releases the first only
    [again] = queue.receive(name, max_messages=2, visibility_timeout=600)
    assert again.id == first.id
    queue.ack(name, second.receipt)  # the second's claim was untouched
    queue.ack(name, again.receipt)
    assert queue.count(name) == 0


def test_a_claim_never_takes_delayed_or_claimed_messages(queue: ZaqarQueue, name: str) -> None:
    # Zaqar's several-message claims do both (its Redis claim script stops looking after the
    # first free message); the adapter's one-message claims must not.
    now_id = queue.send(name, {"now": True})
    queue.send(name, {"later": True}, delay_seconds=600)
    assert [m.id for m in queue.receive(name, max_messages=10)] == [now_id]

    other = f"{name}-b"
    queue.ensure_queue(other)
    ids = queue.send_batch(other, [{"i": i} for i in range(4)])
    [head] = queue.receive(other, visibility_timeout=600)
    held = queue.receive(other, max_messages=3, visibility_timeout=600)
    assert [head.id] + [m.id for m in held] == ids
    queue.change_visibility(other, head.receipt, 0)  # a free message ahead of claimed ones
    assert [m.id for m in queue.receive(other, max_messages=10)] == [head.id]


def test_an_ack_through_another_queue_leaves_the_message_alone(
    queue: ZaqarQueue, name: str
) -> None:
    other = f"{name}-other"
    queue.ensure_queue(other)
    queue.send(name, {"keep": "me"})
    [message] = queue.receive(name, visibility_timeout=600)
    # Zaqar finds a message by id alone; the adapter must not let it delete through `other`.
    queue.ack(other, message.receipt)
    with pytest.raises(NotFoundError):
        queue.change_visibility(other, message.receipt, 0)

    queue.change_visibility(name, message.receipt, 0)
    [again] = queue.receive(name, wait_seconds=DEADLINE)
    assert (again.id, again.body) == (message.id, {"keep": "me"})


def test_a_dead_letter_keeps_its_id_and_is_receivable_at_once(
    backend: ZaqarQueueBackend, queue: ZaqarQueue
) -> None:
    name, dlq = f"t-{uuid.uuid4().hex[:12]}", f"t-{uuid.uuid4().hex[:12]}-dlq"
    queue.ensure_queue(name, max_receives=1, dead_letter_queue=dlq)
    message_id = queue.send(name, {"poison": True})
    assert queue.receive(name, visibility_timeout=0)[0].id == message_id

    # Another adapter (as in another process) learns the redrive settings from Zaqar.
    fresh = ZaqarQueue(backend.client())
    assert fresh.receive(name) == []  # a second delivery would exceed 1: moved instead
    assert (queue.count(name), queue.count(dlq)) == (0, 1)
    # Zaqar moved it with the 60 s claim still on; the receive that met nothing lifted it.
    [dead] = queue.receive(dlq)
    assert (dead.id, dead.body) == (message_id, {"poison": True})


def test_a_body_that_is_not_an_object_is_set_aside_into_the_dead_letter_queue(
    backend: ZaqarQueueBackend, queue: ZaqarQueue
) -> None:
    name, dlq = f"t-{uuid.uuid4().hex[:12]}", f"t-{uuid.uuid4().hex[:12]}-dlq"
    queue.ensure_queue(name, max_receives=3, dead_letter_queue=dlq)
    foreign = backend.client().queue(name, auto_create=False)
    foreign.post([{"body": "plain text", "ttl": 600}])  # another Zaqar client, not ours
    queue.send(name, {"fine": True})

    # The foreign message comes with the queue's default delay (1 s): receive until it is seen.
    delivered: list[Message] = []
    deadline = time.monotonic() + DEADLINE
    while queue.count(dlq) == 0 and time.monotonic() < deadline:
        delivered += queue.receive(name, max_messages=10, visibility_timeout=600, wait_seconds=1)
    assert [m.body for m in delivered] == [{"fine": True}]
    assert (queue.count(name), queue.count(dlq)) == (1, 1)
    newest = backend.client().queue(dlq, auto_create=False).stats["messages"]["newest"]
    assert newest["body"] == "plain text"  # copied as it was, for an operator to look at


def test_a_queue_zaqar_has_but_nobody_ensured_is_not_found(
    backend: ZaqarQueueBackend, queue: ZaqarQueue
) -> None:
    foreign = f"t-{uuid.uuid4().hex[:12]}"
    backend.client().queue(foreign, force_create=True)
    with pytest.raises(NotFoundError):
        queue.count(foreign)
    with pytest.raises(NotFoundError):
        queue.send(foreign, {"lost": True})
    queue.ensure_queue(foreign)
    queue.send(foreign, {"kept": True})
    assert queue.count(foreign) == 1


def test_a_receive_with_visibility_zero_returns_each_message_once(
    queue: ZaqarQueue, name: str
) -> None:
    ids = queue.send_batch(name, [{"i": 1}, {"i": 2}])
    peeked = queue.receive(name, max_messages=10, visibility_timeout=0)
    assert sorted(m.id for m in peeked) == sorted(ids)
    again = queue.receive(name, max_messages=10, visibility_timeout=60)  # released: here at once
    assert sorted((m.id, m.receive_count) for m in again) == sorted((i, 2) for i in ids)


def test_sent_at_is_when_the_message_was_sent(queue: ZaqarQueue, name: str) -> None:
    before = time.time()
    queue.send(name, {"x": 1})
    [message] = queue.receive(name, wait_seconds=DEADLINE)
    assert before - 2 <= message.sent_at <= time.time() + 1  # Zaqar counts whole seconds
