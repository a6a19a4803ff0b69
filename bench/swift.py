"""Swift StateStore and BlobStore figures, each beside a raw Swift client doing the same requests.

`python -m bench.swift` prints the table; `run()` returns the rows for `python -m bench`. It
starts its own Swift all-in-one (tests/servers/swift.py: one replica, single-worker servers,
memcached; needs `make deps`) on loopback and removes it at the end.

The floor is python-swiftclient (preauthenticated with the same tempauth token), the thinnest
ordinary Swift client, sending the same requests the adapter sends, so the ratio is the cost of
the adapter (openstacksdk's proxy, the revision protocol's bookkeeping, sha256) and not of Swift:

- CAS puts/s, 1 writer: consecutive `SwiftStateStore.put`s on one record, each with the revision
  the previous put returned. Each put is four requests once the record has more than K
  revisions: the `If-None-Match: *` PUT of the new revision, the listing that checks its
  predecessor, the HEAD that confirms the claim, the DELETE that compacts. Floor: the same four
  requests through swiftclient (a conditional PUT of a new name, a delimited listing of the
  record's revisions, a HEAD, a DELETE of an old one). Measured in alternating slices, as
  bench/store.py does, so both see the same machine load.
- blob put / get of `BLOB_BYTES`: `SwiftBlobStore.put` (SLO, 64 MiB segments, sha256 computed
  on the way) and `get` (sha256 checked) beside one streamed (chunked) swiftclient PUT of the
  same bytes as a plain object, and one streamed GET of it, three times each, in alternating
  order.

The goal is 0.9 of the floor for each figure.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from swiftclient.client import Connection as SwiftclientConnection

from bench.store import interleaved_rates
from shared.adapters.openstack.swift_blob_store import SwiftBlobStore
from shared.adapters.openstack.swift_client import tempauth_connection
from shared.adapters.openstack.swift_state_store import SwiftStateStore
from shared.ports import Record

SECONDS = 4.0
BLOB_BYTES = 200 * 1024 * 1024
BLOB_CHUNK = 1024 * 1024
ROUNDS = 3  # alternating blob transfers of each kind; the figures are their means
GOAL = ">= 0.9 x floor"
_REVISION_BODY = (
    b'{"data":{"n":1,"status":"ACTIVE"},"key":"bench/record","revision":1,"sha256":"x"}'
)


class CasWriter:
    """One writer on one record, `put` with the revision its last put returned."""

    def __init__(self, store: SwiftStateStore) -> None:
        self._store = store
        self._record: Record = store.put("bench/record", {"n": 0}, 0)

    def put(self) -> None:
        n = self._record.data["n"] + 1
        self._record = self._store.put("bench/record", {"n": n}, self._record.revision)


class RawCas:
    """The floor: the four requests of one CAS put, through swiftclient, with no logic."""

    def __init__(self, client: SwiftclientConnection, container: str, kept: int = 20) -> None:
        self._client = client
        self._container = container
        self._prefix = "raw/record/@r/"
        self._kept = kept
        self._count = 0

    def put(self) -> None:
        self._count += 1
        name = f"{self._prefix}{self._count:09d}.json"
        self._client.put_object(
            self._container,
            name,
            _REVISION_BODY,
            content_type="application/json",
            headers={"If-None-Match": "*", "X-Object-Meta-Writer": uuid.uuid4().hex},
        )
        self._client.get_container(self._container, prefix=self._prefix, delimiter="/")
        self._client.head_object(self._container, name)
        doomed = self._count - self._kept - 1
        if doomed >= 1:
            self._client.delete_object(self._container, f"{self._prefix}{doomed:09d}.json")


def _chunks(total: int, size: int) -> Iterator[bytes]:
    block = os.urandom(size)
    for _ in range(total // size):
        yield block


def _megabytes_per_second(operation: Callable[[], object]) -> float:
    started = time.perf_counter()
    operation()
    return BLOB_BYTES / (time.perf_counter() - started) / 1e6


def _row(figure: str, value: float, unit: str, goal: str | None, floor: float) -> dict[str, Any]:
    return {
        "figure": figure,
        "value": value,
        "unit": unit,
        "goal": goal,
        "floor": floor,
        "ratio": value / floor if floor else None,
    }


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _blob_rows(
    store: SwiftBlobStore, client: SwiftclientConnection, container: str
) -> list[dict[str, Any]]:
    puts: list[float] = []
    raw_puts: list[float] = []
    gets: list[float] = []
    raw_gets: list[float] = []

    def raw_put() -> None:
        client.put_object(container, "raw/blob", _chunks(BLOB_BYTES, BLOB_CHUNK))

    def raw_get() -> None:
        _, body = client.get_object(container, "raw/blob", resp_chunk_size=BLOB_CHUNK)
        for _ in body:
            pass

    def store_get() -> None:
        for _ in store.get("bench/blob"):
            pass

    def store_put() -> None:
        store.put("bench/blob", _chunks(BLOB_BYTES, BLOB_CHUNK))

    # Each round: both puts, then both gets; who goes first alternates, so neither always
    # follows the other's writes (page cache, deletes still being flushed).
    for round_number in range(ROUNDS):
        pairs = [((raw_put, raw_puts), (store_put, puts)), ((raw_get, raw_gets), (store_get, gets))]
        for pair in pairs:
            for operation, figures in pair if round_number % 2 == 0 else reversed(pair):
                figures.append(_megabytes_per_second(operation))
    size = f"{BLOB_BYTES >> 20} MiB"
    segments = f"SLO, {store.segment_bytes >> 20} MiB segments"
    return [
        _row(f"blob put {size} ({segments}, sha256)", _mean(puts), "MB/s", GOAL, _mean(raw_puts)),
        _row(f"blob get {size} (sha256 check)", _mean(gets), "MB/s", GOAL, _mean(raw_gets)),
    ]


def run(seconds: float = SECONDS) -> list[dict[str, Any]]:
    """Start a Swift all-in-one, measure, stop it."""
    # The all-in-one launcher lives with the test fixtures; the benchmark runs from the repo.
    from tests.servers.swift import start_swift_all_in_one

    aio = start_swift_all_in_one()
    try:
        endpoint = aio.endpoint
        connection = tempauth_connection(endpoint.auth_url, endpoint.user, endpoint.key)
        object_store = connection.object_store
        container = f"bench-{uuid.uuid4().hex[:12]}"
        client = SwiftclientConnection(
            preauthurl=object_store.get_endpoint(),
            preauthtoken=connection.session.get_token(),
            retries=0,
        )
        state = SwiftStateStore(object_store, container, "store/")
        writer = CasWriter(state)
        raw = RawCas(client, container)
        for _ in range(25):  # past the kept window, so both pay for compaction from the start
            writer.put()
            raw.put()
        rates = interleaved_rates({"raw": raw.put, "store": writer.put}, seconds)
        rows = [
            _row(
                "CAS puts/s, 1 writer (PUT If-None-Match + LIST + HEAD + DELETE)",
                rates["store"],
                "puts/s",
                GOAL,
                rates["raw"],
            )
        ]
        rows.extend(
            _blob_rows(SwiftBlobStore(object_store, container, "blobs/"), client, container)
        )
        return rows
    finally:
        aio.stop()


if __name__ == "__main__":
    from bench.__main__ import main

    raise SystemExit(main(["swift"]))
