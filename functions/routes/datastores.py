"""Datastores and their versions (only those whose binaries are installed)."""

from __future__ import annotations

from typing import Any

from functions.routes import api_urls, new_router
from functions.runtime import get_runtime
from functions.trove_views import datastore_view, version_view
from shared.errors import NotFoundError
from shared.services.catalog import CatalogService

router = new_router()


def catalog_service() -> CatalogService:
    return CatalogService(get_runtime().settings)


@router.get("/v1.0/<project_id>/datastores", summary="List datastores")
def list_datastores(project_id: str) -> dict[str, Any]:
    urls = api_urls(router.current_event, project_id)
    return {"datastores": [datastore_view(d, urls) for d in catalog_service().datastores()]}


@router.get("/v1.0/<project_id>/datastores/<datastore>", summary="Show a datastore")
def show_datastore(project_id: str, datastore: str) -> dict[str, Any]:
    urls = api_urls(router.current_event, project_id)
    return {"datastore": datastore_view(catalog_service().datastore(datastore), urls)}


@router.get("/v1.0/<project_id>/datastores/<datastore>/versions", summary="List versions")
def list_versions(project_id: str, datastore: str) -> dict[str, Any]:
    urls = api_urls(router.current_event, project_id)
    found = catalog_service().datastore(datastore)
    return {"versions": [version_view(found, v, urls) for v in found.versions if v.active]}


@router.get(
    "/v1.0/<project_id>/datastores/<datastore>/versions/<version>", summary="Show a version"
)
def show_version(project_id: str, datastore: str, version: str) -> dict[str, Any]:
    urls = api_urls(router.current_event, project_id)
    catalog = catalog_service()
    found = catalog.datastore(datastore)
    return {"version": version_view(found, catalog.version(found.name, version), urls)}


@router.get("/v1.0/<project_id>/datastores/versions/<version_id>", summary="Show a version by id")
def show_version_by_id(project_id: str, version_id: str) -> dict[str, Any]:
    urls = api_urls(router.current_event, project_id)
    for found in catalog_service().datastores():
        for version in found.versions:
            if version.id == version_id and version.active:
                return {"version": version_view(found, version, urls)}
    raise NotFoundError(version_id, "datastore version")
