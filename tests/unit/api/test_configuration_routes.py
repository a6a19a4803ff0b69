"""Configuration group and parameter routes through `functions.api.handler`, in Trove's shapes
(what python-troveclient reads), with in-memory ports."""

from __future__ import annotations

import pytest

from functions.routes import configurations, parameters
from shared.services.catalog import CatalogService, version_id
from tests.unit.api.conftest import INSTALLED, OTHER_PROJECT, PROJECT, Api

BASE = f"/v1.0/{PROJECT}"


@pytest.fixture
def api(client: Api, monkeypatch: pytest.MonkeyPatch) -> Api:
    catalog = CatalogService(client.runtime.settings, probe=lambda: INSTALLED)
    monkeypatch.setattr(configurations, "catalog_service", lambda: catalog)
    monkeypatch.setattr(parameters, "catalog_service", lambda: catalog)
    return client


def create(api: Api, values: dict[str, object], **extra: object) -> tuple[int, dict]:
    body = {"configuration": {"name": "tuned", "values": values, **extra}}
    return api.call("POST", f"{BASE}/configurations", body)


def test_create_show_list_in_troves_shapes(api: Api) -> None:
    status, body = create(
        api,
        {"max_connections": 200},
        description="for the shop",
        datastore={"type": "mariadb", "version": "10.11"},
    )
    assert status == 200, body
    created = body["configuration"]
    assert created["values"] == {"max_connections": 200}
    assert created["instance_count"] == 0
    assert created["datastore_name"] == "mariadb"
    assert created["datastore_version_name"] == "10.11"
    assert created["datastore_version_number"] == "10.11.6"
    assert created["datastore_version_id"] == version_id("mariadb", "10.11")
    assert created["description"] == "for the shop"
    status, shown = api.call("GET", f"{BASE}/configurations/{created['id']}")
    assert (status, shown["configuration"]) == (200, created)
    status, listed = api.call("GET", f"{BASE}/configurations")
    assert status == 200
    [item] = listed["configurations"]
    assert item["id"] == created["id"]
    assert "values" not in item  # the list is the summary view, as Trove's


def test_default_datastore_is_used_when_none_is_named(api: Api) -> None:
    status, body = create(api, {"wait_timeout": 60})
    assert status == 200, body
    assert body["configuration"]["datastore_name"] == "mariadb"


def test_bad_values_are_422_naming_the_key(api: Api) -> None:
    for values, key in [
        ({"max_connections": "lots"}, "values.max_connections"),
        ({"max_connections": True}, "values.max_connections"),
        ({"max_connections": 1}, "values.max_connections"),
        ({"no_such_key": 1}, "values.no_such_key"),
    ]:
        status, body = create(api, values)
        assert status == 422, body
        assert key in body["unprocessableEntity"]["message"]
    status, body = create(api, {"maxmemory": 1}, datastore={"type": "redis", "version": "7.0"})
    assert status == 200, body
    status, _ = api.call("POST", f"{BASE}/configurations", {"configuration": {"values": {}}})
    assert status == 400  # no name


def test_put_replaces_patch_merges_delete(api: Api) -> None:
    _status, body = create(api, {"max_connections": 200, "wait_timeout": 60})
    path = f"{BASE}/configurations/{body['configuration']['id']}"
    status, _ = api.call("PUT", path, {"configuration": {"values": {"slow_query_log": True}}})
    assert status == 202
    assert api.call("GET", path)[1]["configuration"]["values"] == {"slow_query_log": True}
    status, _ = api.call("PATCH", path, {"configuration": {"values": {"wait_timeout": 5}}})
    assert status == 200
    values = api.call("GET", path)[1]["configuration"]["values"]
    assert values == {"slow_query_log": True, "wait_timeout": 5}
    status, body = api.call("PATCH", path, {"configuration": {"values": {"wait_timeout": -1}}})
    assert status == 422 and "values.wait_timeout" in body["unprocessableEntity"]["message"]
    assert api.call("GET", f"{path}/instances") == (200, {"instances": []})
    assert api.call("DELETE", path)[0] == 202
    assert api.call("GET", path)[0] == 404


def test_another_projects_group_is_not_found(api: Api) -> None:
    _status, body = create(api, {"max_connections": 200})
    group_id = body["configuration"]["id"]
    other = api.token_for(OTHER_PROJECT)
    for method in ("GET", "DELETE"):
        status, _ = api.call(
            method, f"/v1.0/{OTHER_PROJECT}/configurations/{group_id}", token=other
        )
        assert status == 404
    assert api.call("GET", f"/v1.0/{OTHER_PROJECT}/configurations", token=other)[1] == {
        "configurations": []
    }


def test_parameters_by_datastore_and_by_version_id(api: Api) -> None:
    status, body = api.call("GET", f"{BASE}/datastores/mariadb/versions/10.11/parameters")
    assert status == 200
    by_name = {p["name"]: p for p in body["configuration-parameters"]}
    assert by_name["max_connections"]["type"] == "integer"
    assert by_name["max_connections"]["min"] == 10
    assert by_name["performance_schema"]["restart_required"] is True
    assert "min" not in by_name["slow_query_log"]
    uuid = version_id("mariadb", "10.11")
    status, same = api.call("GET", f"{BASE}/datastores/versions/{uuid}/parameters")
    assert (status, same) == (200, body)
    status, one = api.call("GET", f"{BASE}/datastores/redis/versions/7.0/parameters/hz")
    assert status == 200
    assert (one["name"], one["type"], one["max"]) == ("hz", "integer", 500)
    status, one = api.call(
        "GET", f"{BASE}/datastores/versions/{uuid}/parameters/innodb_buffer_pool_size"
    )
    assert (status, one["restart_required"]) == (200, False)
    assert api.call("GET", f"{BASE}/datastores/redis/versions/7.0/parameters/nope")[0] == 404
    assert api.call("GET", f"{BASE}/datastores/mongodb/versions/7/parameters")[0] == 404
