"""Flavors: the compute sizes instances are created and resized to."""

from __future__ import annotations

from typing import Any

from functions.routes import api_urls, new_router
from functions.runtime import get_runtime
from functions.trove_views import flavor_view
from shared.services.catalog import CatalogService

router = new_router()


def catalog_service() -> CatalogService:
    return CatalogService(get_runtime().settings)


@router.get("/v1.0/<project_id>/flavors", summary="List flavors")
def list_flavors(project_id: str) -> dict[str, Any]:
    urls = api_urls(router.current_event, project_id)
    return {"flavors": [flavor_view(f, urls) for f in catalog_service().flavors()]}


@router.get("/v1.0/<project_id>/flavors/<flavor_id>", summary="Show a flavor")
def show_flavor(project_id: str, flavor_id: str) -> dict[str, Any]:
    urls = api_urls(router.current_event, project_id)
    return {"flavor": flavor_view(catalog_service().flavor(flavor_id), urls)}
