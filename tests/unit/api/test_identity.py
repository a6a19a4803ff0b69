"""Tokens, password hashing and the local Keystone's routes (no HTTP server)."""

from __future__ import annotations

import json
import os
import secrets
import stat
from pathlib import Path

import pytest

from infra.local.keystone import LocalKeystone, local_identity
from shared.clock import ManualClock
from shared.services.tokens import (
    AuthenticationError,
    LocalIdentity,
    TokenService,
    hash_password,
    password_matches,
    project_id_for,
)
from shared.settings import load_settings

ROOT = "http://127.0.0.1:9999"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def keystone(clock: ManualClock) -> LocalKeystone:
    identity = LocalIdentity(TokenService(secrets.token_bytes(32), clock, 600))
    identity.add("alice", "alice-password", "shop", ("member",))
    identity.add("bob", "bob-password", "warehouse", ("member",))
    return LocalKeystone(identity, "RegionOne")


def password_auth(user: str, password: str, project: str | None = "shop") -> bytes:
    auth: dict = {
        "identity": {
            "methods": ["password"],
            "password": {
                "user": {"name": user, "domain": {"name": "Default"}, "password": password}
            },
        }
    }
    if project is not None:
        auth["scope"] = {"project": {"name": project, "domain": {"name": "Default"}}}
    return json.dumps({"auth": auth}).encode()


def test_password_hashes_verify_and_differ_per_salt():
    first, second = hash_password("pw-123456"), hash_password("pw-123456")
    assert first != second
    assert "pw-123456" not in first
    assert password_matches("pw-123456", first)
    assert not password_matches("pw-123457", first)
    assert not password_matches("pw-123456", "md5$x$y")


def test_tokens_round_trip_and_expire(clock: ManualClock):
    tokens = TokenService(secrets.token_bytes(32), clock, 60)
    token, claims = tokens.issue(
        user_id="u", user_name="alice", project_id="p", project_name="shop", roles=("member",)
    )
    assert tokens.validate(token) == claims
    other = TokenService(secrets.token_bytes(32), clock, 60)
    with pytest.raises(AuthenticationError):
        other.validate(token)
    clock.advance(61)
    with pytest.raises(AuthenticationError, match="expired"):
        tokens.validate(token)


def test_password_auth_returns_token_and_catalog(keystone: LocalKeystone):
    reply = keystone.handle(
        "POST", "/identity/v3/auth/tokens", {}, password_auth("alice", "alice-password"), ROOT
    )
    assert reply.status == 201
    token = reply.headers["X-Subject-Token"]
    body = json.loads(reply.body)["token"]
    assert body["expires_at"].endswith("Z")
    assert body["project"]["id"] == project_id_for("shop")
    database = next(s for s in body["catalog"] if s["type"] == "database")
    public = next(e for e in database["endpoints"] if e["interface"] == "public")
    assert public["url"] == f"{ROOT}/v1.0/{project_id_for('shop')}"
    assert public["region"] == "RegionOne"
    valid = keystone.handle(
        "GET",
        "/identity/v3/auth/tokens",
        {"X-Auth-Token": token, "X-Subject-Token": token},
        b"",
        ROOT,
    )
    assert valid.status == 200
    assert json.loads(valid.body)["token"]["user"]["name"] == "alice"


def test_token_method_rescopes_within_the_users_project(keystone: LocalKeystone):
    first = keystone.handle(
        "POST", "/identity/v3/auth/tokens", {}, password_auth("alice", "alice-password"), ROOT
    )
    token = first.headers["X-Subject-Token"]
    body = {"auth": {"identity": {"methods": ["token"], "token": {"id": token}}}}
    reply = keystone.handle("POST", "/identity/v3/auth/tokens", {}, json.dumps(body).encode(), ROOT)
    assert reply.status == 201
    assert json.loads(reply.body)["token"]["project"]["name"] == "shop"


@pytest.mark.parametrize(
    ("user", "password", "project"),
    [
        ("alice", "wrong", "shop"),
        ("nobody", "alice-password", "shop"),
        ("alice", "alice-password", "warehouse"),  # not alice's project
    ],
)
def test_bad_credentials_are_401(keystone: LocalKeystone, user, password, project):
    reply = keystone.handle(
        "POST", "/identity/v3/auth/tokens", {}, password_auth(user, password, project), ROOT
    )
    assert reply.status == 401
    assert b"alice-password" not in reply.body


@pytest.mark.parametrize(
    "body", [b"", b"{", b"[]", b'{"auth": {}}', b'{"auth": {"identity": {"methods": ["totp"]}}}']
)
def test_malformed_auth_requests_are_400(keystone: LocalKeystone, body):
    reply = keystone.handle("POST", "/identity/v3/auth/tokens", {}, body, ROOT)
    assert reply.status == 400


def test_version_discovery(keystone: LocalKeystone):
    reply = keystone.handle("GET", "/identity/v3", {}, b"", ROOT)
    assert json.loads(reply.body)["version"]["links"][0]["href"] == f"{ROOT}/identity/v3/"
    assert keystone.handle("GET", "/identity", {}, b"", ROOT).status == 300


def test_local_identity_generates_a_password_once(tmp_path: Path, clock: ManualClock):
    settings = load_settings(data_dir=tmp_path)
    tokens = TokenService(secrets.token_bytes(32), clock)
    _, first = local_identity(settings, tokens)
    identity, second = local_identity(settings, tokens)
    assert first == second
    path = tmp_path / "identity" / "admin.password"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    _token, claims = identity.authenticate(password=first["admin"], user_name="admin")
    assert claims.project_name == "admin"
