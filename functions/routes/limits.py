"""Trove's `/limits`: the project's absolute limits and what it uses of them."""

from __future__ import annotations

from typing import Any

from functions.routes import new_router
from functions.runtime import get_runtime
from functions.trove_views import limits_view
from shared.services.quotas import QuotaService

router = new_router()


def quota_service() -> QuotaService:
    runtime = get_runtime()
    return QuotaService(runtime.store, runtime.settings)


@router.get("/v1.0/<project_id>/limits", summary="Show the project's limits")
def show_limits(project_id: str) -> dict[str, Any]:
    quotas = quota_service()
    return {"limits": limits_view(quotas.limits(project_id), quotas.usage(project_id))}
