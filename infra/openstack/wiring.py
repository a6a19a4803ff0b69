"""The openstack profile's composition root: the embedded cloud on Swift and Zaqar.

`infra.wiring.build_embedded` calls `openstack_cloud` when the profile is openstack. Everything
comes from `Settings.openstack` (TROVELESS_OPENSTACK_*, see shared/openstack_settings.py):

- records: a SwiftStateStore on `state_container`; blobs (backups, logs): a SwiftBlobStore on
  `backups_container`; both containers are created when missing;
- queues: Zaqar (ZaqarQueue), in `zaqar_project_id` on a noauth Zaqar or the project of the
  Keystone token of `cloud`;
- compute: LocalCompute (`compute = "local"`), whose guests get an `openstack` section in
  their user-data saying how to reach Zaqar and Swift themselves. Nova compute is not wired yet.

The engine (DurableDriver) and the functions run on these exactly as on the local adapters.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from zaqarclient.queues.v2 import client as zaqar_client

from infra.local.cloud import EmbeddedCloud
from infra.wiring import WiringError
from shared.adapters.local.compute import LocalCompute
from shared.adapters.local.system_user import DEFAULT_GUEST_USER
from shared.adapters.openstack.swift_blob_store import SwiftBlobStore
from shared.adapters.openstack.swift_client import SwiftError, tempauth_connection
from shared.adapters.openstack.swift_state_store import SwiftStateStore
from shared.adapters.openstack.zaqar_queue import ZaqarQueue
from shared.clock import SystemClock
from shared.observability import get_logger
from shared.openstack_settings import ComputeKind, OpenStackSettings
from shared.ports import JSON, FlavorLike, ServerInfo
from shared.services.guest_channel import EVENTS_QUEUE
from shared.settings import Settings

log = get_logger("openstack-wiring")

REQUIRED = (
    "TROVELESS_OPENSTACK_CLOUD, or TROVELESS_OPENSTACK_SWIFT_AUTH_URL/_SWIFT_USER/_SWIFT_KEY "
    "and TROVELESS_OPENSTACK_ZAQAR_URL/_ZAQAR_PROJECT_ID"
)


def openstack_settings(settings: Settings) -> OpenStackSettings:
    if settings.openstack is None:
        raise WiringError(f"the openstack profile needs its settings: set {REQUIRED}")
    return settings.openstack


def swift_object_store(openstack: OpenStackSettings) -> Any:
    """An authenticated openstacksdk object_store proxy: v1 (tempauth) or Keystone (`cloud`)."""
    if openstack.swift_auth_url is not None:
        assert openstack.swift_user is not None and openstack.swift_key is not None
        try:
            connection = tempauth_connection(
                openstack.swift_auth_url,
                openstack.swift_user,
                openstack.swift_key.get_secret_value(),
            )
        except (SwiftError, OSError) as exc:
            raise WiringError(f"Swift at {openstack.swift_auth_url}: {exc}") from None
        return connection.object_store
    return _keystone_connection(openstack).object_store


def _keystone_connection(openstack: OpenStackSettings) -> Any:
    import openstack as openstacksdk

    try:
        return openstacksdk.connect(cloud=openstack.cloud)
    except Exception as exc:  # the sdk raises many kinds for a bad clouds.yaml entry
        raise WiringError(f"cloud {openstack.cloud!r} (clouds.yaml): {exc}") from None


def zaqar(openstack: OpenStackSettings) -> Any:
    """A Zaqar v2 client: noauth in `zaqar_project_id`, or Keystone's session of `cloud`."""
    if openstack.zaqar_url is not None:
        return zaqar_client.Client(
            openstack.zaqar_url,
            version=2,
            conf={
                "auth_opts": {
                    "backend": "noauth",
                    "options": {"os_project_id": openstack.zaqar_project_id},
                }
            },
        )
    connection = _keystone_connection(openstack)
    url = connection.session.get_endpoint(service_type="messaging", interface="public")
    if not url:
        raise WiringError(f"cloud {openstack.cloud!r} has no messaging (Zaqar) endpoint")
    return zaqar_client.Client(url, version=2, session=connection.session)


def guest_backends(openstack: OpenStackSettings) -> JSON:
    """The user-data section (guest_agent/user_data.py `OpenStackBackends`) that lets a local
    guest reach Zaqar and Swift on its own.

    It holds the Swift key in plaintext. Acceptable for this single-machine profile only: the
    user-data file is readable by the guest's user alone (0600), the key never passes through
    the state store or the engine (this compute adds it when the server is made) and the agent
    never logs it. A Nova guest would need credentials of its own instead.
    """
    if openstack.swift_auth_url is None or openstack.zaqar_url is None:
        raise WiringError(
            "local guests reach Swift by v1 auth and Zaqar without auth: set "
            "TROVELESS_OPENSTACK_SWIFT_AUTH_URL/_SWIFT_USER/_SWIFT_KEY and "
            "TROVELESS_OPENSTACK_ZAQAR_URL/_ZAQAR_PROJECT_ID"
        )
    assert openstack.swift_user is not None and openstack.swift_key is not None
    return {
        "zaqar_url": openstack.zaqar_url,
        "zaqar_project_id": openstack.zaqar_project_id,
        "swift_auth_url": openstack.swift_auth_url,
        "swift_user": openstack.swift_user,
        "swift_key": openstack.swift_key.get_secret_value(),
        "backups_container": openstack.backups_container,
        "queue_poll_interval": openstack.queue_poll_interval,
    }


class OpenStackGuestsCompute(LocalCompute):
    """LocalCompute whose guests are told (user-data `openstack`) how to reach Swift and Zaqar."""

    def __init__(self, root: Path, *, guest_backends: JSON, **options: Any) -> None:
        super().__init__(root, **options)
        self.guest_backends = guest_backends

    def create_server(
        self,
        instance_id: str,
        flavor: FlavorLike,
        volume_gb: int,
        zone: str | None,
        user_data: JSON,
        *,
        volume_from: str | None = None,
    ) -> ServerInfo:
        if isinstance(user_data, dict):
            user_data = {**user_data, "openstack": self.guest_backends}
        return super().create_server(
            instance_id, flavor, volume_gb, zone, user_data, volume_from=volume_from
        )


def openstack_cloud(settings: Settings, *, guest_user: str = DEFAULT_GUEST_USER) -> EmbeddedCloud:
    """The embedded cloud's adapters on Swift and Zaqar, with local compute."""
    openstack = openstack_settings(settings)
    if openstack.compute is not ComputeKind.LOCAL:
        raise WiringError(
            "TROVELESS_OPENSTACK_COMPUTE=nova: Nova compute is not wired into the embedded "
            "cloud yet; use local"
        )
    backends = guest_backends(openstack)
    root = settings.data_dir
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o755)  # guests (another user) traverse it to reach their volume
    clock = SystemClock()
    object_store = swift_object_store(openstack)
    state = SwiftStateStore(
        object_store,
        openstack.state_container,
        clock=clock,
        revisions_kept=settings.state_revisions_kept,
    )
    blobs = SwiftBlobStore(object_store, openstack.backups_container)
    queue = ZaqarQueue(zaqar(openstack), poll_interval=openstack.queue_poll_interval)
    queue.ensure_queue(
        EVENTS_QUEUE,
        max_receives=settings.queue_max_receives,
        dead_letter_queue=f"{EVENTS_QUEUE}-dlq",
    )
    compute = OpenStackGuestsCompute(
        root / "compute",
        guest_backends=backends,
        zones=settings.availability_zones,
        address_pool=settings.address_pool,
        guest_user=guest_user,
    )
    log.info(
        "openstack embedded cloud built",
        extra={
            "state_container": openstack.state_container,
            "backups_container": openstack.backups_container,
            "zaqar_url": openstack.zaqar_url,
            "compute": openstack.compute.value,
        },
    )
    return EmbeddedCloud(
        settings=settings, clock=clock, state=state, blobs=blobs, queue=queue, compute=compute
    )
