"""shared.crypto: derived keys per purpose, AES-256-GCM sealing bound to its context."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.crypto import (
    KEY_BYTES,
    InstanceKeys,
    KeyPurpose,
    SealedDataError,
    decode_secret,
    derive_key,
    encode_secret,
    new_instance_secret,
    open_sealed,
    password_context,
    seal,
)
from shared.models import User

SECRET = bytes(range(32))


def test_derived_keys_are_deterministic_and_differ_per_purpose_and_secret() -> None:
    keys = {purpose: derive_key(SECRET, purpose) for purpose in KeyPurpose}
    assert all(len(k) == KEY_BYTES for k in keys.values())
    assert len(set(keys.values())) == len(KeyPurpose)
    assert derive_key(SECRET, KeyPurpose.SIGNING) == keys[KeyPurpose.SIGNING]
    assert derive_key(bytes(reversed(SECRET)), KeyPurpose.SIGNING) != keys[KeyPurpose.SIGNING]
    assert SECRET not in keys.values()


def test_a_short_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        derive_key(b"x" * 31, KeyPurpose.SIGNING)


def test_instance_keys_hide_themselves_in_repr() -> None:
    keys = InstanceKeys.from_secret(SECRET)
    assert repr(keys) == "InstanceKeys(***)"
    assert keys.signing == derive_key(SECRET, KeyPurpose.SIGNING)
    assert keys.passwords == derive_key(SECRET, KeyPurpose.PASSWORDS)
    assert keys.volume == derive_key(SECRET, KeyPurpose.VOLUME)


def test_secret_text_round_trip_and_refusals() -> None:
    secret = new_instance_secret()
    assert len(secret) >= 32
    assert decode_secret(encode_secret(secret)) == secret
    with pytest.raises(ValueError, match="base64"):
        decode_secret("not base64 !")
    with pytest.raises(ValueError, match="at least 32 bytes"):
        decode_secret(base64.b64encode(b"short").decode())


@given(plaintext=st.binary(max_size=512), aad=st.binary(max_size=64))
def test_seal_then_open_gives_the_plaintext_back(plaintext: bytes, aad: bytes) -> None:
    key = derive_key(SECRET, KeyPurpose.PASSWORDS)
    assert open_sealed(key, seal(key, plaintext, aad), aad) == plaintext


def test_sealing_is_randomised_and_hides_the_plaintext() -> None:
    key = derive_key(SECRET, KeyPurpose.PASSWORDS)
    first, second = seal(key, b"hunter2-hunter2"), seal(key, b"hunter2-hunter2")
    assert first != second
    assert b"hunter2" not in base64.urlsafe_b64decode(first + "==")


def test_a_sealed_value_fits_the_models_encrypted_blob() -> None:
    key = derive_key(SECRET, KeyPurpose.PASSWORDS)
    user = User(name="app", password="s3cret-pass").sealed(lambda raw: seal(key, raw))
    assert user.encrypted_password is not None
    assert open_sealed(key, user.encrypted_password) == b"s3cret-pass"


def test_opening_fails_with_another_key_context_or_a_flipped_bit() -> None:
    key = derive_key(SECRET, KeyPurpose.PASSWORDS)
    sealed = seal(key, b"payload", password_context("a"))
    with pytest.raises(SealedDataError):
        open_sealed(derive_key(SECRET, KeyPurpose.VOLUME), sealed, password_context("a"))
    with pytest.raises(SealedDataError):
        open_sealed(key, sealed, password_context("b"))
    raw = bytearray(base64.urlsafe_b64decode(sealed))
    raw[-1] ^= 1
    with pytest.raises(SealedDataError):
        open_sealed(key, base64.urlsafe_b64encode(bytes(raw)).decode(), password_context("a"))


@pytest.mark.parametrize(
    "blob",
    ["", "!!!!", base64.urlsafe_b64encode(b"\x01short").decode(), "AA" * 40],
)
def test_opening_garbage_is_a_sealed_data_error(blob: str) -> None:
    with pytest.raises(SealedDataError):
        open_sealed(derive_key(SECRET, KeyPurpose.PASSWORDS), blob)


def test_keys_of_the_wrong_size_are_refused() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        seal(b"k" * 16, b"x")
    with pytest.raises(ValueError, match="32 bytes"):
        open_sealed(b"k" * 16, "AAAA")
