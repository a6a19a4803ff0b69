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
  on the way) and `get` (sha256 checked), each against two floors, so that what the protocol
  costs and what our code costs show separately: the bare raw call (one streamed swiftclient
  PUT of the bytes as a plain object, with no hash; one streamed GET of it), and swiftclient
  making the requests the adapter's protocol makes, with hashlib's sha256 over the bytes
  (`RawSlo`: the segment PUTs, the lookup of the manifest being replaced, the manifest PUT, the
  replaced segments' DELETEs; the manifest GET, the segment GETs). The floors send their
  requests one after the other, as a plain client does; the adapter overlaps a segment PUT's
  wait for its answer with sending the next, and hashes on a second thread. ROUNDS rounds, the
  order of the three sides rotating each round; each figure is the median of its rounds, each
  ratio the median of the per-round ratios.

The goal is 0.9 of the floor for each figure.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import secrets
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from swiftclient.client import ClientException
from swiftclient.client import Connection as SwiftclientConnection

from bench.store import interleaved_rates
from shared.adapters.openstack.swift_blob_store import SwiftBlobStore
from shared.adapters.openstack.swift_client import tempauth_connection
from shared.adapters.openstack.swift_state_store import SwiftStateStore
from shared.ports import Record

SECONDS = 4.0
BLOB_BYTES = 200 * 1024 * 1024
BLOB_CHUNK = 1024 * 1024
ROUNDS = 5  # rounds of blob transfers of each side; the figures are their medians
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


class _HashedBody:
    """A segment's request body: `count` chunks of the source, hashed and counted as sent."""

    def __init__(self, first: bytes, rest: Iterator[bytes], count: int, digest: Any) -> None:
        self._first = first
        self._rest = rest
        self._count = count
        self._digest = digest
        self.sent = 0

    def __iter__(self) -> Iterator[bytes]:
        for chunk in itertools.chain([self._first], itertools.islice(self._rest, self._count - 1)):
            self._digest.update(chunk)
            self.sent += len(chunk)
            yield chunk


class RawSlo:
    """The protocol floor: swiftclient sending the requests `SwiftBlobStore` sends for a large
    blob, the plain way (one request after the other, sha256 by hashlib in the sending thread).

    put: one chunked PUT per segment (`<prefix>segments/<key>/@s/<upload>/<n:08d>`), the GET of
    the object with `?multipart-manifest=get` that finds the segments of the manifest it
    replaces, the manifest PUT (`?multipart-manifest=put`, the segments' path, etag and size,
    `X-Object-Meta-Sha256`), then one DELETE per replaced segment.
    get: the GET with `?multipart-manifest=get`, then one GET per segment, read in BLOB_CHUNK
    pieces and hashed; the sha256 and size are checked at the end.
    """

    def __init__(
        self, client: SwiftclientConnection, container: str, segment_bytes: int, prefix: str
    ) -> None:
        if segment_bytes % BLOB_CHUNK:
            raise ValueError("segments must hold whole chunks")
        self._client = client
        self._container = container
        self._chunks_per_segment = segment_bytes // BLOB_CHUNK
        self._name = f"{prefix}blobs/bench/blob"
        self._segments = f"{prefix}segments/bench/blob/@s/"
        self._container_path = f"/{container}/"

    def put(self, chunks: Iterator[bytes]) -> None:
        digest = hashlib.sha256()
        upload = secrets.token_hex(8)
        manifest: list[dict[str, Any]] = []
        for first in chunks:
            segment = f"{self._segments}{upload}/{len(manifest) + 1:08d}"
            body = _HashedBody(first, chunks, self._chunks_per_segment, digest)
            etag = self._client.put_object(self._container, segment, body)
            manifest.append(
                {"path": self._container_path + segment, "etag": etag, "size_bytes": body.sent}
            )
        replaced = self._manifest_segments()
        self._client.put_object(
            self._container,
            self._name,
            json.dumps(manifest).encode(),
            query_string="multipart-manifest=put",
            headers={"X-Object-Meta-Sha256": digest.hexdigest()},
        )
        for path in replaced:
            self._client.delete_object(self._container, path[len(self._container_path) :])

    def _manifest_segments(self) -> list[str]:
        try:
            headers, body = self._client.get_object(
                self._container, self._name, query_string="multipart-manifest=get"
            )
        except ClientException as exc:
            if exc.http_status == 404:
                return []
            raise
        if headers.get("x-static-large-object") != "True":
            return []
        return [str(entry["name"]) for entry in json.loads(body)]

    def get(self) -> None:
        headers, body = self._client.get_object(
            self._container, self._name, query_string="multipart-manifest=get"
        )
        segments = json.loads(body)
        digest = hashlib.sha256()
        size = 0
        for segment in segments:
            _, stream = self._client.get_object(
                self._container,
                str(segment["name"])[len(self._container_path) :],
                resp_chunk_size=BLOB_CHUNK,
            )
            for chunk in stream:
                digest.update(chunk)
                size += len(chunk)
        if size != sum(int(segment["bytes"]) for segment in segments):
            raise AssertionError(f"read {size} bytes")
        if digest.hexdigest() != headers["x-object-meta-sha256"]:
            raise AssertionError("the bytes do not match their sha256")


def _rounds(sides: list[Callable[[], object]]) -> list[list[float]]:
    """MB/s of each side in each of ROUNDS rounds; the order rotates each round, so no side
    always follows another's writes (page cache, deletes still being flushed)."""
    rates: list[list[float]] = [[] for _ in sides]
    for round_number in range(ROUNDS):
        shift = round_number % len(sides)
        for index in [*range(shift, len(sides)), *range(shift)]:
            rates[index].append(_megabytes_per_second(sides[index]))
    return rates


def _rows_against(
    figure: str, ours: Callable[[], object], floors: list[tuple[str, Callable[[], object]]]
) -> list[dict[str, Any]]:
    """One row per floor: the medians of the rounds, and the median of the per-round ratios."""
    mine, *theirs = _rounds([ours, *(operation for _, operation in floors)])
    return [
        {
            "figure": f"{figure} vs {label}",
            "value": statistics.median(mine),
            "unit": "MB/s",
            "goal": GOAL,
            "floor": statistics.median(floor),
            "ratio": statistics.median(a / b for a, b in zip(mine, floor, strict=True)),
        }
        for (label, _), floor in zip(floors, theirs, strict=True)
    ]


def _blob_rows(
    store: SwiftBlobStore, client: SwiftclientConnection, container: str
) -> list[dict[str, Any]]:
    protocol = RawSlo(client, container, store.segment_bytes, "raw-slo/")

    def store_put() -> None:
        store.put("bench/blob", _chunks(BLOB_BYTES, BLOB_CHUNK))

    def raw_put() -> None:
        client.put_object(container, "raw/blob", _chunks(BLOB_BYTES, BLOB_CHUNK))

    def protocol_put() -> None:
        protocol.put(_chunks(BLOB_BYTES, BLOB_CHUNK))

    def store_get() -> None:
        for _ in store.get("bench/blob"):
            pass

    def raw_get() -> None:
        _, body = client.get_object(container, "raw/blob", resp_chunk_size=BLOB_CHUNK)
        for _ in body:
            pass

    size = f"{BLOB_BYTES >> 20} MiB"
    segments = f"SLO, {store.segment_bytes >> 20} MiB segments"
    # All puts first: each get reads what its side's last put wrote.
    return [
        *_rows_against(
            f"blob put {size} ({segments}, sha256)",
            store_put,
            [
                ("one streamed swiftclient PUT", raw_put),
                ("swiftclient PUTting the segments + manifest, sha256", protocol_put),
            ],
        ),
        *_rows_against(
            f"blob get {size} (sha256 check)",
            store_get,
            [
                ("one swiftclient GET", raw_get),
                ("swiftclient GETting manifest + segments, sha256", protocol.get),
            ],
        ),
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
