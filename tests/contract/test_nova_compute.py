"""NovaCinderCompute against replayed HTTP exchanges of Keystone v3, Nova v2.1 and Cinder v3.

The recordings (recordings/nova_*.json, composed by recordings/compose_nova_recordings.py) were
WRITTEN FROM THE API REFERENCES, not captured from a live cloud: these tests prove the adapter
makes the documented requests in the right order, with the right bodies, and reads documented
answers. The replay server fails the test on any request it did not expect and on any recorded
exchange never asked for.
"""

from __future__ import annotations

import base64
import json
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from openstack.connection import Connection

from shared.adapters.guest_cloud_config import (
    boot_script_from_cloud_config,
    user_data_from_cloud_config,
)
from shared.adapters.openstack.nova_compute import NovaCinderCompute, ServerGroupPolicy
from shared.errors import ComputeError, ComputeRequestError
from shared.ports import Compute, FlavorSpec, ServerStatus
from tests.contract.recorded_http import Replay, load_recording, replay_server
from tests.contract.recordings import compose_nova_recordings as rec

# openstacksdk warns about its own internals (RemovedInSDK50Warning) on most calls.
pytestmark = pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")

SMALL = FlavorSpec(ram_mb=256, vcpus=1)
LARGER = FlavorSpec(ram_mb=512, vcpus=2)
USER_DATA = {
    "instance_id": "5f0c1c38-0a4e-4d55-9f0e-6f8b4b0a1a11",
    "datastore_type": "mariadb",
    "datastore_version": "11.4",
    "command_queue": "guest-5f0c1c38",
    "events_queue": "guest-events",
    "secret": base64.b64encode(b"s" * 32).decode(),
    "profile": "openstack",
}


def _adapter(replay: Replay, policy: ServerGroupPolicy | None = None) -> NovaCinderCompute:
    connection = Connection(
        auth_type="v3password",
        auth_url=f"{replay.base}/identity/v3",
        username="troveless",
        password="replayed-password",
        user_domain_name="Default",
        project_name="dbaas",
        project_domain_name="Default",
        region_name="RegionOne",
    )
    return NovaCinderCompute(
        connection,
        images={"mariadb:11.4": rec.IMAGE},
        flavors={SMALL: rec.FLAVOR_SMALL, LARGER: rec.FLAVOR_LARGE},
        zones=["az1", "az2"],
        network_id=rec.NETWORK,
        server_group_policy=policy,
        poll_interval=0.0,
        timeout=10,
    )


@pytest.fixture
def replay_of(request: pytest.FixtureRequest) -> Iterator[Any]:
    """`replay_of(name)` serves recordings/<name>.json for the test; the server stops after."""
    with_servers: list[Any] = []

    def start(name: str) -> Replay:
        context = replay_server(load_recording(name))
        with_servers.append(context)
        return context.__enter__()

    try:
        yield start
    finally:
        for context in reversed(with_servers):
            context.__exit__(None, None, None)


def test_recordings_are_what_the_composer_writes() -> None:
    """The JSON files are reviewed artefacts; they must not drift from their composer."""
    for name, scenario in rec.SCENARIOS.items():
        on_disk = json.loads((rec.HERE / f"{name}.json").read_text())
        assert on_disk["exchanges"] == json.loads(json.dumps(scenario())), name
        assert "NOT captured from a live cloud" in on_disk["about"]


def test_create_get_list_delete(replay_of: Any) -> None:
    replay = replay_of("nova_create_get_delete")
    compute = _adapter(replay)
    assert isinstance(compute, Compute)

    info = compute.create_server("inst-a", SMALL, 2, "az1", dict(USER_DATA))
    assert info.status == ServerStatus.ACTIVE
    assert (info.server_id, info.instance_id, info.zone) == (rec.SERVER, "inst-a", "az1")
    assert (info.address, info.flavor) == ("10.0.0.5", SMALL)
    assert (info.volume_id, info.volume_gb, info.volume_kind) == (rec.VOLUME, 2, "cinder")
    assert compute.get_server("inst-a") == info
    assert compute.list_servers() == [info]
    compute.delete_server("inst-a")
    assert compute.get_server("inst-a") is None
    compute.delete_server("inst-a")  # repeatable
    replay.assert_done()

    boot = next(r for r in replay.received if r.method == "POST" and r.path.endswith("/servers"))
    # Microversions negotiated from the recorded version documents (2.47+: flavor embedded).
    assert boot.headers["OpenStack-API-Version"] == "compute 2.96"
    made = next(r for r in replay.received if r.method == "POST" and r.path.endswith("/volumes"))
    assert made.headers["OpenStack-API-Version"] == "volume 3.71"
    cloud_config = base64.b64decode(boot.json()["server"]["user_data"]).decode()
    assert user_data_from_cloud_config(cloud_config) == USER_DATA
    assert f"virtio-{rec.VOLUME[:20]}" in cloud_config  # the guest finds its volume by id
    _check_cloud_config(cloud_config)
    api_calls = [r for r in replay.received if "/servers" in r.path or "/volumes" in r.path]
    assert api_calls and all(r.headers.get("X-Auth-Token") for r in api_calls)


def _check_cloud_config(cloud_config: str) -> None:
    """cloud-init reads it as YAML (our JSON must read the same), and its boot script parses."""
    assert cloud_config.startswith("#cloud-config\n")
    assert yaml.safe_load(cloud_config) == json.loads(cloud_config.split("\n", 1)[1])
    checked = subprocess.run(
        ["sh", "-n"],
        input=boot_script_from_cloud_config(cloud_config),
        text=True,
        check=False,
        capture_output=True,
    )
    assert checked.returncode == 0, checked.stderr


def test_lifecycle_stop_start_reboot_resizes(replay_of: Any) -> None:
    replay = replay_of("nova_lifecycle")
    compute = _adapter(replay)
    compute.create_server("inst-a", SMALL, 1, "az1", dict(USER_DATA))

    assert compute.stop_server("inst-a").status == ServerStatus.SHUTOFF
    assert compute.start_server("inst-a").status == ServerStatus.ACTIVE
    assert compute.reboot_server("inst-a").status == ServerStatus.ACTIVE
    resized = compute.resize_flavor("inst-a", LARGER)
    assert (resized.flavor, resized.status) == (LARGER, ServerStatus.ACTIVE)
    grown = compute.resize_volume("inst-a", 3)
    assert (grown.volume_gb, grown.status) == (3, ServerStatus.ACTIVE)
    with pytest.raises(ComputeRequestError):
        compute.resize_volume("inst-a", 2)
    compute.delete_server("inst-a")
    replay.assert_done()


def test_a_repeated_create_reuses_the_volume_an_interrupted_one_left(replay_of: Any) -> None:
    replay = replay_of("nova_interrupted_create")
    info = _adapter(replay).create_server("inst-a", SMALL, 1, "az1", dict(USER_DATA))
    assert (info.volume_id, info.status) == (rec.VOLUME, ServerStatus.ACTIVE)
    replay.assert_done()
    assert not [r for r in replay.received if r.method == "POST" and r.path.endswith("/volumes")]


def test_redelivered_resizes_finish_what_was_interrupted(replay_of: Any) -> None:
    replay = replay_of("nova_redelivered_resizes")
    compute = _adapter(replay)
    resized = compute.resize_flavor("inst-a", LARGER)
    assert (resized.flavor, resized.status) == (LARGER, ServerStatus.ACTIVE)
    grown = compute.resize_volume("inst-a", 3)
    assert (grown.volume_gb, grown.status) == (3, ServerStatus.SHUTOFF)
    replay.assert_done()  # no second resize, no second extend: only the missing steps


def test_a_failed_boot_leaves_nothing(replay_of: Any) -> None:
    replay = replay_of("nova_failed_boot")
    compute = _adapter(replay)
    with pytest.raises(ComputeError, match="No valid host"):
        compute.create_server("inst-a", SMALL, 1, "az1", dict(USER_DATA))
    replay.assert_done()  # the recording ends with the server and the volume deleted


def test_server_group_kept_volume_and_orphans(replay_of: Any) -> None:
    replay = replay_of("nova_server_group_kept_volume")
    compute = _adapter(replay, policy="anti-affinity")
    first = compute.create_server("inst-a", SMALL, 1, "az1", dict(USER_DATA))
    assert [s.instance_id for s in compute.orphans(["inst-other"])] == ["inst-a"]
    compute.delete_server("inst-a", keep_volume=True)
    again = compute.create_server(
        "inst-a", SMALL, 2, None, dict(USER_DATA), volume_from=first.volume_id
    )
    assert (again.volume_id, again.volume_gb) == (first.volume_id, 2)
    replay.assert_done()


@pytest.mark.parametrize(
    ("flavor", "volume_gb", "zone", "user_data"),
    [
        (SMALL, 1, "az9", USER_DATA),
        (SMALL, 0, None, USER_DATA),
        (FlavorSpec(ram_mb=4096, vcpus=4), 1, None, USER_DATA),
        (SMALL, 1, None, {**USER_DATA, "datastore_type": "redis"}),
    ],
)
def test_impossible_requests_make_no_request_at_all(
    replay_of: Any, flavor: FlavorSpec, volume_gb: int, zone: str | None, user_data: Any
) -> None:
    replay = replay_of("nova_no_exchanges")
    compute = _adapter(replay)
    with pytest.raises(ComputeRequestError):
        compute.create_server("inst-a", flavor, volume_gb, zone, dict(user_data))
    replay.assert_done()
    assert replay.received == []


def test_the_replay_server_fails_on_unexpected_and_on_missing_requests() -> None:
    """The replay is the oracle of these tests: it must notice a wrong or a missing request."""
    recorded = [*rec.compute_discovery(), rec.find("inst-a", [])]
    with replay_server(recorded) as replay:
        with urllib.request.urlopen(f"{replay.base}{rec.COMPUTE}") as answer:
            assert json.load(answer)["version"]["version"] == "2.96"
        with pytest.raises(urllib.error.HTTPError) as wrong:
            urllib.request.urlopen(f"{replay.base}{rec.COMPUTE}/servers/detail?name=x")
        assert wrong.value.code == 599
        with pytest.raises(AssertionError, match="query") as failed:
            replay.assert_done()
        assert "never requested" in str(failed.value)
