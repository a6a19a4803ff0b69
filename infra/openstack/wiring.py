"""The openstack profile's composition root: the embedded cloud on Swift and Zaqar.

`infra.wiring.build_embedded` calls `openstack_cloud` when the profile is openstack. Everything
comes from `Settings.openstack` (TROVELESS_OPENSTACK_*, see shared/openstack_settings.py):

- records: a SwiftStateStore on `state_container`; blobs (backups, logs): a SwiftBlobStore on
  `backups_container`; both containers are created when missing;
- queues: Zaqar (ZaqarQueue), in `zaqar_project_id` on a noauth Zaqar or the project of the
  Keystone token of `cloud`;
- compute: LocalCompute (`compute = "local"`), whose guests get an `openstack` section in
  their user-data saying how to reach Zaqar and Swift themselves. Nova compute is not wired yet.
- guest events: pulled from Zaqar by a thread of `troveless up`, or, with `guest_events_push`,
  pushed by Zaqar to the server's /functions/guest-events (`GuestEventsPush`).

The engine (DurableDriver) and the functions run on these exactly as on the local adapters.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from zaqarclient.queues.v2 import client as zaqar_client

from functions import guest_events
from functions.runtime import Runtime
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


class GuestEventsPush:
    """Push mode (`guest_events_push`): Zaqar POSTs each guest event to `url`, the embedded
    server's /functions/guest-events, instead of a thread pulling the events queue.

    `start` subscribes the events queue to `url` (first removing a subscription to the same
    URL that a killed `troveless up` left behind: Zaqar refuses a second one); `stop`
    unsubscribes. The subscription lives `SUBSCRIPTION_TTL` seconds and `tick` renews it, so
    one left by a crash stops pushing at a dead address (and tying up Zaqar's notifier
    workers in retries) within minutes.

    What happens to the pushed messages: Zaqar pushes a copy of each message as it is posted
    and still stores the message; nobody deletes it, so with the guests' 14-day TTL the queue
    would only grow. `tick` is also the backstop that empties it: every `BACKSTOP_SECONDS` it
    consumes the queue through the pull path (`guest_events.drain`). A message whose push
    was handled is refused there as a replay (the verifier's seen-state), cheaply and without
    effect; a message whose push failed (the endpoint answered 503, or was down: Zaqar 23
    does not retry an HTTP error answer) is handled then. So push mode keeps at-least-once
    delivery, with the backstop's lag for the failed pushes only, and a bounded queue.
    """

    SUBSCRIPTION_TTL = 300
    BACKSTOP_SECONDS = 30.0

    def __init__(self, runtime: Runtime, url: str) -> None:
        openstack = openstack_settings(runtime.settings)
        if not isinstance(runtime.queue, ZaqarQueue):
            raise WiringError("guest-events push needs the Zaqar queue (the openstack profile)")
        self.runtime = runtime
        self.url = url
        self._queue = runtime.queue
        self._client = zaqar(openstack)
        self.subscription_id: str | None = None

    def start(self) -> None:
        for stale in self._client.subscriptions(EVENTS_QUEUE):
            if stale.subscriber == self.url:
                stale.delete()
        self.subscription_id = self._queue.subscribe_webhook(
            EVENTS_QUEUE, self.url, ttl_seconds=self.SUBSCRIPTION_TTL
        )
        log.info("guest events pushed by zaqar", extra={"url": self.url})

    def tick(self) -> int:
        """Renew the subscription and run the backstop; returns the messages it handled."""
        if self.subscription_id is not None:
            subscription = self._client.subscription(
                EVENTS_QUEUE, id=self.subscription_id, auto_create=False
            )
            subscription.update({"ttl": self.SUBSCRIPTION_TTL})
        return guest_events.drain(self.runtime)

    def run(self, stopping: threading.Event) -> None:
        """`tick` every BACKSTOP_SECONDS until `stopping` is set (a thread of the server)."""
        while not stopping.wait(self.BACKSTOP_SECONDS):
            try:
                self.tick()
            except Exception:  # Zaqar or the store hiccuped: try again next time
                log.exception("guest-events push backstop failed")

    def stop(self) -> None:
        """Unsubscribe; if Zaqar cannot be reached, the subscription expires on its own."""
        if self.subscription_id is None:
            return
        try:
            self._queue.unsubscribe(EVENTS_QUEUE, self.subscription_id)
        except Exception:  # the server must still stop
            log.exception("guest-events unsubscribe failed; the subscription will expire")
        self.subscription_id = None
