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


class RequestError(TrovelessError, ValueError):
    """A request that cannot be done as asked; the API answers `status` with `field` and `rule`.

    400 for malformed input, 422 for well-formed input that breaks a rule (a configuration value
    out of range, a restore into too small a volume).
    """

    def __init__(self, field: str, rule: str, *, status: int = 400) -> None:
        self.field = field
        self.rule = rule
        self.status = status
        super().__init__(f"{field}: {rule}")


class QuotaExceededError(TrovelessError):
    """A project would go over a quota (Trove answers 413 overLimit)."""

    def __init__(self, resource: str, limit: int, in_use: int, requested: int) -> None:
        self.resource = resource
        self.limit = limit
        self.in_use = in_use
        self.requested = requested
        super().__init__(
            f"quota exceeded for {resource}: limit {limit}, in use {in_use}, requested {requested}"
        )


class ActionInProgressError(TrovelessError):
    """Another action is under way on the resource (409)."""

    def __init__(self, resource_id: str, action: str) -> None:
        self.resource_id = resource_id
        self.action = action
        super().__init__(f"{resource_id} is busy: {action} in progress; retry when it ends")


class NotSupportedError(TrovelessError):
    """A capability that exists in Trove's API but is not available here yet (501)."""

    def __init__(self, what: str, reason: str) -> None:
        self.what = what
        self.reason = reason
        super().__init__(f"{what} is not supported: {reason}")


class AuthenticationError(TrovelessError):
    """Credentials or a token that do not authenticate anyone (the API answers 401)."""


class IdentityUnavailableError(TrovelessError):
    """The identity service could not validate a token (unreachable, or it refused our own
    service credentials); the API answers 503, never 401, since the caller may be fine."""
