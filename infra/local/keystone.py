"""A minimal Keystone v3 for the embedded cloud, so that ordinary OpenStack clients
(python-troveclient, python-openstackclient, openstacksdk) log in with a username and password.

It serves, under `/identity`: version discovery (`/identity`, `/identity/v3`), password and
token authentication (`POST /v3/auth/tokens`), token validation (`GET`/`HEAD
/v3/auth/tokens`) and the projects a token may use (`GET /v3/auth/projects`). The catalog
lists one `database` service whose endpoints already contain the project id, as clients
expect (they do not fill in `%(tenant_id)s`). Users come from settings (`local_users`);
tokens are the stateless signed tokens of `shared.services.tokens`.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.services.tokens import AuthenticationError, LocalIdentity, TokenClaims, TokenService
from shared.settings import Settings

PREFIX = "/identity"
V3_UPDATED = "2024-04-01T00:00:00Z"
DEFAULT_DOMAIN = {"id": "default", "name": "Default"}
SERVICE_IDS = {
    "database": "0c9f3b0b2bd34a1a9a0f6e5d1f7b6a01",
    "identity": "9e1d2a3c4b5d6e7f8091a2b3c4d5e6f7",
}


@dataclass(frozen=True)
class HttpReply:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


def _json(status: int, document: Any, headers: Mapping[str, str] | None = None) -> HttpReply:
    return HttpReply(
        status,
        json.dumps(document).encode(),
        {"Content-Type": "application/json", **(headers or {})},
    )


def _error(status: int, title: str, message: str) -> HttpReply:
    return _json(status, {"error": {"code": status, "title": title, "message": message}})


class KeystoneRequestError(Exception):
    """A malformed authentication request (400)."""


@dataclass
class LocalKeystone:
    """The identity routes; `handle` is called by the embedded HTTP server."""

    identity: LocalIdentity
    region: str

    def handle(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes, root: str
    ) -> HttpReply:
        """`root` is `http://host:port` as the client addressed the server."""
        lower = {k.lower(): v for k, v in headers.items()}
        route = path[len(PREFIX) :].rstrip("/")
        try:
            if route == "" and method == "GET":
                return _json(300, {"versions": {"values": [self._version(root)]}})
            if route == "/v3" and method == "GET":
                return _json(200, {"version": self._version(root)})
            if route == "/v3/auth/tokens" and method == "POST":
                return self._issue(body, root)
            if route == "/v3/auth/tokens" and method in ("GET", "HEAD"):
                return self._validate(lower, root, head=method == "HEAD")
            if route in ("/v3/auth/projects", "/v3/projects") and method == "GET":
                claims = self._caller(lower)
                return _json(200, {"projects": [self._project(claims)], "links": {}})
        except AuthenticationError as exc:
            return _error(
                401, "Unauthorized", f"The request you have made requires authentication: {exc}"
            )
        except KeystoneRequestError as exc:
            return _error(400, "Bad Request", str(exc))
        return _error(404, "Not Found", f"{method} {path} is not served by this identity service.")

    # ------------------------------------------------------------------ documents
    def _version(self, root: str) -> dict[str, Any]:
        return {
            "id": "v3.14",
            "status": "stable",
            "updated": V3_UPDATED,
            "links": [{"rel": "self", "href": f"{root}{PREFIX}/v3/"}],
            "media-types": [
                {"base": "application/json", "type": "application/vnd.openstack.identity-v3+json"}
            ],
        }

    def catalog(self, root: str, project_id: str) -> list[dict[str, Any]]:
        def endpoints(url: str, service: str) -> list[dict[str, Any]]:
            return [
                {
                    "id": f"{SERVICE_IDS[service][:-2]}{n:02d}",
                    "interface": interface,
                    "region": self.region,
                    "region_id": self.region,
                    "url": url,
                }
                for n, interface in enumerate(("public", "internal", "admin"))
            ]

        return [
            {
                "id": SERVICE_IDS["database"],
                "type": "database",
                "name": "trove",
                "endpoints": endpoints(f"{root}/v1.0/{project_id}", "database"),
            },
            {
                "id": SERVICE_IDS["identity"],
                "type": "identity",
                "name": "keystone",
                "endpoints": endpoints(f"{root}{PREFIX}/v3", "identity"),
            },
        ]

    def _project(self, claims: TokenClaims) -> dict[str, Any]:
        return {
            "id": claims.project_id,
            "name": claims.project_name,
            "domain_id": DEFAULT_DOMAIN["id"],
            "enabled": True,
            "is_domain": False,
            "parent_id": DEFAULT_DOMAIN["id"],
            "links": {},
        }

    def token_body(self, claims: TokenClaims, root: str, *, catalog: bool = True) -> dict[str, Any]:
        token: dict[str, Any] = {
            "methods": list(claims.methods),
            "user": {
                "id": claims.user_id,
                "name": claims.user_name,
                "domain": DEFAULT_DOMAIN,
                "password_expires_at": None,
            },
            "audit_ids": [claims.audit_id],
            "issued_at": claims.issued_at_iso(),
            "expires_at": claims.expires_at_iso(),
            "project": {
                "id": claims.project_id,
                "name": claims.project_name,
                "domain": DEFAULT_DOMAIN,
            },
            "is_domain": False,
            "roles": [{"id": f"role-{name}", "name": name} for name in claims.roles],
        }
        if catalog:
            token["catalog"] = self.catalog(root, claims.project_id)
        return {"token": token}

    # ------------------------------------------------------------------ tokens
    def _issue(self, body: bytes, root: str) -> HttpReply:
        try:
            request = json.loads(body or b"{}")
            auth = request["auth"]
            identity = auth["identity"]
            methods = identity["methods"]
        except (ValueError, KeyError, TypeError):
            raise KeystoneRequestError(
                "Expecting {'auth': {'identity': {'methods': [...]}}} in the request body."
            ) from None
        if not isinstance(methods, list) or not isinstance(identity, dict):
            raise KeystoneRequestError("auth.identity.methods must be a list.")
        project_name, project_id = _scope(auth.get("scope"))
        if "password" in methods:
            user = _dig(identity, "password", "user")
            password = user.get("password")
            if not isinstance(password, str):
                raise KeystoneRequestError("auth.identity.password.user.password is required.")
            token, claims = self.identity.authenticate(
                password=password,
                user_name=_opt_str(user.get("name")),
                user_id=_opt_str(user.get("id")),
                project_name=project_name,
                project_id=project_id,
            )
        elif "token" in methods:
            presented = _dig(identity, "token").get("id")
            if not isinstance(presented, str):
                raise KeystoneRequestError("auth.identity.token.id is required.")
            old = self.identity.tokens.validate(presented)
            account = self.identity.account(user_id=old.user_id)
            token, claims = self.identity.rescope(
                account,
                project_name=project_name,
                project_id=project_id,
                methods=("token",),
                expires_at=old.expires_at,  # a token never outlives the one it came from
            )
        else:
            raise KeystoneRequestError("Only the password and token methods are supported.")
        return _json(201, self.token_body(claims, root), {"X-Subject-Token": token})

    def _caller(self, headers: Mapping[str, str]) -> TokenClaims:
        return self.identity.tokens.validate(headers.get("x-auth-token", ""))

    def _validate(self, headers: Mapping[str, str], root: str, *, head: bool) -> HttpReply:
        self._caller(headers)
        subject = headers.get("x-subject-token", "")
        try:
            claims = self.identity.tokens.validate(subject)
        except AuthenticationError as exc:
            return _error(404, "Not Found", f"The subject token is not valid: {exc}")
        if head:
            return HttpReply(200, b"", {"X-Subject-Token": subject})
        nocatalog = "nocatalog" in headers.get("x-query", "")
        return _json(
            200, self.token_body(claims, root, catalog=not nocatalog), {"X-Subject-Token": subject}
        )


def _opt_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _dig(document: Mapping[str, Any], *keys: str) -> dict[str, Any]:
    current: Any = document
    for key in keys:
        if not isinstance(current, Mapping) or not isinstance(current.get(key), Mapping):
            raise KeystoneRequestError(f"auth.identity.{'.'.join(keys)} is required.")
        current = current[key]
    return dict(current)


def _scope(scope: Any) -> tuple[str | None, str | None]:
    """(project name, project id) of a project scope; (None, None) when unscoped (the
    user's own project is used, as Keystone does with a default project)."""
    if scope is None:
        return None, None
    if not isinstance(scope, Mapping):
        raise KeystoneRequestError("auth.scope must be an object.")
    project = scope.get("project")
    if project is None:
        if scope:
            raise KeystoneRequestError("Only project scope is supported.")
        return None, None
    if not isinstance(project, Mapping):
        raise KeystoneRequestError("auth.scope.project must be an object.")
    return _opt_str(project.get("name")), _opt_str(project.get("id"))


PASSWORDS_DIR = "identity"


def local_password(data_dir: Path, user: str) -> str:
    """A user's generated password: created once (0600) in the data directory, then reused."""
    directory = data_dir / PASSWORDS_DIR
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = directory / f"{user}.password"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    password = secrets.token_urlsafe(18)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(password + "\n")
    return password


def local_identity(
    settings: Settings, tokens: TokenService
) -> tuple[LocalIdentity, dict[str, str]]:
    """The configured users (passwords hashed in memory) and each user's plaintext password,
    which only `troveless up` sees, to write the operator's clouds.yaml."""
    identity = LocalIdentity(tokens)
    passwords: dict[str, str] = {}
    for user in settings.local_users:
        password = (
            user.password.get_secret_value()
            if user.password is not None
            else local_password(settings.data_dir, user.name)
        )
        identity.add(user.name, password, user.project, tuple(user.roles))
        passwords[user.name] = password
    return identity, passwords
