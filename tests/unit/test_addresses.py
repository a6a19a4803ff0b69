"""Address allocation for local servers: reserved addresses, reuse, stale claims, concurrency."""

from __future__ import annotations

import multiprocessing
import socket
from pathlib import Path

import pytest

from shared.adapters.local.addresses import (
    AddressPool,
    AddressPoolExhaustedError,
    listening_addresses,
)


def test_skips_reserved_last_octets_and_hands_out_the_lowest_free(tmp_path: Path) -> None:
    pool = AddressPool(tmp_path, "127.10.200.0/24")
    usable = list(pool.usable())
    assert usable[0] == "127.10.200.2" and usable[-1] == "127.10.200.254"
    assert len(usable) == 253
    assert [pool.allocate(f"i{n}") for n in range(3)] == [
        "127.10.200.2",
        "127.10.200.3",
        "127.10.200.4",
    ]


def test_wide_pool_skips_x_0_x_1_and_x_255_in_every_block(tmp_path: Path) -> None:
    usable = set(AddressPool(tmp_path, "127.10.0.0/16").usable())
    assert {"127.10.3.0", "127.10.3.1", "127.10.3.255"}.isdisjoint(usable)
    assert {"127.10.3.2", "127.10.3.254"} <= usable
    assert len(usable) == 256 * 253


def test_allocation_is_idempotent_per_owner_and_release_frees(tmp_path: Path) -> None:
    pool = AddressPool(tmp_path, "127.10.200.0/24")
    a = pool.allocate("inst-a")
    b = pool.allocate("inst-b")
    assert pool.allocate("inst-a") == a != b
    pool.release(a, "someone-else")  # not theirs: ignored
    assert pool.address_of("inst-a") == a
    pool.release(a, "inst-a")
    assert pool.address_of("inst-a") is None
    assert pool.allocate("inst-c") == a  # the freed address is the lowest again


def test_two_pools_on_one_directory_share_the_claims(tmp_path: Path) -> None:
    first, second = AddressPool(tmp_path), AddressPool(tmp_path)
    assert first.allocate("inst-a") != second.allocate("inst-b")
    assert second.claims() == first.claims()


def test_exhaustion_is_an_explicit_error(tmp_path: Path) -> None:
    pool = AddressPool(tmp_path, "127.10.200.0/30")  # .0-.3: only .2 and .3 usable
    pool.allocate("a")
    pool.allocate("b")
    with pytest.raises(AddressPoolExhaustedError, match=r"127\.10\.200\.0/30"):
        pool.allocate("c")


def test_claims_of_owners_that_no_longer_exist_are_reused(tmp_path: Path) -> None:
    live: set[str] = set()
    pool = AddressPool(tmp_path, "127.10.200.0/24", owner_exists=live.__contains__)

    def allocate(owner: str) -> str:
        live.add(owner)
        return pool.allocate(owner)

    a = allocate("inst-a")
    crashed = pool.allocate("inst-crashed")  # claimed, but its creator died before recording
    (tmp_path / "127.10.200.9").write_text("")  # a claim a crash left empty
    assert allocate("inst-new") == crashed
    assert allocate("inst-newer") == "127.10.200.4"
    for n in range(5, 9):
        assert allocate(f"filler-{n}") == f"127.10.200.{n}"
    assert allocate("inst-x") == "127.10.200.9"
    assert pool.claims()[a] == "inst-a"


@pytest.mark.parametrize("network", ["10.0.0.0/24", "127.10.0.0/33", "not-a-network"])
def test_pools_outside_loopback_or_malformed_are_refused(tmp_path: Path, network: str) -> None:
    with pytest.raises(ValueError):
        AddressPool(tmp_path, network)


def _allocate_many(directory: str, prefix: str, count: int) -> list[str]:
    pool = AddressPool(Path(directory), "127.10.200.0/24")
    return [pool.allocate(f"{prefix}-{n}") for n in range(count)]


def test_concurrent_processes_never_get_the_same_address(tmp_path: Path) -> None:
    spawn = multiprocessing.get_context("spawn")
    with spawn.Pool(3) as workers:
        results = workers.starmap(_allocate_many, [(str(tmp_path), f"p{p}", 40) for p in range(3)])
    everything = [a for batch in results for a in batch]
    assert len(everything) == len(set(everything)) == 120
    assert len(AddressPool(tmp_path, "127.10.200.0/24").claims()) == 120


def test_an_address_something_listens_on_is_skipped(tmp_path: Path) -> None:
    pool = AddressPool(tmp_path / "claims", "127.77.0.0/24")
    busy = "127.77.0.2"  # the pool's lowest usable address
    with socket.socket() as server:
        server.bind((busy, 0))
        server.listen()
        assert busy in listening_addresses()
        assert pool.allocate("a") == "127.77.0.3"
    assert busy not in listening_addresses()
    assert pool.allocate("b") == busy
