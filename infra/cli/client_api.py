"""What the `troveless` client commands talk to: a cloud from `clouds.yaml`, authenticated with
keystoneauth1, and the Trove v1.0 API over HTTP.

The cloud comes from the file `OS_CLIENT_CONFIG_FILE` names, else the usual places
(`./clouds.yaml`, `~/.config/openstack/clouds.yaml`, `/etc/openstack/clouds.yaml`), else the one
`troveless up` wrote into the configured data directory. Every failure (unknown cloud, a
refused login, an API error) becomes a `ClientError` carrying the message to show.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml
from keystoneauth1 import exceptions as ksa_exceptions
from keystoneauth1 import loading, session

from shared.settings import SettingsError, load_settings

DEFAULT_CLOUD = "troveless"
REQUEST_TIMEOUT = 60.0


class ClientError(Exception):
    """Something the command cannot do; `str()` is the message for the user."""


def clouds_file_candidates() -> list[Path]:
    named = os.environ.get("OS_CLIENT_CONFIG_FILE")
    if named:
        return [Path(named)]
    candidates = [
        Path.cwd() / "clouds.yaml",
        Path.home() / ".config" / "openstack" / "clouds.yaml",
        Path("/etc/openstack/clouds.yaml"),
    ]
    with contextlib.suppress(SettingsError):  # no usable settings: only the standard places
        candidates.append(load_settings().data_dir / "clouds.yaml")
    return candidates


@dataclass(frozen=True)
class Cloud:
    """One cloud's entry of clouds.yaml (password auth, as `troveless up` writes it)."""

    name: str
    auth: dict[str, str]
    region_name: str | None
    interface: str

    @classmethod
    def load(cls, name: str) -> Cloud:
        tried = []
        for path in clouds_file_candidates():
            tried.append(str(path))
            try:
                document = yaml.safe_load(path.read_text())
            except FileNotFoundError:
                continue
            except (OSError, yaml.YAMLError) as exc:
                raise ClientError(f"cannot read {path}: {exc}") from None
            clouds = document.get("clouds") if isinstance(document, dict) else None
            entry = clouds.get(name) if isinstance(clouds, dict) else None
            if not isinstance(entry, dict) or not isinstance(entry.get("auth"), dict):
                continue
            return cls(
                name=name,
                auth={str(k): str(v) for k, v in entry["auth"].items()},
                region_name=entry.get("region_name"),
                interface=str(entry.get("interface") or "public"),
            )
        raise ClientError(
            f"no cloud {name!r} in {', '.join(tried)}; start `troveless up` and export the "
            "OS_CLIENT_CONFIG_FILE it prints"
        )

    def session(self) -> session.Session:
        options = {
            key: self.auth[key]
            for key in (
                "auth_url",
                "username",
                "password",
                "project_name",
                "project_id",
                "user_domain_name",
                "project_domain_name",
            )
            if key in self.auth
        }
        try:
            plugin: Any = loading.get_plugin_loader("password").load_from_options(**options)
        except ksa_exceptions.ClientException as exc:
            raise ClientError(f"cloud {self.name!r}: {exc}") from None
        return session.Session(auth=plugin, timeout=REQUEST_TIMEOUT)


def trove_message(status: int, text: str) -> str:
    """The message of a Trove error body (`{"itemNotFound": {"code": 404, "message": ...}}`)."""
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if isinstance(body, dict) and len(body) == 1:
        detail = next(iter(body.values()))
        if isinstance(detail, dict) and detail.get("message"):
            return f"{detail['message']} (HTTP {status})"
    return f"HTTP {status}: {text.strip()[:500] or 'no details'}"


class TroveApi:
    """The Trove v1.0 API of one project, as plain JSON."""

    def __init__(self, sess: session.Session, endpoint: str) -> None:
        self._session = sess
        self.endpoint = endpoint.rstrip("/")

    @classmethod
    def connect(cls, cloud_name: str) -> TroveApi:
        cloud = Cloud.load(cloud_name)
        sess = cloud.session()
        try:
            endpoint = sess.get_endpoint(
                service_type="database",
                interface=cloud.interface,
                region_name=cloud.region_name,
            )
        except ksa_exceptions.ClientException as exc:
            raise ClientError(f"cannot sign in to cloud {cloud_name!r}: {exc}") from None
        if not endpoint:
            raise ClientError(f"cloud {cloud_name!r} lists no database endpoint")
        return cls(sess, endpoint)

    def call(self, method: str, path: str, body: Any = None, *, allow_404: bool = False) -> Any:
        """The parsed JSON answer (None when empty); ClientError for any error answer."""
        try:
            reply = self._session.request(
                f"{self.endpoint}{path}",
                method,
                json=body,
                raise_exc=False,
                headers={"Accept": "application/json"},
            )
        except ksa_exceptions.ClientException as exc:
            raise ClientError(f"{method} {path}: {exc}") from None
        if reply.status_code == 404 and allow_404:
            return None
        if reply.status_code >= 400:
            raise ClientError(trove_message(reply.status_code, reply.text))
        if not reply.content:
            return None
        try:
            return reply.json()
        except ValueError:
            raise ClientError(f"{method} {path}: the answer is not JSON") from None

    # ------------------------------------------------------------------ instances
    def instances(self) -> list[dict[str, Any]]:
        return list(self.call("GET", "/instances")["instances"])

    def find_instance(self, name_or_id: str) -> dict[str, Any] | None:
        """An instance by id, else by name (unique); None when there is none."""
        if _is_uuid(name_or_id):
            found = self.call("GET", f"/instances/{name_or_id}", allow_404=True)
            if found is not None:
                return dict(found["instance"])
        named = [i for i in self.instances() if i.get("name") == name_or_id]
        if len(named) > 1:
            raise ClientError(f"{len(named)} instances are named {name_or_id!r}: use the id")
        if not named:
            return None
        return self.instance(str(named[0]["id"]))

    def instance(self, instance_id: str) -> dict[str, Any]:
        return dict(self.call("GET", f"/instances/{instance_id}")["instance"])

    def resolve_instance(self, name_or_id: str) -> str:
        found = self.find_instance(name_or_id)
        if found is None:
            raise ClientError(f"no instance {name_or_id!r}")
        return str(found["id"])

    def create_instance(self, body: dict[str, Any]) -> dict[str, Any]:
        return dict(self.call("POST", "/instances", {"instance": body})["instance"])

    def delete_instance(self, instance_id: str) -> None:
        self.call("DELETE", f"/instances/{instance_id}")

    def instance_action(self, instance_id: str, action: dict[str, Any]) -> None:
        self.call("POST", f"/instances/{instance_id}/action", action)

    def update_instance(self, instance_id: str, body: dict[str, Any]) -> None:
        self.call("PUT", f"/instances/{instance_id}", {"instance": body})

    # ------------------------------------------------------------------ databases and users
    def databases(self, instance_id: str) -> list[dict[str, Any]]:
        return list(self.call("GET", f"/instances/{instance_id}/databases")["databases"])

    def create_databases(self, instance_id: str, databases: list[dict[str, Any]]) -> None:
        self.call("POST", f"/instances/{instance_id}/databases", {"databases": databases})

    def delete_database(self, instance_id: str, name: str) -> None:
        self.call("DELETE", f"/instances/{instance_id}/databases/{quote(name, safe='')}")

    def users(self, instance_id: str) -> list[dict[str, Any]]:
        return list(self.call("GET", f"/instances/{instance_id}/users")["users"])

    def create_users(self, instance_id: str, users: list[dict[str, Any]]) -> None:
        self.call("POST", f"/instances/{instance_id}/users", {"users": users})

    def delete_user(self, instance_id: str, name: str, host: str | None) -> None:
        query = "" if host is None else f"?host={quote(host, safe='')}"
        self.call("DELETE", f"/instances/{instance_id}/users/{quote(name, safe='')}{query}")

    # ------------------------------------------------------------------ configurations
    def configurations(self) -> list[dict[str, Any]]:
        return list(self.call("GET", "/configurations")["configurations"])

    def configuration(self, configuration_id: str) -> dict[str, Any]:
        return dict(self.call("GET", f"/configurations/{configuration_id}")["configuration"])

    def resolve_configuration(self, name_or_id: str) -> str:
        if _is_uuid(name_or_id):
            return name_or_id
        named = [c for c in self.configurations() if c.get("name") == name_or_id]
        if len(named) != 1:
            raise ClientError(
                f"no configuration group {name_or_id!r}"
                if not named
                else f"{len(named)} configuration groups are named {name_or_id!r}: use the id"
            )
        return str(named[0]["id"])

    def create_configuration(self, body: dict[str, Any]) -> dict[str, Any]:
        return dict(self.call("POST", "/configurations", {"configuration": body})["configuration"])

    def delete_configuration(self, configuration_id: str) -> None:
        self.call("DELETE", f"/configurations/{configuration_id}")

    # ------------------------------------------------------------------ catalog
    def flavors(self) -> list[dict[str, Any]]:
        return list(self.call("GET", "/flavors")["flavors"])

    def resolve_flavor(self, name_or_id: str) -> str:
        for flavor in self.flavors():
            if name_or_id in (str(flavor.get("id")), flavor.get("name")):
                return str(flavor["id"])
        return name_or_id  # the API says what is wrong with it

    def datastores(self) -> list[dict[str, Any]]:
        return list(self.call("GET", "/datastores")["datastores"])


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True
