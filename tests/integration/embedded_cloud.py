"""The embedded cloud for integration tests: real adapters, engine workers and the
guest-events consumer running in threads, torn down completely at the end.

Two profiles: "local" (directory stores, SQLite queue) and "openstack" (records and backups in
the session's Swift all-in-one, queues in the session's Zaqar; compute stays local). An
openstack cloud gets containers and a Zaqar project of its own (`OpenStackPlace`), removed at
the end whatever happens, so clouds of one session never see each other's records.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Generic, TypeVar, overload

import pytest
from zaqarclient.queues.v2 import client as zaqar_client

from functions import guest_events
from functions.runtime import Runtime, set_runtime
from infra.local.cloud import EmbeddedCloud, LocalCloud
from infra.wiring import build_embedded
from shared.adapters.openstack.swift_client import SwiftContainer, tempauth_connection
from shared.engine.durable import DurableDriver
from shared.settings import Settings, load_settings
from tests.servers.swift import SwiftEndpoint

CloudT = TypeVar("CloudT", bound=EmbeddedCloud)

# The profiles a cloud under test runs on; test ids name them.
PROFILES = ("local", "openstack")


@dataclass(frozen=True)
class OpenStackServers:
    """The session's real Swift (tempauth) and Zaqar (noauth) that openstack clouds use."""

    swift: SwiftEndpoint
    zaqar_url: str


def servers_for(request: pytest.FixtureRequest, profile: str) -> OpenStackServers | None:
    """The OpenStack servers a cloud of `profile` needs (None for local). Asked for only then,
    so a local-only run never starts Swift or Zaqar."""
    if profile == "local":
        return None
    if profile != "openstack":
        raise ValueError(f"unknown profile {profile!r}")
    swift: SwiftEndpoint = request.getfixturevalue("swift_endpoint")
    zaqar_url: str = request.getfixturevalue("zaqar_endpoint")
    return OpenStackServers(swift, zaqar_url)


@dataclass(frozen=True)
class OpenStackPlace:
    """Swift containers and a Zaqar project that belong to one cloud under test."""

    servers: OpenStackServers
    tag: str

    @property
    def state_container(self) -> str:
        return f"tl-test-state-{self.tag}"

    @property
    def backups_container(self) -> str:
        return f"tl-test-backups-{self.tag}"

    @property
    def zaqar_project_id(self) -> str:
        return f"tl-test-{self.tag}"

    def settings(self) -> dict[str, object]:
        """`Settings.openstack` for a cloud in this place."""
        return {
            "swift_auth_url": self.servers.swift.auth_url,
            "swift_user": self.servers.swift.user,
            "swift_key": self.servers.swift.key,
            "zaqar_url": self.servers.zaqar_url,
            "zaqar_project_id": self.zaqar_project_id,
            "state_container": self.state_container,
            "backups_container": self.backups_container,
        }

    def variables(self) -> dict[str, str]:
        """The same as TROVELESS_OPENSTACK_* variables, for a `troveless up` process."""
        return {f"TROVELESS_OPENSTACK_{k.upper()}": str(v) for k, v in self.settings().items()}

    def swift_object_store(self) -> Any:
        """An object_store proxy of our own (not the cloud's), on the tempauth account."""
        swift = self.servers.swift
        return tempauth_connection(swift.auth_url, swift.user, swift.key).object_store

    def zaqar(self) -> Any:
        return zaqar_client.Client(
            self.servers.zaqar_url,
            version=2,
            conf={
                "auth_opts": {
                    "backend": "noauth",
                    "options": {"os_project_id": self.zaqar_project_id},
                }
            },
        )

    def remove(self) -> None:
        """Delete both containers (every object in them) and the project's queues."""
        object_store = self.swift_object_store()
        # A few deletes at a time: a test leaves hundreds of record revisions behind, and
        # one DELETE at a time would make tear-down take seconds.
        with ThreadPoolExecutor(max_workers=8, thread_name_prefix="tl-test-cleanup") as pool:
            for name in (self.state_container, self.backups_container):
                container = SwiftContainer(object_store, name)
                for _ in range(5):  # objects written while we list are found the next time
                    names = [entry["name"] for entry in container.listing("")]
                    if not names:
                        break
                    list(pool.map(partial(_delete_object, container), names))
                container.request("DELETE", "", expect=(204, 404, 409))
            listing, _count = self.zaqar().queues()
            list(pool.map(lambda queue: queue.delete(), list(listing)))

    def leftovers(self) -> list[str]:
        """What `remove` should have removed and is still there."""
        object_store = self.swift_object_store()
        found = []
        for name in (self.state_container, self.backups_container):
            path = SwiftContainer(object_store, name).path()
            reply = object_store.request(path, "HEAD", raise_exc=False)
            if reply.status_code != 404:
                found.append(f"swift container {name} ({reply.status_code})")
            reply.close()
        listing, _count = self.zaqar().queues()
        found += [f"zaqar queue {queue.name}" for queue in listing]
        return found


def _delete_object(container: SwiftContainer, name: str) -> None:
    container.request("DELETE", name, expect=(204, 404))


@contextmanager
def openstack_place(servers: OpenStackServers) -> Iterator[OpenStackPlace]:
    """A fresh place on `servers`, emptied and removed at the end (even on failure)."""
    place = OpenStackPlace(servers, uuid.uuid4().hex[:10])
    try:
        yield place
    finally:
        place.remove()
        left = place.leftovers()
        assert not left, f"left behind in Swift/Zaqar: {left}"


@dataclass
class RunningCloud(Generic[CloudT]):
    root: Path
    settings: Settings
    runtime: Runtime
    cloud: CloudT  # LocalCloud on the local profile
    place: OpenStackPlace | None  # where the openstack profile keeps things; None on local

    @property
    def profile(self) -> str:
        return self.settings.profile.value


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 90.0) -> None:
    """Poll `condition` until it holds; AssertionError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


@overload
def running_cloud(
    root: Path | None = None,
    *,
    prefix: str = ...,
    openstack: None = None,
    **overrides: object,
) -> AbstractContextManager[RunningCloud[LocalCloud]]: ...


@overload
def running_cloud(
    root: Path | None = None,
    *,
    prefix: str = ...,
    openstack: OpenStackServers,
    **overrides: object,
) -> AbstractContextManager[RunningCloud[EmbeddedCloud]]: ...


@contextmanager
def running_cloud(
    root: Path | None = None,
    *,
    prefix: str = "tl-it-",
    openstack: OpenStackServers | None = None,
    **overrides: object,
) -> Iterator[RunningCloud[Any]]:
    """The embedded cloud on `root` (a fresh directory under /tmp, removed at the end, when not
    given: the guest user must be able to reach it, which pytest's 0700 tmp_path forbids).
    With `openstack`, the openstack profile on those servers, in a place of its own."""
    owned = root is None
    root = root or Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    # A pool of our own: test sessions running side by side must not share 127.x addresses.
    overrides.setdefault(
        "address_pool", f"127.{random.randint(64, 250)}.{random.randint(0, 255)}.0/24"
    )
    with contextlib.ExitStack() as cleanup:
        if owned:
            cleanup.callback(shutil.rmtree, root, ignore_errors=True)
        place = None
        if openstack is not None:
            place = cleanup.enter_context(openstack_place(openstack))
            overrides.update(profile="openstack", openstack=place.settings())
        settings = load_settings(
            data_dir=root, heartbeat_interval=0.5, heartbeat_expiry=5, **overrides
        )
        runtime, cloud, driver = build_embedded(settings)
        cleanup.callback(cloud.close)
        assert isinstance(cloud, LocalCloud) == (place is None)
        with _workers(runtime, cloud, driver):
            yield RunningCloud(root, settings, runtime, cloud, place)


@contextmanager
def _workers(runtime: Runtime, cloud: EmbeddedCloud, driver: DurableDriver) -> Iterator[None]:
    """The engine worker and the guest-events consumer as threads; at the end they stop and
    every server the cloud made is deleted."""
    set_runtime(runtime)
    stop = threading.Event()
    threads = [
        threading.Thread(target=driver.work, args=(stop.is_set,), kwargs={"wait_seconds": 0.2}),
        threading.Thread(
            target=guest_events.work,
            args=(stop.is_set,),
            kwargs={"runtime": runtime, "wait_seconds": 0.2},
        ),
    ]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        for server in cloud.compute.list_servers():
            with suppress(Exception):
                cloud.compute.delete_server(server.instance_id)
        left = cloud.compute.list_servers()
        set_runtime(None)
        assert not left, f"servers left behind: {left}"
        assert not any(t.is_alive() for t in threads), "a worker thread did not stop"
