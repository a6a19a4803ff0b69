"""The backup and backup-schedule routes through `functions.api.handler`, over the in-memory
world of the service tests (real flows, fake guest, directory blob store)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.models.instance import InstanceStatus
from tests.unit.api.conftest import Api
from tests.unit.api.fakes import StubInstanceService
from tests.unit.services.backup_fakes import PROJECT, Env, active_instance, backup_env

BASE = f"/v1.0/{PROJECT}"


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    yield from backup_env(tmp_path)


def api_for(env: Env) -> Api:
    world, _backups, _guest = env
    client = Api(world.runtime, StubInstanceService())
    client.token = client.token_for(PROJECT)
    return client


def test_backup_create_show_list_and_delete(env: Env) -> None:
    world, backups, guest = env
    client = api_for(env)
    instance_id = active_instance(world, guest)

    status, body = client.call(
        "POST", f"{BASE}/backups", {"backup": {"name": "nightly", "instance": instance_id}}
    )
    assert status == 202, body
    backup_id = body["backup"]["id"]
    assert body["backup"]["status"] == "NEW"
    assert body["backup"]["datastore"]["type"] == "mariadb"
    status, body = client.call(
        "POST", f"{BASE}/backups", {"backup": {"name": "again", "instance": instance_id}}
    )
    assert status == 409 and "conflictingRequest" in body
    guest.answer(instance_id)
    assert world.service.get(PROJECT, instance_id).status is InstanceStatus.ACTIVE

    status, body = client.call("GET", f"{BASE}/backups/{backup_id}")
    assert status == 200
    shown = body["backup"]
    assert shown["status"] == "COMPLETED"
    assert shown["locationRef"].startswith(f"backups/{PROJECT}/{instance_id}/")
    assert 0 < shown["size"] < 1
    assert shown["instance_id"] == instance_id and shown["parent_id"] is None

    status, body = client.call("GET", f"{BASE}/backups", query={"instance_id": instance_id})
    assert [b["id"] for b in body["backups"]] == [backup_id]
    status, body = client.call("GET", f"{BASE}/backups", query={"datastore": "redis"})
    assert body["backups"] == []
    status, body = client.call("GET", f"{BASE}/instances/{instance_id}/backups")
    assert [b["id"] for b in body["backups"]] == [backup_id]

    status, body = client.call(
        "POST",
        f"{BASE}/backups",
        {"backup": {"name": "inc", "instance": instance_id, "incremental": 1}},
    )
    assert status == 202 and body["backup"]["parent_id"] == backup_id
    guest.answer(instance_id)

    status, _ = client.call("DELETE", f"{BASE}/backups/{backup_id}")
    assert status == 202
    assert backups.list(PROJECT) == []  # the incremental went with its parent
    status, body = client.call("GET", f"{BASE}/backups/{backup_id}")
    assert status == 404 and "itemNotFound" in body
    status, body = client.call("GET", f"{BASE}/backups/not-a-uuid")
    assert status == 404


def test_backup_requests_that_are_refused(env: Env) -> None:
    world, _backups, guest = env
    client = api_for(env)
    instance_id = active_instance(world, guest)
    status, body = client.call("POST", f"{BASE}/backups", {"backup": {"name": "x"}})
    assert status == 400 and "backup.instance" in str(body)
    status, body = client.call(
        "POST", f"{BASE}/backups", {"backup": {"name": "x", "instance": "missing"}}
    )
    assert status == 404
    status, body = client.call(
        "POST",
        f"{BASE}/backups",
        {"backup": {"name": "x", "instance": instance_id, "incremental": True}},
    )
    assert status == 422 and "COMPLETED" in str(body)
    other = client.token_for("someone-else")
    status, body = client.call("GET", f"{BASE}/backups", token=other)
    assert status == 404


def test_backup_schedule_routes(env: Env) -> None:
    world, _backups, guest = env
    client = api_for(env)
    instance_id = active_instance(world, guest)
    path = f"{BASE}/instances/{instance_id}/backup-schedules"

    status, body = client.call(
        "POST", path, {"backup_schedule": {"name": "nightly", "cron": "not cron"}}
    )
    assert status == 400 and "cron" in body["badRequest"]["message"]
    status, body = client.call(
        "POST",
        path,
        {"backup_schedule": {"name": "nightly", "cron": "0 3 * * *", "keep_last": 7}},
    )
    assert status == 200, body
    schedule = body["backup_schedule"]
    assert (schedule["cron"], schedule["keep_last"], schedule["incremental"]) == (
        "0 3 * * *",
        7,
        False,
    )
    assert schedule["next_run"].endswith("03:00:00")

    status, body = client.call("GET", path)
    assert [s["id"] for s in body["backup_schedules"]] == [schedule["id"]]
    status, body = client.call("GET", f"{path}/{schedule['id']}")
    assert status == 200 and body["backup_schedule"]["name"] == "nightly"
    status, _ = client.call("DELETE", f"{path}/{schedule['id']}")
    assert status == 202
    status, body = client.call("GET", f"{path}/{schedule['id']}")
    assert status == 404
    status, body = client.call("GET", f"{BASE}/instances/{'0' * 32}/backup-schedules")
    assert status == 404


def test_backup_strategies_choose_the_container(env: Env) -> None:
    world, backups, guest = env
    client = api_for(env)
    instance_id = active_instance(world, guest)
    path = f"{BASE}/backup_strategies"
    status, body = client.call("POST", path, {"backup_strategy": {"swift_container": "team"}})
    assert status == 202 and body["backup_strategy"]["swift_container"] == "team"
    status, body = client.call(
        "POST",
        path,
        {"backup_strategy": {"instance_id": instance_id, "swift_container": "db-one"}},
    )
    assert status == 202
    status, body = client.call("POST", path, {"backup_strategy": {"swift_container": "a/b"}})
    assert status == 400 and "swift_container" in str(body)

    def location_of_new_backup(**extra: str) -> str:
        status, body = client.call(
            "POST", f"{BASE}/backups", {"backup": {"name": "b", "instance": instance_id, **extra}}
        )
        assert status == 202, body
        guest.answer(instance_id)
        return str(body["backup"]["locationRef"])

    assert location_of_new_backup().startswith(f"db-one/{PROJECT}/{instance_id}/")
    assert location_of_new_backup(swift_container="adhoc").startswith("adhoc/")
    status, body = client.call("GET", path)
    assert sorted(s["swift_container"] for s in body["backup_strategies"]) == ["db-one", "team"]
    status, _ = client.call("DELETE", path, query={"instance_id": instance_id})
    assert status == 202
    assert location_of_new_backup().startswith("team/")
    status, _ = client.call("DELETE", path)
    assert status == 202
    assert location_of_new_backup().startswith("backups/")
    status, _ = client.call("DELETE", path)
    assert status == 404
    assert all(b.status.value == "COMPLETED" for b in backups.list(PROJECT))
