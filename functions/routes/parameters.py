"""Trove's configuration parameters of a datastore version: the keys a configuration group may
set, with type, bounds and whether a change needs a restart. Addressed by datastore and version
(names or ids) or by version id alone, as Trove does."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

from functions.routes import new_router
from functions.runtime import get_runtime
from shared.models.configuration import ConfigurationParameter
from shared.services.catalog import CatalogService
from shared.services.catalog import version_id as catalog_version_id
from shared.services.configurations import ConfigurationService

router = new_router()


def catalog_service() -> CatalogService:
    return CatalogService(get_runtime().settings)


def configuration_service() -> ConfigurationService:
    runtime = get_runtime()
    return ConfigurationService(
        runtime.store, runtime.workflows, runtime.clock, catalog=catalog_service()
    )


def parameter_view(parameter: ConfigurationParameter, version_uuid: str) -> dict[str, Any]:
    """Trove's parameter JSON (min and max only for numbers, allowed values only for lists)."""
    view: dict[str, Any] = {
        "name": parameter.name,
        "type": parameter.type.value,
        "restart_required": parameter.restart_required,
        "datastore_version_id": version_uuid,
        "description": parameter.description,
    }
    if parameter.min is not None:
        view["min"] = parameter.min
    if parameter.max is not None:
        view["max"] = parameter.max
    if parameter.allowed_values is not None:
        view["allowed_values"] = list(parameter.allowed_values)
    return view


def _resolve(datastore: str, version: str) -> tuple[str, str, str]:
    """(datastore name, version name, version id) for names or ids (404 if not installed)."""
    catalog = catalog_service()
    store = catalog.datastore(unquote(datastore))
    found = catalog.version(store.name, unquote(version))
    return store.name, found.name, catalog_version_id(store.name, found.name)


def _resolve_id(version_uuid: str) -> tuple[str, str, str]:
    datastore, version = configuration_service().datastore_of_version(unquote(version_uuid))
    return datastore, version, catalog_version_id(datastore, version)


@router.get(
    "/v1.0/<project_id>/datastores/<datastore>/versions/<version>/parameters",
    summary="List a datastore version's configuration parameters",
)
def list_parameters(project_id: str, datastore: str, version: str) -> dict[str, Any]:
    name, version_name, uuid = _resolve(datastore, version)
    found = configuration_service().parameters(name, version_name)
    return {"configuration-parameters": [parameter_view(p, uuid) for p in found]}


@router.get(
    "/v1.0/<project_id>/datastores/<datastore>/versions/<version>/parameters/<parameter>",
    summary="Show one configuration parameter of a datastore version",
)
def show_parameter(project_id: str, datastore: str, version: str, parameter: str) -> dict[str, Any]:
    name, version_name, uuid = _resolve(datastore, version)
    found = configuration_service().parameter(name, version_name, unquote(parameter))
    return parameter_view(found, uuid)


@router.get(
    "/v1.0/<project_id>/datastores/versions/<version_id>/parameters",
    summary="List the configuration parameters of a datastore version given by id",
)
def list_parameters_by_version(project_id: str, version_id: str) -> dict[str, Any]:
    name, version_name, uuid = _resolve_id(version_id)
    found = configuration_service().parameters(name, version_name)
    return {"configuration-parameters": [parameter_view(p, uuid) for p in found]}


@router.get(
    "/v1.0/<project_id>/datastores/versions/<version_id>/parameters/<parameter>",
    summary="Show one configuration parameter of a datastore version given by id",
)
def show_parameter_by_version(project_id: str, version_id: str, parameter: str) -> dict[str, Any]:
    name, version_name, uuid = _resolve_id(version_id)
    found = configuration_service().parameter(name, version_name, unquote(parameter))
    return parameter_view(found, uuid)
