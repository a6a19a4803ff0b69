"""Foundations every domain model shares: the base class, identifier, timestamp and
ciphertext types, and the guard that keeps plaintext secrets out of free-form JSON.

Models are what the services store in the StateStore (`model_dump(mode="json")` in,
`model_validate(record.data)` out) and what the API later shapes into Trove's JSON.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Self

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, JsonValue


class DomainModel(BaseModel):
    """Base of every troveless model.

    - `extra="forbid"`: a misspelt or unknown key is an error, whether it comes from a
      tenant, a guest or an older/newer writer of the store (readers upgrade before writers).
    - `frozen=True`: a record is an immutable revision; change it with `replace`, which
      validates the result (pydantic's `model_copy(update=...)` does not).
    - `allow_inf_nan=False`: NaN and infinity are not JSON and would break round-trips
      and signatures.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    def replace(self, **changes: Any) -> Self:
        """A validated copy with `changes` applied (excluded fields such as secrets are kept)."""
        current = {name: getattr(self, name) for name in type(self).model_fields}
        return self.model_validate({**current, **changes})


def _canonical_uuid(value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise ValueError(f"{value!r} is not a UUID") from None


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


def _canonical_ip(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError(f"{value!r} is not an IPv4 or IPv6 address") from None


# Shortest ciphertext any sane scheme produces: a 12-byte nonce plus a 16-byte tag (AES-GCM).
MIN_CIPHERTEXT_BYTES = 28
_BASE64 = re.compile(r"^[A-Za-z0-9+/_-]+={0,2}$")


def _ciphertext(value: str) -> str:
    if not _BASE64.fullmatch(value):
        raise ValueError("must be base64 ciphertext (a secret is never stored in plaintext)")
    padded = value + "=" * (-len(value) % 4)
    try:
        raw = base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
    except binascii.Error:
        raise ValueError(
            "must be base64 ciphertext (a secret is never stored in plaintext)"
        ) from None
    if len(raw) < MIN_CIPHERTEXT_BYTES:
        raise ValueError(
            f"is {len(raw)} bytes; ciphertext is at least {MIN_CIPHERTEXT_BYTES} "
            "(a secret is never stored in plaintext)"
        )
    return value


Uuid = Annotated[str, AfterValidator(_canonical_uuid)]
"""A UUID as its canonical lower-case hyphenated string (Trove's resource ids)."""

UtcDatetime = Annotated[AwareDatetime, AfterValidator(_utc)]
"""A timezone-aware timestamp, normalised to UTC; naive datetimes are refused."""

IpAddress = Annotated[str, AfterValidator(_canonical_ip)]
"""An IPv4 or IPv6 address in canonical text form."""

EncryptedBlob = Annotated[str, Field(max_length=65536), AfterValidator(_ciphertext)]
"""Opaque ciphertext (standard or URL-safe base64) of a secret sealed by the crypto service.

Models never hold plaintext secrets for the store: only this, whose scheme and key id are
the crypto service's business. The check (base64, at least 28 bytes) is a tripwire against
a plaintext password slipping in, not a proof of encryption.
"""

Name = Annotated[str, Field(min_length=1, max_length=255)]
"""A display name; the per-datastore naming rules live in shared/rules."""

ProjectId = Annotated[str, Field(min_length=1, max_length=255)]
"""A Keystone project id (32 hex digits there, but any non-empty string locally)."""

Port = Annotated[int, Field(ge=1, le=65535)]


_SECRET_NAME = re.compile(r"^(password|secret|.+_password|.+_secret)$", re.IGNORECASE)
_SEALED_PREFIX = "encrypted_"


def reject_plaintext_secrets(value: JsonValue, path: str = "") -> JsonValue:
    """Refuse JSON that carries a secret-named key (`password`, `*_password`, `secret`,
    `*_secret`) with a non-null value, at any depth.

    Free-form JSON (guest command args and results, execution input and output) reaches
    queues and the state store; a secret belongs there only sealed, under
    `encrypted_<name>` as an `EncryptedBlob`.
    """
    if isinstance(value, Mapping):
        for key, item in value.items():
            where = f"{path}.{key}" if path else key
            if (
                _SECRET_NAME.fullmatch(key)
                and not key.lower().startswith(_SEALED_PREFIX)
                and item is not None
            ):
                raise ValueError(
                    f"{where!r} looks like a plaintext secret; "
                    f"send it sealed as '{_SEALED_PREFIX}{key}'"
                )
            reject_plaintext_secrets(item, where)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            reject_plaintext_secrets(item, f"{path}[{index}]")
    return value


SecretFreeJson = Annotated[JsonValue, AfterValidator(reject_plaintext_secrets)]
"""JSON that holds no plaintext secret (see `reject_plaintext_secrets`)."""

SecretFreeJsonObject = Annotated[dict[str, JsonValue], AfterValidator(reject_plaintext_secrets)]
"""A JSON object (keys included) that holds no plaintext secret."""
