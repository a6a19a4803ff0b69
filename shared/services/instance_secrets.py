"""The per-instance guest secret, sealed by the master key for the state store.

The secret signs every guest message and seals the passwords sent to the guest; the
control plane keeps it only as `Instance.encrypted_guest_secret`, bound (AES-GCM associated
data) to the instance id, so a sealed secret copied onto another instance does not open.
"""

from __future__ import annotations

from shared.crypto import SealedDataError, open_sealed, seal
from shared.errors import CorruptDataError
from shared.models.instance import Instance


def secret_context(instance_id: str) -> bytes:
    return f"troveless/instance/{instance_id}/guest-secret".encode()


def seal_guest_secret(instance_id: str, secret: bytes, master_key: bytes) -> str:
    """`encrypted_guest_secret` for a new instance."""
    return seal(master_key, secret, secret_context(instance_id))


def guest_secret(instance: Instance, master_key: bytes) -> bytes:
    """The instance's guest secret. CorruptDataError if it has none or it does not open
    (wrong master key, or the value was tampered with)."""
    if instance.encrypted_guest_secret is None:
        raise CorruptDataError(f"instances/{instance.id}", "the instance has no guest secret")
    try:
        return open_sealed(master_key, instance.encrypted_guest_secret, secret_context(instance.id))
    except SealedDataError as exc:
        raise CorruptDataError(f"instances/{instance.id}", str(exc)) from None
