"""The databases, users, root and log routes through `functions.api.handler`, with Trove's
paths and bodies (python-troveclient's and openstacksdk's shapes), over the fake guest of
tests/unit/services/test_databases.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from functions.routes import databases as database_routes
from functions.routes import logs as log_routes
from functions.runtime import Runtime, set_runtime
from shared.settings import load_settings
from tests.unit.api.conftest import Api
from tests.unit.api.fakes import StubInstanceService
from tests.unit.services.test_databases import MASTER_KEY, PROJECT, World, world


@pytest.fixture
def api(world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    runtime = Runtime(
        settings=load_settings(data_dir=tmp_path),
        clock=world.clock,
        store=cast(Any, world.store),
        blobs=world.blobs,
        queue=cast(Any, world.queue),
        compute=cast(Any, None),
        workflows=cast(Any, None),
        # Fixed: functions.api caches its TokenService by id(runtime), and ids get reused.
        master_key=MASTER_KEY,
    )
    monkeypatch.setattr(database_routes, "database_service", lambda: world.service)
    monkeypatch.setattr(log_routes, "log_service", lambda: world.logs)
    set_runtime(runtime)
    client = Api(runtime, StubInstanceService())
    client.token = client.token_for(PROJECT)
    try:
        yield client
    finally:
        set_runtime(None)


__all__ = ["world"]  # the fixture, shared with the service tests


def base(world: World) -> str:
    return f"/v1.0/{PROJECT}/instances/{world.instance.id}"


def test_databases_routes(api: Api, world: World) -> None:
    url = base(world) + "/databases"
    assert api.call("POST", url, {"databases": [{"name": "shop"}]})[0] == 202
    assert api.call("POST", url, {"database": {"name": "crm"}})[0] == 202  # openstacksdk
    assert api.call("GET", url) == (200, {"databases": [{"name": "crm"}, {"name": "shop"}]})
    status, body = api.call("POST", url, {"databases": [{"name": "a'; DROP DATABASE b; --"}]})
    assert status == 400
    assert "databases[0].name" in body["badRequest"]["message"]
    assert api.call("DELETE", url + "/crm")[0] == 202
    assert api.call("GET", url)[1] == {"databases": [{"name": "shop"}]}
    assert api.call("POST", url, {"nothing": []})[0] == 400


def test_users_routes(api: Api, world: World) -> None:
    url = base(world) + "/users"
    api.call("POST", base(world) + "/databases", {"databases": [{"name": "shop"}]})
    user = {"name": "app", "password": "Secret-Pass-1", "databases": [{"name": "shop"}]}
    assert api.call("POST", url, {"users": [user]})[0] == 202
    listed = api.call("GET", url)
    assert listed == (
        200,
        {"users": [{"name": "app", "host": "%", "databases": [{"name": "shop"}]}]},
    )
    assert "Secret-Pass-1" not in str(listed)
    assert api.call("GET", url + "/app")[1]["user"]["name"] == "app"
    assert api.call("GET", url + "/app%40%25")[1]["user"]["host"] == "%"  # name@host, encoded
    assert api.call("GET", url + "/nobody")[0] == 404

    assert api.call("PUT", url + "/app", {"user": {"password": "Other-Pass-2"}})[0] == 202
    assert world.manager.users[("app", "%")]["password"] == "Other-Pass-2"
    assert api.call("PUT", url + "/app", {"users": {"password": "Sdk-Pass-33"}})[0] == 202
    assert world.manager.users[("app", "%")]["password"] == "Sdk-Pass-33"
    bulk = {"users": [{"name": "app", "password": "Bulk-Pass-44"}]}
    assert api.call("PUT", url, bulk)[0] == 202
    assert world.manager.users[("app", "%")]["password"] == "Bulk-Pass-44"
    assert api.call("PUT", url + "/app", {"user": {"name": "other"}})[0] == 501

    access = url + "/app/databases"
    api.call("POST", base(world) + "/databases", {"databases": [{"name": "crm"}]})
    assert api.call("PUT", access, {"databases": [{"name": "crm"}]})[0] == 202
    assert api.call("GET", access)[1] == {"databases": [{"name": "shop"}, {"name": "crm"}]}
    assert api.call("DELETE", access + "/shop")[0] == 202
    assert api.call("GET", access)[1] == {"databases": [{"name": "crm"}]}

    status, body = api.call("POST", url, {"users": [{"name": "x", "password": "short"}]})
    assert status == 400 and "users[0].password" in body["badRequest"]["message"]
    assert api.call("DELETE", url + "/app")[0] == 202
    assert api.call("GET", url)[1] == {"users": []}


def test_root_routes(api: Api, world: World) -> None:
    url = base(world) + "/root"
    assert api.call("GET", url) == (200, {"rootEnabled": False})
    assert api.call("POST", url) == (
        200,
        {"user": {"name": "root", "password": world.manager.root_password}},
    )
    assert api.call("GET", url) == (200, {"rootEnabled": True})
    assert api.call("DELETE", url)[0] == 204
    assert api.call("GET", url) == (200, {"rootEnabled": False})


def test_log_routes(api: Api, world: World) -> None:
    url = base(world) + "/log"
    status, body = api.call("GET", url)
    assert status == 200
    assert {entry["name"] for entry in body["logs"]} == {"error", "general"}
    status, body = api.call("POST", url, {"name": "general", "enable": 1})
    assert status == 200 and body["log"]["status"] == "Enabled"
    assert api.call("POST", url, {"name": "nosuch", "publish": 1})[0] == 404
    assert api.call("POST", url, {"name": "general", "frobnicate": 1})[0] == 400
    assert api.call("GET", url + "/general")[0] == 404  # nothing published yet
    (world.manager.layout.log / "general.log").write_bytes(b"SELECT 1;\n")
    assert api.call("POST", url, {"name": "general", "publish": 1})[1]["log"]["published"] == 10
    assert api.call("GET", url + "/general") == (200, "SELECT 1;\n")


def test_another_projects_token_sees_nothing(api: Api, world: World) -> None:
    other = api.token_for("fedcba9876543210fedcba9876543210")
    assert api.call("GET", base(world) + "/databases", token=other)[0] == 404
    assert api.call("GET", base(world) + "/users", token=None)[0] == 401
    assert world.guest.commands == []
