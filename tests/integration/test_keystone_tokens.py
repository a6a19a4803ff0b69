"""The Keystone token validator against a real Keystone-v3-speaking server: the identity
service `troveless up` serves under /identity/v3 (infra/local/keystone.py), on loopback.

The Trove API itself runs in the same embedded server with the Keystone validator installed,
so a request goes client -> API -> Keystone (HTTP) -> API answer, as on OpenStack.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from keystoneauth1 import session as ksa_session
from keystoneauth1.identity import v3
from pydantic import SecretStr

from functions.runtime import get_runtime, set_runtime
from infra.local.keystone import LocalKeystone, local_identity
from infra.local.server import EmbeddedServer
from infra.wiring import build_local
from shared.adapters.openstack.keystone_tokens import (
    KeystoneTokenValidator,
    claims_from_token_document,
)
from shared.clock import ManualClock, SystemClock
from shared.errors import AuthenticationError, IdentityUnavailableError
from shared.models.datastore import DatastoreRef
from shared.models.instance import Instance
from shared.models.volume import Volume, VolumeKind
from shared.services.instances import InstanceRecords
from shared.services.tokens import TokenService, project_id_for, user_id_for
from shared.settings import LocalUser, load_settings
from tests.integration.keystone_login import password_login

PASSWORDS = {"alice": "alice-pw-1", "bob": "bob-pw-2", "troveless": "service-pw-3"}
USERS = [
    LocalUser(name="alice", project="project-a", password=SecretStr(PASSWORDS["alice"])),
    LocalUser(name="bob", project="project-b", password=SecretStr(PASSWORDS["bob"])),
    LocalUser(name="troveless", project="service", password=SecretStr(PASSWORDS["troveless"])),
]


@dataclass
class Identity:
    url: str
    server: EmbeddedServer
    tokens: TokenService  # the server's own signer, to mint an already-expired token
    instance_b: Instance

    @property
    def auth_url(self) -> str:
        return f"{self.url}/identity/v3"

    def login(self, user: str) -> str:
        return password_login(self.auth_url, user, PASSWORDS[user])

    def service_session(self, password: str | None = None) -> ksa_session.Session:
        auth = v3.Password(
            auth_url=self.auth_url,
            username="troveless",
            password=password or PASSWORDS["troveless"],
            project_name="service",
            user_domain_id="default",
            project_domain_id="default",
        )
        return ksa_session.Session(auth=auth)

    def api(self, path: str, token: str) -> tuple[int, Any]:
        request = urllib.request.Request(f"{self.url}{path}", headers={"X-Auth-Token": token})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")


@pytest.fixture(scope="module")
def identity() -> Iterator[Identity]:
    # Under /tmp, not pytest's 0700 tmp_path: local compute insists its guests can reach it.
    root = Path(tempfile.mkdtemp(prefix="tl-keystone-", dir="/tmp"))
    try:
        yield from _serve(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _serve(root: Path) -> Iterator[Identity]:
    settings = load_settings(data_dir=root, local_users=USERS, api_port=1)
    runtime, cloud, driver = build_local(settings)
    tokens = TokenService(runtime.master_key, runtime.clock, settings.token_ttl_seconds)
    keystone = LocalKeystone(local_identity(settings, tokens)[0], settings.region)
    server = EmbeddedServer(runtime, driver, keystone, "127.0.0.1", 0, engine_workers=0)
    now = datetime.now(UTC)
    instance_b = Instance(
        id=str(uuid.uuid4()),
        project_id=project_id_for("project-b"),
        name="bobs-db",
        flavor_id="2",
        volume=Volume(kind=VolumeKind.DIRECTORY, size_gb=1),
        datastore=DatastoreRef(type="mariadb", version="10.11"),
        port=3306,
        created=now,
        updated=now,
    )
    InstanceRecords(runtime.store).create(instance_b)
    server.start()
    found = Identity(server.url, server, tokens, instance_b)
    # The API validates with Keystone, through the same server's /identity/v3.
    validator = KeystoneTokenValidator(found.service_session(), SystemClock())
    set_runtime(dataclasses.replace(runtime, token_validator=validator))
    try:
        yield found
    finally:
        set_runtime(None)
        server.stop()
        cloud.close()


def test_valid_token_gives_its_users_project(identity: Identity) -> None:
    validator = KeystoneTokenValidator(identity.service_session(), SystemClock())
    claims = validator.validate(identity.login("alice"))
    assert claims.project_id == project_id_for("project-a")
    assert claims.project_name == "project-a"
    assert claims.user_id == user_id_for("alice")
    assert claims.user_name == "alice"
    assert "member" in claims.roles
    assert claims.expires_at > time.time() + 60


def test_unknown_and_forged_tokens_are_rejected(identity: Identity) -> None:
    validator = KeystoneTokenValidator(identity.service_session(), SystemClock())
    real = identity.login("bob")
    payload, signature = real.split(".")
    for bad in ("gAAAAABnot-a-token", f"{payload}.{signature[::-1]}"):
        with pytest.raises(AuthenticationError):
            validator.validate(bad)
    with pytest.raises(AuthenticationError):
        validator.validate("")  # refused before asking Keystone


def test_expired_token_is_rejected(identity: Identity) -> None:
    long_ago = TokenService(
        # The server's own signing key (same master key), with a clock an hour back: the
        # token is genuine and expired.
        identity.server.runtime.master_key,
        ManualClock(time.time() - 3600),
        ttl_seconds=60,
    )
    expired, _ = long_ago.issue(
        user_id=user_id_for("alice"),
        user_name="alice",
        project_id=project_id_for("project-a"),
        project_name="project-a",
        roles=("member",),
    )
    validator = KeystoneTokenValidator(identity.service_session(), SystemClock())
    with pytest.raises(AuthenticationError):
        validator.validate(expired)
    status, body = identity.api(f"/v1.0/{project_id_for('project-a')}/instances", expired)
    assert status == 401, body


def test_answers_are_cached_until_the_cache_time_then_asked_again(identity: Identity) -> None:
    clock = ManualClock(time.time())
    validator = KeystoneTokenValidator(identity.service_session(), clock, cache_seconds=30)
    token = identity.login("alice")
    first = validator.validate(token)
    assert validator.validate(token) == first
    assert validator.keystone_calls == 1
    clock.advance(31)
    assert validator.validate(token).project_id == first.project_id
    assert validator.keystone_calls == 2


def test_cache_never_outlives_the_token(identity: Identity) -> None:
    clock = ManualClock(time.time())
    validator = KeystoneTokenValidator(identity.service_session(), clock, cache_seconds=10**9)
    claims = validator.validate(identity.login("bob"))
    clock.advance(claims.expires_at - clock.time() + 1)
    with pytest.raises(AuthenticationError):
        validator.validate(identity.login("bob"))  # a fresh token, but the clock says expired


def test_wrong_service_credentials_are_unavailable_not_unauthorized(identity: Identity) -> None:
    validator = KeystoneTokenValidator(identity.service_session("wrong"), SystemClock())
    with pytest.raises(IdentityUnavailableError):
        validator.validate(identity.login("alice"))


def test_api_answers_401_without_a_valid_token(identity: Identity) -> None:
    project_a = project_id_for("project-a")
    validator = get_runtime().token_validator
    assert isinstance(validator, KeystoneTokenValidator)
    calls = validator.keystone_calls
    status, body = identity.api(f"/v1.0/{project_a}/instances", "gAAAAABunknown")
    assert status == 401
    assert "authentication" in json.dumps(body)
    status, _ = identity.api(f"/v1.0/{project_a}/instances", identity.login("alice"))
    assert status == 200
    assert validator.keystone_calls == calls + 2  # the API asked Keystone both times


def test_project_a_token_cannot_see_project_b_instance(identity: Identity) -> None:
    alice, bob = identity.login("alice"), identity.login("bob")
    project_a, project_b = project_id_for("project-a"), project_id_for("project-b")
    instance = identity.instance_b.id
    # bob (project B) sees his instance: the control case.
    status, body = identity.api(f"/v1.0/{project_b}/instances/{instance}", bob)
    assert status == 200, body
    assert body["instance"]["name"] == "bobs-db"
    # alice's token is for project A: B's path and B's instance under A's path are both 404.
    assert identity.api(f"/v1.0/{project_b}/instances/{instance}", alice)[0] == 404
    assert identity.api(f"/v1.0/{project_a}/instances/{instance}", alice)[0] == 404
    status, body = identity.api(f"/v1.0/{project_a}/instances", alice)
    assert status == 200
    assert instance not in json.dumps(body)


def test_token_documents_without_a_project_or_dates() -> None:
    base = {
        "user": {"id": "u", "name": "n"},
        "issued_at": "2026-01-01T00:00:00.000000Z",
        "expires_at": "2026-01-01T01:00:00.000000Z",
    }
    domain_scoped = {"token": {**base, "domain": {"id": "default"}}}
    with pytest.raises(AuthenticationError):
        claims_from_token_document(domain_scoped)
    with pytest.raises(IdentityUnavailableError):
        claims_from_token_document({"token": {**base, "project": {"id": "p"}, "expires_at": 3}})
    with pytest.raises(IdentityUnavailableError):
        claims_from_token_document({"error": "no token"})
    claims = claims_from_token_document({"token": {**base, "project": {"id": "p"}}})
    assert (claims.project_id, claims.expires_at - claims.issued_at) == ("p", 3600.0)
