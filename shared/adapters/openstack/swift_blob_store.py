"""The Swift BlobStore: large objects streamed in as Static Large Objects, checked by sha256.

Layout in the container, under `prefix`::

    blobs/<key>                                 the object: plain, or an SLO manifest
    segments/<key>/@s/<upload>/00000001         the segments of one large upload

`put` first reads up to `SMALL_BYTES` (1 MiB, or the segment size if smaller) into memory while
hashing. A source that ends within that is stored by one plain PUT carrying its sha256 as
metadata. Anything larger is streamed into segments of `segment_bytes` (64 MiB by default):
each segment is one chunked PUT whose body is pulled from the source as the request sends it,
so memory holds one source chunk at a time, never a whole segment. While one segment's PUT
waits for its answer (the object server fsyncs it), the next is already being sent. Once the
source ends and the sha256 and size are known, the SLO manifest is PUT
(`?multipart-manifest=put`, listing each segment's etag and size, which Swift checks) with the
sha256 and the user metadata (`X-Object-Meta-U-<name>`): the object becomes visible whole,
metadata included, at that moment.
Any error before it deletes the segments already uploaded, so nothing is left; a process killed
mid-put leaves segments under `segments/`, which no manifest names (an operator may reap them).
An SLO holds at most 1000 segments (Swift's `max_manifest_segments`), so one object holds at most
1000 x `segment_bytes` (62.5 GiB at the default); a larger source fails the put cleanly.

Replacing a large object deletes the segments of the manifest it replaced once the new one is in
place; a stream begun before that replace may then fail part-way (with an error, never with
wrong bytes). Replacing a small object has no such effect: a GET keeps reading the version it
opened. `delete` removes the manifest and its segments in one request
(`?multipart-manifest=delete`), or the plain object.

`get` asks for the object with `?multipart-manifest=get`: a small object comes back as it is; a
large one comes back as its manifest, and its segments are then read one after the other (see
`get` for why not through Swift's SLO middleware). The bytes are re-hashed on the way; at the
end a size or sha256 mismatch raises CorruptDataError naming the key, as does a broken stream
or a segment that vanished.

All requests go through openstacksdk's object_store proxy as raw verbs (see swift_client.py):
the sdk's own large-object upload needs a file of known size and its `data=` upload is not
streamed.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import secrets
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from hashlib import sha256
from typing import Any

import requests

from shared.adapters.local.blob_store import validate_metadata
from shared.adapters.local.store_keys import key_segments
from shared.adapters.openstack.swift_client import SwiftContainer, SwiftError, normalized_prefix
from shared.errors import CorruptDataError, NotFoundError
from shared.observability import get_logger
from shared.ports import BlobInfo

SEGMENT_BYTES = 64 * 1024 * 1024
SMALL_BYTES = 1024 * 1024
MAX_SEGMENTS = 1000  # Swift's default max_manifest_segments
BACKGROUND_HASH_BYTES = 64 * 1024  # smaller chunks are hashed on the spot
SHA256_HEADER = "X-Object-Meta-Sha256"
USER_METADATA_HEADER = "X-Object-Meta-U-"
SEGMENTS_MARK = "@s"

log = get_logger("swift_blob_store")


class _BackgroundSha256:
    """sha256 of a stream, computed on a helper thread while the caller's thread moves the bytes
    (hashlib lets go of the GIL): hashing no longer adds to the time of a transfer. One chunk at
    most is being hashed at a time; `settle` waits for it."""

    def __init__(self) -> None:
        self._digest = sha256()
        self._pool: ThreadPoolExecutor | None = None
        self._last: Future[None] | None = None

    def update(self, data: bytes | memoryview) -> None:
        self.settle()
        if len(data) < BACKGROUND_HASH_BYTES:
            self._digest.update(data)  # not worth a hand-over
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="swift-sha256")
        self._last = self._pool.submit(self._digest.update, data)

    def settle(self) -> None:
        if self._last is not None:
            last, self._last = self._last, None
            last.result()

    def hexdigest(self) -> str:
        self.close()
        return self._digest.hexdigest()

    def close(self) -> None:
        self.settle()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


class _Source:
    """The caller's chunks, hashed and counted as they are read, handed out in bounded runs."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._pending: memoryview | None = None
        self._pending_bytes: bytes | None = None  # the caller's chunk, while none of it is sent
        self.digest = _BackgroundSha256()
        self.size = 0
        self.error: BaseException | None = None

    def _pull(self) -> bool:
        """Make sure a non-empty piece is pending; False when the source is exhausted."""
        while self._pending is None:
            # The caller may reuse its buffer once asked for the next chunk: hash this one first.
            self.digest.settle()
            try:
                chunk = next(self._chunks)
                view = memoryview(chunk).cast("B")
            except StopIteration:
                return False
            except BaseException as exc:
                self.error = exc  # re-raised by put even if an HTTP library wraps it
                raise
            if view.nbytes:
                self.digest.update(view)
                self.size += view.nbytes
                self._pending = view
                self._pending_bytes = chunk if type(chunk) is bytes else None
        return True

    def exhausted(self) -> bool:
        return not self._pull()

    def take(self, limit: int) -> Iterator[bytes]:
        """Pieces of the source, `limit` bytes in all or up to its end."""
        left = limit
        while left > 0 and self._pull():
            assert self._pending is not None
            piece, whole = self._pending, self._pending_bytes
            self._pending_bytes = None
            if piece.nbytes > left:
                piece, self._pending = piece[:left], piece[left:]
                whole = None
            else:
                self._pending = None
            left -= piece.nbytes
            # A copy only of chunks split across segments, or that are not immutable bytes.
            yield whole if whole is not None else bytes(piece)

    def read(self, limit: int) -> bytes:
        return b"".join(self.take(limit))


class _SegmentBody:
    """A segment's request body pulled from `pieces`, counting what it sent; `read` is set once
    the body is all sent (or its request has ended), so the next segment may start reading."""

    def __init__(self, pieces: Iterator[bytes]) -> None:
        self._pieces = pieces
        self.sent = 0
        self.read = threading.Event()

    def __iter__(self) -> Iterator[bytes]:
        for piece in self._pieces:
            self.sent += len(piece)
            yield piece
        self.read.set()

    def request_ended(self, _: Future[None]) -> None:
        self.read.set()


def _checked_stream(
    key: str,
    parts: Iterator[Iterator[bytes]],
    info: BlobInfo,
) -> Iterator[bytes]:
    """The chunks of `parts` in order; checks size and sha256 at the end."""
    digest = _BackgroundSha256()
    read = 0
    try:
        for part in parts:
            for chunk in part:
                if chunk:
                    digest.update(chunk)
                    read += len(chunk)
                    yield chunk
    except requests.RequestException as exc:
        raise CorruptDataError(
            key, f"the stream broke off after {read} of {info.size} bytes: {exc}"
        ) from None
    finally:
        digest.close()
    if read != info.size:
        raise CorruptDataError(key, f"read {read} bytes, Swift says {info.size}")
    if digest.hexdigest() != info.sha256:
        raise CorruptDataError(key, "the bytes do not match their sha256")


def _body(response: requests.Response, chunk_size: int) -> Iterator[bytes]:
    """The response's body in chunks of at most `chunk_size`; closes it when done or dropped."""
    try:
        yield from response.iter_content(chunk_size)
    finally:
        response.close()


class SwiftBlobStore:
    """BlobStore on one Swift container; `object_store` is an authenticated
    `openstack.connection.Connection().object_store` (see swift_client.py)."""

    def __init__(
        self,
        object_store: Any,
        container: str,
        prefix: str = "",
        *,
        segment_bytes: int = SEGMENT_BYTES,
        create_container: bool = True,
    ) -> None:
        if segment_bytes < 1:
            raise ValueError(f"segment_bytes must be >= 1, got {segment_bytes}")
        self.container = SwiftContainer(object_store, container)
        self.prefix = normalized_prefix(prefix)
        self.segment_bytes = segment_bytes
        self._namespace = self.prefix + "blobs/"
        if create_container:
            self.container.ensure()

    def object_name(self, key: str) -> str:
        """The Swift object holding blob `key` (validated)."""
        key_segments(key)
        return self._namespace + key

    def _segment_prefix(self, key: str, upload: str) -> str:
        return f"{self.prefix}segments/{key}/{SEGMENTS_MARK}/{upload}/"

    # ------------------------------------------------------------------ writing
    def put(
        self, key: str, chunks: Iterable[bytes], metadata: dict[str, str] | None = None
    ) -> BlobInfo:
        name = self.object_name(key)
        user_metadata = validate_metadata(metadata)
        source = _Source(chunks)
        uploaded: list[dict[str, Any]] = []
        upload = secrets.token_hex(8)
        try:
            head = source.read(min(SMALL_BYTES, self.segment_bytes))
            if source.exhausted():
                replaced = self._replaced_segments(name)
                headers = self._object_headers(source, user_metadata)
                self.container.request("PUT", name, expect=(201,), headers=headers, data=head)
            else:
                self._put_segments(key, upload, source, head, uploaded)
                replaced = self._replaced_segments(name)
                self.container.request(
                    "PUT",
                    name,
                    expect=(201,),
                    params={"multipart-manifest": "put"},
                    headers=self._object_headers(source, user_metadata),
                    data=json.dumps(uploaded).encode(),
                )
        except BaseException as exc:
            source.digest.close()
            self._delete_segments([entry["path"] for entry in uploaded])
            if source.error is not None and exc is not source.error:
                raise source.error from None  # the source's own error, not the HTTP wrapping
            raise
        self._delete_segments(replaced)
        return BlobInfo(key, source.size, source.digest.hexdigest(), user_metadata, _now())

    def _put_segments(
        self,
        key: str,
        upload: str,
        source: _Source,
        head: bytes,
        uploaded: builtins.list[dict[str, Any]],
    ) -> None:
        """Stream the source into segments, appending each to `uploaded` as it starts.

        A segment's PUT answers only after the object server has fsynced it and updated the
        container; meanwhile the next segment is already being sent on a second connection
        (two PUTs in flight at most, the source still read by one at a time). Returns once every
        segment PUT has answered; the first failure is raised after all have ended.
        """
        first: Iterator[bytes] = iter([head])
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="swift-segment") as pool:
            in_flight: builtins.list[Future[None]] = []
            while not source.exhausted():
                if len(uploaded) == MAX_SEGMENTS:
                    raise ValueError(
                        f"{key}: more than {MAX_SEGMENTS} segments of {self.segment_bytes} "
                        "bytes; use a larger segment_bytes"
                    )
                segment = self._segment_prefix(key, upload) + f"{len(uploaded) + 1:08d}"
                entry: dict[str, Any] = {"path": f"/{self.container.container}/{segment}"}
                uploaded.append(entry)
                budget = self.segment_bytes - (len(head) if len(uploaded) == 1 else 0)
                body = _SegmentBody(_chain(first, source.take(budget)))
                first = iter(())
                future = pool.submit(self._put_segment, segment, body, entry)
                future.add_done_callback(body.request_ended)
                body.read.wait()
                for earlier in in_flight:
                    earlier.result()  # at most one PUT waits for its answer while we go on
                in_flight = [future]
                if future.done():
                    future.result()  # a failed PUT stops the loop before the source is read on
            for future in in_flight:
                future.result()

    def _put_segment(self, segment: str, body: _SegmentBody, entry: dict[str, Any]) -> None:
        response = self.container.request("PUT", segment, expect=(201,), data=iter(body))
        entry["etag"] = response.headers["Etag"].strip('"')
        entry["size_bytes"] = body.sent

    @staticmethod
    def _object_headers(source: _Source, user_metadata: dict[str, str]) -> dict[str, str]:
        headers = {SHA256_HEADER: source.digest.hexdigest()}
        headers.update({USER_METADATA_HEADER + k: v for k, v in user_metadata.items()})
        return headers

    def _replaced_segments(self, name: str) -> builtins.list[str]:
        """Paths (/container/object) of the segments of the large object at `name`, if any."""
        response = self.container.request(
            "GET", name, expect=(200, 404), params={"multipart-manifest": "get"}, stream=True
        )
        try:
            if response.status_code != 200 or response.headers.get("X-Static-Large-Object") != (
                "True"
            ):
                return []
            return [entry["name"] for entry in json.loads(response.content)]
        finally:
            response.close()

    def _delete_segments(self, paths: builtins.list[str]) -> None:
        """Delete the segments at `paths` (a few at a time: each DELETE is one round trip)."""
        container_path = f"/{self.container.container}/"
        ours = [path[len(container_path) :] for path in paths if path.startswith(container_path)]
        if ours:
            with ThreadPoolExecutor(max_workers=4, thread_name_prefix="swift-delete") as pool:
                for _ in pool.map(self._delete_segment, ours):
                    pass

    def _delete_segment(self, name: str) -> None:
        try:
            self.container.request("DELETE", name, expect=(204, 404))
        except (SwiftError, requests.RequestException) as exc:
            log.warning("removing a segment failed", extra={"segment": name, "error": str(exc)})

    # ------------------------------------------------------------------ reading
    def _info(self, key: str, headers: Any, size: int | None = None) -> BlobInfo:
        digest = headers.get(SHA256_HEADER)
        if not digest:
            raise CorruptDataError(key, "the object has no sha256 metadata")
        prefix = USER_METADATA_HEADER.lower()
        user_metadata = {
            name[len(prefix) :].lower(): value
            for name, value in headers.items()
            if name.lower().startswith(prefix)
        }
        modified = headers.get("Last-Modified")
        return BlobInfo(
            key=key,
            size=int(headers["Content-Length"]) if size is None else size,
            sha256=digest,
            metadata=user_metadata,
            modified=parsedate_to_datetime(modified) if modified else None,
        )

    def head(self, key: str) -> BlobInfo:
        response = self.container.request("HEAD", self.object_name(key), expect=(200, 404))
        if response.status_code == 404:
            raise NotFoundError(key, "blob")
        return self._info(key, response.headers)

    def get(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """Stream the object. A large one is read segment by segment, straight from the
        segment objects the manifest names: Swift's own joining of an SLO in the proxy runs at
        about 0.6-0.8 of a plain GET here, reading the segments directly at about 0.95."""
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        name = self.object_name(key)
        response = self.container.request(
            "GET", name, expect=(200, 404), params={"multipart-manifest": "get"}, stream=True
        )
        if response.status_code == 404:
            response.close()
            raise NotFoundError(key, "blob")
        if response.headers.get("X-Static-Large-Object") != "True":
            try:
                info = self._info(key, response.headers)
            except BaseException:
                response.close()
                raise
            return _checked_stream(key, iter([_body(response, chunk_size)]), info)
        try:
            segments = json.loads(response.content)
            info = self._info(key, response.headers, size=sum(int(s["bytes"]) for s in segments))
        finally:
            response.close()
        paths = [str(segment["name"]) for segment in segments]
        return _checked_stream(key, self._segment_bodies(key, paths, chunk_size), info)

    def _segment_bodies(
        self, key: str, paths: builtins.list[str], chunk_size: int
    ) -> Iterator[Iterator[bytes]]:
        """The bodies of the segments at `paths`, in order. The GET of the next segment is sent
        while the current one is read, so no request's latency stalls the stream."""
        container_path = f"/{self.container.container}/"
        for path in paths:
            if not path.startswith(container_path):
                raise CorruptDataError(key, f"a segment lives outside the container: {path}")
        names = [path[len(container_path) :] for path in paths]
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="swift-segment")
        ahead: Future[requests.Response] | None = None
        try:
            for index, name in enumerate(names):
                response = (ahead or pool.submit(self._open_segment, name)).result()
                ahead = None
                if index + 1 < len(names):
                    ahead = pool.submit(self._open_segment, names[index + 1])
                if response.status_code == 404:
                    response.close()
                    raise CorruptDataError(
                        key,
                        f"segment {name} is gone (the object was replaced or deleted meanwhile)",
                    )
                yield _body(response, chunk_size)
        finally:
            if ahead is not None:  # the reader stopped early: drop the segment opened for it
                with contextlib.suppress(Exception):
                    ahead.result().close()
            pool.shutdown(wait=False)

    def _open_segment(self, name: str) -> requests.Response:
        return self.container.request("GET", name, expect=(200, 404), stream=True)

    def list(self, prefix: str = "") -> Iterator[BlobInfo]:
        keys = [
            entry["name"][len(self._namespace) :]
            for entry in self.container.listing(self._namespace + prefix)
        ]
        return self._infos(sorted(keys))

    def _infos(self, keys: builtins.list[str]) -> Iterator[BlobInfo]:
        for key in keys:
            try:
                yield self.head(key)
            except NotFoundError:
                continue  # deleted since the listing

    def first_stored_object(self, key: str) -> str:
        """The object holding `key`'s first bytes: its first segment, or itself if small (for
        operators and fault injection)."""
        name = self.object_name(key)
        segments = self._replaced_segments(name)
        if not segments:
            return name
        return segments[0][len(f"/{self.container.container}/") :]

    # ------------------------------------------------------------------ removing
    def delete(self, key: str) -> None:
        name = self.object_name(key)
        response = self.container.request(
            "DELETE",
            name,
            expect=(200, 404),
            params={"multipart-manifest": "delete"},
            headers={"Accept": "application/json"},
        )
        if response.status_code == 404:
            return
        report = json.loads(response.content)
        status = str(report.get("Response Status", ""))
        if status.startswith(("200", "404")):
            return
        if status.startswith("400") and all(
            "Not an SLO manifest" in str(error) for error in report.get("Errors", [])
        ):
            self.container.request("DELETE", name, expect=(204, 404))
            return
        raise SwiftError("DELETE", name, 500, json.dumps(report))


def _chain(first: Iterator[bytes], rest: Iterator[bytes]) -> Iterator[bytes]:
    yield from first
    yield from rest


def _now() -> datetime:
    return datetime.now(UTC)
