"""Keys and sealed secrets for one instance.

Each instance has one random secret (at least 32 bytes), shared by the control plane and the
instance's guest agent only. Every use gets its own key, derived with HKDF-SHA256 under a
purpose label, so a key leaked for one use (say, the sealed passwords in a command) says
nothing about another (the signatures on messages):

    signing   HMAC-SHA256 signatures on guest commands, results and heartbeats
    passwords passwords sent to the guest (`encrypted_password`) and back (enable_root)
    volume    secrets the guest keeps on its own volume (the datastore's admin password)

`seal` encrypts with AES-256-GCM and returns an `EncryptedBlob` string: URL-safe base64 of
`version (1 byte) | nonce (12 bytes) | ciphertext | tag (16 bytes)`. The associated data
(`aad`) binds a sealed value to its context (instance, field): opening it anywhere else fails.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from dataclasses import dataclass
from enum import StrEnum

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from shared.errors import TrovelessError

KEY_BYTES = 32
MIN_SECRET_BYTES = 32
NONCE_BYTES = 12
_SCHEME_V1 = b"\x01"
_HKDF_SALT = b"troveless/instance-keys/v1"


class KeyPurpose(StrEnum):
    """What a derived key is for; the label is part of the derivation."""

    SIGNING = "signing"
    PASSWORDS = "passwords"
    VOLUME = "volume"


class SealedDataError(TrovelessError):
    """Sealed data does not open: wrong key or context, tampered with, or not sealed by us."""


def new_instance_secret() -> bytes:
    """A fresh random per-instance secret."""
    return secrets.token_bytes(MIN_SECRET_BYTES)


def encode_secret(secret: bytes) -> str:
    """The secret as standard base64 text (how user-data and the state store carry it)."""
    return base64.b64encode(secret).decode("ascii")


def decode_secret(text: str) -> bytes:
    """The secret from its base64 text; ValueError if it is not base64 or too short."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ValueError("secret: must be base64") from None
    if len(raw) < MIN_SECRET_BYTES:
        raise ValueError(f"secret: at least {MIN_SECRET_BYTES} bytes are needed, got {len(raw)}")
    return raw


def derive_key(secret: bytes, purpose: KeyPurpose) -> bytes:
    """A 32-byte key for `purpose`, derived from the per-instance `secret` with HKDF-SHA256."""
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(f"secret: at least {MIN_SECRET_BYTES} bytes are needed, got {len(secret)}")
    hkdf = HKDF(
        algorithm=hashes.SHA256(),
        length=KEY_BYTES,
        salt=_HKDF_SALT,
        info=f"troveless/{purpose.value}".encode(),
    )
    return hkdf.derive(secret)


@dataclass(frozen=True, repr=False)
class InstanceKeys:
    """The keys derived from one instance's secret (repr hides them)."""

    signing: bytes
    passwords: bytes
    volume: bytes

    @classmethod
    def from_secret(cls, secret: bytes) -> InstanceKeys:
        return cls(
            signing=derive_key(secret, KeyPurpose.SIGNING),
            passwords=derive_key(secret, KeyPurpose.PASSWORDS),
            volume=derive_key(secret, KeyPurpose.VOLUME),
        )

    def __repr__(self) -> str:
        return "InstanceKeys(***)"


def seal(key: bytes, plaintext: bytes, aad: bytes = b"") -> str:
    """Encrypt and authenticate `plaintext` under `key` (32 bytes), bound to `aad`."""
    if len(key) != KEY_BYTES:
        raise ValueError(f"key: must be {KEY_BYTES} bytes, got {len(key)}")
    nonce = secrets.token_bytes(NONCE_BYTES)
    sealed = AESGCM(key).encrypt(nonce, plaintext, aad)
    return base64.urlsafe_b64encode(_SCHEME_V1 + nonce + sealed).decode("ascii")


def open_sealed(key: bytes, blob: str, aad: bytes = b"") -> bytes:
    """The plaintext `seal(key, plaintext, aad)` sealed; SealedDataError if it does not open."""
    if len(key) != KEY_BYTES:
        raise ValueError(f"key: must be {KEY_BYTES} bytes, got {len(key)}")
    try:
        raw = base64.urlsafe_b64decode(blob.encode("ascii") + b"=" * (-len(blob) % 4))
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise SealedDataError("not a sealed value (bad base64)") from None
    if len(raw) < 1 + NONCE_BYTES + 16 or raw[:1] != _SCHEME_V1:
        raise SealedDataError("not a sealed value (unknown scheme or too short)")
    nonce, sealed = raw[1 : 1 + NONCE_BYTES], raw[1 + NONCE_BYTES :]
    try:
        return AESGCM(key).decrypt(nonce, sealed, aad)
    except InvalidTag:
        raise SealedDataError(
            "sealed value does not open: wrong key or context, or tampered with"
        ) from None


def password_context(instance_id: str) -> bytes:
    """The associated data of a password sealed for (or by) one instance's guest: a sealed
    password copied into another instance's command does not open there."""
    return f"troveless/instance/{instance_id}/password".encode()
