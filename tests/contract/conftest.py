"""Fixtures shared by the contract suites, and the store adapters the store suites run against.

`test_state_store.py` and `test_blob_store.py` run every test once per backend listed in
`STATE_STORE_BACKENDS` / `BLOB_STORE_BACKENDS`. To put another adapter (Swift, S3) under a suite,
write a factory: a generator taking the pytest request (so it can ask for a server fixture) that
yields a backend and cleans up after, and add it to the dict.

A backend is a small picklable description of where the data lives (a frozen dataclass of paths
and addresses). `open()` makes a new adapter on the same data: that is how the restart tests
"reopen" a store, and how child processes (started with `spawn`) get adapters of their own.
The `damage_*` hooks break stored bytes the way a bad disk or a half-finished copy would, so the
suites can check that corruption is reported, never returned.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import resource
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from hashlib import sha256
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnProcess
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

import psutil
import pytest

from shared.adapters.aws.s3_blob_store import S3BlobStore
from shared.adapters.aws.s3_client import make_s3_client
from shared.adapters.aws.s3_state_store import S3StateStore
from shared.adapters.local.blob_store import DirectoryBlobStore
from shared.adapters.local.state_store import DirectoryStateStore, Durability
from shared.adapters.openstack.swift_blob_store import SwiftBlobStore
from shared.adapters.openstack.swift_client import SwiftContainer, tempauth_connection
from shared.adapters.openstack.swift_state_store import SwiftStateStore
from shared.clock import ManualClock
from shared.errors import ConflictError
from shared.ports import JSON, BlobStore, Clock, StateStore
from tests.contract import moto_server
from tests.servers.swift import SwiftEndpoint

# Children start from a clean interpreter: no inherited locks, descriptors or threads.
SPAWN = multiprocessing.get_context("spawn")

Damage = Literal["truncate", "tamper"]

# Keys every store must refuse (KEY_PATTERN, and at most 512 characters).
INVALID_KEYS = [
    "",
    "/a",
    "a/",
    "a//b",
    "a/../b",
    "..",
    "a..b",
    "a b",
    "a\x00b",
    "a\nb",
    "caf\u00e9",
    "a:b",
    "a\\b",
    "x" * 513,
]


class StateStoreBackend(Protocol):
    """A picklable description of one state store's data."""

    def open(self, clock: Clock | None = None) -> StateStore:
        """A new adapter on the data; `clock` judges lease expiry (the system clock if None)."""
        ...

    def damage_latest_revision(self, key: str, how: Damage) -> None:
        """'truncate' cuts the stored revision in half; 'tamper' changes its data in a way
        that still parses but no longer matches the checksum written with it."""
        ...

    def without_fsync(self) -> StateStoreBackend:
        """The same data, opened in the adapter's fastest mode that is still atomic across
        processes (the local store without fsync); a backend with no such mode returns itself.
        For tests about concurrency, whose subject is atomicity, not surviving power loss."""
        ...


class BlobStoreBackend(Protocol):
    """A picklable description of one blob store's data."""

    def open(self) -> BlobStore: ...

    def damage_object(self, key: str) -> None:
        """Change one stored byte of the object, leaving its size and recorded sha256 alone."""
        ...


# --------------------------------------------------------------------------- local backends
@dataclass(frozen=True)
class DirectoryStateBackend:
    root: Path
    durability: Durability = Durability.DATA  # the store's default

    def open(self, clock: Clock | None = None) -> StateStore:
        return DirectoryStateStore(self.root, clock, durability=self.durability)

    def without_fsync(self) -> StateStoreBackend:
        return replace(self, durability=Durability.NONE)

    def damage_latest_revision(self, key: str, how: Damage) -> None:
        path = DirectoryStateStore(self.root).latest_revision_path(key)
        assert path is not None, f"{key} has no revision to damage"
        raw = path.read_bytes()
        if how == "truncate":
            path.write_bytes(raw[: len(raw) // 2])
        else:
            envelope = json.loads(raw)
            envelope["data"] = {"tampered": True}
            path.write_bytes(json.dumps(envelope, sort_keys=True).encode())


@dataclass(frozen=True)
class DirectoryBlobBackend:
    root: Path

    def open(self) -> BlobStore:
        return DirectoryBlobStore(self.root)

    def damage_object(self, key: str) -> None:
        path = DirectoryBlobStore(self.root).data_path(key)
        with open(path, "r+b") as f:
            first = f.read(1)
            f.seek(0)
            f.write(bytes([first[0] ^ 0xFF]))


def directory_state_backend(request: pytest.FixtureRequest) -> Iterator[StateStoreBackend]:
    tmp_path: Path = request.getfixturevalue("tmp_path")
    yield DirectoryStateBackend(tmp_path / "state")  # tmp_path removes the files


def directory_blob_backend(request: pytest.FixtureRequest) -> Iterator[BlobStoreBackend]:
    tmp_path: Path = request.getfixturevalue("tmp_path")
    yield DirectoryBlobBackend(tmp_path / "blobs")


# --------------------------------------------------------------------------- S3 backends (moto)
@dataclass(frozen=True)
class S3Location:
    """Where an S3-backed store keeps its data: endpoint, bucket, key prefix, credentials."""

    endpoint: str
    bucket: str
    prefix: str = "store/"
    access_key: str = moto_server.ACCESS_KEY
    secret_key: str = moto_server.SECRET_KEY
    region: str = moto_server.REGION

    def client(self) -> Any:
        return make_s3_client(
            self.endpoint,
            region=self.region,
            access_key=self.access_key,
            secret_key=self.secret_key,
        )

    def rewrite(self, object_key: str, change: Callable[[bytes], bytes]) -> None:
        """Replace a stored object's bytes with `change(bytes)`, keeping its metadata."""
        client = self.client()
        response = client.get_object(Bucket=self.bucket, Key=object_key)
        raw = response["Body"].read()
        client.put_object(
            Bucket=self.bucket, Key=object_key, Body=change(raw), Metadata=response["Metadata"]
        )

    def remove_bucket(self) -> None:
        client = self.client()
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket):
            for item in page.get("Contents", []):
                client.delete_object(Bucket=self.bucket, Key=item["Key"])
        uploads = client.list_multipart_uploads(Bucket=self.bucket).get("Uploads", [])
        for upload in uploads:
            client.abort_multipart_upload(
                Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
            )
        client.delete_bucket(Bucket=self.bucket)


@dataclass(frozen=True)
class S3StateBackend:
    location: S3Location
    # moto's server serves ~100-200 requests/s here and one contended increment costs ~15 of
    # them, so 8 x 500 would take over ten minutes; 8 x 10 still meets hundreds of conflicts.
    increments_per_process: ClassVar[int] = 10

    def open(self, clock: Clock | None = None) -> StateStore:
        return S3StateStore(
            self.location.client(), self.location.bucket, self.location.prefix, clock
        )

    def without_fsync(self) -> StateStoreBackend:
        return self  # durability is S3's business; there is no faster mode

    def damage_latest_revision(self, key: str, how: Damage) -> None:
        store = S3StateStore(self.location.client(), self.location.bucket, self.location.prefix)
        object_key = store.latest_revision_object(key)
        assert object_key is not None, f"{key} has no revision to damage"

        def damage(raw: bytes) -> bytes:
            if how == "truncate":
                return raw[: len(raw) // 2]
            envelope = json.loads(raw)
            envelope["data"] = {"tampered": True}
            return json.dumps(envelope, sort_keys=True).encode()

        self.location.rewrite(object_key, damage)


@dataclass(frozen=True)
class S3BlobBackend:
    location: S3Location

    def open(self) -> BlobStore:
        return S3BlobStore(self.location.client(), self.location.bucket, self.location.prefix)

    def damage_object(self, key: str) -> None:
        store = S3BlobStore(self.location.client(), self.location.bucket, self.location.prefix)
        self.location.rewrite(store.object_key(key), lambda raw: bytes([raw[0] ^ 0xFF]) + raw[1:])


@contextmanager
def _fresh_bucket(request: pytest.FixtureRequest) -> Iterator[S3Location]:
    """A bucket of its own on the session's moto server, removed (with its objects) after."""
    endpoint: str = request.getfixturevalue("moto_endpoint")
    location = S3Location(endpoint, f"troveless-{uuid.uuid4().hex[:16]}")
    location.client().create_bucket(Bucket=location.bucket)
    try:
        yield location
    finally:
        location.remove_bucket()


def s3_state_backend(request: pytest.FixtureRequest) -> Iterator[StateStoreBackend]:
    with _fresh_bucket(request) as location:
        yield S3StateBackend(location)


def s3_blob_backend(request: pytest.FixtureRequest) -> Iterator[BlobStoreBackend]:
    with _fresh_bucket(request) as location:
        yield S3BlobBackend(location)


# --------------------------------------------------------------------------- Swift backends (AIO)
@dataclass(frozen=True)
class SwiftLocation:
    """Where a Swift-backed store keeps its data: the all-in-one, a container, a name prefix."""

    endpoint: SwiftEndpoint
    container: str
    prefix: str = "store/"

    def object_store(self) -> Any:
        endpoint = self.endpoint
        return tempauth_connection(endpoint.auth_url, endpoint.user, endpoint.key).object_store

    def client(self) -> SwiftContainer:
        return SwiftContainer(self.object_store(), self.container)

    def rewrite(self, name: str, change: Callable[[bytes], bytes]) -> None:
        """Replace a stored object's bytes with `change(bytes)`, keeping its metadata."""
        client = self.client()
        response = client.request("GET", name, expect=(200,))
        kept = {
            header: value
            for header, value in response.headers.items()
            if header.lower().startswith("x-object-meta-") or header.lower() == "content-type"
        }
        client.request("PUT", name, expect=(201,), headers=kept, data=change(response.content))

    def remove_container(self) -> None:
        self.client().delete_container()


@dataclass(frozen=True)
class SwiftStateBackend:
    location: SwiftLocation
    # A contended increment costs about 20 requests (reads, the create, the check listing, the
    # claim HEAD, retries) and the all-in-one's single-worker servers share this machine's two
    # cores with the test: 8 x 500 would take many minutes; 8 x 10 still meets many races.
    increments_per_process: ClassVar[int] = 10

    def open(self, clock: Clock | None = None) -> StateStore:
        location = self.location
        return SwiftStateStore(location.object_store(), location.container, location.prefix, clock)

    def without_fsync(self) -> StateStoreBackend:
        return self  # durability is Swift's business; there is no faster mode

    def damage_latest_revision(self, key: str, how: Damage) -> None:
        location = self.location
        store = SwiftStateStore(location.object_store(), location.container, location.prefix)
        name = store.latest_revision_object(key)
        assert name is not None, f"{key} has no revision to damage"

        def damage(raw: bytes) -> bytes:
            if how == "truncate":
                return raw[: len(raw) // 2]
            envelope = json.loads(raw)
            envelope["data"] = {"tampered": True}
            return json.dumps(envelope, sort_keys=True).encode()

        location.rewrite(name, damage)


@dataclass(frozen=True)
class SwiftBlobBackend:
    location: SwiftLocation
    # Small segments, so that every test object past the first buffer is a multi-segment SLO.
    segment_bytes: int = 4 * 1024 * 1024

    def open(self) -> BlobStore:
        location = self.location
        return SwiftBlobStore(
            location.object_store(),
            location.container,
            location.prefix,
            segment_bytes=self.segment_bytes,
        )

    def damage_object(self, key: str) -> None:
        store = SwiftBlobStore(
            self.location.object_store(), self.location.container, self.location.prefix
        )
        name = store.first_stored_object(key)
        self.location.rewrite(name, lambda raw: bytes([raw[0] ^ 0xFF]) + raw[1:])


@contextmanager
def _fresh_container(request: pytest.FixtureRequest) -> Iterator[SwiftLocation]:
    """A container of its own on the session's Swift all-in-one, removed (with its objects)."""
    endpoint: SwiftEndpoint = request.getfixturevalue("swift_endpoint")
    location = SwiftLocation(endpoint, f"troveless-{uuid.uuid4().hex[:16]}")
    location.client().ensure()
    try:
        yield location
    finally:
        location.remove_container()


def swift_state_backend(request: pytest.FixtureRequest) -> Iterator[StateStoreBackend]:
    with _fresh_container(request) as location:
        yield SwiftStateBackend(location)


def swift_blob_backend(request: pytest.FixtureRequest) -> Iterator[BlobStoreBackend]:
    with _fresh_container(request) as location:
        yield SwiftBlobBackend(location)


STATE_STORE_BACKENDS: dict[str, Callable[[pytest.FixtureRequest], Iterator[StateStoreBackend]]] = {
    "directory": directory_state_backend,
    "s3-moto": s3_state_backend,
    "swift": swift_state_backend,
}
BLOB_STORE_BACKENDS: dict[str, Callable[[pytest.FixtureRequest], Iterator[BlobStoreBackend]]] = {
    "directory": directory_blob_backend,
    "s3-moto": s3_blob_backend,
    "swift": swift_blob_backend,
}


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """Base URL of one moto server (S3, SQS...) shared by the whole test session."""
    server = moto_server.start_moto_server()
    try:
        yield server.endpoint
    finally:
        server.stop()


@pytest.fixture(params=sorted(STATE_STORE_BACKENDS))
def state_backend(request: pytest.FixtureRequest) -> Iterator[StateStoreBackend]:
    yield from STATE_STORE_BACKENDS[request.param](request)


@pytest.fixture(params=sorted(BLOB_STORE_BACKENDS))
def blob_backend(request: pytest.FixtureRequest) -> Iterator[BlobStoreBackend]:
    yield from BLOB_STORE_BACKENDS[request.param](request)


@pytest.fixture
def manual_clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def state_store(state_backend: StateStoreBackend, manual_clock: ManualClock) -> StateStore:
    """A store whose leases expire only when the test moves `manual_clock`."""
    return state_backend.open(manual_clock)


@pytest.fixture
def blob_store(blob_backend: BlobStoreBackend) -> BlobStore:
    return blob_backend.open()


# --------------------------------------------------------------------------- child processes
@contextmanager
def spawned(
    target: Callable[..., None], args_per_child: Sequence[tuple[Any, ...]]
) -> Iterator[list[SpawnProcess]]:
    """Start one spawned child per argument tuple; whatever happens, none outlives the block."""
    children = [SPAWN.Process(target=target, args=args, daemon=True) for args in args_per_child]
    try:
        for child in children:
            child.start()
        yield children
    finally:
        for child in children:
            if child.is_alive():
                child.kill()
            child.join(10)


def join_all(children: Sequence[SpawnProcess], timeout: float) -> None:
    """Wait (up to `timeout` in all) for every child to exit, and require that each succeeded."""
    deadline = time.monotonic() + timeout
    for child in children:
        child.join(max(0.0, deadline - time.monotonic()))
    codes = [child.exitcode for child in children]
    assert codes == [0] * len(children), f"child exit codes: {codes}"


# Module-level functions so that spawned children can import them.


def increment_counter(
    backend: StateStoreBackend, key: str, increments: int, start: EventType, report: Connection
) -> None:
    """Add 1 to `key`'s "n" `increments` times by get + compare-and-swap, retrying on conflict.

    Reports how many conflicts it met. Waits for `start` so that all children contend at once.
    """
    store = backend.open()
    store.get(key)  # open files and warm up before the start line
    if not start.wait(120):
        raise TimeoutError("no start signal")
    conflicts = 0
    for _ in range(increments):
        while True:
            record = store.get(key)
            assert record is not None
            os.sched_yield()  # let the others run between our read and our write: races
            try:
                store.put(key, {"n": record.data["n"] + 1}, record.revision)
                break
            except ConflictError as exc:
                assert exc.key == key
                conflicts += 1
    report.send(conflicts)


def write_records(backend: StateStoreBackend, records: dict[str, JSON]) -> None:
    """Create each record (revision 1), then update it once (revision 2), then exit."""
    store = backend.open()
    for key, data in records.items():
        first = store.put(key, data, 0)
        store.put(key, {**data, "updated": True}, first.revision)


def read_records(backend: StateStoreBackend, keys: Sequence[str], report: Connection) -> None:
    store = backend.open()
    found = {}
    for key in keys:
        record = store.get(key)
        found[key] = None if record is None else (record.revision, record.data)
    report.send(found)


def generated_chunks(total_bytes: int, chunk_bytes: int, seen: Any) -> Iterator[bytes]:
    """`total_bytes` of varied bytes, `chunk_bytes` at a time, hashed into `seen` as produced."""
    block = sha256(b"troveless").digest() * (chunk_bytes // 32 + 1)
    sent = 0
    counter = 0
    while sent < total_bytes:
        size = min(chunk_bytes, total_bytes - sent)
        chunk = counter.to_bytes(8, "big") + block[8:size]
        chunk = chunk[:size]
        seen.update(chunk)
        sent += size
        counter += 1
        yield chunk


def _reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _peak_rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def put_and_get_measuring_memory(
    backend: BlobStoreBackend, key: str, total_bytes: int, chunk_bytes: int, report: Connection
) -> None:
    """Stream a generated object in and back out; report the hashes and the peak RSS growth."""
    store = backend.open()
    warm = sha256()
    for _ in generated_chunks(2 * chunk_bytes, chunk_bytes, warm):
        pass  # allocate what the generator needs before the baseline
    # Growth is measured from the memory in use now. The kernel's peak (VmHWM) is reset first
    # (clear_refs 5), so neither an old start-up peak hides growth nor inflates it.
    _reset_peak_rss()
    baseline_bytes = psutil.Process().memory_info().rss
    sent = sha256()
    info = store.put(key, generated_chunks(total_bytes, chunk_bytes, sent), {"kind": "test"})
    received = sha256()
    read = 0
    for chunk in store.get(key):
        received.update(chunk)
        read += len(chunk)
    peak_kb = _peak_rss_kb()
    report.send(
        {
            "growth_bytes": peak_kb * 1024 - baseline_bytes,
            "sent_sha256": sent.hexdigest(),
            "stored_sha256": info.sha256,
            "stored_size": info.size,
            "received_sha256": received.hexdigest(),
            "received_size": read,
        }
    )


def put_blobs(backend: BlobStoreBackend, blobs: dict[str, bytes]) -> None:
    store = backend.open()
    for key, data in blobs.items():
        store.put(key, [data[: len(data) // 2], data[len(data) // 2 :]], {"origin": "child"})
