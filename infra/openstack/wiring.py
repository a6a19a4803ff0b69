"""The openstack profile's composition roots: the embedded cloud on Swift and Zaqar (local
compute), and the functions' runtime on a real cloud (Nova compute).

`infra.wiring.build_embedded` calls `openstack_cloud` when the profile is openstack and compute
is local; `infra.wiring.build_runtime` calls `build_openstack` when compute is nova. Everything
comes from `Settings.openstack` (TROVELESS_OPENSTACK_*, see shared/openstack_settings.py).

The embedded cloud (`troveless up --profile openstack`):

- records: a SwiftStateStore on `state_container`; blobs (backups, logs): a SwiftBlobStore on
  `backups_container`; both containers are created when missing;
- queues: Zaqar (ZaqarQueue), in `zaqar_project_id` on a noauth Zaqar or the project of the
  Keystone token of `cloud`;
- compute: LocalCompute (`compute = "local"`), whose guests get an `openstack` section in
  their user-data saying how to reach Zaqar and Swift themselves (v1 Swift, noauth Zaqar).
- guest events: pulled from Zaqar by a thread of `troveless up`, or, with `guest_events_push`,
  pushed by Zaqar to the server's /functions/guest-events (`GuestEventsPush`).

The engine (DurableDriver) and the functions run on these exactly as on the local adapters.

The cloud runtime (`build_openstack`, compute = "nova"): like the aws profile's, nothing on
the machine it runs on (no data directory), the master key from TROVELESS_MASTER_KEY, Swift and
Zaqar of `cloud` (or a noauth Zaqar), whose containers and queues the deployment made (Heat or
bootstrap.sh: the runtime creates none), NovaCinderCompute on `cloud`, and the engine's
workflows over that Zaqar and Swift. Nova guests get the application credential of
`guest_cloud` in their user-data (`nova_guest_backends`), never `cloud`'s credentials.

API tokens: with `api_auth` keystone (the default with Nova) either form validates callers'
tokens with Keystone (`token_validator`), using `cloud`'s identity as the service's.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from typing import Any

from zaqarclient.queues.v2 import client as zaqar_client

from functions import guest_events
from functions.runtime import Runtime
from infra.local.cloud import EmbeddedCloud
from infra.wiring import FunctionsInvoker, WiringError, cloud_flavors_by_spec, master_key
from shared.adapters.local.compute import LocalCompute
from shared.adapters.local.system_user import DEFAULT_GUEST_USER
from shared.adapters.local.workflows import EngineWorkflows
from shared.adapters.openstack.keystone_tokens import KeystoneTokenValidator
from shared.adapters.openstack.nova_compute import NovaCinderCompute
from shared.adapters.openstack.swift_blob_store import SwiftBlobStore
from shared.adapters.openstack.swift_client import SwiftError, tempauth_connection
from shared.adapters.openstack.swift_state_store import SwiftStateStore
from shared.adapters.openstack.zaqar_queue import ZaqarQueue
from shared.clock import SystemClock
from shared.engine.durable import DurableDriver
from shared.engine.service import ExecutionService
from shared.observability import get_logger
from shared.openstack_settings import ApiAuth, ComputeKind, OpenStackSettings
from shared.ports import JSON, Clock, FlavorSpec, TokenValidator
from shared.services.guest_channel import EVENTS_QUEUE
from shared.settings import Settings

log = get_logger("openstack-wiring")

# The user-data section guests of this profile read (guest_agent/user_data.py).
GUEST_SECTION = "openstack"
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
        raise WiringError(
            f"cloud {openstack.cloud!r} (clouds.yaml): {_without_secrets(exc)}"
        ) from None


def zaqar(openstack: OpenStackSettings, connection: Any | None = None) -> Any:
    """A Zaqar v2 client: noauth in `zaqar_project_id`, or Keystone's session of `cloud`
    (`connection`'s when given, so one Keystone login serves every client)."""
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
    connection = connection or _keystone_connection(openstack)
    try:
        url = connection.session.get_endpoint(service_type="messaging", interface="public")
    except Exception as exc:  # keystoneauth: cannot log in, or no such endpoint
        raise WiringError(f"cloud {openstack.cloud!r}: Zaqar: {_without_secrets(exc)}") from None
    if not url:
        raise WiringError(f"cloud {openstack.cloud!r} has no messaging (Zaqar) endpoint")
    return zaqar_client.Client(url, version=2, session=connection.session)


def guest_backends(openstack: OpenStackSettings) -> JSON:
    """The user-data section (guest_agent/user_data.py `OpenStackBackends`) that lets a local
    guest reach Zaqar and Swift on its own.

    It holds the Swift key in plaintext. Acceptable for this single-machine profile only: the
    user-data file is readable by the guest's user alone (0600), the key never passes through
    the state store or the engine (this compute adds it when the server is made) and the agent
    never logs it. Nova guests get credentials of their own instead (`nova_guest_backends`).
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


def openstack_cloud(settings: Settings, *, guest_user: str = DEFAULT_GUEST_USER) -> EmbeddedCloud:
    """The embedded cloud's adapters on Swift and Zaqar, with local compute."""
    openstack = openstack_settings(settings)
    if openstack.compute is not ComputeKind.LOCAL:
        raise WiringError(
            "TROVELESS_OPENSTACK_COMPUTE=nova: the embedded cloud (`troveless up`) makes its "
            "servers on this machine; use local there. Nova is the functions' runtime on a "
            "cloud (build_runtime)"
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
    compute = LocalCompute(
        root / "compute",
        guest_sections={GUEST_SECTION: backends},
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


def token_validator(settings: Settings, clock: Clock) -> TokenValidator | None:
    """Keystone's validator (service identity: `cloud`) when `api_auth` is keystone; None
    leaves the API on the embedded signer's tokens."""
    openstack = openstack_settings(settings)
    if openstack.api_auth_chosen is not ApiAuth.KEYSTONE:
        return None
    try:
        return KeystoneTokenValidator.from_cloud(clock, openstack.cloud)
    except Exception as exc:  # the sdk raises many kinds for a bad clouds.yaml entry
        raise WiringError(
            f"api_auth keystone: the service identity, cloud {openstack.cloud!r} "
            f"(clouds.yaml): {_without_secrets(exc)}"
        ) from None


def _without_secrets(exc: Exception) -> str:
    """The error's message, unless it might echo a credential: then only its type.
    keystoneauth's option errors say which option is missing, never a value."""
    from keystoneauth1.exceptions import OptionError

    text = str(exc)
    if isinstance(exc, OptionError):
        return text
    return type(exc).__name__ if "secret" in text.lower() or "password" in text.lower() else text


APPLICATION_CREDENTIAL_AUTH_TYPES = ("v3applicationcredential", "applicationcredential")


def nova_guest_backends(openstack: OpenStackSettings) -> JSON:
    """The user-data section (guest_agent/user_data.py `OpenStackBackends`, `keystone` form)
    of a Nova guest: the application credential of `guest_cloud`, read from clouds.yaml.

    Only an application credential is accepted: it is bound to one project, can be limited
    (access rules, a restricted role) to the messaging and object-store APIs, and can be
    revoked on its own without touching the control plane's identity. Its secret goes into
    each guest's user-data and nowhere else (never a log, the state store or the engine).
    """
    from openstack.config import loader

    name = openstack.guest_cloud
    try:
        region = loader.OpenStackConfig().get_one(cloud=name)
    except Exception as exc:  # the sdk raises many kinds for a missing or bad entry
        raise WiringError(f"guest_cloud {name!r} (clouds.yaml): {_without_secrets(exc)}") from None
    auth_type = str(region.config.get("auth_type") or "")
    auth: Mapping[str, Any] = region.config.get("auth") or {}
    if auth_type not in APPLICATION_CREDENTIAL_AUTH_TYPES:
        raise WiringError(
            f"guest_cloud {name!r}: auth_type is {auth_type or 'not set'!r}; guests get an "
            "application credential (auth_type v3applicationcredential), never a password"
        )
    missing = [
        key
        for key in ("auth_url", "application_credential_id", "application_credential_secret")
        if not auth.get(key)
    ]
    if missing:
        raise WiringError(f"guest_cloud {name!r}: its auth needs {', '.join(missing)}")
    keystone: JSON = {
        "auth_url": str(auth["auth_url"]),
        "application_credential_id": str(auth["application_credential_id"]),
        "application_credential_secret": str(auth["application_credential_secret"]),
        "interface": str(region.get_interface() or "public"),
    }
    if region.region_name:
        keystone["region_name"] = str(region.region_name)
    section: JSON = {
        "keystone": keystone,
        "backups_container": openstack.backups_container,
        "queue_poll_interval": openstack.queue_poll_interval,
    }
    if openstack.zaqar_url is not None:  # a noauth Zaqar: its URL and project are no secret
        section["zaqar_url"] = openstack.zaqar_url
        section["zaqar_project_id"] = openstack.zaqar_project_id
    return section


def nova_flavors(settings: Settings, openstack: OpenStackSettings) -> dict[FlavorSpec, str]:
    """TROVELESS_OPENSTACK_FLAVORS names troveless flavors; the adapter looks Nova flavors up
    by resources (ram_mb, vcpus)."""
    return cloud_flavors_by_spec(
        settings, openstack.flavors, "TROVELESS_OPENSTACK_FLAVORS", "Nova flavors"
    )


def build_openstack(settings: Settings) -> Runtime:
    """The functions' runtime on a real OpenStack cloud (compute nova; module docstring)."""
    openstack = openstack_settings(settings)
    if openstack.compute is not ComputeKind.NOVA:
        raise WiringError("build_openstack is the Nova runtime; local compute is `up`'s")
    key = master_key(settings)  # first: refuse before reaching any service
    backends = nova_guest_backends(openstack)
    flavors = nova_flavors(settings, openstack)
    clock = SystemClock()
    connection = _keystone_connection(openstack)
    object_store = connection.object_store
    state = SwiftStateStore(
        object_store,
        openstack.state_container,
        clock=clock,
        revisions_kept=settings.state_revisions_kept,
        create_container=False,
    )
    blobs = SwiftBlobStore(object_store, openstack.backups_container, create_container=False)
    queue = ZaqarQueue(zaqar(openstack, connection), poll_interval=openstack.queue_poll_interval)
    try:
        compute = NovaCinderCompute(
            connection,
            guest_sections={GUEST_SECTION: backends},
            images=openstack.images,
            flavors=flavors,
            zones=settings.availability_zones,
            volume_zones=openstack.volume_zones,
            volume_type=openstack.volume_type,
            network_id=openstack.network_id,
            key_name=openstack.key_name,
            security_groups=openstack.security_groups,
            server_group_policy=openstack.server_group_policy,
            server_group_name=openstack.server_group_name,
            poll_interval=openstack.nova_poll_interval,
            timeout=openstack.nova_timeout,
        )
    except ValueError as exc:
        raise WiringError(f"Nova compute: {exc}") from None
    driver = DurableDriver(state, queue, FunctionsInvoker(), clock)
    workflows = EngineWorkflows(ExecutionService(driver), settings.state_machines_dir)
    log.info(
        "openstack cloud runtime built",
        extra={
            "cloud": openstack.cloud,
            "guest_cloud": openstack.guest_cloud,
            "state_container": openstack.state_container,
            "backups_container": openstack.backups_container,
            "zones": settings.availability_zones,
        },
    )
    return Runtime(
        settings=settings,
        clock=clock,
        store=state,
        blobs=blobs,
        queue=queue,
        compute=compute,
        workflows=workflows,
        master_key=key,
        token_validator=token_validator(settings, clock),
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
