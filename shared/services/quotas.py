"""Per-project quotas: instances, volume gigabytes and backups (Trove's defaults 10, 40, 50).

Usage lives in one record per project, `quotas/<project>/usage`, as *holds*: what each
resource (an instance, a backup) holds, keyed by its id. Reserving adds or changes a hold,
releasing removes it; both are compare-and-swap writes, so two concurrent creates cannot both
take the last slot, and repeating a reserve or a release (a redelivered engine step, a delete
racing a failed provision) changes nothing. Usage is the sum of the holds.
"""

from __future__ import annotations

from collections.abc import Mapping

from shared.errors import ConflictError, QuotaExceededError
from shared.ports import JSON, StateStore
from shared.settings import Settings

INSTANCES = "instances"
VOLUMES = "volumes"  # gigabytes, as Trove names it
BACKUPS = "backups"
RESOURCES = (INSTANCES, VOLUMES, BACKUPS)
TROVE_DEFAULTS = {INSTANCES: 10, VOLUMES: 40, BACKUPS: 50}
_CAS_ATTEMPTS = 20


def usage_key(project_id: str) -> str:
    return f"quotas/{project_id}/usage"


def limits_key(project_id: str) -> str:
    return f"quotas/{project_id}/limits"


class QuotaService:
    """Limits and usage per project; `reserve`/`release` keep usage right under concurrency."""

    def __init__(self, store: StateStore, settings: Settings | None = None) -> None:
        self._store = store
        self._defaults = (
            {
                INSTANCES: settings.quota_instances,
                VOLUMES: settings.quota_volumes_gb,
                BACKUPS: settings.quota_backups,
            }
            if settings is not None
            else dict(TROVE_DEFAULTS)
        )

    def limits(self, project_id: str) -> dict[str, int]:
        """The project's limits: the defaults with any per-project override applied."""
        record = self._store.get(limits_key(project_id))
        overrides = record.data if record is not None else {}
        return {r: int(overrides.get(r, self._defaults[r])) for r in RESOURCES}

    def set_limits(self, project_id: str, changes: Mapping[str, int]) -> dict[str, int]:
        """Override some of a project's limits (an operator's call)."""
        unknown = set(changes) - set(RESOURCES)
        if unknown:
            raise ValueError(f"unknown quota resource {sorted(unknown)[0]!r}")
        for _ in range(_CAS_ATTEMPTS):
            record = self._store.get(limits_key(project_id))
            data = {**(record.data if record is not None else {}), **changes}
            try:
                self._store.put(limits_key(project_id), data, record.revision if record else 0)
                return self.limits(project_id)
            except ConflictError:
                continue
        raise ConflictError(limits_key(project_id), 0)

    def usage(self, project_id: str) -> dict[str, int]:
        record = self._store.get(usage_key(project_id))
        return _totals(record.data.get("holds", {}) if record is not None else {})

    def holds(self, project_id: str, holder_id: str) -> dict[str, int]:
        """What one resource holds (empty when it holds nothing)."""
        record = self._store.get(usage_key(project_id))
        holds = record.data.get("holds", {}) if record is not None else {}
        return {k: int(v) for k, v in holds.get(holder_id, {}).items()}

    def reserve(self, project_id: str, holder_id: str, amounts: Mapping[str, int]) -> None:
        """Set what `holder_id` holds to `amounts` (replacing its earlier hold), or raise
        QuotaExceededError naming the first resource that would go over its limit.
        Shrinking a hold never fails."""
        limits = self.limits(project_id)
        key = usage_key(project_id)
        for _ in range(_CAS_ATTEMPTS):
            record = self._store.get(key)
            holds: dict[str, JSON] = dict(record.data.get("holds", {})) if record else {}
            previous = {k: int(v) for k, v in holds.get(holder_id, {}).items()}
            others = _totals({h: v for h, v in holds.items() if h != holder_id})
            for resource in RESOURCES:
                wanted = int(amounts.get(resource, 0))
                if (
                    wanted > previous.get(resource, 0)
                    and others[resource] + wanted > limits[resource]
                ):
                    raise QuotaExceededError(
                        resource,
                        limits[resource],
                        others[resource] + previous.get(resource, 0),
                        wanted - previous.get(resource, 0),
                    )
            holds[holder_id] = {r: int(amounts[r]) for r in RESOURCES if amounts.get(r)}
            try:
                self._store.put(key, {"holds": holds}, record.revision if record else 0)
                return
            except ConflictError:
                continue
        raise ConflictError(key, 0)

    def release(self, project_id: str, holder_id: str) -> None:
        """Drop everything `holder_id` holds; releasing twice is a no-op."""
        key = usage_key(project_id)
        for _ in range(_CAS_ATTEMPTS):
            record = self._store.get(key)
            if record is None or holder_id not in record.data.get("holds", {}):
                return
            holds = {h: v for h, v in record.data["holds"].items() if h != holder_id}
            try:
                self._store.put(key, {"holds": holds}, record.revision)
                return
            except ConflictError:
                continue
        raise ConflictError(key, 0)


def _totals(holds: Mapping[str, JSON]) -> dict[str, int]:
    totals = dict.fromkeys(RESOURCES, 0)
    for held in holds.values():
        for resource, amount in held.items():
            if resource in totals:
                totals[resource] += int(amount)
    return totals
