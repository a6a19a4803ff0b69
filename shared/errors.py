"""Exceptions shared by ports, adapters and services.

Every failure a caller must react to is an explicit type, never a boolean lost in a log.
"""

from __future__ import annotations


class TrovelessError(Exception):
    """Base class of every error troveless raises on purpose."""


class ConflictError(TrovelessError):
    """A compare-and-swap lost: someone else wrote the revision first."""

    def __init__(
        self, key: str, expected_revision: int, actual_revision: int | None = None
    ) -> None:
        self.key = key
        self.expected_revision = expected_revision
        self.actual_revision = actual_revision
        super().__init__(
            f"conflict on {key!r}: expected revision {expected_revision}, "
            f"store has {actual_revision if actual_revision is not None else 'a newer one'}"
        )


class NotFoundError(TrovelessError):
    """A record, blob or queue message does not exist."""

    def __init__(self, key: str, what: str = "object") -> None:
        self.key = key
        super().__init__(f"{what} {key!r} not found")


class CorruptDataError(TrovelessError):
    """Stored bytes do not parse or do not match their checksum."""

    def __init__(self, key: str, reason: str) -> None:
        self.key = key
        self.reason = reason
        super().__init__(f"corrupt data at {key!r}: {reason}")


class LeaseHeldError(TrovelessError):
    """A lease is held by another owner and has not expired."""

    def __init__(self, name: str, owner: str, expires_at: float) -> None:
        self.name = name
        self.owner = owner
        self.expires_at = expires_at
        super().__init__(f"lease {name!r} is held by {owner!r} until {expires_at:.3f}")


class LeaseLostError(TrovelessError):
    """A lease we held expired or was taken over before we renewed or released it."""

    def __init__(self, name: str, owner: str) -> None:
        self.name = name
        self.owner = owner
        super().__init__(f"lease {name!r} is no longer held by {owner!r}")


class InvalidKeyError(TrovelessError, ValueError):
    """A store key or queue name breaks the naming rule."""

    def __init__(self, key: str, rule: str) -> None:
        self.key = key
        self.rule = rule
        super().__init__(f"invalid key {key!r}: {rule}")


class ComputeError(TrovelessError):
    """A server could not be built, changed or removed; says which instance and why."""

    def __init__(self, instance_id: str, reason: str) -> None:
        self.instance_id = instance_id
        self.reason = reason
        super().__init__(f"server of instance {instance_id!r}: {reason}")


class ComputeRequestError(ComputeError, ValueError):
    """A compute request that cannot succeed as asked (unknown zone, shrinking a volume...)."""
