"""Trove's instance resource: list, detail, create, show, update, delete and actions.

Bodies are accepted in both the shapes python-troveclient sends and those openstacksdk sends
(`flavorRef` or `flavor`; `{"restart": null}`; `{"resize": {"volume": 7}}` or
`{"resize": {"volume": {"size": 7}}}`). Anything malformed is a 400 naming the field.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from aws_lambda_powertools.event_handler.api_gateway import Response
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SecretStr

from functions.api_errors import ApiError, json_body, parse_body, section
from functions.instance_list_views import instance_list_body
from functions.routes import api_urls, new_router
from functions.runtime import get_runtime
from functions.trove_views import instance_view
from shared.errors import NotFoundError, NotSupportedError
from shared.models.database import Database, User
from shared.services.configurations import ConfigurationService
from shared.services.instances import CreateInstance, InstanceService

router = new_router()


def instance_service() -> InstanceService:
    return InstanceService.from_runtime(get_runtime())


def configuration_service() -> ConfigurationService:
    runtime = get_runtime()
    return ConfigurationService(runtime.store, runtime.workflows, runtime.clock)


def attach_configuration(project_id: str, instance_id: str, configuration_id: str | None) -> None:
    """Attach a configuration group to the instance, or with None detach its group."""
    service = configuration_service()
    if configuration_id is None:
        service.detach(project_id, instance_id)
    else:
        service.attach(project_id, instance_id, configuration_id)


# ------------------------------------------------------------------ request bodies


def _reference(value: Any) -> Any:
    """A flavor or configuration given as an id, a number or a `{"id": ...}` object."""
    if isinstance(value, dict) and "id" in value:
        value = value["id"]
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


Reference = Annotated[str, BeforeValidator(_reference), Field(min_length=1, max_length=255)]


def _named(value: Any) -> Any:
    """`{"name": "db"}` (Trove) or plain `"db"` for a user's database."""
    return value["name"] if isinstance(value, dict) and "name" in value else value


class _Body(BaseModel):
    # Clients send fields we do not use (nics, locality, modules, region_name...): ignored.
    model_config = ConfigDict(extra="ignore", frozen=True)


class VolumeBody(_Body):
    size: Annotated[int, Field(ge=1, strict=True)]
    type: str | None = None


class DatastoreBody(_Body):
    type: Annotated[str, Field(min_length=1, max_length=255)] | None = None
    version: Annotated[str, Field(min_length=1, max_length=255)] | None = None


class DatabaseBody(_Body):
    name: Annotated[str, Field(min_length=1, max_length=255)]
    character_set: str | None = None
    collate: str | None = None


class UserBody(_Body):
    name: Annotated[str, Field(min_length=1, max_length=255)]
    password: SecretStr
    host: Annotated[str, Field(min_length=1, max_length=255)] = "%"
    databases: list[Annotated[str, BeforeValidator(_named), Field(min_length=1)]] = Field(
        default_factory=list
    )


class CreateInstanceBody(_Body):
    name: Annotated[str, Field(min_length=1, max_length=255)]
    flavor_ref: Reference | None = Field(default=None, alias="flavorRef")
    flavor: Reference | None = None
    volume: VolumeBody | None = None
    datastore: DatastoreBody | None = None
    databases: list[DatabaseBody] = Field(default_factory=list)
    users: list[UserBody] = Field(default_factory=list)
    availability_zone: Annotated[str, Field(min_length=1, max_length=255)] | None = None
    configuration: Reference | None = None
    replica_of: Any = None
    replica_count: Any = None
    restore_point: Any = Field(default=None, alias="restorePoint")
    cluster: Any = None


class ResizeBody(_Body):
    flavor_ref: Reference | None = Field(default=None, alias="flavorRef")
    flavor: Reference | None = None
    volume: Annotated[int, Field(ge=1, strict=True)] | VolumeBody | None = None


class UpdateBody(_Body):
    name: Annotated[str, Field(min_length=1, max_length=255)] | None = None
    configuration: Reference | None = None
    remove_configuration: bool = False
    replica_of: Any = None
    slave_of: Any = None
    detach_replica: Any = None
    datastore_version: Any = None


def _create_request(body: CreateInstanceBody) -> CreateInstance:
    if body.replica_of is not None or body.replica_count is not None:
        raise NotSupportedError(
            "replication (replica_of, replica_count)",
            "replicas come with the replication release; create a standalone instance",
        )
    restore_backup_id = _backup_ref(body.restore_point)
    if body.cluster is not None:
        raise NotSupportedError("cluster", "clusters come with a later release")
    flavor_id = body.flavor_ref or body.flavor
    if flavor_id is None:
        raise ApiError(400, "instance.flavorRef: this field is required.")
    if body.volume is None:
        raise ApiError(400, "instance.volume.size: this field is required.")
    datastore = body.datastore or DatastoreBody()
    return CreateInstance(
        name=body.name,
        flavor_id=flavor_id,
        volume_size_gb=body.volume.size,
        datastore_type=datastore.type,
        datastore_version=datastore.version,
        databases=[
            Database(name=d.name, character_set=d.character_set, collate=d.collate)
            for d in body.databases
        ],
        users=[
            User(name=u.name, password=u.password, host=u.host, databases=u.databases)
            for u in body.users
        ],
        availability_zone=body.availability_zone,
        configuration_id=body.configuration,
        restore_backup_id=restore_backup_id,
    )


def _backup_ref(restore_point: Any) -> str | None:
    """`restorePoint: {"backupRef": "<backup id>"}` -> the backup id."""
    if restore_point is None:
        return None
    ref = restore_point.get("backupRef") if isinstance(restore_point, dict) else None
    if not isinstance(ref, str) or not ref.strip():
        raise ApiError(400, "instance.restorePoint.backupRef: a backup id is required.")
    return ref.strip()


def _instance_id(instance_id: str) -> str:
    """Instance ids are UUIDs: anything else (a name, from clients looking one up) is a
    404, so that clients fall back to listing and matching by name."""
    try:
        return str(uuid.UUID(instance_id))
    except ValueError:
        raise NotFoundError(instance_id, "instance") from None


def _region() -> str:
    return get_runtime().settings.region


# ------------------------------------------------------------------ routes


def _json_list(project_id: str, *, detail: bool) -> Response[str]:
    # Rendered by instance_list_body (each unchanged instance's JSON kept per process) and
    # returned as text: the resolver's generic validation of a large dict costs more than
    # the listing itself at 1,000 instances (bench/api.py).
    urls = api_urls(router.current_event, project_id)
    instances = instance_service().list(project_id)
    return Response(
        status_code=200,
        content_type="application/json",
        body=instance_list_body(instances, urls, _region(), detail=detail),
    )


@router.get("/v1.0/<project_id>/instances", summary="List instances")
def list_instances(project_id: str) -> Response[str]:
    return _json_list(project_id, detail=False)


@router.get("/v1.0/<project_id>/instances/detail", summary="List instances with details")
def list_instances_detail(project_id: str) -> Response[str]:
    return _json_list(project_id, detail=True)


@router.post("/v1.0/<project_id>/instances", summary="Create an instance")
def create_instance(project_id: str) -> Response[dict[str, Any]]:
    raw = section(json_body(router.current_event.body), "instance")
    body = parse_body(CreateInstanceBody, raw, "instance")
    instance = instance_service().create(project_id, _create_request(body))
    urls = api_urls(router.current_event, project_id)
    return Response(
        status_code=200,
        content_type="application/json",
        body={"instance": instance_view(instance, urls, _region())},
    )


@router.get("/v1.0/<project_id>/instances/<instance_id>", summary="Show an instance")
def show_instance(project_id: str, instance_id: str) -> dict[str, Any]:
    instance = instance_service().get(project_id, _instance_id(instance_id))
    urls = api_urls(router.current_event, project_id)
    return {"instance": instance_view(instance, urls, _region())}


def _update(project_id: str, instance_id: str, *, put: bool) -> Response[str]:
    instance_id = _instance_id(instance_id)
    raw = section(json_body(router.current_event.body), "instance")
    body = parse_body(UpdateBody, raw, "instance")
    if any(v is not None for v in (body.replica_of, body.slave_of, body.detach_replica)):
        raise NotSupportedError("replication", "replicas come with the replication release")
    if body.datastore_version is not None:
        raise NotSupportedError("datastore_version", "upgrades come with a later release")
    service = instance_service()
    service.get(project_id, instance_id)  # 404 before any change
    if body.name is not None:
        service.update(project_id, instance_id, name=body.name)
    given = body.model_fields_set
    if body.configuration is not None:
        attach_configuration(project_id, instance_id, body.configuration)
    elif (
        body.remove_configuration
        or "configuration" in given  # `"configuration": null` (troveclient's edit)
        or (put and not given)  # Trove's PUT without `configuration` detaches
    ):
        attach_configuration(project_id, instance_id, None)
    return Response(status_code=202, content_type="application/json", body="")


@router.put("/v1.0/<project_id>/instances/<instance_id>", summary="Update an instance")
def put_instance(project_id: str, instance_id: str) -> Response[str]:
    return _update(project_id, instance_id, put=True)


@router.patch("/v1.0/<project_id>/instances/<instance_id>", summary="Edit an instance")
def patch_instance(project_id: str, instance_id: str) -> Response[str]:
    return _update(project_id, instance_id, put=False)


@router.delete("/v1.0/<project_id>/instances/<instance_id>", summary="Delete an instance")
def delete_instance(project_id: str, instance_id: str) -> Response[str]:
    instance_service().delete(project_id, _instance_id(instance_id))
    return Response(status_code=202, content_type="application/json", body="")


_ACTIONS = ("restart", "resize", "reset_status")
_LATER_ACTIONS = ("promote_to_replica_source", "eject_replica_source", "stop", "migrate")


@router.post("/v1.0/<project_id>/instances/<instance_id>/action", summary="Act on an instance")
def instance_action(project_id: str, instance_id: str) -> Response[str]:
    instance_id = _instance_id(instance_id)
    body = json_body(router.current_event.body)
    if not isinstance(body, dict) or len(body) != 1:
        raise ApiError(400, f"The body must be one action: one of {', '.join(_ACTIONS)}.")
    action, args = next(iter(body.items()))
    service = instance_service()
    if action == "restart":
        service.restart(project_id, instance_id)
    elif action == "reset_status":
        service.reset_status(project_id, instance_id)
    elif action == "resize":
        resize = parse_body(ResizeBody, args, "resize")
        flavor_id = resize.flavor_ref or resize.flavor
        if (flavor_id is None) == (resize.volume is None):
            raise ApiError(400, "resize: give either flavorRef or volume.size, not both or none.")
        if flavor_id is not None:
            service.resize_flavor(project_id, instance_id, flavor_id)
        else:
            volume = resize.volume
            size = volume.size if isinstance(volume, VolumeBody) else volume
            assert size is not None
            service.resize_volume(project_id, instance_id, size)
    elif action in _LATER_ACTIONS:
        raise NotSupportedError(action, "this action comes with a later release")
    else:
        raise ApiError(400, f"{action}: unknown action; one of {', '.join(_ACTIONS)}.")
    return Response(status_code=202, content_type="application/json", body="")
