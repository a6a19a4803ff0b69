"""StateStore contract: every adapter in conftest.STATE_STORE_BACKENDS must pass all of this."""

from __future__ import annotations

import threading

import pytest

from shared.clock import ManualClock
from shared.errors import (
    ConflictError,
    CorruptDataError,
    InvalidKeyError,
    LeaseHeldError,
    LeaseLostError,
)
from shared.ports import JSON, Lease, StateStore
from tests.contract.conftest import (
    INVALID_KEYS,
    SPAWN,
    Damage,
    StateStoreBackend,
    increment_counter,
    join_all,
    read_records,
    spawned,
    write_records,
)


# --------------------------------------------------------------------------- records
def test_missing_record_reads_as_none(state_store: StateStore) -> None:
    assert state_store.get("instances/nope") is None


def test_create_then_read_back_every_json_type(state_store: StateStore) -> None:
    data = {
        "name": "db-1",
        "unicode": "caf\u00e9 \u2603",
        "count": 3,
        "big": 2**70,
        "ratio": 0.1,
        "flag": False,
        "nothing": None,
        "nested": {"list": [1, "two", {"three": [3.0]}]},
    }
    written = state_store.put("instances/db-1", data, 0)
    assert written.key == "instances/db-1"
    assert written.revision == 1
    assert written.data == data

    record = state_store.get("instances/db-1")
    assert record is not None
    assert (record.key, record.revision, record.data) == ("instances/db-1", 1, data)


def test_caller_changing_its_dict_after_put_changes_nothing_stored(
    state_store: StateStore,
) -> None:
    tags = ["a"]
    data = {"status": "BUILD", "tags": tags}
    written = state_store.put("k", data, 0)
    data["status"] = "ACTIVE"
    tags.append("b")
    assert written.data == {"status": "BUILD", "tags": ["a"]}
    record = state_store.get("k")
    assert record is not None and record.data == {"status": "BUILD", "tags": ["a"]}


def test_each_write_adds_exactly_one_revision(state_store: StateStore) -> None:
    record = state_store.put("k", {"n": 0}, 0)
    for n in range(1, 6):
        record = state_store.put("k", {"n": n}, record.revision)
        assert record.revision == n + 1
    latest = state_store.get("k")
    assert latest is not None and (latest.revision, latest.data) == (6, {"n": 5})


def test_creating_an_existing_record_conflicts(state_store: StateStore) -> None:
    state_store.put("k", {"v": 1}, 0)
    with pytest.raises(ConflictError) as caught:
        state_store.put("k", {"v": "other"}, 0)
    assert caught.value.key == "k"
    assert caught.value.expected_revision == 0
    assert caught.value.actual_revision == 1
    record = state_store.get("k")
    assert record is not None and record.data == {"v": 1}


def test_writing_over_a_stale_revision_conflicts(state_store: StateStore) -> None:
    first = state_store.put("k", {"v": 1}, 0)
    state_store.put("k", {"v": 2}, first.revision)
    with pytest.raises(ConflictError) as caught:
        state_store.put("k", {"v": "lost update"}, first.revision)
    assert caught.value.key == "k"
    assert caught.value.expected_revision == 1
    assert caught.value.actual_revision == 2
    record = state_store.get("k")
    assert record is not None and (record.revision, record.data) == (2, {"v": 2})


def test_writing_over_a_future_revision_conflicts(state_store: StateStore) -> None:
    state_store.put("k", {"v": 1}, 0)
    with pytest.raises(ConflictError) as caught:
        state_store.put("k", {"v": 9}, 7)
    assert caught.value.key == "k"
    record = state_store.get("k")
    assert record is not None and record.revision == 1


def test_updating_a_missing_record_conflicts(state_store: StateStore) -> None:
    with pytest.raises(ConflictError) as caught:
        state_store.put("never/created", {"v": 1}, 3)
    assert caught.value.key == "never/created"
    assert state_store.get("never/created") is None


def test_a_writer_far_behind_still_conflicts_after_old_revisions_are_compacted(
    state_store: StateStore,
) -> None:
    # More writes than any adapter keeps: the stale writer's revision (and the one after it)
    # are long gone, and it must still not be able to write.
    record = state_store.put("k", {"n": 0}, 0)
    for n in range(1, 60):
        record = state_store.put("k", {"n": n}, record.revision)
    for stale in (1, 2, 30):
        with pytest.raises(ConflictError):
            state_store.put("k", {"n": "stale"}, stale)
    latest = state_store.get("k")
    assert latest is not None and (latest.revision, latest.data) == (60, {"n": 59})


def test_data_that_is_not_json_is_refused(state_store: StateStore) -> None:
    with pytest.raises((TypeError, ValueError)):
        state_store.put("k", {"s": {1, 2}}, 0)
    with pytest.raises((TypeError, ValueError)):
        state_store.put("k", {"x": float("nan")}, 0)
    assert state_store.get("k") is None


@pytest.mark.parametrize("how", ["truncate", "tamper"])
def test_damaged_latest_revision_is_reported_with_its_key(
    state_backend: StateStoreBackend, state_store: StateStore, how: Damage
) -> None:
    record = state_store.put("instances/broken", {"status": "ACTIVE", "pad": "x" * 200}, 0)
    state_store.put("instances/broken", {"status": "SHUTOFF", "pad": "y" * 200}, record.revision)
    state_backend.damage_latest_revision("instances/broken", how)
    with pytest.raises(CorruptDataError) as caught:
        state_store.get("instances/broken")
    assert caught.value.key == "instances/broken"
    assert "instances/broken" in str(caught.value)


@pytest.mark.parametrize("key", INVALID_KEYS, ids=repr)
def test_invalid_keys_are_refused(state_store: StateStore, key: str) -> None:
    with pytest.raises(InvalidKeyError):
        state_store.put(key, {"v": 1}, 0)
    with pytest.raises(InvalidKeyError):
        state_store.get(key)
    with pytest.raises(InvalidKeyError):
        state_store.delete(key)
    with pytest.raises(InvalidKeyError):
        state_store.acquire_lease(key, "me", 10)


@pytest.mark.parametrize(
    "key",
    ["a", "A.b-c_d", "instances/0f3c/backups/b1", "r", "a/r/r", "x/" + "y" * 255, "k" * 255],
)
def test_unusual_valid_keys_work(state_store: StateStore, key: str) -> None:
    state_store.put(key, {"key": key}, 0)
    record = state_store.get(key)
    assert record is not None and record.data == {"key": key}
    assert list(state_store.list(key)) == [key]


def test_list_gives_live_keys_by_prefix_in_lexical_order(state_store: StateStore) -> None:
    keys = ["b/x", "a/b/c", "a-b", "a", "a/b", "ab", "a/c", "a.b", "a0"]
    for key in keys:
        state_store.put(key, {"k": key}, 0)
    assert list(state_store.list()) == sorted(keys)
    assert list(state_store.list("a/")) == ["a/b", "a/b/c", "a/c"]
    assert list(state_store.list("a/b")) == ["a/b", "a/b/c"]
    assert list(state_store.list("a")) == sorted(k for k in keys if k.startswith("a"))
    assert list(state_store.list("b/x")) == ["b/x"]
    assert list(state_store.list("zzz")) == []
    state_store.delete("a/b")
    assert list(state_store.list("a/")) == ["a/b/c", "a/c"]


def test_list_does_not_show_leases(state_store: StateStore) -> None:
    state_store.acquire_lease("healer/db-1", "agent-1", 30)
    assert list(state_store.list()) == []


def test_delete_removes_the_record_and_only_it(state_store: StateStore) -> None:
    for key in ("a", "a/b", "ab"):
        state_store.put(key, {"k": key}, 0)
    state_store.delete("a")
    assert state_store.get("a") is None
    assert list(state_store.list()) == ["a/b", "ab"]
    record = state_store.get("a/b")
    assert record is not None and record.data == {"k": "a/b"}


def test_deleting_a_missing_key_is_not_an_error(state_store: StateStore) -> None:
    state_store.delete("never/there")
    state_store.put("k", {}, 0)
    state_store.delete("k")
    state_store.delete("k")
    assert state_store.get("k") is None


def test_deleted_record_starts_again_from_revision_1(state_store: StateStore) -> None:
    record = state_store.put("k", {"life": 1}, 0)
    record = state_store.put("k", {"life": 1, "n": 2}, record.revision)
    state_store.delete("k")
    with pytest.raises(ConflictError):
        state_store.put("k", {"stale": True}, record.revision)  # a write meant for the old life
    assert state_store.get("k") is None
    reborn = state_store.put("k", {"life": 2}, 0)
    assert reborn.revision == 1
    with pytest.raises(ConflictError):
        state_store.put("k", {"stale": True}, 2)
    latest = state_store.get("k")
    assert latest is not None and (latest.revision, latest.data) == (1, {"life": 2})


def test_readers_never_see_a_partial_or_older_revision(state_backend: StateStoreBackend) -> None:
    writer, reader = state_backend.open(), state_backend.open()
    pad = "p" * 20_000  # big enough that a torn write would be visible
    record = writer.put("k", {"n": 0, "pad": pad}, 0)
    done = threading.Event()
    errors: list[BaseException] = []
    seen: list[int] = []

    def read_until_done() -> None:
        try:
            while not done.is_set():
                current = reader.get("k")
                assert current is not None
                assert current.data == {"n": current.revision - 1, "pad": pad}
                assert not seen or current.revision >= seen[-1]
                seen.append(current.revision)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=read_until_done)
    thread.start()
    try:
        for n in range(1, 150):
            record = writer.put("k", {"n": n, "pad": pad}, record.revision)
    finally:
        done.set()
        thread.join(30)
    assert errors == []
    assert len(seen) > 1


def test_writes_racing_deletes_never_corrupt(state_backend: StateStoreBackend) -> None:
    deleter, writer = state_backend.open(), state_backend.open()
    done = threading.Event()
    errors: list[BaseException] = []

    def delete_until_done() -> None:
        try:
            while not done.is_set():
                deleter.delete("k")
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=delete_until_done)
    thread.start()
    outcomes = {"written": 0, "conflicts": 0}
    try:
        for _ in range(200):
            current = writer.get("k")
            try:
                if current is None:
                    writer.put("k", {"n": 1}, 0)
                else:
                    assert current.data == {"n": current.revision}
                    writer.put("k", {"n": current.revision + 1}, current.revision)
                outcomes["written"] += 1
            except ConflictError:
                outcomes["conflicts"] += 1
    finally:
        done.set()
        thread.join(30)
    assert errors == []
    assert outcomes["written"] > 0
    final = writer.get("k")
    assert final is None or final.data == {"n": final.revision}


# --------------------------------------------------------------------------- leases
def test_a_lease_is_exclusive(state_store: StateStore, manual_clock: ManualClock) -> None:
    lease = state_store.acquire_lease("healer/db-1", "agent-a", 30)
    assert (lease.name, lease.owner) == ("healer/db-1", "agent-a")
    assert lease.expires_at == pytest.approx(manual_clock.time() + 30)
    with pytest.raises(LeaseHeldError) as caught:
        state_store.acquire_lease("healer/db-1", "agent-b", 30)
    assert caught.value.owner == "agent-a"
    assert caught.value.expires_at == pytest.approx(lease.expires_at)
    # Other lease names are independent.
    other = state_store.acquire_lease("healer/db-2", "agent-b", 30)
    assert other.owner == "agent-b"


def test_the_holder_acquiring_again_renews_with_the_same_token(
    state_store: StateStore, manual_clock: ManualClock
) -> None:
    first = state_store.acquire_lease("tick", "a", 10)
    manual_clock.advance(5)
    again = state_store.acquire_lease("tick", "a", 10)
    assert again.token == first.token
    assert again.expires_at == pytest.approx(first.expires_at + 5)


def test_an_expired_lease_passes_on_with_a_larger_token(
    state_store: StateStore, manual_clock: ManualClock
) -> None:
    first = state_store.acquire_lease("tick", "a", 10)
    manual_clock.advance(9.9)
    with pytest.raises(LeaseHeldError):
        state_store.acquire_lease("tick", "b", 10)
    manual_clock.advance(0.2)
    second = state_store.acquire_lease("tick", "b", 10)
    assert second.owner == "b"
    assert second.token > first.token


def test_renewing_a_lease_taken_over_raises_lease_lost(
    state_store: StateStore, manual_clock: ManualClock
) -> None:
    lease = state_store.acquire_lease("tick", "a", 10)
    manual_clock.advance(11)
    state_store.acquire_lease("tick", "b", 10)
    with pytest.raises(LeaseLostError) as caught:
        state_store.renew_lease(lease, 10)
    assert (caught.value.name, caught.value.owner) == ("tick", "a")


def test_renewing_extends_the_lease(state_store: StateStore, manual_clock: ManualClock) -> None:
    lease = state_store.acquire_lease("tick", "a", 10)
    manual_clock.advance(8)
    renewed = state_store.renew_lease(lease, 10)
    assert renewed.token == lease.token
    assert renewed.expires_at == pytest.approx(manual_clock.time() + 10)
    manual_clock.advance(8)  # past the first expiry, within the renewed one
    with pytest.raises(LeaseHeldError):
        state_store.acquire_lease("tick", "b", 10)
    manual_clock.advance(2.1)
    assert state_store.acquire_lease("tick", "b", 10).owner == "b"


def test_releasing_lets_the_next_holder_in_at_once(
    state_store: StateStore, manual_clock: ManualClock
) -> None:
    lease = state_store.acquire_lease("tick", "a", 60)
    state_store.release_lease(lease)
    taken = state_store.acquire_lease("tick", "b", 60)
    assert taken.token > lease.token
    with pytest.raises(LeaseLostError):
        state_store.renew_lease(lease, 60)


def test_releasing_a_lease_someone_else_now_holds_does_nothing(
    state_store: StateStore, manual_clock: ManualClock
) -> None:
    old = state_store.acquire_lease("tick", "a", 10)
    manual_clock.advance(11)
    current = state_store.acquire_lease("tick", "b", 10)
    state_store.release_lease(old)
    with pytest.raises(LeaseHeldError) as caught:
        state_store.acquire_lease("tick", "c", 10)
    assert caught.value.owner == "b"
    assert state_store.renew_lease(current, 10).token == current.token


def test_fencing_token_grows_with_every_new_holder(
    state_store: StateStore, manual_clock: ManualClock
) -> None:
    tokens = []
    for owner in ["a", "b", "c", "a", "a"]:
        lease = state_store.acquire_lease("tick", owner, 10)
        tokens.append(lease.token)
        manual_clock.advance(10.5)  # expire, so even the same owner is a new holding
    assert tokens == sorted(set(tokens)), tokens


def test_one_of_many_simultaneous_claimants_wins(state_backend: StateStoreBackend) -> None:
    # Separate adapters, as separate processes would have; only the storage is shared.
    claimants = 8
    stores = [state_backend.open() for _ in range(claimants)]
    barrier = threading.Barrier(claimants)
    won: list[Lease] = []
    refused: list[str] = []

    def claim(index: int) -> None:
        barrier.wait(30)
        try:
            won.append(stores[index].acquire_lease("scheduler/tick", f"worker-{index}", 60))
        except LeaseHeldError as exc:
            refused.append(exc.owner)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(claimants)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(won) == 1, won
    assert len(refused) == claimants - 1
    assert set(refused) == {won[0].owner}


# --------------------------------------------------------------------------- across processes
@pytest.mark.slow
def test_concurrent_increments_from_8_processes_lose_no_update(
    state_backend: StateStoreBackend,
) -> None:
    # Atomicity across processes is the subject, so no fsync: with it this test only measures
    # the disk (4000 journal commits). bench/store.py checks for lost updates with fsync on.
    backend = state_backend.without_fsync()
    # A backend behind a slow server may declare fewer increments (moto: see conftest).
    processes, increments = 8, getattr(backend, "increments_per_process", 500)
    backend.open().put("counter", {"n": 0}, 0)
    start = SPAWN.Event()
    pipes = [SPAWN.Pipe(duplex=False) for _ in range(processes)]
    args = [(backend, "counter", increments, start, send) for _, send in pipes]
    with spawned(increment_counter, args) as children:
        start.set()
        join_all(children, timeout=240)
        conflicts = [receive.recv() for receive, _ in pipes]
    record = state_backend.open().get("counter")
    assert record is not None
    assert record.data == {"n": processes * increments}
    assert record.revision == processes * increments + 1
    print(f"conflicts met by each writer: {conflicts}")


def test_records_survive_a_restart(state_backend: StateStoreBackend) -> None:
    records: dict[str, JSON] = {"instances/a": {"status": "ACTIVE"}, "instances/b": {"n": 2}}
    with spawned(write_records, [(state_backend, records)]) as children:
        join_all(children, timeout=60)

    fresh = state_backend.open()  # a new adapter, after the writer process has exited
    for key, data in records.items():
        record = fresh.get(key)
        assert record is not None
        assert (record.revision, record.data) == (2, {**data, "updated": True})
    assert list(fresh.list("instances/")) == sorted(records)

    receive, send = SPAWN.Pipe(duplex=False)
    with spawned(read_records, [(state_backend, sorted(records), send)]) as children:
        join_all(children, timeout=60)
        seen = receive.recv()
    assert seen == {key: (2, {**data, "updated": True}) for key, data in records.items()}
