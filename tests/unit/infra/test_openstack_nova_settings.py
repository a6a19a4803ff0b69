"""The openstack profile's cloud form (Nova compute, Keystone in the API), without servers:
settings and their refusals, the flavor mapping, the guests' user-data section, and the code
the cloud compute adapters share.

What the wired runtime does against (replayed) Nova and a Keystone is
tests/integration/test_openstack_cloud_wiring.py.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from guest_agent.user_data import UserDataError, parse_user_data
from infra.openstack.wiring import nova_flavors, nova_guest_backends, token_validator
from infra.wiring import WiringError
from shared.adapters.cloud_compute import CloudServers, cloud_flavor
from shared.clock import SystemClock
from shared.errors import ComputeRequestError
from shared.models.flavor import Flavor
from shared.openstack_settings import ApiAuth, ComputeKind, OpenStackSettings
from shared.ports import FlavorSpec, ServerInfo, ServerStatus
from shared.settings import SettingsError, load_settings

NOVA_VARIABLES = {
    "TROVELESS_OPENSTACK_CLOUD": "control",
    "TROVELESS_OPENSTACK_GUEST_CLOUD": "guests",
    "TROVELESS_OPENSTACK_COMPUTE": "nova",
    "TROVELESS_OPENSTACK_IMAGES": '{"mariadb": "img-1", "postgresql:15": "img-2"}',
    "TROVELESS_OPENSTACK_FLAVORS": '{"tl.tiny": "nova-256", "tl.small": "nova-512"}',
    "TROVELESS_OPENSTACK_NETWORK_ID": "net-1",
}
SECRET = "app-cred-secret-never-shown"


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("TROVELESS_CONFIG_FILE", raising=False)
    monkeypatch.chdir(tmp_path)  # no ./troveless.toml
    for name in list(os.environ):
        if name.startswith(("TROVELESS_", "OS_")):
            monkeypatch.delenv(name)


def _set(monkeypatch: pytest.MonkeyPatch, variables: dict[str, str]) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)


def test_the_nova_form_from_variables_defaults_to_keystone_tokens(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _set(monkeypatch, NOVA_VARIABLES)
    openstack = load_settings(profile="openstack").openstack
    assert openstack is not None
    assert openstack.compute is ComputeKind.NOVA
    assert openstack.api_auth is None and openstack.api_auth_chosen is ApiAuth.KEYSTONE
    assert openstack.images == {"mariadb": "img-1", "postgresql:15": "img-2"}
    assert openstack.flavors["tl.small"] == "nova-512"
    assert (openstack.network_id, openstack.nova_poll_interval) == ("net-1", 2.0)


def test_local_compute_keeps_embedded_tokens_unless_told() -> None:
    local = OpenStackSettings(cloud="c")
    assert local.api_auth_chosen is ApiAuth.EMBEDDED
    assert token_validator(load_settings(openstack=local), SystemClock()) is None
    told = OpenStackSettings(cloud="c", api_auth=ApiAuth.KEYSTONE)
    assert told.api_auth_chosen is ApiAuth.KEYSTONE


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"TROVELESS_OPENSTACK_GUEST_CLOUD": None}, "set guest_cloud"),
        ({"TROVELESS_OPENSTACK_GUEST_CLOUD": "control"}, "guest_cloud must not be cloud"),
        ({"TROVELESS_OPENSTACK_API_AUTH": "embedded"}, "api_auth must be keystone"),
        ({"TROVELESS_OPENSTACK_IMAGES": None}, "set images"),
        ({"TROVELESS_OPENSTACK_FLAVORS": "{}"}, "set flavors"),
        (
            {
                "TROVELESS_OPENSTACK_SWIFT_AUTH_URL": "http://s/auth/v1.0",
                "TROVELESS_OPENSTACK_SWIFT_USER": "u",
                "TROVELESS_OPENSTACK_SWIFT_KEY": SECRET,
            },
            "not swift_auth_url",
        ),
        (
            {
                "TROVELESS_OPENSTACK_CLOUD": None,
                "TROVELESS_OPENSTACK_ZAQAR_URL": "http://z",
                "TROVELESS_OPENSTACK_ZAQAR_PROJECT_ID": "p",
                "TROVELESS_OPENSTACK_SWIFT_AUTH_URL": "http://s/auth/v1.0",
                "TROVELESS_OPENSTACK_SWIFT_USER": "u",
                "TROVELESS_OPENSTACK_SWIFT_KEY": SECRET,
            },
            "api_auth keystone: set cloud",
        ),
        ({"TROVELESS_OPENSTACK_API_AUTH": "ldap"}, "api_auth"),
        ({"TROVELESS_OPENSTACK_SERVER_GROUP_POLICY": "spread"}, "server_group_policy"),
    ],
)
def test_an_incomplete_nova_form_fails_saying_what_to_set(
    monkeypatch: pytest.MonkeyPatch, change: dict[str, str | None], words: str
) -> None:
    for name, value in {**NOVA_VARIABLES, **change}.items():
        if value is not None:
            monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match="openstack") as failed:
        load_settings(profile="openstack")
    assert words in str(failed.value)
    assert SECRET not in str(failed.value)


def test_nova_flavors_map_troveless_flavors_by_resources() -> None:
    openstack = OpenStackSettings(
        cloud="c",
        guest_cloud="g",
        compute=ComputeKind.NOVA,
        images={"mariadb": "i"},
        flavors={"tl.tiny": "nova-256", "tl.medium": "nova-1024"},
    )
    settings = load_settings(openstack=openstack)
    assert nova_flavors(settings, openstack) == {
        FlavorSpec(256, 1): "nova-256",
        FlavorSpec(1024, 2): "nova-1024",
    }
    twins = load_settings(
        openstack=openstack,
        flavors=[
            Flavor(id="1", name="tl.tiny", ram_mb=256, vcpus=1),
            Flavor(id="2", name="tl.medium", ram_mb=256, vcpus=1),
        ],
    )
    with pytest.raises(WiringError, match="different Nova flavors"):
        nova_flavors(twins, openstack)


def _guest_section(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, entry: dict[str, Any], **extra: Any
) -> dict[str, Any]:
    clouds = tmp_path / "clouds.yaml"
    clouds.write_text(yaml.safe_dump({"clouds": {"guests": entry}}))
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(clouds))
    openstack = OpenStackSettings(
        cloud="control",
        guest_cloud="guests",
        compute=ComputeKind.NOVA,
        images={"mariadb": "i"},
        flavors={"tl.tiny": "f"},
        **extra,
    )
    return nova_guest_backends(openstack)


APP_CREDENTIAL = {
    "auth_type": "v3applicationcredential",
    "region_name": "RegionTwo",
    "interface": "internal",
    "auth": {
        "auth_url": "https://keystone.example/v3",
        "application_credential_id": "cred-1",
        "application_credential_secret": SECRET,
    },
}


def test_guests_get_their_application_credential_and_a_noauth_zaqar_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    section = _guest_section(
        tmp_path, monkeypatch, APP_CREDENTIAL, zaqar_url="http://zaqar:8888", zaqar_project_id="p"
    )
    assert section["keystone"] == {
        "auth_url": "https://keystone.example/v3",
        "application_credential_id": "cred-1",
        "application_credential_secret": SECRET,
        "interface": "internal",
        "region_name": "RegionTwo",
    }
    assert (section["zaqar_url"], section["zaqar_project_id"]) == ("http://zaqar:8888", "p")
    user_data = {
        "instance_id": "1b4e28ba-2fa1-41d2-883f-0016d3cca427",
        "datastore_type": "mariadb",
        "datastore_version": "10.11",
        "command_queue": "guest-cmd-1",
        "events_queue": "guest-events",
        "secret": "A" * 44,
        "profile": "openstack",
        "openstack": section,
    }
    parsed = parse_user_data(user_data)
    assert parsed.openstack is not None and parsed.openstack.keystone is not None
    assert parsed.openstack.keystone.application_credential_secret.get_secret_value() == SECRET
    assert SECRET not in repr(parsed)


@pytest.mark.parametrize(
    ("entry", "words"),
    [
        (
            {
                "auth_type": "v3password",
                "auth": {
                    "auth_url": "https://k/v3",
                    "username": "u",
                    "password": SECRET,
                    "user_domain_name": "Default",
                },
            },
            "never a password",
        ),
        (
            {
                "auth_type": "v3applicationcredential",
                "auth": {"auth_url": "https://k/v3", "application_credential_name": "n"},
            },
            "provide an auth secret",
        ),
        (
            {
                "auth_type": "v3applicationcredential",
                "auth": {
                    "auth_url": "https://k/v3",
                    "application_credential_name": "by-name",
                    "application_credential_secret": SECRET,
                    "username": "u",
                    "user_domain_name": "Default",
                },
            },
            "needs application_credential_id",
        ),
    ],
)
def test_guests_get_nothing_but_an_application_credential(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, entry: dict[str, Any], words: str
) -> None:
    with pytest.raises(WiringError, match="guest_cloud 'guests'") as refused:
        _guest_section(tmp_path, monkeypatch, entry)
    assert words in str(refused.value)
    assert SECRET not in str(refused.value)


def test_guest_user_data_takes_one_form_only() -> None:
    base = {"backups_container": "b"}
    keystone = {
        "auth_url": "https://k/v3",
        "application_credential_id": "i",
        "application_credential_secret": SECRET,
    }
    v1 = {"swift_auth_url": "http://s", "swift_user": "u", "swift_key": SECRET}
    noauth = {"zaqar_url": "http://z", "zaqar_project_id": "p"}
    for section, words in (
        ({**base, "keystone": keystone, **v1}, "not v1 credentials"),
        ({**base, **v1}, "give keystone"),
        ({**base, "keystone": keystone, "zaqar_url": "http://z"}, "go together"),
    ):
        with pytest.raises(UserDataError, match=words) as refused:
            parse_user_data(
                {
                    "instance_id": "1b4e28ba-2fa1-41d2-883f-0016d3cca427",
                    "datastore_type": "redis",
                    "datastore_version": "7",
                    "command_queue": "guest-cmd-1",
                    "events_queue": "guest-events",
                    "secret": "A" * 44,
                    "profile": "openstack",
                    "openstack": section,
                }
            )
        assert SECRET not in str(refused.value)
    parse_user_data(
        {
            "instance_id": "1b4e28ba-2fa1-41d2-883f-0016d3cca427",
            "datastore_type": "redis",
            "datastore_version": "7",
            "command_queue": "guest-cmd-1",
            "events_queue": "guest-events",
            "secret": "A" * 44,
            "profile": "openstack",
            "openstack": {**base, **v1, **noauth},
        }
    )


# --------------------------------------------------------------------------- cloud_compute
def _server(instance_id: str) -> ServerInfo:
    return ServerInfo(
        server_id=f"srv-{instance_id}",
        instance_id=instance_id,
        status=ServerStatus.ACTIVE,
        address="10.0.0.1",
        zone="az1",
        flavor=FlavorSpec(256, 1),
        volume_id="v",
        volume_gb=1,
        volume_kind="cinder",
        volume_path="/var/lib/troveless/data",
        limits_enforced=True,
        limits_note=None,
        agent_pid=None,
        agent_alive=None,
        created_at=datetime.now(UTC),
    )


class ListedServers(CloudServers):
    """The two methods CloudServers builds on, over a list."""

    def __init__(self, ids: Iterable[str]) -> None:
        self.servers = {i: _server(i) for i in ids}
        self.deleted: list[tuple[str, bool]] = []

    def list_servers(self) -> list[ServerInfo]:
        return [self.servers[i] for i in sorted(self.servers)]

    def delete_server(self, instance_id: str, *, keep_volume: bool = False) -> None:
        self.deleted.append((instance_id, keep_volume))
        self.servers.pop(instance_id, None)


def test_adopt_orphans_and_reap_are_listing_and_deleting() -> None:
    servers = ListedServers(["a", "b", "c"])
    assert [s.instance_id for s in servers.adopt()] == ["a", "b", "c"]
    assert [s.instance_id for s in servers.orphans(iter(["b", "x"]))] == ["a", "c"]
    servers.reap("a")
    assert servers.deleted == [("a", False)]  # the volume goes too
    assert [s.instance_id for s in servers.orphans(["b"])] == ["c"]


def test_a_flavor_without_a_cloud_flavor_is_refused_naming_it() -> None:
    flavors = {FlavorSpec(256, 1): "small"}
    assert cloud_flavor("i-1", flavors, FlavorSpec(256, 1), "Nova flavor") == "small"
    with pytest.raises(ComputeRequestError, match="no instance type configured for 512 MiB / 2"):
        cloud_flavor("i-1", flavors, FlavorSpec(512, 2), "instance type")
