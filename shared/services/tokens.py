"""Identity for the local profile: users with hashed passwords, and signed, expiring tokens.

A token is `<payload>.<signature>` (both base64url): the payload is the JSON of its claims
(user, project, roles, expiry), the signature an HMAC-SHA256 under a key derived from the
master key. Nothing is stored per token, so every API process validates any token on its own;
a token cannot be revoked before it expires (Keystone's fernet tokens share this trade-off).
Passwords are held only as scrypt hashes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import uuid
from dataclasses import dataclass, field

from shared.errors import AuthenticationError
from shared.ports import Clock, TokenClaims

# AuthenticationError and TokenClaims live with the errors and the ports (the Keystone adapter
# raises and returns them too); they stay importable from here.
__all__ = [
    "MAX_TOKEN_CHARS",
    "AuthenticationError",
    "LocalAccount",
    "LocalIdentity",
    "TokenClaims",
    "TokenService",
    "hash_password",
    "password_matches",
    "project_id_for",
    "user_id_for",
]

_TOKEN_KEY_LABEL = b"troveless/identity/tokens/v1"
_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://troveless/identity")
# scrypt cost: ~15 ms per check on this class of machine; logins are rare, tokens are not.
_SCRYPT_N = 2**14
_SCRYPT_R = 8
_SCRYPT_P = 1
MAX_TOKEN_CHARS = 4096


def project_id_for(name: str) -> str:
    """A project's id: stable across restarts and hosts, 32 hex digits like Keystone's."""
    return uuid.uuid5(_ID_NAMESPACE, f"project/{name}").hex


def user_id_for(name: str) -> str:
    return uuid.uuid5(_ID_NAMESPACE, f"user/{name}").hex


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TokenService:
    """Issues and validates tokens signed with a key derived from the master key."""

    def __init__(self, master_key: bytes, clock: Clock, ttl_seconds: float = 86400.0) -> None:
        self._key = hmac.new(master_key, _TOKEN_KEY_LABEL, hashlib.sha256).digest()
        self._clock = clock
        self._ttl = ttl_seconds

    def issue(
        self,
        *,
        user_id: str,
        user_name: str,
        project_id: str,
        project_name: str,
        roles: tuple[str, ...],
        methods: tuple[str, ...] = ("password",),
        expires_at: float | None = None,
    ) -> tuple[str, TokenClaims]:
        now = self._clock.time()
        claims = TokenClaims(
            user_id=user_id,
            user_name=user_name,
            project_id=project_id,
            project_name=project_name,
            roles=roles,
            issued_at=now,
            expires_at=now + self._ttl if expires_at is None else min(expires_at, now + self._ttl),
            audit_id=_b64(secrets.token_bytes(16)),
            methods=methods,
        )
        payload = _b64(
            json.dumps(
                {
                    "u": [claims.user_id, claims.user_name],
                    "p": [claims.project_id, claims.project_name],
                    "r": list(claims.roles),
                    "i": claims.issued_at,
                    "e": claims.expires_at,
                    "a": claims.audit_id,
                    "m": list(claims.methods),
                },
                separators=(",", ":"),
            ).encode()
        )
        return f"{payload}.{self._sign(payload)}", claims

    def validate(self, token: str) -> TokenClaims:
        """The token's claims; AuthenticationError if forged, malformed or expired."""
        if not token or len(token) > MAX_TOKEN_CHARS or token.count(".") != 1:
            raise AuthenticationError("the token is malformed")
        payload, signature = token.split(".")
        if not hmac.compare_digest(self._sign(payload), signature):
            raise AuthenticationError("the token is not valid")
        try:
            data = json.loads(_unb64(payload))
            claims = TokenClaims(
                user_id=str(data["u"][0]),
                user_name=str(data["u"][1]),
                project_id=str(data["p"][0]),
                project_name=str(data["p"][1]),
                roles=tuple(str(r) for r in data["r"]),
                issued_at=float(data["i"]),
                expires_at=float(data["e"]),
                audit_id=str(data["a"]),
                methods=tuple(str(m) for m in data["m"]),
            )
        except (ValueError, KeyError, IndexError, TypeError, binascii.Error):
            raise AuthenticationError("the token is malformed") from None
        if claims.expires_at <= self._clock.time():
            raise AuthenticationError("the token has expired")
        return claims

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._key, payload.encode(), hashlib.sha256).digest())


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """`scrypt$<salt>$<hash>` (base64url) of a password."""
    salt = secrets.token_bytes(16) if salt is None else salt
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P, dklen=32
    )
    return f"scrypt${_b64(salt)}${_b64(digest)}"


def password_matches(password: str, hashed: str) -> bool:
    scheme, _, rest = hashed.partition("$")
    salt_text, _, digest_text = rest.partition("$")
    if scheme != "scrypt" or not salt_text or not digest_text:
        return False
    expected = hash_password(password, salt=_unb64(salt_text))
    return hmac.compare_digest(expected, hashed)


@dataclass(frozen=True)
class LocalAccount:
    """A user with one project, as the local identity keeps it (password hashed)."""

    name: str
    project_name: str
    password_hash: str
    roles: tuple[str, ...]

    @property
    def user_id(self) -> str:
        return user_id_for(self.name)

    @property
    def project_id(self) -> str:
        return project_id_for(self.project_name)


@dataclass
class LocalIdentity:
    """Password authentication against the configured local users."""

    tokens: TokenService
    accounts: dict[str, LocalAccount] = field(default_factory=dict)

    def add(self, name: str, password: str, project: str, roles: tuple[str, ...]) -> None:
        self.accounts[name] = LocalAccount(name, project, hash_password(password), roles)

    def account(self, *, user_name: str | None = None, user_id: str | None = None) -> LocalAccount:
        for account in self.accounts.values():
            if user_name == account.name or (user_id is not None and user_id == account.user_id):
                return account
        raise AuthenticationError("the request you have made requires authentication")

    def authenticate(
        self,
        *,
        password: str,
        user_name: str | None = None,
        user_id: str | None = None,
        project_name: str | None = None,
        project_id: str | None = None,
    ) -> tuple[str, TokenClaims]:
        """A token for the user's project; AuthenticationError for wrong credentials or a
        project the user does not belong to (the same answer, so neither is revealed)."""
        try:
            account = self.account(user_name=user_name, user_id=user_id)
        except AuthenticationError:
            hash_password(password)  # same cost whether or not the user exists
            raise
        if not password_matches(password, account.password_hash):
            raise AuthenticationError("the request you have made requires authentication")
        return self.rescope(account, project_name=project_name, project_id=project_id)

    def rescope(
        self,
        account: LocalAccount,
        *,
        project_name: str | None = None,
        project_id: str | None = None,
        methods: tuple[str, ...] = ("password",),
        expires_at: float | None = None,
    ) -> tuple[str, TokenClaims]:
        if project_name is not None and project_name != account.project_name:
            raise AuthenticationError("the user has no role on the requested project")
        if project_id is not None and project_id != account.project_id:
            raise AuthenticationError("the user has no role on the requested project")
        return self.tokens.issue(
            user_id=account.user_id,
            user_name=account.name,
            project_id=account.project_id,
            project_name=account.project_name,
            roles=account.roles,
            methods=methods,
            expires_at=expires_at,
        )
