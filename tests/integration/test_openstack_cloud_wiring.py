"""The openstack profile wired for a real cloud, through `build_runtime` itself.

1. Keystone in the API. `api_auth = "keystone"` makes the wired runtime validate callers'
   tokens with Keystone. The Keystone here is our own Keystone-v3 subset (the identity service
   `troveless up` serves, infra/local/keystone.py) running as an HTTP server on loopback in
   the test, not OpenStack's Keystone. The runtime is the openstack profile's embedded form on
   the session's real Swift all-in-one and real Zaqar (local compute: Nova cannot run here).
   A token the Keystone issued is accepted and its project, not the request, decides what the
   caller sees; a bad token is 401; with Keystone down the API answers 503.
2. Nova compute. `compute = "nova"` makes `build_runtime` return the cloud runtime (no data
   directory, no local compute) on replayed HTTP exchanges (recordings/nova_wired_runtime.json,
   written from the API references, not captured from a cloud): the instance create reaches
   Nova with the configured image, flavor and network, and the guest's user-data carries the
   guests' application credential and none of the control plane's secrets.
"""

from __future__ import annotations

import base64
import json
import multiprocessing
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnProcess
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import SecretStr

from functions import api
from functions.runtime import Runtime, set_runtime
from guest_agent.user_data import parse_user_data, resolve_config
from guest_agent.wiring import build_backends
from infra.local.keystone import LocalKeystone, local_identity
from infra.local.server import EmbeddedServer, proxy_event
from infra.openstack.wiring import nova_guest_backends
from infra.wiring import WiringError, build_local, build_runtime
from shared.adapters.guest_cloud_config import user_data_from_cloud_config
from shared.adapters.local.compute import LocalCompute
from shared.adapters.local.workflows import EngineWorkflows
from shared.adapters.openstack.keystone_tokens import KeystoneTokenValidator
from shared.adapters.openstack.nova_compute import NovaCinderCompute
from shared.adapters.openstack.swift_blob_store import SwiftBlobStore
from shared.adapters.openstack.swift_client import SwiftContainer, tempauth_connection
from shared.adapters.openstack.swift_state_store import SwiftStateStore
from shared.adapters.openstack.zaqar_queue import ZaqarQueue
from shared.clock import SystemClock
from shared.errors import NotFoundError
from shared.models.datastore import DatastoreRef
from shared.models.instance import Instance
from shared.models.volume import Volume, VolumeKind
from shared.services.instances import InstanceRecords
from shared.services.tokens import TokenService, project_id_for
from shared.settings import LocalUser, Settings, load_settings
from tests.contract.recorded_http import Replay, load_recording, replay_server
from tests.contract.recordings import compose_nova_recordings as rec
from tests.integration.keystone_login import password_login
from tests.servers.swift import SwiftEndpoint

# openstacksdk warns about its own internals (RemovedInSDK50Warning) on most calls.
pytestmark = pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")

PASSWORDS = {"alice": "alice-pw-1", "bob": "bob-pw-2", "troveless": "service-pw-3"}
USERS = [
    LocalUser(name=name, project=project, password=SecretStr(PASSWORDS[name]))
    for name, project in (("alice", "project-a"), ("bob", "project-b"), ("troveless", "service"))
]
MASTER_KEY = base64.b64encode(b"m" * 32).decode()
CONTROL_PASSWORD = "replayed-password"  # the control plane's (recordings' Keystone login)
GUEST_CREDENTIAL = rec.GUEST_CREDENTIAL
SPAWN = multiprocessing.get_context("spawn")
KEYSTONE_START_TIMEOUT = 60.0


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("TROVELESS_CONFIG_FILE", raising=False)
    monkeypatch.chdir(tmp_path)  # no ./troveless.toml
    for name in list(os.environ):
        if name.startswith(("TROVELESS_", "OS_")):
            monkeypatch.delenv(name)


def _clouds_yaml(path: Path, clouds: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    path.write_text(yaml.safe_dump({"clouds": clouds}))
    path.chmod(0o600)
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(path))


# =========================================================================== 1. Keystone
@dataclass
class KeystoneServer:
    """Our Keystone-v3 subset in a process of its own: killing it takes Keystone down for
    real (kept-alive connections included, which stopping an in-process server would not)."""

    url: str
    process: SpawnProcess

    @property
    def auth_url(self) -> str:
        return f"{self.url}/identity/v3"

    def login(self, user: str) -> str:
        return password_login(self.auth_url, user, PASSWORDS[user])

    def close(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(10)


def serve_keystone(root: str, ready: Connection) -> None:
    """The child process: our Keystone subset on a free loopback port until killed."""
    settings = load_settings(data_dir=Path(root), local_users=USERS, api_port=1)
    runtime, _cloud, driver = build_local(settings)
    tokens = TokenService(runtime.master_key, runtime.clock, settings.token_ttl_seconds)
    keystone = LocalKeystone(local_identity(settings, tokens)[0], settings.region)
    server = EmbeddedServer(runtime, driver, keystone, "127.0.0.1", 0, engine_workers=0)
    server.start()
    ready.send(server.url)
    threading.Event().wait()


def _start_keystone(root: Path) -> KeystoneServer:
    receiving, sending = SPAWN.Pipe(duplex=False)
    process = SPAWN.Process(
        target=serve_keystone, args=(str(root), sending), name="keystone", daemon=True
    )
    process.start()
    server = KeystoneServer("", process)
    try:
        if not receiving.poll(KEYSTONE_START_TIMEOUT):
            raise AssertionError(f"Keystone did not start within {KEYSTONE_START_TIMEOUT} s")
        server.url = str(receiving.recv())
    except BaseException:
        server.close()
        raise
    return server


@dataclass
class WiredApi:
    keystone: KeystoneServer
    runtime: Runtime
    project_a: str
    instance_a: Instance

    def call(self, path: str, token: str) -> tuple[int, Any]:
        event = proxy_event("GET", path, {"X-Auth-Token": token}, b"", "127.0.0.1")
        answer = api.handler(event, None)
        return int(answer["statusCode"]), json.loads(answer["body"] or "null")


def _instance(project_id: str) -> Instance:
    now = datetime.now(UTC)
    return Instance(
        id=str(uuid.uuid4()),
        project_id=project_id,
        name="alices-db",
        flavor_id="2",
        volume=Volume(kind=VolumeKind.DIRECTORY, size_gb=1),
        datastore=DatastoreRef(type="mariadb", version="10.11"),
        port=3306,
        created=now,
        updated=now,
    )


@pytest.fixture
def wired_api(
    swift_endpoint: SwiftEndpoint,
    zaqar_endpoint: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> Iterator[WiredApi]:
    # Under /tmp, not pytest's 0700 tmp_path: local compute insists its guests can reach it.
    root = Path(tempfile.mkdtemp(prefix="tl-os-keystone-", dir="/tmp"))
    root.chmod(0o755)
    suffix = uuid.uuid4().hex[:10]
    containers = [f"tl-ks-state-{suffix}", f"tl-ks-backups-{suffix}"]
    runtime: Runtime | None = None
    keystone: KeystoneServer | None = None
    try:
        keystone = _start_keystone(root / "identity")
        _clouds_yaml(
            tmp_path / "clouds.yaml",
            {
                "api-service": {
                    "auth_type": "v3password",
                    "auth": {
                        "auth_url": keystone.auth_url,
                        "username": "troveless",
                        "password": PASSWORDS["troveless"],
                        "project_name": "service",
                        "user_domain_id": "default",
                        "project_domain_id": "default",
                    },
                }
            },
            monkeypatch,
        )
        settings = load_settings(
            profile="openstack",
            data_dir=root / "cloud",
            openstack={
                "cloud": "api-service",
                "api_auth": "keystone",
                "swift_auth_url": swift_endpoint.auth_url,
                "swift_user": swift_endpoint.user,
                "swift_key": swift_endpoint.key,
                "zaqar_url": zaqar_endpoint,
                "zaqar_project_id": f"tl-ks-{suffix}",
                "state_container": containers[0],
                "backups_container": containers[1],
            },
        )
        runtime = build_runtime(settings)
        set_runtime(runtime)
        instance_a = _instance(project_id_for("project-a"))
        InstanceRecords(runtime.store).create(instance_a)
        yield WiredApi(keystone, runtime, project_id_for("project-a"), instance_a)
    finally:
        set_runtime(None)
        if runtime is not None:
            close = getattr(runtime.queue, "close", None)
            if callable(close):
                close()
        if keystone is not None:
            keystone.close()
        swift = tempauth_connection(
            swift_endpoint.auth_url, swift_endpoint.user, swift_endpoint.key
        ).object_store
        for container in containers:
            SwiftContainer(swift, container).delete_container()
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_the_wired_api_takes_the_project_from_keystone_tokens(wired_api: WiredApi) -> None:
    runtime = wired_api.runtime
    assert isinstance(runtime.token_validator, KeystoneTokenValidator)
    assert isinstance(runtime.store, SwiftStateStore) and isinstance(runtime.queue, ZaqarQueue)
    project_a = wired_api.project_a
    alice = wired_api.keystone.login("alice")
    bob = wired_api.keystone.login("bob")

    status, body = wired_api.call(f"/v1.0/{project_a}/instances", alice)
    assert status == 200, body
    assert [i["id"] for i in body["instances"]] == [wired_api.instance_a.id]
    # Bob's token speaks for project-b: project-a's path does not exist for him, and his own
    # project lists nothing of alice's.
    status, body = wired_api.call(f"/v1.0/{project_a}/instances", bob)
    assert status == 404, body
    status, body = wired_api.call(f"/v1.0/{project_id_for('project-b')}/instances", bob)
    assert (status, body["instances"]) == (200, [])

    forged = alice[:-4] + ("AAAA" if not alice.endswith("AAAA") else "BBBB")
    for bad in (forged, "gAAAAABnot-a-token"):
        status, body = wired_api.call(f"/v1.0/{project_a}/instances", bad)
        assert status == 401, body
    # The embedded signer's tokens are not Keystone's: the wired runtime does not accept them.
    embedded, _ = TokenService(runtime.master_key, runtime.clock, 600).issue(
        user_id="u",
        user_name="alice",
        project_id=project_a,
        project_name="project-a",
        roles=("admin",),
    )
    assert wired_api.call(f"/v1.0/{project_a}/instances", embedded)[0] == 401


@pytest.mark.slow
def test_keystone_down_is_503_not_401(wired_api: WiredApi) -> None:
    alice = wired_api.keystone.login("alice")
    bob = wired_api.keystone.login("bob")  # never validated: not in the validator's cache
    status, _ = wired_api.call(f"/v1.0/{wired_api.project_a}/instances", alice)
    assert status == 200  # Keystone up: the service identity logged in and validated
    wired_api.keystone.close()
    status, body = wired_api.call(f"/v1.0/{project_id_for('project-b')}/instances", bob)
    assert status == 503, body
    assert "identity service" in body[next(iter(body))]["message"]


# =========================================================================== 2. Nova
GUEST_USER_DATA = {
    "instance_id": "5f0c1c38-0a4e-4d55-9f0e-6f8b4b0a1a11",
    "datastore_type": "mariadb",
    "datastore_version": "11.4",
    "command_queue": "guest-cmd-5f0c1c38",
    "events_queue": "guest-events",
    "secret": base64.b64encode(b"s" * 32).decode(),
    "profile": "openstack",
    "heartbeat_interval": 1.0,
}


def _nova_clouds(base: str) -> dict[str, Any]:
    return {
        "troveless-control": {
            "auth_type": "v3password",
            "region_name": "RegionOne",
            "auth": {
                "auth_url": f"{base}/identity/v3",
                "username": "troveless",
                "password": CONTROL_PASSWORD,
                "user_domain_name": "Default",
                "project_name": "dbaas",
                "project_domain_name": "Default",
            },
        },
        "troveless-guests": {
            "auth_type": "v3applicationcredential",
            "region_name": "RegionOne",
            "auth": {
                "auth_url": f"{base}/identity/v3",
                "application_credential_id": GUEST_CREDENTIAL[0],
                "application_credential_secret": GUEST_CREDENTIAL[1],
            },
        },
        "guests-with-a-password": {
            "auth_type": "v3password",
            "auth": {
                "auth_url": f"{base}/identity/v3",
                "username": "g",
                "password": "pw",
                "user_domain_name": "Default",
            },
        },
    }


def _nova_settings(tmp_path: Path, **openstack: Any) -> Settings:
    return load_settings(
        profile="openstack",
        data_dir=tmp_path / "no-data-dir-on-a-cloud",
        availability_zones=["az1", "az2"],
        master_key=MASTER_KEY,
        openstack={
            "cloud": "troveless-control",
            "guest_cloud": "troveless-guests",
            "compute": "nova",
            "images": {"mariadb:11.4": rec.IMAGE},
            "flavors": {"tl.tiny": rec.FLAVOR_SMALL},
            "network_id": rec.NETWORK,
            "nova_poll_interval": 0.01,
            "nova_timeout": 10,
            **openstack,
        },
    )


@pytest.fixture
def nova_cloud(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Any]:
    """`nova_cloud(recording)`: its replay serving, clouds.yaml pointing at it."""
    contexts: list[Any] = []

    def start(name: str) -> Replay:
        context = replay_server(load_recording(name))
        contexts.append(context)
        replay: Replay = context.__enter__()
        _clouds_yaml(tmp_path / "clouds.yaml", _nova_clouds(replay.base), monkeypatch)
        return replay

    try:
        yield start
    finally:
        for context in reversed(contexts):
            context.__exit__(None, None, None)


def test_nova_makes_a_cloud_runtime_whose_create_reaches_nova(
    nova_cloud: Any, tmp_path: Path
) -> None:
    replay = nova_cloud("nova_wired_runtime")
    settings = _nova_settings(tmp_path)
    runtime = build_runtime(settings)

    assert isinstance(runtime.compute, NovaCinderCompute)
    assert set(runtime.compute.guest_sections) == {"openstack"}
    assert not isinstance(runtime.compute, LocalCompute)
    assert isinstance(runtime.store, SwiftStateStore)
    assert isinstance(runtime.blobs, SwiftBlobStore)
    assert isinstance(runtime.queue, ZaqarQueue)
    assert isinstance(runtime.workflows, EngineWorkflows)
    assert isinstance(runtime.token_validator, KeystoneTokenValidator)
    assert runtime.master_key == b"m" * 32
    assert not settings.data_dir.exists()  # nothing on the machine the function runs on

    tiny = next(f for f in settings.flavors if f.name == "tl.tiny")
    info = runtime.compute.create_server("inst-a", tiny, 1, "az1", dict(GUEST_USER_DATA))
    assert (info.server_id, info.zone, info.volume_kind) == (rec.SERVER, "az1", "cinder")
    replay.assert_done()

    boot = next(r for r in replay.received if r.method == "POST" and r.path.endswith("/servers"))
    server = boot.json()["server"]
    assert server["imageRef"] == rec.IMAGE
    assert server["flavorRef"] == rec.FLAVOR_SMALL
    assert server["networks"] == [{"uuid": rec.NETWORK}]
    assert server["availability_zone"] == "az1"
    cloud_config = base64.b64decode(server["user_data"]).decode()
    user_data = user_data_from_cloud_config(cloud_config)
    section = user_data.pop("openstack")
    assert user_data == GUEST_USER_DATA
    assert section["keystone"] == {
        "auth_url": f"{replay.base}/identity/v3",
        "application_credential_id": GUEST_CREDENTIAL[0],
        "application_credential_secret": GUEST_CREDENTIAL[1],
        "interface": "public",
        "region_name": "RegionOne",
    }
    assert settings.openstack is not None
    assert section["backups_container"] == settings.openstack.backups_container
    # The guest agent's own parser accepts it (the Keystone form of OpenStackBackends).
    parsed = parse_user_data({**user_data, "openstack": section})
    assert parsed.openstack is not None and parsed.openstack.keystone is not None
    # The control plane's credentials go nowhere near a guest.
    for secret in (CONTROL_PASSWORD, "troveless-control", MASTER_KEY, "gAAAAABnR2-replayed"):
        assert secret not in cloud_config
    assert "swift_key" not in section and "password" not in json.dumps(section)


def test_nova_without_a_master_key_is_refused_before_any_request(
    nova_cloud: Any, tmp_path: Path
) -> None:
    replay = nova_cloud("nova_no_exchanges")
    settings = _nova_settings(tmp_path).model_copy(update={"master_key": None})
    with pytest.raises(WiringError, match="TROVELESS_MASTER_KEY"):
        build_runtime(settings)
    replay.assert_done()
    assert replay.received == []
    assert not settings.data_dir.exists()


def test_guests_are_never_given_a_password_identity(nova_cloud: Any, tmp_path: Path) -> None:
    replay = nova_cloud("nova_no_exchanges")
    with pytest.raises(WiringError, match="application credential") as refused:
        build_runtime(_nova_settings(tmp_path, guest_cloud="guests-with-a-password"))
    assert "pw" not in str(refused.value).replace("password", "")
    with pytest.raises(WiringError, match="guest_cloud 'nowhere'"):
        build_runtime(_nova_settings(tmp_path, guest_cloud="nowhere"))
    replay.assert_done()


def test_nova_flavors_must_name_known_flavors(nova_cloud: Any, tmp_path: Path) -> None:
    replay = nova_cloud("nova_no_exchanges")
    with pytest.raises(WiringError, match=r"unknown flavors \['db.huge'\]"):
        build_runtime(_nova_settings(tmp_path, flavors={"db.huge": "x"}))
    replay.assert_done()


def test_a_nova_guest_reaches_swift_and_zaqar_with_its_application_credential(
    nova_cloud: Any, tmp_path: Path
) -> None:
    """The guest side of the same user-data: the agent's own wiring (guest_agent/wiring.py)
    logs in with the application credential and uses the catalog's Swift and Zaqar."""
    replay = nova_cloud("nova_guest_backends")
    settings = _nova_settings(tmp_path)
    assert settings.openstack is not None
    section = nova_guest_backends(settings.openstack)
    user_data = {
        **GUEST_USER_DATA,
        "openstack": section,
        # What the boot unit's meta-data would give on the server.
        "address": "10.0.0.5",
        "ram_mb": 256,
        "volume_path": "/var/lib/troveless/data",
    }
    backends = build_backends(resolve_config(parse_user_data(user_data), None), SystemClock())
    with pytest.raises(NotFoundError):
        backends.blobs.head("no-such-backup")
    assert backends.queue.send("guest-events", {"kind": "heartbeat"}) == (
        "51db6f78c508f17ddc924357"
    )
    replay.assert_done()
    login = replay.received[0].json()["auth"]["identity"]
    assert login["methods"] == ["application_credential"]
    assert login["application_credential"]["id"] == GUEST_CREDENTIAL[0]
    # Every call after the login carries the guest's token, never the control plane's.
    assert all(
        r.headers.get("X-Auth-Token") == "gAAAAABnR2-replayed-guest-token"
        for r in replay.received[1:]
    )
