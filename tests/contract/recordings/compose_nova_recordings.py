"""Writes the Nova/Cinder/Keystone recordings (nova_*.json) beside this file.

The exchanges are WRITTEN FROM THE API REFERENCES (Keystone v3 identity API, Compute API v2.1
with microversions up to 2.96, Block Storage API v3), not captured from a live cloud: request
paths and bodies are those the references document for each call, and responses carry the
fields the references list (trimmed of links and fields the adapter never reads). They show that
NovaCinderCompute asks for the right things in the right order and reads documented answers;
they cannot show how a real cloud's timing or quirks behave.

Run `python -m tests.contract.recordings.compose_nova_recordings` to rewrite the JSON files;
review the diff like code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
ABOUT = (
    "Written by hand (through compose_nova_recordings.py) from the OpenStack API references: "
    "Keystone v3 (POST /v3/auth/tokens), Compute API v2.1 (microversion 2.96), Block Storage "
    "API v3, Messaging (Zaqar) API v2. NOT captured from a live cloud. '{base}' is the replay "
    "server's URL."
)
PROJECT = "6f4b2a9e0c3d4e5f8a7b6c5d4e3f2a1b"
IMAGE = "3c8f9a52-6d1e-4b7a-9f0e-2a1b3c4d5e6f"
FLAVOR_SMALL = "7a1c2b3d-0000-4000-8000-000000000256"
FLAVOR_LARGE = "7a1c2b3d-0000-4000-8000-000000000512"
NETWORK = "b1e2c3d4-5f60-4718-8a9b-0c1d2e3f4a5b"
SERVER = "9d3e8f2a-1b4c-4d5e-8f6a-7b8c9d0e1f2a"
SERVER_2 = "4e5f6a7b-8c9d-4e0f-9a1b-2c3d4e5f6a7b"
VOLUME = "e7f8a9b0-c1d2-4e3f-8a4b-5c6d7e8f9a0b"
GROUP = "5a6b7c8d-9e0f-4a1b-8c2d-3e4f5a6b7c8d"
COMPUTE = "/compute/v2.1"
VOLUMES = f"/volume/v3/{PROJECT}"
CREATED = "2026-11-22T03:00:00Z"


def exchange(
    note: str, request: dict[str, Any], status: int, body: Any = None, **headers: str
) -> dict[str, Any]:
    response: dict[str, Any] = {"status": status}
    if headers:
        response["headers"] = headers
    if body is not None:
        response["json"] = body
    return {"note": note, "request": request, "response": response}


def req(
    method: str, path: str, query: dict[str, str] | None = None, body: Any = None
) -> dict[str, Any]:
    out: dict[str, Any] = {"method": method, "path": path}
    if query:
        out["query"] = query
    if body is not None:
        out["json"] = body
    return out


# --------------------------------------------------------------------------- Keystone
def token(
    extra_services: tuple[tuple[str, str, str], ...] = (),
    *,
    application_credential: tuple[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Password authentication scoped to the project; the catalog points at the replay.
    `extra_services` adds (type, name, path) entries to Nova's and Cinder's. With
    `application_credential` (id, secret) the login is that credential's instead: Keystone
    scopes its token to the credential's project, so the request names no scope."""

    def service(kind: str, name: str, path: str) -> dict[str, Any]:
        return {
            "type": kind,
            "name": name,
            "id": f"svc-{name}",
            "endpoints": [
                {
                    "id": f"ep-{name}",
                    "interface": "public",
                    "region": "RegionOne",
                    "region_id": "RegionOne",
                    "url": "{base}" + path,
                }
            ],
        }

    body = {
        "token": {
            "methods": ["password"],
            "expires_at": "2099-01-01T00:00:00.000000Z",
            "issued_at": "2026-11-22T02:59:00.000000Z",
            "audit_ids": ["3T2dc1CGQxyJsHdDu1xkcw"],
            "user": {
                "id": "c4da488862bd435c9e6c0275a0d0e49a",
                "name": "troveless",
                "domain": {"id": "default", "name": "Default"},
                "password_expires_at": None,
            },
            "project": {
                "id": PROJECT,
                "name": "dbaas",
                "domain": {"id": "default", "name": "Default"},
            },
            "roles": [{"id": "a5a8e0f9c1d24f0e9e1c3b2a7d6f5e4c", "name": "member"}],
            "catalog": [
                service("compute", "nova", COMPUTE),
                service("block-storage", "cinderv3", VOLUMES),
                *(service(*extra) for extra in extra_services),
            ],
        }
    }
    auth = {
        "auth": {
            "identity": {
                "methods": ["password"],
                "password": {"user": {"name": "troveless", "domain": {"name": "Default"}}},
            },
            "scope": {"project": {"name": "dbaas", "domain": {"name": "Default"}}},
        }
    }
    subject = "gAAAAABnR2-replayed-token"
    if application_credential is not None:
        credential_id, secret = application_credential
        auth = {
            "auth": {
                "identity": {
                    "methods": ["application_credential"],
                    "application_credential": {"id": credential_id, "secret": secret},
                }
            }
        }
        body["token"]["methods"] = ["application_credential"]
        body["token"]["user"] = {
            "id": "0d1e2f3a4b5c4d6e8f7a9b0c1d2e3f4a",
            "name": "troveless-guests",
            "domain": {"id": "default", "name": "Default"},
            "password_expires_at": None,
        }
        body["token"]["application_credential"] = {
            "id": credential_id,
            "name": "troveless-guests",
            "restricted": True,
        }
        subject = "gAAAAABnR2-replayed-guest-token"
    return [
        exchange(
            "Keystone: issue a project-scoped token (201, token in X-Subject-Token)",
            req("POST", "/identity/v3/auth/tokens", body=auth),
            201,
            body,
            **{"X-Subject-Token": subject},
        )
    ]


def compute_discovery() -> list[dict[str, Any]]:
    body = {
        "version": {
            "id": "v2.1",
            "status": "CURRENT",
            "version": "2.96",
            "min_version": "2.1",
            "updated": "2013-07-23T11:33:21Z",
            "links": [{"rel": "self", "href": "{base}" + COMPUTE + "/"}],
            "media-types": [
                {
                    "base": "application/json",
                    "type": "application/vnd.openstack.compute+json;version=2.1",
                }
            ],
        }
    }
    return [exchange("Nova: version discovery (GET /v2.1)", req("GET", COMPUTE), 200, body)]


def volume_discovery() -> list[dict[str, Any]]:
    """Cinder's "Show API v3 details" (GET /v3/), asked before the first volume call."""
    body = {
        "versions": [
            {
                "id": "v3.0",
                "status": "CURRENT",
                "version": "3.71",
                "min_version": "3.0",
                "updated": "2023-08-31T00:00:00Z",
                "links": [{"rel": "self", "href": "{base}/volume/v3/"}],
                "media-types": [
                    {
                        "base": "application/json",
                        "type": "application/vnd.openstack.volume+json;version=3",
                    }
                ],
            }
        ]
    }
    return [exchange("Cinder: version discovery (GET /v3/)", req("GET", "/volume/v3/"), 200, body)]


# --------------------------------------------------------------------------- bodies
def server_body(
    status: str,
    *,
    server_id: str = SERVER,
    instance: str = "inst-a",
    zone: str = "az1",
    flavor: tuple[int, int] = (256, 1),
    volume: str = VOLUME,
    fault: str | None = None,
) -> dict[str, Any]:
    vm_state = {
        "ACTIVE": "active",
        "SHUTOFF": "stopped",
        "BUILD": "building",
        "ERROR": "error",
        "VERIFY_RESIZE": "resized",
        "RESIZE": "active",
        "REBOOT": "active",
    }[status]
    ram, vcpus = flavor
    server: dict[str, Any] = {
        "id": server_id,
        "name": f"troveless-{instance}",
        "status": status,
        "tenant_id": PROJECT,
        "user_id": "c4da488862bd435c9e6c0275a0d0e49a",
        "metadata": {
            "troveless-instance-id": instance,
            "troveless-volume-id": volume,
            "troveless-ram-mb": str(ram),
            "troveless-vcpus": str(vcpus),
        },
        "hostId": ""
        if status == "BUILD"
        else "b4ba2d8d9fe3b7b5ac1ea1e2b1a4f7e1c0d9e8f7a6b5c4d3e2f1a0b9",
        "image": {"id": IMAGE, "links": []},
        "flavor": {
            "vcpus": vcpus,
            "ram": ram,
            "disk": 10,
            "ephemeral": 0,
            "swap": 0,
            "original_name": f"db.{ram}",
            "extra_specs": {},
        },
        "created": CREATED,
        "updated": CREATED,
        "addresses": {}
        if status == "BUILD"
        else {
            "private": [
                {
                    "version": 4,
                    "addr": "10.0.0.5" if server_id == SERVER else "10.0.0.6",
                    "OS-EXT-IPS:type": "fixed",
                    "OS-EXT-IPS-MAC:mac_addr": "fa:16:3e:4c:2c:30",
                }
            ]
        },
        "accessIPv4": "",
        "accessIPv6": "",
        "links": [],
        "OS-DCF:diskConfig": "MANUAL",
        "OS-EXT-AZ:availability_zone": zone,
        "config_drive": "",
        "key_name": None,
        "OS-SRV-USG:launched_at": None if status == "BUILD" else "2026-11-22T03:00:20.000000",
        "OS-SRV-USG:terminated_at": None,
        "OS-EXT-STS:task_state": "spawning" if status == "BUILD" else None,
        "OS-EXT-STS:vm_state": vm_state,
        "OS-EXT-STS:power_state": 1 if status == "ACTIVE" else 4 if status == "SHUTOFF" else 0,
        "os-extended-volumes:volumes_attached": [],
        "locked": False,
        "description": None,
        "tags": [],
        "trusted_image_certificates": None,
        "security_groups": [{"name": "default"}],
        "progress": 0,
    }
    if fault:
        server["fault"] = {"code": 500, "created": CREATED, "message": fault}
    return server


def volume_body(
    status: str,
    *,
    size: int = 1,
    instance: str = "inst-a",
    server_id: str | None = None,
    kept: bool = False,
    volume: str = VOLUME,
) -> dict[str, Any]:
    metadata = {"troveless-instance-id": instance}
    if kept:
        metadata["troveless-kept"] = "true"
    attachments = []
    if status == "in-use" and server_id:
        attachments = [
            {
                "id": volume,
                "attachment_id": "0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0",
                "volume_id": volume,
                "server_id": server_id,
                "host_name": None,
                "device": "/dev/vdb",
                "attached_at": "2026-11-22T03:00:30.000000",
            }
        ]
    return {
        "id": volume,
        "name": f"troveless-{instance}",
        "status": status,
        "size": size,
        "availability_zone": "nova",
        "created_at": "2026-11-22T02:59:50.000000",
        "updated_at": "2026-11-22T03:00:30.000000",
        "metadata": metadata,
        "attachments": attachments,
        "bootable": "false",
        "encrypted": False,
        "multiattach": False,
        "volume_type": "__DEFAULT__",
        "description": None,
        "snapshot_id": None,
        "source_volid": None,
        "user_id": "c4da488862bd435c9e6c0275a0d0e49a",
        "os-vol-tenant-attr:tenant_id": PROJECT,
        "links": [],
    }


# --------------------------------------------------------------------------- calls
def find(instance: str, servers: list[dict[str, Any]]) -> dict[str, Any]:
    """The adapter's lookup: Nova's name filter is an anchored regular expression."""
    name = "^troveless-" + instance.replace(".", "\\.") + "$"
    return exchange(
        f"Nova: find the server of {instance} by name",
        req("GET", f"{COMPUTE}/servers/detail", {"name": name}),
        200,
        {"servers": servers},
    )


def list_ours(servers: list[dict[str, Any]]) -> dict[str, Any]:
    return exchange(
        "Nova: list troveless servers",
        req("GET", f"{COMPUTE}/servers/detail", {"name": "^troveless-"}),
        200,
        {"servers": servers},
    )


def get_server(body: dict[str, Any]) -> dict[str, Any]:
    return exchange(
        f"Nova: show server ({body['status']})",
        req("GET", f"{COMPUTE}/servers/{body['id']}"),
        200,
        {"server": body},
    )


def server_gone(server_id: str = SERVER) -> dict[str, Any]:
    return exchange(
        "Nova: the deleted server is gone (404)",
        req("GET", f"{COMPUTE}/servers/{server_id}"),
        404,
        {"itemNotFound": {"code": 404, "message": f"Instance {server_id} could not be found."}},
    )


def action(name: str, value: Any, server_id: str = SERVER) -> dict[str, Any]:
    return exchange(
        f"Nova: server action {name} (202)",
        req("POST", f"{COMPUTE}/servers/{server_id}/action", body={name: value}),
        202,
    )


def get_volume(body: dict[str, Any]) -> dict[str, Any]:
    return exchange(
        f"Cinder: show volume ({body['status']}, {body['size']} GB)",
        req("GET", f"{VOLUMES}/volumes/{body['id']}"),
        200,
        {"volume": body},
    )


def volume_gone(volume: str = VOLUME) -> dict[str, Any]:
    return exchange(
        "Cinder: the deleted volume is gone (404)",
        req("GET", f"{VOLUMES}/volumes/{volume}"),
        404,
        {"itemNotFound": {"code": 404, "message": f"Volume {volume} could not be found."}},
    )


def list_volumes(volumes: list[dict[str, Any]], name: str | None = None) -> dict[str, Any]:
    return exchange(
        "Cinder: list volumes with details" + (f" named {name}" if name else ""),
        req("GET", f"{VOLUMES}/volumes/detail", {"name": name} if name else None),
        200,
        {"volumes": volumes},
    )


def attach(server_id: str = SERVER, volume: str = VOLUME) -> dict[str, Any]:
    return exchange(
        "Nova: attach the volume",
        req(
            "POST",
            f"{COMPUTE}/servers/{server_id}/os-volume_attachments",
            body={"volumeAttachment": {"volumeId": volume}},
        ),
        200,
        {
            "volumeAttachment": {
                "id": volume,
                "serverId": server_id,
                "volumeId": volume,
                "device": "/dev/vdb",
                "tag": None,
                "delete_on_termination": False,
                "attachment_id": "0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0",
                "bdm_uuid": "a0b1c2d3-e4f5-4a6b-8c7d-8e9f0a1b2c3d",
            }
        },
    )


def create_volume(size: int, instance: str = "inst-a") -> list[dict[str, Any]]:
    return [
        exchange(
            "Cinder: create the data volume (202, creating)",
            req(
                "POST",
                f"{VOLUMES}/volumes",
                body={
                    "volume": {
                        "size": size,
                        "name": f"troveless-{instance}",
                        "metadata": {"troveless-instance-id": instance},
                    }
                },
            ),
            202,
            {"volume": volume_body("creating", size=size, instance=instance)},
        ),
        get_volume(volume_body("creating", size=size, instance=instance)),
        get_volume(volume_body("available", size=size, instance=instance)),
    ]


def boot(
    instance: str = "inst-a",
    zone: str = "az1",
    flavor: str = FLAVOR_SMALL,
    ram_vcpus: tuple[int, int] = (256, 1),
    hints: dict[str, Any] | None = None,
) -> dict[str, Any]:
    ram, vcpus = ram_vcpus
    server: dict[str, Any] = {
        "name": f"troveless-{instance}",
        "imageRef": IMAGE,
        "flavorRef": flavor,
        "availability_zone": zone,
        "user_data": "<any>",
        "networks": [{"uuid": NETWORK}],
        "metadata": {
            "troveless-instance-id": instance,
            "troveless-volume-id": VOLUME,
            "troveless-ram-mb": str(ram),
            "troveless-vcpus": str(vcpus),
        },
    }
    body: dict[str, Any] = {"server": server}
    if hints is not None:
        body["OS-SCH-HNT:scheduler_hints"] = hints
    return exchange(
        "Nova: boot the server from the datastore image with the guest's user-data (202)",
        req("POST", f"{COMPUTE}/servers", body=body),
        202,
        {
            "server": {
                "id": SERVER,
                "links": [],
                "OS-DCF:diskConfig": "MANUAL",
                "security_groups": [{"name": "default"}],
                "adminPass": "6NpUwoz2QDRN",
            }
        },
    )


def show_large_flavor() -> dict[str, Any]:
    return exchange(
        "Nova: show the target flavor (its name is what a server embeds since 2.47)",
        req("GET", f"{COMPUTE}/flavors/{FLAVOR_LARGE}"),
        200,
        {
            "flavor": {
                "id": FLAVOR_LARGE,
                "name": "db.512",
                "ram": 512,
                "vcpus": 2,
                "disk": 10,
                "OS-FLV-EXT-DATA:ephemeral": 0,
                "swap": 0,
                "rxtx_factor": 1.0,
                "os-flavor-access:is_public": True,
                "OS-FLV-DISABLED:disabled": False,
                "description": None,
                "extra_specs": {},
                "links": [],
            }
        },
    )


def created_server(
    size: int = 1, zone: str = "az1", hints: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """create_server("inst-a", small, size, zone) on an empty project, after discovery."""
    return [
        find("inst-a", []),
        *volume_discovery(),
        list_volumes([], name="troveless-inst-a"),  # no volume of an interrupted create
        *create_volume(size),
        boot(zone=zone, hints=hints),
        get_server(server_body("BUILD", zone=zone)),
        get_server(server_body("ACTIVE", zone=zone)),
        attach(),
        get_volume(volume_body("attaching", size=size)),
        get_volume(volume_body("in-use", size=size, server_id=SERVER)),
        find("inst-a", [server_body("ACTIVE", zone=zone)]),
        get_volume(volume_body("in-use", size=size, server_id=SERVER)),
    ]


def deleted_server(size: int = 1, status: str = "ACTIVE") -> list[dict[str, Any]]:
    return [
        find("inst-a", [server_body(status)]),
        exchange(
            "Nova: delete the server (204)", req("DELETE", f"{COMPUTE}/servers/{SERVER}"), 204
        ),
        get_server(server_body(status)),
        server_gone(),
        list_volumes([volume_body("available", size=size)], name="troveless-inst-a"),
        get_volume(volume_body("available", size=size)),
        exchange(
            "Cinder: delete the volume (202)",
            req("DELETE", f"{VOLUMES}/volumes/{VOLUME}", {"cascade": "False", "force": "False"}),
            202,
        ),
        get_volume(volume_body("deleting", size=size)),
        volume_gone(),
    ]


# --------------------------------------------------------------------------- scenarios
def scenario_create_get_delete() -> list[dict[str, Any]]:
    return [
        *token(),
        *compute_discovery(),
        *created_server(size=2),
        # get_server
        find("inst-a", [server_body("ACTIVE")]),
        get_volume(volume_body("in-use", size=2, server_id=SERVER)),
        # list_servers
        list_ours([server_body("ACTIVE")]),
        list_volumes([volume_body("in-use", size=2, server_id=SERVER)]),
        *deleted_server(size=2),
        # get_server after delete, and a repeated delete
        find("inst-a", []),
        find("inst-a", []),
        list_volumes([], name="troveless-inst-a"),
    ]


def scenario_lifecycle() -> list[dict[str, Any]]:
    active = server_body("ACTIVE")
    shutoff = server_body("SHUTOFF")
    in_use_1 = volume_body("in-use", size=1, server_id=SERVER)
    return [
        *token(),
        *compute_discovery(),
        *created_server(),
        # stop
        find("inst-a", [active]),
        action("os-stop", None),
        get_server(active),
        get_server(shutoff),
        get_volume(in_use_1),
        # start
        find("inst-a", [shutoff]),
        action("os-start", None),
        get_server(active),
        get_volume(in_use_1),
        # reboot (soft)
        find("inst-a", [active]),
        action("reboot", {"type": "SOFT"}),
        get_server(server_body("REBOOT")),
        get_server(active),
        get_volume(in_use_1),
        # resize_flavor: the target's name, resize, VERIFY_RESIZE, confirm, ACTIVE, metadata
        find("inst-a", [active]),
        show_large_flavor(),
        action("resize", {"flavorRef": FLAVOR_LARGE}),
        get_server(server_body("RESIZE", flavor=(512, 2))),
        get_server(server_body("VERIFY_RESIZE", flavor=(512, 2))),
        action("confirmResize", None),
        get_server(server_body("ACTIVE", flavor=(512, 2))),
        exchange(
            "Nova: record the flavor in the server's metadata",
            req(
                "POST",
                f"{COMPUTE}/servers/{SERVER}/metadata",
                body={"metadata": {"troveless-ram-mb": "512", "troveless-vcpus": "2"}},
            ),
            200,
            {
                "metadata": {
                    "troveless-instance-id": "inst-a",
                    "troveless-volume-id": VOLUME,
                    "troveless-ram-mb": "512",
                    "troveless-vcpus": "2",
                }
            },
        ),
        find("inst-a", [server_body("ACTIVE", flavor=(512, 2))]),
        get_volume(in_use_1),
        # resize_volume 1 -> 3: stop, detach, extend, attach, start
        find("inst-a", [server_body("ACTIVE", flavor=(512, 2))]),
        get_volume(in_use_1),
        action("os-stop", None),
        get_server(server_body("SHUTOFF", flavor=(512, 2))),
        exchange(
            "Nova: detach the volume (202)",
            req("DELETE", f"{COMPUTE}/servers/{SERVER}/os-volume_attachments/{VOLUME}"),
            202,
        ),
        get_volume(volume_body("detaching", size=1)),
        get_volume(volume_body("available", size=1)),
        exchange(
            "Cinder: extend the volume (202)",
            req("POST", f"{VOLUMES}/volumes/{VOLUME}/action", body={"os-extend": {"new_size": 3}}),
            202,
        ),
        get_volume(volume_body("extending", size=1)),
        get_volume(volume_body("available", size=3)),
        attach(),
        get_volume(volume_body("in-use", size=3, server_id=SERVER)),
        action("os-start", None),
        get_server(server_body("ACTIVE", flavor=(512, 2))),
        find("inst-a", [server_body("ACTIVE", flavor=(512, 2))]),
        get_volume(volume_body("in-use", size=3, server_id=SERVER)),
        # shrinking is refused after one look
        find("inst-a", [server_body("ACTIVE", flavor=(512, 2))]),
        get_volume(volume_body("in-use", size=3, server_id=SERVER)),
        *deleted_server(size=3),
    ]


def scenario_failed_boot() -> list[dict[str, Any]]:
    failed = server_body(
        "ERROR", fault="No valid host was found. There are not enough hosts available."
    )
    return [
        *token(),
        *compute_discovery(),
        find("inst-a", []),
        *volume_discovery(),
        list_volumes([], name="troveless-inst-a"),  # no volume of an interrupted create
        *create_volume(1),
        boot(),
        get_server(server_body("BUILD")),
        get_server(failed),
        # undo: delete the server, then the volume
        exchange(
            "Nova: delete the failed server (204)",
            req("DELETE", f"{COMPUTE}/servers/{SERVER}"),
            204,
        ),
        server_gone(),
        get_volume(volume_body("available")),
        exchange(
            "Cinder: delete the volume (202)",
            req("DELETE", f"{VOLUMES}/volumes/{VOLUME}", {"cascade": "False", "force": "False"}),
            202,
        ),
        volume_gone(),
    ]


def scenario_server_group_kept_volume_and_orphans() -> list[dict[str, Any]]:
    hints = {"group": GROUP}
    return [
        *token(),
        *compute_discovery(),
        # the first create finds no group and makes it
        find("inst-a", []),
        *volume_discovery(),
        list_volumes([], name="troveless-inst-a"),  # no volume of an interrupted create
        *create_volume(1),
        exchange(
            "Nova: list server groups",
            req("GET", f"{COMPUTE}/os-server-groups"),
            200,
            {"server_groups": []},
        ),
        exchange(
            "Nova: create the anti-affinity server group (microversion 2.64: policy)",
            req(
                "POST",
                f"{COMPUTE}/os-server-groups",
                body={"server_group": {"name": "troveless-databases", "policy": "anti-affinity"}},
            ),
            200,
            {
                "server_group": {
                    "id": GROUP,
                    "name": "troveless-databases",
                    "policy": "anti-affinity",
                    "rules": {},
                    "members": [],
                    "project_id": PROJECT,
                    "user_id": "c4da488862bd435c9e6c0275a0d0e49a",
                }
            },
        ),
        boot(hints=hints),
        get_server(server_body("ACTIVE")),
        attach(),
        get_volume(volume_body("in-use", server_id=SERVER)),
        find("inst-a", [server_body("ACTIVE")]),
        get_volume(volume_body("in-use", server_id=SERVER)),
        # orphans: inst-a is not among the known instances
        list_ours([server_body("ACTIVE")]),
        list_volumes([volume_body("in-use", server_id=SERVER)]),
        # delete keeping the volume: stop cleanly, delete, mark the volume kept
        find("inst-a", [server_body("ACTIVE")]),
        action("os-stop", None),
        get_server(server_body("SHUTOFF")),
        exchange(
            "Nova: delete the server (204)", req("DELETE", f"{COMPUTE}/servers/{SERVER}"), 204
        ),
        server_gone(),
        list_volumes([volume_body("available")], name="troveless-inst-a"),
        get_volume(volume_body("available")),
        exchange(
            "Cinder: mark the volume kept (create or update metadata)",
            req(
                "POST",
                f"{VOLUMES}/volumes/{VOLUME}/metadata",
                body={"metadata": {"troveless-kept": "true"}},
            ),
            200,
            {"metadata": {"troveless-instance-id": "inst-a", "troveless-kept": "true"}},
        ),
        # a new server on the kept volume, grown from 1 to 2 GB
        find("inst-a", []),
        get_volume(volume_body("available", kept=True)),
        list_ours([]),
        exchange(
            "Cinder: extend the kept volume (202)",
            req("POST", f"{VOLUMES}/volumes/{VOLUME}/action", body={"os-extend": {"new_size": 2}}),
            202,
        ),
        get_volume(volume_body("available", size=2, kept=True)),
        exchange(
            "Cinder: claim the kept volume for the instance",
            req(
                "POST",
                f"{VOLUMES}/volumes/{VOLUME}/metadata",
                body={"metadata": {"troveless-instance-id": "inst-a", "troveless-kept": "false"}},
            ),
            200,
            {"metadata": {"troveless-instance-id": "inst-a", "troveless-kept": "false"}},
        ),
        exchange(
            "Nova: list server groups (the group exists now)",
            req("GET", f"{COMPUTE}/os-server-groups"),
            200,
            {
                "server_groups": [
                    {
                        "id": GROUP,
                        "name": "troveless-databases",
                        "policy": "anti-affinity",
                        "rules": {},
                        "members": [],
                        "project_id": PROJECT,
                        "user_id": "c4da488862bd435c9e6c0275a0d0e49a",
                    }
                ]
            },
        ),
        boot(hints=hints, zone="az1"),
        get_server(server_body("ACTIVE")),
        attach(),
        get_volume(volume_body("in-use", size=2, server_id=SERVER)),
        find("inst-a", [server_body("ACTIVE")]),
        get_volume(volume_body("in-use", size=2, server_id=SERVER)),
    ]


def scenario_interrupted_create() -> list[dict[str, Any]]:
    """A create that died after making its volume: the repeated create reuses that volume."""
    return [
        *token(),
        *compute_discovery(),
        find("inst-a", []),
        *volume_discovery(),
        list_volumes([volume_body("available")], name="troveless-inst-a"),
        boot(),
        get_server(server_body("ACTIVE")),
        attach(),
        get_volume(volume_body("in-use", server_id=SERVER)),
        find("inst-a", [server_body("ACTIVE")]),
        get_volume(volume_body("in-use", server_id=SERVER)),
    ]


def scenario_redelivered_resizes() -> list[dict[str, Any]]:
    """Both resizes redelivered after the control plane died half-way: the flavor resize was
    never confirmed, the grown volume never re-attached. The repeats finish the job."""
    resized = server_body("VERIFY_RESIZE", flavor=(512, 2))
    resized["metadata"]["troveless-ram-mb"] = "256"  # the metadata step never ran
    resized["metadata"]["troveless-vcpus"] = "1"
    confirmed = {**resized, "status": "ACTIVE", "OS-EXT-STS:vm_state": "active"}
    done = server_body("ACTIVE", flavor=(512, 2))
    stopped = server_body("SHUTOFF", flavor=(512, 2))
    return [
        *token(),
        *compute_discovery(),
        # resize_flavor: confirm the pending resize; the server already runs the target
        find("inst-a", [resized]),
        action("confirmResize", None),
        get_server(confirmed),
        find("inst-a", [confirmed]),
        show_large_flavor(),
        exchange(
            "Nova: record the flavor in the server's metadata",
            req(
                "POST",
                f"{COMPUTE}/servers/{SERVER}/metadata",
                body={"metadata": {"troveless-ram-mb": "512", "troveless-vcpus": "2"}},
            ),
            200,
            {"metadata": done["metadata"]},
        ),
        find("inst-a", [done]),
        *volume_discovery(),
        get_volume(volume_body("in-use", size=1, server_id=SERVER)),
        # resize_volume to 3 GB: already extended but detached, server stopped
        find("inst-a", [stopped]),
        get_volume(volume_body("available", size=3)),
        attach(),
        get_volume(volume_body("in-use", size=3, server_id=SERVER)),
        get_volume(volume_body("in-use", size=3, server_id=SERVER)),
    ]


# --------------------------------------------------------------------------- the wired runtime
MESSAGING = "/messaging"
OBJECT_STORE = f"/object-store/v1/AUTH_{PROJECT}"
CLOUD_SERVICES = (
    ("messaging", "zaqar", MESSAGING),
    ("object-store", "swift", OBJECT_STORE),
)


def zaqar_declare(
    name: str, metadata: dict[str, Any], removed: tuple[str, ...] = ()
) -> list[dict[str, Any]]:
    """ZaqarQueue.ensure_queue's two calls (Messaging API v2): create the queue (PUT, 201; 204
    when it exists), then set its metadata with a JSON-patch (PATCH, 200 and the metadata)."""
    changes: list[dict[str, Any]] = [
        {"op": "add", "path": f"/metadata/{key}", "value": value} for key, value in metadata.items()
    ] + [{"op": "remove", "path": f"/metadata/{key}"} for key in removed]
    return [
        exchange(
            f"Zaqar: create queue {name} (201)",
            req("PUT", f"{MESSAGING}/v2/queues/{name}", body=metadata),
            201,
        ),
        exchange(
            f"Zaqar: set the metadata of {name} (JSON patch, 200)",
            req("PATCH", f"{MESSAGING}/v2/queues/{name}", body=changes),
            200,
            metadata,
        ),
    ]


def scenario_wired_runtime() -> list[dict[str, Any]]:
    """build_runtime for the openstack profile with Nova compute, then one create_server:
    one Keystone login (the catalog has Zaqar and Swift too), the engine declaring its queues
    in Zaqar, and the create reaching Nova with the guest's user-data. Swift is not called:
    the deployment made its containers."""
    base = {"troveless_queue": 1, "_default_message_delay": 1}
    dead = "engine-steps-dead"
    return [
        *token(CLOUD_SERVICES),
        *zaqar_declare(dead, base, ("_max_claim_count", "_dead_letter_queue")),
        *zaqar_declare(dead, base),
        *zaqar_declare(
            "engine-steps", {**base, "_max_claim_count": 50, "_dead_letter_queue": dead}
        ),
        *compute_discovery(),
        *created_server(),
    ]


GUEST_CREDENTIAL = ("guest-app-cred-id-0001", "guest-app-cred-secret-never-logged")


def scenario_guest_backends() -> list[dict[str, Any]]:
    """A Nova guest's agent building its backends from the user-data's `keystone` section:
    it logs in with the guests' application credential, then reaches Swift (a HEAD of a
    backup that is not there: 404) and Zaqar (reads the events queue's metadata, then posts
    an event) at the endpoints of its token's catalog."""
    events = "guest-events"
    message_id = "51db6f78c508f17ddc924357"
    return [
        *token(CLOUD_SERVICES, application_credential=GUEST_CREDENTIAL),
        exchange(
            "Swift: HEAD a backup object that does not exist (404)",
            req("HEAD", f"{OBJECT_STORE}/troveless-backups/blobs/no-such-backup"),
            404,
        ),
        exchange(
            "Zaqar: get the events queue (its metadata, 200)",
            req("GET", f"{MESSAGING}/v2/queues/{events}"),
            200,
            {
                "troveless_queue": 1,
                "_default_message_delay": 1,
                "_max_claim_count": 5,
                "_dead_letter_queue": f"{events}-dlq",
                "_default_message_ttl": 3600,
                "_max_messages_post_size": 262144,
            },
        ),
        exchange(
            "Zaqar: post one message (201, its href)",
            req(
                "POST",
                f"{MESSAGING}/v2/queues/{events}/messages",
                body={"messages": [{"body": {"kind": "heartbeat"}, "ttl": 1209600, "delay": 0}]},
            ),
            201,
            {"resources": [f"/v2/queues/{events}/messages/{message_id}"]},
        ),
    ]


SCENARIOS = {
    "nova_redelivered_resizes": scenario_redelivered_resizes,
    "nova_interrupted_create": scenario_interrupted_create,
    "nova_no_exchanges": list,
    "nova_create_get_delete": scenario_create_get_delete,
    "nova_lifecycle": scenario_lifecycle,
    "nova_failed_boot": scenario_failed_boot,
    "nova_server_group_kept_volume": scenario_server_group_kept_volume_and_orphans,
    "nova_wired_runtime": scenario_wired_runtime,
    "nova_guest_backends": scenario_guest_backends,
}


def main() -> None:
    for name, scenario in SCENARIOS.items():
        document = {"about": ABOUT, "exchanges": scenario()}
        (HERE / f"{name}.json").write_text(json.dumps(document, indent=1) + "\n")


if __name__ == "__main__":
    main()
