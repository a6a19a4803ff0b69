"""Swift through openstacksdk: the connection the Swift adapters share, and raw container verbs.

The adapters take `conn.object_store` of an already-authenticated `openstack.connection.Connection`
(wiring builds it: Keystone on a real cloud, `tempauth_connection` for tempauth/v1 clusters such
as the test all-in-one). That proxy is a keystoneauth1 Adapter bound to the account's storage
URL, and the adapters call its HTTP verbs with object paths instead of the sdk's higher-level
`create_object`/`get_object`: those cannot send `If-None-Match: *`, stream an upload of unknown
length (large objects are uploaded only from files, `data=` is sent whole), or stream a download
without buffering. Re-authentication, endpoint discovery and retries stay the sdk's business.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import openstack.connection
import requests
from keystoneauth1 import session as ks_session
from keystoneauth1 import token_endpoint

from shared.errors import TrovelessError

LISTING_PAGE = 10_000  # Swift's default container_listing_limit
# An object server answers 503 when the object changes between its directory listing and its
# metadata read (a DELETE or PUT racing a GET or HEAD: DiskFileStateChanged). Reads and deletes
# are repeated a few times, with a short growing pause, before the 503 is reported.
_RETRIED_METHODS = frozenset({"GET", "HEAD", "DELETE"})
_RETRIES_ON_503 = 6
_FIRST_PAUSE_SECONDS = 0.005


def normalized_prefix(prefix: str) -> str:
    """A name prefix ending with '/' (or empty), so stores sharing a container do not overlap."""
    if prefix and not prefix.endswith("/"):
        return prefix + "/"
    return prefix


class SwiftError(TrovelessError):
    """Swift answered a request with an unexpected status."""

    def __init__(self, method: str, path: str, status: int, body: str = "") -> None:
        self.method = method
        self.path = path
        self.status = status
        super().__init__(f"swift {method} {path}: HTTP {status} {body[:200]}".rstrip())


def tempauth_connection(
    auth_url: str, user: str, key: str, *, timeout: float = 30.0
) -> openstack.connection.Connection:
    """An sdk connection authenticated by Swift's v1 protocol (tempauth, swauth).

    keystoneauth1 has no v1 plugin, so the token and storage URL are fetched once here and handed
    to a token-endpoint plugin. tempauth tokens last a day by default; long-running processes on
    a v1 cluster should make a new connection before that. Keystone clouds use openstack.connect().
    """
    response = requests.get(
        auth_url, headers={"X-Auth-User": user, "X-Auth-Key": key}, timeout=timeout
    )
    if response.status_code // 100 != 2:
        raise SwiftError("GET", auth_url, response.status_code, "v1 authentication failed")
    token = response.headers["X-Auth-Token"]
    storage_url = response.headers["X-Storage-Url"]
    session = ks_session.Session(auth=token_endpoint.Token(storage_url, token), timeout=timeout)
    return openstack.connection.Connection(
        session=session, object_store_endpoint_override=storage_url
    )


class SwiftContainer:
    """Raw HTTP verbs on the objects of one container, through the sdk's object_store proxy."""

    def __init__(self, object_store: Any, container: str) -> None:
        if not container or "/" in container:
            raise ValueError(f"a Swift container name has no '/': {container!r}")
        self.object_store = object_store
        self.container = container
        self._container_path = quote(container, safe="")

    def path(self, name: str = "") -> str:
        """The request path (relative to the storage URL) of object `name`, or the container."""
        if not name:
            return self._container_path
        return f"{self._container_path}/{quote(name, safe='/')}"

    def request(
        self,
        method: str,
        name: str,
        *,
        expect: tuple[int, ...],
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
        data: Any = None,
        stream: bool = False,
    ) -> requests.Response:
        """Send one request; SwiftError unless the status is one of `expect`."""
        path = self.path(name)
        attempts = _RETRIES_ON_503 + 1 if method in _RETRIED_METHODS and data is None else 1
        for attempt in range(attempts):
            response: requests.Response = self.object_store.request(
                path,
                method,
                headers=headers or {},
                params=params,
                data=data,
                stream=stream,
                raise_exc=False,
            )
            if response.status_code != 503 or 503 in expect or attempt == attempts - 1:
                break
            response.close()
            time.sleep(_FIRST_PAUSE_SECONDS * 2**attempt)
        if response.status_code not in expect:
            body = "" if stream else response.text
            response.close()
            raise SwiftError(method, path, response.status_code, body)
        return response

    def ensure(self) -> None:
        """Create the container if it does not exist (201 new, 202 already there)."""
        self.request("PUT", "", expect=(201, 202))

    def listing(self, prefix: str, *, delimiter: str | None = None) -> Iterator[dict[str, Any]]:
        """The container's listing entries (JSON) of objects starting with `prefix`, in name
        order, page by page; with `delimiter`, the `subdir` entries are left out."""
        marker = ""
        while True:
            params = {"format": "json", "prefix": prefix, "limit": str(LISTING_PAGE)}
            if delimiter:
                params["delimiter"] = delimiter
            if marker:
                params["marker"] = marker
            response = self.request("GET", "", expect=(200, 204, 404), params=params)
            if response.status_code != 200:
                return
            entries: list[dict[str, Any]] = json.loads(response.content or b"[]")
            if not entries:
                return
            for entry in entries:
                if "name" in entry:
                    yield entry
            last = entries[-1]
            marker = last.get("name") or last.get("subdir") or ""
            if len(entries) < LISTING_PAGE or not marker:
                return

    def delete_container(self) -> None:
        """Remove every object, then the container (for tests and tear-down)."""
        while True:
            names = [entry["name"] for entry in self.listing("")]
            if not names:
                break
            for name in names:
                self.request("DELETE", name, expect=(204, 404))
        self.request("DELETE", "", expect=(204, 404, 409))
