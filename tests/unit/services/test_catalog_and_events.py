"""CatalogService (flavors, installed datastores) and the guest-events consumer's handling of
bad messages and its queue-trigger entry point."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from functions import guest_events as guest_events_fn
from shared.crypto import new_instance_secret
from shared.errors import NotFoundError
from shared.models.guest import Heartbeat
from shared.models.instance import ServiceStatus
from shared.services.catalog import CatalogService, InstalledVersion, version_id
from shared.services.guest_channel import EVENTS_QUEUE
from shared.services.replay_guard import Rejection
from shared.settings import load_settings
from tests.unit.services.conftest import INSTALLED, World
from tests.unit.services.test_instances import provisioned


def test_catalog_lists_installed_versions_with_stable_ids(tmp_path: Path) -> None:
    two_pg = (
        *INSTALLED,
        InstalledVersion("postgresql", "13", "13.2", "/usr/lib/postgresql/13/bin/postgres"),
    )
    catalog = CatalogService(load_settings(data_dir=tmp_path), probe=lambda: two_pg)
    assert [d.name for d in catalog.datastores()] == ["mariadb", "postgresql", "redis"]
    pg = catalog.datastore("postgresql")
    assert [v.name for v in pg.versions] == ["13", "15"]
    assert catalog.default_version("postgresql").name == "15"
    assert catalog.version("postgresql", version_id("postgresql", "13")).version == "13.2"
    assert catalog.datastore(pg.id) == pg
    again = CatalogService(load_settings(data_dir=tmp_path), probe=lambda: two_pg)
    assert again.datastore("postgresql").id == pg.id
    with pytest.raises(NotFoundError):
        catalog.version("postgresql", "9.6")
    with pytest.raises(NotFoundError):
        catalog.datastore("mongodb")


def test_only_installed_datastores_are_listed(tmp_path: Path) -> None:
    catalog = CatalogService(load_settings(data_dir=tmp_path), probe=lambda: INSTALLED[2:])
    assert [d.name for d in catalog.datastores()] == ["redis"]
    assert catalog.default_datastore().name == "redis"
    with pytest.raises(NotFoundError):
        catalog.datastore("mariadb")


def test_flavors_come_from_settings(tmp_path: Path) -> None:
    catalog = CatalogService(load_settings(data_dir=tmp_path))
    assert [(f.id, f.ram_mb) for f in catalog.flavors()][:2] == [("1", 256), ("2", 512)]
    assert catalog.flavor("tl.medium").id == "3"
    custom = load_settings(
        data_dir=tmp_path, flavors=[{"id": "x1", "name": "huge", "ram_mb": 8192, "vcpus": 4}]
    )
    assert [f.id for f in CatalogService(custom).flavors()] == ["x1"]
    with pytest.raises(NotFoundError):
        CatalogService(custom).flavor("1")


def _heartbeat(instance_id: str, sequence: int, secret: bytes, world: World) -> dict[str, object]:
    from shared.crypto import InstanceKeys

    return (
        Heartbeat(
            instance_id=instance_id,
            sequence=sequence,
            timestamp=world.clock.now(),
            agent_version="test",
            datastore_status=ServiceStatus.CRASHED,
            disk_used_bytes=0,
            disk_total_bytes=1,
        )
        .sign(InstanceKeys.from_secret(secret).signing)
        .model_dump(mode="json")
    )


def test_forged_and_unknown_events_are_rejected_and_counted(world: World) -> None:
    instance_id = provisioned(world)
    consumer = guest_events_fn.service(world.runtime)
    forged = _heartbeat(instance_id, 10**18, new_instance_secret(), world)
    unknown = _heartbeat(str(uuid.uuid4()), 1, new_instance_secret(), world)
    for body in (forged, unknown, {"kind": "heartbeat", "junk": True}):
        world.queue.send(EVENTS_QUEUE, body)
    world.pump_events()
    assert consumer.verifier.rejections[Rejection.FORGED] == 1
    assert consumer.verifier.rejections[Rejection.UNKNOWN_INSTANCE] == 1
    assert consumer.verifier.rejections[Rejection.MALFORMED] == 1
    assert world.service.get("p1", instance_id).operating_status is not ServiceStatus.CRASHED
    assert world.queue.count(EVENTS_QUEUE) == 0  # rejected messages are not redelivered


def test_queue_trigger_reports_partial_batch_failures(world: World) -> None:
    instance_id = provisioned(world)
    record = world.store.get(f"instances/{instance_id}")
    assert record is not None
    good = json.dumps({"kind": "heartbeat", "instance_id": instance_id})  # rejected, not failed
    event = {
        "Records": [
            {"messageId": "m-good", "body": good, "attributes": {}, "messageAttributes": {}},
            {"messageId": "m-bad", "body": "{not json", "attributes": {}, "messageAttributes": {}},
        ]
    }
    response = guest_events_fn.handler(event, None)
    assert response == {"batchItemFailures": [{"itemIdentifier": "m-bad"}]}


@pytest.mark.parametrize("kind", ["heartbeat", "result"])
def test_an_event_overtaken_by_the_delete_leaves_no_guest_records(world: World, kind: str) -> None:
    """The delete flow removes the record and forgets the guest between the consumer's look-up
    of the instance's key and its writes: what the event writes is removed again."""
    from shared.crypto import InstanceKeys
    from shared.models.guest import GuestCommandName, GuestResult
    from shared.services.instance_secrets import guest_secret
    from shared.services.instances import forget_guest_records

    instance_id = provisioned(world)
    instance = world.service.records.find(instance_id)
    assert instance is not None
    secret = guest_secret(instance, world.runtime.master_key)
    consumer = guest_events_fn.service(world.runtime)
    verifier = consumer.verifier
    looked_up = verifier._secret_for

    def key_then_delete(wanted: str) -> bytes | None:
        found = looked_up(wanted)
        world.service.records.remove("p1", wanted)
        forget_guest_records(world.store, wanted)
        return found

    verifier._secret_for = key_then_delete
    if kind == "heartbeat":
        body = _heartbeat(instance_id, 10**6, secret, world)
    else:
        body = (
            GuestResult(
                instance_id=instance_id,
                command_id=str(uuid.uuid4()),
                command=GuestCommandName.LIST_DATABASES,
                sequence=10**6,
                timestamp=world.clock.now(),
                ok=True,
                result={},
            )
            .sign(InstanceKeys.from_secret(secret).signing)
            .model_dump(mode="json")
        )
    assert consumer.process(body) == kind
    assert [k for k in world.store.records if instance_id in k] == []
