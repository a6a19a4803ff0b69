"""Keystone token validation for the OpenStack profile (the `TokenValidator` port).

The API holds a service identity (a keystoneauth1 session, normally from clouds.yaml or the
OS_* variables) and asks Keystone about each caller's token with `GET /v3/auth/tokens`:
`X-Auth-Token` is the service's token, `X-Subject-Token` the caller's. The project comes from
the token, never from the request. Answers are cached until the token expires or for
`cache_seconds`, whichever is sooner, so a revoked token stops working within that time
(keystonemiddleware makes the same trade-off with its token cache).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from datetime import datetime
from typing import Any, Self

from keystoneauth1 import exceptions as ksa_exceptions
from keystoneauth1.session import Session

from shared.errors import AuthenticationError, IdentityUnavailableError
from shared.observability import get_logger
from shared.ports import Clock, TokenClaims

log = get_logger("keystone-tokens")

MAX_TOKEN_CHARS = 8192  # fernet tokens are ~200 characters; refuse junk before asking Keystone
DEFAULT_CACHE_SECONDS = 60.0
DEFAULT_MAX_CACHED = 4096
IDENTITY_V3 = {"service_type": "identity", "version": (3, 0)}


def _epoch(text: Any, field: str) -> float:
    if not isinstance(text, str):
        raise IdentityUnavailableError(f"Keystone's token document has no {field}")
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise IdentityUnavailableError(f"Keystone's token {field} {text!r} is not a date") from None


def _mapping(document: dict[str, Any], name: str) -> dict[str, Any]:
    value = document.get(name)
    return value if isinstance(value, dict) else {}


def _items(document: dict[str, Any], name: str) -> list[Any]:
    value = document.get(name)
    return value if isinstance(value, list) else []


def claims_from_token_document(document: Any) -> TokenClaims:
    """The claims of Keystone's `{"token": {...}}` validation answer. A token that is not
    scoped to a project cannot use the API (AuthenticationError); a document we cannot read
    is Keystone's fault (IdentityUnavailableError)."""
    token = document.get("token") if isinstance(document, dict) else None
    if not isinstance(token, dict):
        raise IdentityUnavailableError("Keystone's answer has no token document")
    project = token.get("project")
    if not isinstance(project, dict) or not project.get("id"):
        raise AuthenticationError("the token is not scoped to a project")
    user = _mapping(token, "user")
    roles = _items(token, "roles")
    audit_ids = _items(token, "audit_ids")
    methods = _items(token, "methods")
    return TokenClaims(
        user_id=str(user.get("id") or ""),
        user_name=str(user.get("name") or ""),
        project_id=str(project["id"]),
        project_name=str(project.get("name") or ""),
        roles=tuple(str(r["name"]) for r in roles if isinstance(r, dict) and "name" in r),
        issued_at=_epoch(token.get("issued_at"), "issued_at"),
        expires_at=_epoch(token.get("expires_at"), "expires_at"),
        audit_id=str(audit_ids[0]) if audit_ids else "",
        methods=tuple(str(m) for m in methods),
    )


class KeystoneTokenValidator:
    """Validates callers' tokens with Keystone v3, caching answers briefly."""

    def __init__(
        self,
        session: Session,
        clock: Clock,
        *,
        interface: str = "public",
        region_name: str | None = None,
        cache_seconds: float = DEFAULT_CACHE_SECONDS,
        max_cached: int = DEFAULT_MAX_CACHED,
    ) -> None:
        self._session = session
        self._clock = clock
        self._endpoint_filter: dict[str, Any] = {**IDENTITY_V3, "interface": interface}
        if region_name:
            self._endpoint_filter["region_name"] = region_name
        self._cache_seconds = cache_seconds
        self._max_cached = max_cached
        self._lock = threading.Lock()
        # sha256(token) -> (claims, cached until): the tokens themselves are never kept.
        self._cache: OrderedDict[str, tuple[TokenClaims, float]] = OrderedDict()
        self.keystone_calls = 0  # validations that reached Keystone (for tests and metrics)

    @classmethod
    def from_cloud(cls, clock: Clock, cloud: str | None = None, **options: Any) -> Self:
        """The service identity from clouds.yaml (`cloud`, else OS_CLOUD) or OS_* variables."""
        import openstack.config

        region = openstack.config.get_cloud_region(cloud=cloud)
        return cls(
            region.get_session(),
            clock,
            interface=str(region.get_interface("identity") or "public"),
            region_name=region.region_name or None,
            **options,
        )

    def validate(self, token: str) -> TokenClaims:
        if not token or len(token) > MAX_TOKEN_CHARS:
            raise AuthenticationError("the token is malformed")
        key = hashlib.sha256(token.encode()).hexdigest()
        now = self._clock.time()
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                if cached[1] > now:
                    return cached[0]
                del self._cache[key]
        claims = self._ask_keystone(token)
        now = self._clock.time()
        if claims.expires_at <= now:
            raise AuthenticationError("the token has expired")
        with self._lock:
            self._cache[key] = (claims, min(claims.expires_at, now + self._cache_seconds))
            self._evict(now)
        return claims

    def _ask_keystone(self, token: str) -> TokenClaims:
        with self._lock:
            self.keystone_calls += 1
        try:
            response = self._session.get(
                "/auth/tokens?nocatalog",
                headers={"X-Subject-Token": token},
                endpoint_filter=self._endpoint_filter,
                authenticated=True,
                raise_exc=False,
            )
        except ksa_exceptions.ClientException as exc:
            # Getting our own service token failed, or Keystone is unreachable.
            raise IdentityUnavailableError(
                f"cannot reach Keystone with the service identity: {type(exc).__name__}"
            ) from None
        status = response.status_code
        if status in (404, 410):  # Keystone's answer for an unknown, revoked or expired token
            raise AuthenticationError("the token is not valid")
        if status != 200:
            # 401/403 after keystoneauth's own re-authentication: our service identity is
            # refused; 5xx: Keystone is failing. Either way the caller is not at fault.
            log.error("keystone refused to validate a token", extra={"status": status})
            raise IdentityUnavailableError(f"Keystone answered {status} to a token validation")
        try:
            document = response.json()
        except ValueError:
            raise IdentityUnavailableError("Keystone's answer is not JSON") from None
        return claims_from_token_document(document)

    def _evict(self, now: float) -> None:
        if len(self._cache) <= self._max_cached:
            return
        for key in [k for k, (_, until) in self._cache.items() if until <= now]:
            del self._cache[key]
        while len(self._cache) > self._max_cached:
            self._cache.popitem(last=False)  # the oldest entry
