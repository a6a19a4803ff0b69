from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from functions import api
from functions.routes import datastores, flavors, instances
from functions.runtime import Runtime, set_runtime
from shared.clock import ManualClock
from shared.services.catalog import CatalogService, InstalledVersion
from shared.services.tokens import TokenService
from shared.settings import load_settings
from tests.unit.api.fakes import StubInstanceService
from tests.unit.engine.fakes import MemoryQueue, MemoryStateStore

PROJECT = "0123456789abcdef0123456789abcdef"
OTHER_PROJECT = "fedcba9876543210fedcba9876543210"
INSTALLED = (
    InstalledVersion("mariadb", "10.11", "10.11.6", "/usr/sbin/mariadbd"),
    InstalledVersion("redis", "7.0", "7.0.15", "/usr/bin/redis-server"),
)


class Api:
    """Calls `functions.api.handler` with API Gateway REST proxy events."""

    def __init__(self, runtime: Runtime, service: StubInstanceService) -> None:
        self.runtime = runtime
        self.service = service
        self.tokens = TokenService(runtime.master_key, runtime.clock, 3600)
        self.token = self.token_for(PROJECT)

    def token_for(self, project_id: str) -> str:
        token, _ = self.tokens.issue(
            user_id="u1",
            user_name="alice",
            project_id=project_id,
            project_name="p",
            roles=("member",),
        )
        return token

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw_body: str | None = None,
        token: str | None = "default",
        query: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        headers = {"Host": "api.test:8779", "Content-Type": "application/json"}
        if token is not None:
            headers["X-Auth-Token"] = self.token if token == "default" else token
        event = {
            "httpMethod": method,
            "path": path,
            "resource": "/{proxy+}",
            "headers": headers,
            "multiValueHeaders": {k: [v] for k, v in headers.items()},
            "queryStringParameters": query,
            "multiValueQueryStringParameters": {k: [v] for k, v in (query or {}).items()} or None,
            "pathParameters": None,
            "requestContext": {
                "stage": "$default",
                "path": path,
                "httpMethod": method,
                "requestId": "req-1",
            },
            "body": raw_body
            if raw_body is not None
            else (json.dumps(body) if body is not None else None),
            "isBase64Encoded": False,
        }
        response = api.handler(event, None)
        text = response.get("body") or ""
        try:
            parsed = json.loads(text) if text else None
        except ValueError:
            parsed = text
        return response["statusCode"], parsed


@pytest.fixture
def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    clock = ManualClock(start=1_767_000_000.0)
    settings = load_settings(data_dir=tmp_path)
    runtime = Runtime(
        settings=settings,
        clock=clock,
        store=MemoryStateStore(clock),
        blobs=cast(Any, None),
        queue=MemoryQueue(clock),
        compute=cast(Any, None),
        workflows=cast(Any, None),
        master_key=secrets.token_bytes(32),
    )
    service = StubInstanceService()
    catalog = CatalogService(settings, probe=lambda: INSTALLED)
    monkeypatch.setattr(instances, "instance_service", lambda: service)
    monkeypatch.setattr(flavors, "catalog_service", lambda: catalog)
    monkeypatch.setattr(datastores, "catalog_service", lambda: catalog)
    set_runtime(runtime)
    try:
        yield Api(runtime, service)
    finally:
        set_runtime(None)
