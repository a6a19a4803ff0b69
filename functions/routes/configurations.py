"""Trove's configuration groups: list, create, show, replace (PUT), merge (PATCH), delete, and the
instances using one. Attaching and detaching go through the instance (`PUT/PATCH /instances/<id>`
with `configuration`), handled by the instances routes with ConfigurationService.

Bodies as python-troveclient sends them: `{"configuration": {"name", "values", "description"?,
"datastore": {"type", "version"}?}}` to create; `{"configuration": {"values", "name"?,
"description"?}}` to PUT or PATCH. Values outside the datastore version's rules are a 422
naming the key (`values.max_connections`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aws_lambda_powertools.event_handler.api_gateway import Response

from functions.api_errors import ApiError, json_body, section
from functions.routes import api_urls, new_router
from functions.runtime import get_runtime
from functions.trove_views import ApiUrls, timestamp
from shared.errors import NotFoundError
from shared.models.configuration import Configuration
from shared.services.catalog import CatalogService
from shared.services.catalog import version_id as catalog_version_id
from shared.services.configurations import ConfigurationService, CreateConfiguration

router = new_router()


def catalog_service() -> CatalogService:
    return CatalogService(get_runtime().settings)


def configuration_service() -> ConfigurationService:
    runtime = get_runtime()
    return ConfigurationService(
        runtime.store, runtime.workflows, runtime.clock, catalog=catalog_service()
    )


def _version_number(group: Configuration) -> str:
    """The exact version (10.11.6) when the version is installed here, else its name."""
    try:
        return catalog_service().version(group.datastore.type, group.datastore.version).version
    except NotFoundError:
        return group.datastore.version


def configuration_view(
    group: Configuration, urls: ApiUrls, *, instance_count: int | None = None
) -> dict[str, Any]:
    """Trove's configuration JSON; `values` and `instance_count` only in the detailed view."""
    view: dict[str, Any] = {
        "id": group.id,
        "name": group.name,
        "description": group.description,
        "datastore_name": group.datastore.type,
        "datastore_version_id": catalog_version_id(group.datastore.type, group.datastore.version),
        "datastore_version_name": group.datastore.version,
        "datastore_version_number": _version_number(group),
        "created": timestamp(group.created),
        "updated": timestamp(group.updated),
        "links": urls.links("configurations", group.id),
    }
    if instance_count is not None:
        view["values"] = dict(group.values)
        view["instance_count"] = instance_count
    return view


def _configuration_body() -> Mapping[str, Any]:
    body = section(json_body(router.current_event.body), "configuration")
    if not isinstance(body, Mapping):
        raise ApiError(400, "configuration: must be a JSON object.")
    return body


def _optional_text(body: Mapping[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise ApiError(400, f"configuration.{key}: must be a string.")
    return value


def _values(body: Mapping[str, Any]) -> Any:
    if "values" not in body:
        raise ApiError(400, "configuration.values: this field is required.")
    return body["values"]


@router.get("/v1.0/<project_id>/configurations", summary="List configuration groups")
def list_configurations(project_id: str) -> dict[str, Any]:
    urls = api_urls(router.current_event, project_id)
    groups = configuration_service().list(project_id)
    return {"configurations": [configuration_view(g, urls) for g in groups]}


@router.post("/v1.0/<project_id>/configurations", summary="Create a configuration group")
def create_configuration(project_id: str) -> dict[str, Any]:
    body = _configuration_body()
    datastore = body.get("datastore") or {}
    if not isinstance(datastore, Mapping):
        raise ApiError(400, "configuration.datastore: must be a JSON object.")
    name = _optional_text(body, "name")
    if not name:
        raise ApiError(400, "configuration.name: this field is required.")
    values = body.get("values", {})
    if not isinstance(values, Mapping):
        raise ApiError(400, "configuration.values: must be an object of parameter: value.")
    request = CreateConfiguration(
        name=name,
        description=_optional_text(body, "description"),
        values=dict(values),
        datastore_type=_optional_text(datastore, "type"),
        datastore_version=_optional_text(datastore, "version"),
    )
    group = configuration_service().create(project_id, request)
    urls = api_urls(router.current_event, project_id)
    return {"configuration": configuration_view(group, urls, instance_count=0)}


@router.get(
    "/v1.0/<project_id>/configurations/<configuration_id>", summary="Show a configuration group"
)
def show_configuration(project_id: str, configuration_id: str) -> dict[str, Any]:
    service = configuration_service()
    group = service.get(project_id, configuration_id)
    count = len(service.instances(project_id, group.id))
    urls = api_urls(router.current_event, project_id)
    return {"configuration": configuration_view(group, urls, instance_count=count)}


@router.put(
    "/v1.0/<project_id>/configurations/<configuration_id>",
    summary="Replace a configuration group's values (applied to the instances using it)",
)
def replace_configuration(project_id: str, configuration_id: str) -> Response[str]:
    body = _configuration_body()
    configuration_service().replace(
        project_id,
        configuration_id,
        _values(body),
        name=_optional_text(body, "name"),
        description=_optional_text(body, "description"),
    )
    return Response(status_code=202, content_type="application/json", body="")


@router.patch(
    "/v1.0/<project_id>/configurations/<configuration_id>",
    summary="Merge values into a configuration group (applied to the instances using it)",
)
def patch_configuration(project_id: str, configuration_id: str) -> Response[str]:
    configuration_service().patch(project_id, configuration_id, _values(_configuration_body()))
    return Response(status_code=200, content_type="application/json", body="")


@router.delete(
    "/v1.0/<project_id>/configurations/<configuration_id>",
    summary="Delete a configuration group (refused while instances use it)",
)
def delete_configuration(project_id: str, configuration_id: str) -> Response[str]:
    configuration_service().delete(project_id, configuration_id)
    return Response(status_code=202, content_type="application/json", body="")


@router.get(
    "/v1.0/<project_id>/configurations/<configuration_id>/instances",
    summary="List the instances using a configuration group",
)
def configuration_instances(project_id: str, configuration_id: str) -> dict[str, Any]:
    instances = configuration_service().instances(project_id, configuration_id)
    return {"instances": [{"id": i.id, "name": i.name} for i in instances]}
