"""Authentication, version documents, catalog routes, limits and the OpenAPI document."""

from __future__ import annotations

import json

import pytest

from tests.unit.api.conftest import OTHER_PROJECT, PROJECT, Api


@pytest.mark.parametrize("token", [None, "", "garbage", "a.b", "x" * 5000])
def test_calls_without_a_valid_token_are_401(client: Api, token):
    status, body = client.call("GET", f"/v1.0/{PROJECT}/instances", token=token)
    assert status == 401
    assert body["unauthorized"]["code"] == 401


def test_a_forged_or_expired_token_is_401(client: Api):
    payload, _signature = client.token.split(".")
    status, _ = client.call("GET", f"/v1.0/{PROJECT}/flavors", token=f"{payload}.AAAA")
    assert status == 401
    client.runtime.clock.advance(3601)  # type: ignore[attr-defined]
    status, body = client.call("GET", f"/v1.0/{PROJECT}/flavors")
    assert status == 401
    assert "expired" in body["unauthorized"]["message"]


def test_a_token_for_another_project_sees_404(client: Api):
    status, body = client.call("GET", f"/v1.0/{OTHER_PROJECT}/instances")
    assert status == 404
    assert "itemNotFound" in body
    status, _ = client.call(
        "GET", f"/v1.0/{OTHER_PROJECT}/instances", token=client.token_for(OTHER_PROJECT)
    )
    assert status == 200


def test_version_documents_need_no_token(client: Api):
    status, body = client.call("GET", "/", token=None)
    assert status == 200
    assert body["versions"][0]["id"] == "v1.0"
    assert body["versions"][0]["links"][0]["href"] == "http://api.test:8779/v1.0/"
    status, body = client.call("GET", "/v1.0", token=None)
    assert (status, body["version"]["status"]) == (200, "CURRENT")


def test_unknown_paths_are_404_in_trove_shape(client: Api):
    status, body = client.call("GET", f"/v1.0/{PROJECT}/nothing-here")
    assert status == 404
    assert body["itemNotFound"]["code"] == 404


def test_flavors_and_datastores(client: Api):
    status, body = client.call("GET", f"/v1.0/{PROJECT}/flavors")
    assert status == 200
    assert {"id": "2", "name": "tl.small", "ram": 512}.items() <= body["flavors"][1].items()
    status, body = client.call("GET", f"/v1.0/{PROJECT}/flavors/2")
    assert body["flavor"]["vcpus"] == 1
    status, body = client.call("GET", f"/v1.0/{PROJECT}/flavors/99")
    assert status == 404
    status, body = client.call("GET", f"/v1.0/{PROJECT}/datastores")
    assert [d["name"] for d in body["datastores"]] == ["mariadb", "redis"]
    redis = body["datastores"][1]
    assert redis["default_version"] == redis["versions"][0]["id"]
    status, body = client.call("GET", f"/v1.0/{PROJECT}/datastores/redis/versions")
    assert [v["name"] for v in body["versions"]] == ["7.0"]
    version_id = body["versions"][0]["id"]
    status, body = client.call("GET", f"/v1.0/{PROJECT}/datastores/redis/versions/{version_id}")
    assert (status, body["version"]["version"]) == (200, "7.0.15")
    status, body = client.call("GET", f"/v1.0/{PROJECT}/datastores/versions/{version_id}")
    assert body["version"]["name"] == "7.0"
    status, body = client.call("GET", f"/v1.0/{PROJECT}/datastores/cassandra")
    assert status == 404


def test_limits_and_quotas(client: Api):
    status, body = client.call("GET", f"/v1.0/{PROJECT}/limits")
    assert status == 200
    absolute = body["limits"][0]
    assert (absolute["max_instances"], absolute["max_volumes"], absolute["max_backups"]) == (
        10,
        40,
        50,
    )
    status, body = client.call("GET", f"/v1.0/{PROJECT}/mgmt/quotas/{PROJECT}")
    assert {q["resource"]: q["limit"] for q in body["quotas"]} == {
        "backups": 50,
        "instances": 10,
        "volumes": 40,
    }
    status, _ = client.call("GET", f"/v1.0/{PROJECT}/mgmt/quotas/{OTHER_PROJECT}")
    assert status == 404


def test_openapi_document_and_swagger_ui(client: Api):
    status, body = client.call("GET", "/openapi.json", token=None)
    assert status == 200
    assert "/v1.0/{project_id}/instances" in body["paths"]
    status, html = client.call("GET", "/docs", token=None)
    assert status == 200
    assert "swagger" in html.lower()
    json.dumps(body)  # the document is plain JSON


def test_tokens_follow_the_current_runtimes_master_key(client: Api):
    """A new runtime (a new master key) must not validate with a cached old key."""
    import dataclasses
    import secrets

    from functions.runtime import set_runtime

    assert client.call("GET", f"/v1.0/{PROJECT}/flavors")[0] == 200
    renewed = dataclasses.replace(client.runtime, master_key=secrets.token_bytes(32))
    set_runtime(renewed)
    assert client.call("GET", f"/v1.0/{PROJECT}/flavors")[0] == 401  # old key's token
    client.runtime = renewed
    client.tokens = type(client.tokens)(renewed.master_key, renewed.clock, 3600)
    assert client.call("GET", f"/v1.0/{PROJECT}/flavors", token=client.token_for(PROJECT))[0] == 200
