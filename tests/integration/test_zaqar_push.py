"""Push mode against a real Zaqar: Zaqar POSTs a guest event to the embedded server's
/functions/guest-events and the event takes effect, with no pull consumer running.

The runtime is the local one (directory state store) with the Zaqar queue in place of the
local queue: what is under test is Zaqar -> webhook -> GuestEventService, not Swift.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from functions import guest_events
from functions.runtime import Runtime, set_runtime
from infra.local.keystone import LocalKeystone, local_identity
from infra.local.server import GUEST_EVENTS_PATH, EmbeddedServer
from infra.openstack.wiring import GuestEventsPush, zaqar
from infra.wiring import build_local
from shared.adapters.openstack.zaqar_queue import ZaqarQueue
from shared.crypto import InstanceKeys, new_instance_secret
from shared.models.datastore import DatastoreRef
from shared.models.guest import Heartbeat
from shared.models.instance import Instance, ServiceStatus
from shared.models.volume import Volume, VolumeKind
from shared.openstack_settings import OpenStackSettings
from shared.services.guest_channel import EVENTS_QUEUE
from shared.services.instance_secrets import seal_guest_secret
from shared.services.instances import InstanceRecords
from shared.services.replay_guard import Rejection
from shared.services.tokens import TokenService
from shared.settings import load_settings
from tests.integration.embedded_cloud import wait_until

PUSH_TIMEOUT = 15.0


@dataclass
class PushedCloud:
    runtime: Runtime
    server: EmbeddedServer
    queue: ZaqarQueue
    openstack: OpenStackSettings


@pytest.fixture
def pushed_cloud(zaqar_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[PushedCloud]:
    # The backstop must not be what handles the event here: it waits an hour.
    monkeypatch.setattr(GuestEventsPush, "BACKSTOP_SECONDS", 3600.0)
    openstack = OpenStackSettings(
        cloud="unused-swift",  # Swift is not used: the state stays in a local directory
        zaqar_url=zaqar_endpoint,
        zaqar_project_id=f"tl-push-{uuid.uuid4().hex[:8]}",
        guest_events_push=True,
    )
    root = Path(tempfile.mkdtemp(prefix="tl-push-", dir="/tmp"))
    settings = load_settings(data_dir=root, openstack=openstack)
    local, cloud, driver = build_local(settings)
    queue = ZaqarQueue(zaqar(openstack), poll_interval=0.05)
    queue.ensure_queue(EVENTS_QUEUE)
    runtime = dataclasses.replace(local, queue=queue)
    tokens = TokenService(runtime.master_key, runtime.clock, settings.token_ttl_seconds)
    keystone = LocalKeystone(local_identity(settings, tokens)[0], settings.region)
    server = EmbeddedServer(runtime, driver, keystone, "127.0.0.1", 0, engine_workers=0)
    set_runtime(runtime)
    try:
        server.start()
        yield PushedCloud(runtime, server, queue, openstack)
    finally:
        server.stop()
        set_runtime(None)
        cloud.close()
        shutil.rmtree(root, ignore_errors=True)


def guest_instance(runtime: Runtime) -> tuple[str, InstanceKeys]:
    """An instance record whose guest can sign events (no server behind it)."""
    instance_id = str(uuid.uuid4())
    secret = new_instance_secret()
    now = runtime.clock.now()
    InstanceRecords(runtime.store).create(
        Instance(
            id=instance_id,
            project_id="p1",
            name="pushed",
            flavor_id="2",
            volume=Volume(kind=VolumeKind.DIRECTORY, size_gb=1),
            datastore=DatastoreRef(type="mariadb", version="10.11"),
            encrypted_guest_secret=seal_guest_secret(instance_id, secret, runtime.master_key),
            created=now,
            updated=now,
        )
    )
    return instance_id, InstanceKeys.from_secret(secret)


def test_zaqar_pushes_a_guest_event_to_the_function_endpoint(pushed_cloud: PushedCloud) -> None:
    runtime, queue = pushed_cloud.runtime, pushed_cloud.queue
    subscriptions = list(zaqar(pushed_cloud.openstack).subscriptions(EVENTS_QUEUE))
    assert [s.subscriber for s in subscriptions] == [pushed_cloud.server.url + GUEST_EVENTS_PATH]
    instance_id, keys = guest_instance(runtime)
    records = InstanceRecords(runtime.store)
    beat = Heartbeat(
        instance_id=instance_id,
        sequence=1,
        timestamp=runtime.clock.now(),
        agent_version="test",
        datastore_status=ServiceStatus.RUNNING,
        disk_used_bytes=1,
        disk_total_bytes=10,
    ).sign(keys.signing)

    queue.send(EVENTS_QUEUE, beat.model_dump(mode="json"))

    wait_until(
        lambda: records.get(instance_id).operating_status is ServiceStatus.RUNNING,
        "the pushed heartbeat to set the operating status",
        PUSH_TIMEOUT,
    )
    # Zaqar pushed a copy; the message itself is still queued, until the backstop takes it
    # (and refuses it as the replay it is).
    assert queue.count(EVENTS_QUEUE) == 1
    push = pushed_cloud.server._push
    assert isinstance(push, GuestEventsPush)
    replays = guest_events.service(runtime).verifier.rejections[Rejection.REPLAYED]
    wait_until(
        lambda: push.tick() >= 0 and queue.count(EVENTS_QUEUE) == 0,
        "the backstop to empty the events queue",
        PUSH_TIMEOUT,
    )
    assert guest_events.service(runtime).verifier.rejections[Rejection.REPLAYED] == replays + 1


def test_start_replaces_a_stale_subscription_and_stop_removes_it(
    pushed_cloud: PushedCloud,
) -> None:
    push = pushed_cloud.server._push
    assert isinstance(push, GuestEventsPush)
    client = zaqar(pushed_cloud.openstack)
    stale = push.subscription_id

    push.start()  # as a restarted `troveless up` finds its predecessor's subscription

    assert [s.id for s in client.subscriptions(EVENTS_QUEUE)] == [push.subscription_id]
    assert push.subscription_id != stale
    pushed_cloud.server.stop()
    assert list(client.subscriptions(EVENTS_QUEUE)) == []
