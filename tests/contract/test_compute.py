"""Contract of the Compute port: every adapter must pass these (see compute_adapters.py)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

import pytest

from shared.errors import ComputeRequestError, NotFoundError
from shared.ports import Compute, FlavorSpec, ServerInfo, ServerStatus
from tests.contract.compute_adapters import COMPUTE_FACTORIES, ComputeUnderTest

SMALL = FlavorSpec(ram_mb=256, vcpus=1)
LARGER = FlavorSpec(ram_mb=512, vcpus=2)


@pytest.fixture(params=sorted(COMPUTE_FACTORIES))
def cut(request: pytest.FixtureRequest) -> Iterator[ComputeUnderTest]:
    with COMPUTE_FACTORIES[request.param](request) as under_test:
        yield under_test


def create(cut: ComputeUnderTest, instance_id: str, zone: str | None = None, **kw) -> ServerInfo:
    return cut.compute.create_server(
        instance_id,
        kw.pop("flavor", SMALL),
        kw.pop("volume_gb", 1),
        zone,
        dict(cut.user_data),
        **kw,
    )


def test_adapter_satisfies_the_protocol(cut: ComputeUnderTest) -> None:
    assert isinstance(cut.compute, Compute)
    assert cut.compute.zones()


def test_created_server_is_active_with_its_address_zone_flavor_and_volume(
    cut: ComputeUnderTest,
) -> None:
    zone = cut.compute.zones()[-1]
    info = create(cut, "inst-a", zone, volume_gb=1)

    assert info.status == ServerStatus.ACTIVE
    assert info.instance_id == "inst-a"
    assert info.zone == zone
    assert info.flavor == SMALL
    assert info.volume_gb == 1
    assert info.volume_kind and info.volume_path and info.volume_id and info.server_id
    ipaddress.ip_address(info.address)  # a real address, not a placeholder
    assert cut.compute.get_server("inst-a") == info
    assert [s.instance_id for s in cut.compute.list_servers()] == ["inst-a"]


def test_repeated_create_returns_the_same_server(cut: ComputeUnderTest) -> None:
    first = create(cut, "inst-a")
    again = create(cut, "inst-a")
    assert (again.server_id, again.address, again.volume_id) == (
        first.server_id,
        first.address,
        first.volume_id,
    )
    assert len(cut.compute.list_servers()) == 1


def test_addresses_are_unique_and_unchosen_zones_are_spread(cut: ComputeUnderTest) -> None:
    servers = [create(cut, f"inst-{n}") for n in range(3)]
    assert len({s.address for s in servers}) == 3
    zones = cut.compute.zones()
    assert {s.zone for s in servers} == set(zones[:3])


@pytest.mark.parametrize(
    ("flavor", "volume_gb", "zone"),
    [
        (SMALL, 1, "no-such-zone"),
        (SMALL, 0, None),
        (SMALL, -3, None),
    ],
)
def test_impossible_requests_are_refused_and_leave_nothing(
    cut: ComputeUnderTest, flavor: FlavorSpec, volume_gb: int, zone: str | None
) -> None:
    with pytest.raises(ComputeRequestError):
        create(cut, "inst-a", zone, flavor=flavor, volume_gb=volume_gb)
    assert cut.compute.get_server("inst-a") is None
    assert cut.compute.list_servers() == []


def test_bad_instance_id_is_refused(cut: ComputeUnderTest) -> None:
    with pytest.raises(ComputeRequestError):
        create(cut, "../escape")
    assert cut.compute.get_server("../escape") is None


def test_stop_start_reboot(cut: ComputeUnderTest) -> None:
    create(cut, "inst-a")
    assert cut.compute.stop_server("inst-a").status == ServerStatus.SHUTOFF
    assert cut.compute.get_server("inst-a").status == ServerStatus.SHUTOFF  # type: ignore[union-attr]
    assert cut.compute.stop_server("inst-a").status == ServerStatus.SHUTOFF  # repeatable
    assert cut.compute.start_server("inst-a").status == ServerStatus.ACTIVE
    assert cut.compute.start_server("inst-a").status == ServerStatus.ACTIVE  # repeatable
    assert cut.compute.reboot_server("inst-a").status == ServerStatus.ACTIVE


def test_calls_on_a_missing_server_raise_not_found(cut: ComputeUnderTest) -> None:
    for call in (
        cut.compute.stop_server,
        cut.compute.start_server,
        cut.compute.reboot_server,
    ):
        with pytest.raises(NotFoundError):
            call("inst-missing")
    with pytest.raises(NotFoundError):
        cut.compute.resize_volume("inst-missing", 2)
    with pytest.raises(NotFoundError):
        cut.compute.resize_flavor("inst-missing", LARGER)


def test_resize_volume_grows_only(cut: ComputeUnderTest) -> None:
    create(cut, "inst-a", volume_gb=1)
    grown = cut.compute.resize_volume("inst-a", 2)
    assert grown.volume_gb == 2
    assert grown.status == ServerStatus.ACTIVE
    assert cut.compute.resize_volume("inst-a", 2).volume_gb == 2  # repeatable
    with pytest.raises(ComputeRequestError):
        cut.compute.resize_volume("inst-a", 1)
    assert cut.compute.get_server("inst-a").volume_gb == 2  # type: ignore[union-attr]


def test_resize_volume_of_a_stopped_server_keeps_it_stopped(cut: ComputeUnderTest) -> None:
    create(cut, "inst-a", volume_gb=1)
    cut.compute.stop_server("inst-a")
    info = cut.compute.resize_volume("inst-a", 2)
    assert (info.volume_gb, info.status) == (2, ServerStatus.SHUTOFF)


def test_resize_flavor(cut: ComputeUnderTest) -> None:
    create(cut, "inst-a")
    info = cut.compute.resize_flavor("inst-a", LARGER)
    assert info.flavor == LARGER
    assert cut.compute.get_server("inst-a").flavor == LARGER  # type: ignore[union-attr]


def test_delete_is_idempotent_and_frees_the_address(cut: ComputeUnderTest) -> None:
    first = create(cut, "inst-a")
    cut.compute.delete_server("inst-a")
    assert cut.compute.get_server("inst-a") is None
    cut.compute.delete_server("inst-a")
    cut.compute.delete_server("inst-never-existed")
    assert cut.compute.list_servers() == []
    again = create(cut, "inst-b")
    if cut.reuses_addresses:
        assert again.address == first.address


def test_kept_volume_can_be_attached_to_a_new_server(cut: ComputeUnderTest) -> None:
    first = create(cut, "inst-a", volume_gb=1)
    cut.compute.delete_server("inst-a", keep_volume=True)
    assert cut.compute.get_server("inst-a") is None
    again = create(cut, "inst-a", volume_gb=2, volume_from=first.volume_id)
    assert again.volume_id == first.volume_id
    assert again.volume_gb == 2
    assert again.server_id != first.server_id
    with pytest.raises(ComputeRequestError):
        create(cut, "inst-b", volume_from="vol-unknown")


def test_a_new_adapter_adopts_existing_servers(cut: ComputeUnderTest) -> None:
    running = create(cut, "inst-a")
    create(cut, "inst-b")
    cut.compute.stop_server("inst-b")

    restarted = cut.reopen()
    adopted = {s.instance_id: s for s in restarted.adopt()}

    assert set(adopted) == {"inst-a", "inst-b"}
    assert adopted["inst-a"].status == ServerStatus.ACTIVE
    assert adopted["inst-a"].address == running.address
    assert adopted["inst-a"].agent_alive in (True, None)
    assert adopted["inst-b"].status == ServerStatus.SHUTOFF
    assert restarted.stop_server("inst-a").status == ServerStatus.SHUTOFF


def test_orphans_are_listed_and_reaped(cut: ComputeUnderTest) -> None:
    create(cut, "inst-known")
    create(cut, "inst-orphan")
    orphans = cut.compute.orphans(["inst-known", "inst-deleted-long-ago"])
    assert [s.instance_id for s in orphans] == ["inst-orphan"]
    cut.compute.reap("inst-orphan")
    assert cut.compute.orphans(["inst-known"]) == []
    assert [s.instance_id for s in cut.compute.list_servers()] == ["inst-known"]
