"""Trove's version documents: `/` lists the versions, `/v1.0` describes the one there is."""

from __future__ import annotations

from typing import Any

from functions.routes import api_urls, new_router
from functions.trove_views import API_UPDATED, API_VERSION

router = new_router()


def _version(root: str) -> dict[str, Any]:
    return {
        "id": API_VERSION,
        "status": "CURRENT",
        "updated": API_UPDATED,
        "links": [{"href": f"{root}/{API_VERSION}/", "rel": "self"}],
    }


@router.get("/", summary="List API versions")
def list_versions() -> dict[str, Any]:
    return {"versions": [_version(api_urls(router.current_event, "").root)]}


@router.get("/v1.0", summary="Show the v1.0 API version")
def show_version() -> dict[str, Any]:
    return {"version": _version(api_urls(router.current_event, "").root)}


@router.get("/v1.0/<project_id>", summary="Show the v1.0 API version (project endpoint)")
def show_project_version(project_id: str) -> dict[str, Any]:
    return {"version": _version(api_urls(router.current_event, project_id).root)}
