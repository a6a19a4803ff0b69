"""Trove's quota resource (`/mgmt/quotas/<project>`): a project may read its own quotas.

Changing them is an operator's call (`QuotaService.set_limits`), not a tenant's: the
update route answers 403 for now.
"""

from __future__ import annotations

from typing import Any

from functions.api_errors import ApiError
from functions.routes import new_router
from functions.runtime import get_runtime
from functions.trove_views import quotas_view
from shared.services.quotas import QuotaService

router = new_router()


def quota_service() -> QuotaService:
    runtime = get_runtime()
    return QuotaService(runtime.store, runtime.settings)


def _own_project(project_id: str, target: str) -> None:
    if target != project_id:
        raise ApiError(404, f"Quotas of project {target!r} not found.")


@router.get("/v1.0/<project_id>/mgmt/quotas/<target>", summary="Show a project's quotas")
def show_quotas(project_id: str, target: str) -> dict[str, Any]:
    _own_project(project_id, target)
    quotas = quota_service()
    return {"quotas": quotas_view(quotas.limits(target), quotas.usage(target))}


@router.get("/v1.0/<project_id>/quotas", summary="Show the project's quotas")
def show_own_quotas(project_id: str) -> dict[str, Any]:
    return show_quotas(project_id, project_id)


@router.put("/v1.0/<project_id>/mgmt/quotas/<target>", summary="Update quotas (operators only)")
def update_quotas(project_id: str, target: str) -> dict[str, Any]:
    _own_project(project_id, target)
    raise ApiError(403, "Quotas are changed by the operator, not through the tenant API.")
