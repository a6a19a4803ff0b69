"""Instance routes through `functions.api.handler`, with a stub InstanceService."""

from __future__ import annotations

import uuid

import pytest

from tests.unit.api.conftest import OTHER_PROJECT, PROJECT, Api
from tests.unit.api.fakes import busy

BASE = f"/v1.0/{PROJECT}/instances"


def create_body(**changes):
    body = {
        "name": "orders",
        "flavorRef": "2",
        "volume": {"size": 2},
        "datastore": {"type": "mariadb", "version": "10.11"},
        "databases": [{"name": "shop"}],
        "users": [{"name": "app", "password": "Secret-pw-1", "databases": [{"name": "shop"}]}],
    }
    body.update(changes)
    return {"instance": body}


def test_create_returns_trove_instance_and_passes_a_typed_request(client: Api):
    status, body = client.call("POST", BASE, create_body())
    assert status == 200
    view = body["instance"]
    assert uuid.UUID(view["id"])
    assert view["flavor"]["id"] == "2"
    assert view["volume"]["size"] == 2
    assert view["ip"] == ["127.10.0.7"]
    assert view["addresses"] == [{"type": "private", "address": "127.10.0.7"}]
    assert view["port"] == 3306
    assert view["links"][0]["href"] == f"http://api.test:8779{BASE}/{view['id']}"
    request = client.service.created[0]
    assert (request.name, request.flavor_id, request.volume_size_gb) == ("orders", "2", 2)
    assert (request.datastore_type, request.datastore_version) == ("mariadb", "10.11")
    assert request.users[0].databases == ["shop"]
    assert request.users[0].password.get_secret_value() == "Secret-pw-1"


def test_create_accepts_openstacksdk_shapes(client: Api):
    body = create_body(flavor={"id": 2})
    del body["instance"]["flavorRef"]
    status, _ = client.call("POST", BASE, body)
    assert status == 200
    assert client.service.created[0].flavor_id == "2"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"name": ""}, "instance.name"),
        ({"name": 7}, "instance.name"),
        ({"volume": {"size": "big"}}, "instance.volume.size"),
        ({"volume": {"size": 0}}, "instance.volume.size"),
        ({"volume": None}, "instance.volume.size"),
        ({"flavorRef": None}, "instance.flavorRef"),
        ({"users": [{"name": "app"}]}, "instance.users.0.password"),
        ({"databases": "shop"}, "instance.databases"),
    ],
)
def test_bad_create_bodies_are_400_naming_the_field(client: Api, change, field):
    status, body = client.call("POST", BASE, create_body(**change))
    assert status == 400, body
    assert body["badRequest"]["code"] == 400
    assert field in body["badRequest"]["message"]
    assert "Secret-pw-1" not in str(body)
    assert client.service.created == []


@pytest.mark.parametrize("raw", ["{not json", "", "[]", '{"instance": 5}', '{"other": {}}'])
def test_malformed_bodies_are_400(client: Api, raw):
    status, body = client.call("POST", BASE, raw_body=raw)
    assert status == 400
    assert "badRequest" in body


def test_service_rule_errors_pass_through_with_their_status(client: Api):
    status, body = client.call("POST", BASE, create_body(volume={"size": 500}))
    assert status == 400
    assert "instance.volume.size" in body["badRequest"]["message"]


@pytest.mark.parametrize(
    ("change", "what"),
    [
        ({"replica_of": str(uuid.uuid4())}, "replica"),
        ({"replica_count": 2}, "replica"),
    ],
)
def test_replication_is_501(client: Api, change, what):
    status, body = client.call("POST", BASE, create_body(**change))
    assert status == 501
    assert what in body["notImplemented"]["message"]


def test_restore_point_passes_the_backup_to_the_service(client: Api):
    backup_id = str(uuid.uuid4())
    status, _ = client.call(
        "POST", BASE, create_body(restorePoint={"backupRef": backup_id}, databases=[], users=[])
    )
    assert status == 200
    assert client.service.created[-1].restore_backup_id == backup_id
    status, body = client.call("POST", BASE, create_body(restorePoint={"backupRef": ""}))
    assert status == 400 and "restorePoint.backupRef" in body["badRequest"]["message"]


def test_list_show_and_name_lookup(client: Api):
    mine = client.service.add(PROJECT, "mine")
    client.service.add(OTHER_PROJECT, "theirs")
    status, body = client.call("GET", BASE, query={"include_clustered": "False"})
    assert status == 200
    assert [i["name"] for i in body["instances"]] == ["mine"]
    assert "used" not in body["instances"][0]["volume"]
    status, body = client.call("GET", f"{BASE}/detail")
    assert body["instances"][0]["volume"]["used"] == 0.25
    status, body = client.call("GET", f"{BASE}/{mine.id}")
    assert (status, body["instance"]["name"]) == (200, "mine")
    # Clients look a name up first and fall back to listing on a 404 (never a 400).
    status, body = client.call("GET", f"{BASE}/mine")
    assert status == 404
    assert "itemNotFound" in body


def test_another_projects_instance_is_404(client: Api):
    theirs = client.service.add(OTHER_PROJECT, "theirs")
    for method, path in [
        ("GET", f"{BASE}/{theirs.id}"),
        ("DELETE", f"{BASE}/{theirs.id}"),
    ]:
        status, body = client.call(method, path)
        assert status == 404, (method, path)
        assert body["itemNotFound"]["code"] == 404
    status, _ = client.call("POST", f"{BASE}/{theirs.id}/action", {"restart": {}})
    assert status == 404
    assert client.service.calls == []


def test_fault_shown_only_in_error(client: Api):
    from shared.models.instance import Fault, InstanceStatus
    from tests.unit.api.fakes import NOW

    failed = client.service.add(
        PROJECT, "bad", status=InstanceStatus.ERROR, fault=Fault(message="disk full", created=NOW)
    )
    _, body = client.call("GET", f"{BASE}/{failed.id}")
    assert body["instance"]["status"] == "ERROR"
    assert body["instance"]["fault"]["message"] == "disk full"


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        ({"restart": {}}, ("restart",)),
        ({"restart": None}, ("restart",)),
        ({"reset_status": {}}, ("reset_status",)),
        ({"resize": {"flavorRef": "3"}}, ("resize_flavor", "3")),
        ({"resize": {"flavorRef": {"id": 3}}}, ("resize_flavor", "3")),
        ({"resize": {"volume": {"size": 7}}}, ("resize_volume", 7)),
        ({"resize": {"volume": 7}}, ("resize_volume", 7)),
    ],
)
def test_actions_in_both_client_shapes(client: Api, action, expected):
    inst = client.service.add(PROJECT, "a")
    status, _ = client.call("POST", f"{BASE}/{inst.id}/action", action)
    assert status == 202
    assert client.service.calls == [(expected[0], inst.id, *expected[1:])]


@pytest.mark.parametrize(
    ("action", "status"),
    [
        ({"resize": {}}, 400),
        ({"resize": {"flavorRef": "3", "volume": 7}}, 400),
        ({"resize": {"volume": "seven"}}, 400),
        ({"reboot_everything": {}}, 400),
        ({"restart": {}, "reset_status": {}}, 400),
        ({"promote_to_replica_source": {}}, 501),
    ],
)
def test_bad_actions(client: Api, action, status):
    inst = client.service.add(PROJECT, "a")
    got, body = client.call("POST", f"{BASE}/{inst.id}/action", action)
    assert got == status, body
    assert client.service.calls == []


def test_action_during_another_is_409(client: Api):
    inst = busy(client.service, PROJECT)
    status, body = client.call("POST", f"{BASE}/{inst.id}/action", {"restart": {}})
    assert status == 409
    assert "RESIZING" in body["conflictingRequest"]["message"]


def test_rename_and_delete(client: Api):
    inst = client.service.add(PROJECT, "old")
    status, _ = client.call("PATCH", f"{BASE}/{inst.id}", {"instance": {"name": "new"}})
    assert status == 202
    assert client.service.instances[inst.id].name == "new"
    status, body = client.call("PATCH", f"{BASE}/{inst.id}", {"instance": {"name": ""}})
    assert status == 400
    assert "instance.name" in body["badRequest"]["message"]
    status, _ = client.call("DELETE", f"{BASE}/{inst.id}")
    assert status == 202
    assert client.service.calls == [("delete", inst.id)]


def test_configuration_attach_and_detach_shapes(client: Api, monkeypatch: pytest.MonkeyPatch):
    from functions.routes import instances as routes

    calls = []
    monkeypatch.setattr(
        routes, "attach_configuration", lambda project, iid, cid: calls.append((iid, cid))
    )
    inst = client.service.add(PROJECT, "a")
    config = str(uuid.uuid4())
    path = f"{BASE}/{inst.id}"
    assert client.call("PUT", path, {"instance": {"configuration": config}})[0] == 202
    assert client.call("PUT", path, {"instance": {}})[0] == 202  # Trove: PUT without = detach
    assert client.call("PATCH", path, {"instance": {"configuration": None}})[0] == 202
    assert client.call("PATCH", path, {"instance": {"remove_configuration": True}})[0] == 202
    assert client.call("PATCH", path, {"instance": {"name": "b"}})[0] == 202
    assert calls == [(inst.id, config), (inst.id, None), (inst.id, None), (inst.id, None)]
