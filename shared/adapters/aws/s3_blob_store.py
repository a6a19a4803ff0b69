"""The S3 BlobStore: large objects streamed through multipart uploads, checked by sha256.

Objects live at `<prefix>blobs/<key>`. `put` gathers the chunks into parts of 8 MiB (larger
after every 1,000 parts, see `part_bytes`) while hashing them, and sends up to
`parts_in_flight` parts (2) at once on threads of its own while it gathers the next, so memory
stays at a few parts whatever the size. An object that ends within the first part is stored by
a single PutObject carrying its sha256 as metadata. Anything larger goes up as a multipart upload to
`<prefix>staging/<random>`, and once complete (and its sha256 known) is copied server-side to its
key with its metadata, then the staged copy is removed: S3 fixes an object's metadata when its
upload starts, and the copy makes the object visible whole, metadata included. Any error before
that aborts the upload (or removes the staged copy), so nothing is left; a process killed
mid-put can leave a staged object, which a lifecycle rule on `staging/` should expire. User
metadata (validated by the same rules as the local store) is stored as `u-<name>` beside it.
Note that S3 limits all user metadata to 2 KB, sha256 and prefixes included, so the last ~100
bytes the validator allows may be refused by a real S3.

`get` streams one GetObject and re-hashes it; at the end a size or sha256 mismatch raises
CorruptDataError naming the key. A stream begun before a replace keeps reading the old bytes
(S3 serves one object version per GET).
"""

from __future__ import annotations

import builtins
import secrets
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from hashlib import sha256
from typing import Any

from botocore.exceptions import ClientError

from shared.adapters.aws.s3_client import ensure_bucket, is_not_found, normalized_prefix
from shared.adapters.local.blob_store import validate_metadata
from shared.adapters.local.store_keys import key_segments
from shared.errors import CorruptDataError, NotFoundError
from shared.observability import get_logger
from shared.ports import BlobInfo

PART_BYTES = 8 * 1024 * 1024  # S3 needs >= 5 MiB for every part but the last
PARTS_PER_SIZE_STEP = 1000  # parts grow by PART_BYTES after each this many (see part_bytes)
PARTS_IN_FLIGHT = 2  # parts uploaded at once by one put (memory: this many parts)
# CopyObject copies up to 5 GiB in one call; beyond that, in parts (of at most 5 GiB each).
SINGLE_COPY_LIMIT = 5 * 1024**3
COPY_PART_BYTES = 1024**3
SHA256_METADATA = "sha256"
USER_METADATA_PREFIX = "u-"

log = get_logger("s3_blob_store")


def _user_metadata(stored: dict[str, str]) -> dict[str, str]:
    return {
        name[len(USER_METADATA_PREFIX) :]: value
        for name, value in stored.items()
        if name.startswith(USER_METADATA_PREFIX)
    }


class _S3BlobStream(Iterator[bytes]):
    """Chunks of one GetObject response; checks size and sha256 at the end."""

    def __init__(self, key: str, body: Any, size: int, digest: str, chunk_size: int) -> None:
        self._key = key
        self._body: Any = body
        self._chunks: Iterator[bytes] | None = body.iter_chunks(chunk_size)
        self._size = size
        self._expected = digest
        self._digest = sha256()
        self._read = 0

    def __next__(self) -> bytes:
        if self._chunks is None:
            raise StopIteration
        for chunk in self._chunks:
            if chunk:
                # Already bytes from botocore: handed on as they are, never copied.
                self._digest.update(chunk)
                self._read += len(chunk)
                return chunk
        self.close()
        if self._read != self._size:
            raise CorruptDataError(self._key, f"read {self._read} bytes, S3 says {self._size}")
        if self._digest.hexdigest() != self._expected:
            raise CorruptDataError(self._key, "the bytes do not match their sha256")
        raise StopIteration

    def close(self) -> None:
        if self._chunks is not None:
            self._chunks = None
            self._body.close()

    def __del__(self) -> None:
        self.close()


def part_bytes(number: int) -> int:
    """The size part `number` (from 1) is gathered to. S3 allows 10,000 parts: growing by
    PART_BYTES every 1,000 parts lets one object reach ~430 GiB (~78 GiB at a fixed 8 MiB)."""
    return PART_BYTES * (1 + (number - 1) // PARTS_PER_SIZE_STEP)


def _joined(chunks: Sequence[bytes]) -> bytes:
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class _PartUploads:
    """The parts of one multipart upload, sent by up to `in_flight` threads at once.

    Parts go up while the next one is gathered (and the caller's source keeps producing), as
    boto3's own transfer manager does; waiting for the oldest part before sending one more
    bounds the bytes held to `in_flight` parts. The first failure is raised by `send` or
    `finish`; `cancel` drops parts not yet started and waits for the running ones."""

    def __init__(self, client: Any, bucket: str, key: str, upload_id: str, in_flight: int) -> None:
        self._client = client
        self._bucket = bucket
        self._key = key
        self._upload_id = upload_id
        self._in_flight = in_flight
        self._pool = ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="s3-part")
        self._running: deque[Future[dict[str, Any]]] = deque()
        self._done: builtins.list[dict[str, Any]] = []
        self.sent = 0

    def _upload(self, number: int, data: bytes) -> dict[str, Any]:
        response = self._client.upload_part(
            Bucket=self._bucket,
            Key=self._key,
            UploadId=self._upload_id,
            PartNumber=number,
            Body=data,
        )
        return {"ETag": response["ETag"], "PartNumber": number}

    def send(self, data: bytes) -> None:
        if len(self._running) >= self._in_flight:
            self._done.append(self._running.popleft().result())
        self.sent += 1
        self._running.append(self._pool.submit(self._upload, self.sent, data))

    def finish(self) -> builtins.list[dict[str, Any]]:
        """The parts, in order, once all are stored."""
        try:
            while self._running:
                self._done.append(self._running.popleft().result())
        finally:
            self._pool.shutdown(wait=True)
        return sorted(self._done, key=lambda part: int(part["PartNumber"]))

    def cancel(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class S3BlobStore:
    """BlobStore on an S3 bucket; any number of processes may share one bucket and prefix."""

    def __init__(
        self,
        client: Any,
        bucket: str,
        prefix: str = "",
        *,
        create_bucket: bool = True,
        parts_in_flight: int = PARTS_IN_FLIGHT,
    ) -> None:
        if parts_in_flight < 1:
            raise ValueError(f"parts_in_flight must be >= 1, got {parts_in_flight}")
        self.client = client
        self.bucket = bucket
        self.parts_in_flight = parts_in_flight
        self.prefix = normalized_prefix(prefix)
        self._namespace = self.prefix + "blobs/"
        if create_bucket:
            ensure_bucket(client, bucket)

    def object_key(self, key: str) -> str:
        """The S3 key holding blob `key` (validated)."""
        key_segments(key)
        return self._namespace + key

    # ------------------------------------------------------------------ writing
    def put(
        self, key: str, chunks: Iterable[bytes], metadata: dict[str, str] | None = None
    ) -> BlobInfo:
        object_key = self.object_key(key)
        user_metadata = validate_metadata(metadata)
        digest = sha256()
        size = 0
        # The chunks of the part being gathered: joined once when it is sent (one copy).
        pending: builtins.list[bytes] = []
        pending_bytes = 0
        staging_key = f"{self.prefix}staging/{secrets.token_hex(16)}"
        upload_id: str | None = None
        uploads: _PartUploads | None = None
        staged = False
        try:
            for chunk in chunks:
                view = memoryview(chunk).cast("B")
                digest.update(view)
                size += view.nbytes
                pending_bytes += view.nbytes
                # bytes cannot change under us; any other buffer may be reused by the caller.
                pending.append(chunk if type(chunk) is bytes else view.tobytes())
                if pending_bytes >= part_bytes((uploads.sent if uploads else 0) + 1):
                    if uploads is None:
                        upload_id = str(
                            self.client.create_multipart_upload(
                                Bucket=self.bucket, Key=staging_key
                            )["UploadId"]
                        )
                        uploads = _PartUploads(
                            self.client, self.bucket, staging_key, upload_id, self.parts_in_flight
                        )
                    uploads.send(_joined(pending))
                    pending, pending_bytes = [], 0
            stored_metadata = {SHA256_METADATA: digest.hexdigest()}
            stored_metadata.update(
                {USER_METADATA_PREFIX + name: value for name, value in user_metadata.items()}
            )
            if uploads is None:
                self.client.put_object(
                    Bucket=self.bucket,
                    Key=object_key,
                    Body=_joined(pending),
                    Metadata=stored_metadata,
                )
            else:
                if pending:
                    uploads.send(_joined(pending))
                    pending = []
                parts = uploads.finish()
                self.client.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=staging_key,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                )
                upload_id = None
                staged = True
                # The sha256 is known only now, and S3 fixes metadata when an upload starts:
                # a server-side copy gives the object its metadata as it becomes visible.
                self._copy(staging_key, object_key, size, stored_metadata)
        except BaseException:
            if uploads is not None:
                uploads.cancel()  # before the abort, so no part lands after it
            if upload_id is not None:
                self._abort(staging_key, upload_id)
            raise
        finally:
            if staged:
                self._delete_quietly(staging_key)
        return BlobInfo(key, size, digest.hexdigest(), user_metadata, datetime.now(UTC))

    def _copy(self, source: str, target: str, size: int, metadata: dict[str, str]) -> None:
        """Copy `source` to `target` server-side, replacing its metadata with `metadata`."""
        copy_source = {"Bucket": self.bucket, "Key": source}
        if size <= SINGLE_COPY_LIMIT:
            self.client.copy_object(
                Bucket=self.bucket,
                Key=target,
                CopySource=copy_source,
                Metadata=metadata,
                MetadataDirective="REPLACE",
            )
            return
        upload_id = self.client.create_multipart_upload(
            Bucket=self.bucket, Key=target, Metadata=metadata
        )["UploadId"]
        try:
            parts = []
            for number, start in enumerate(range(0, size, COPY_PART_BYTES), start=1):
                end = min(start + COPY_PART_BYTES, size) - 1
                response = self.client.upload_part_copy(
                    Bucket=self.bucket,
                    Key=target,
                    UploadId=upload_id,
                    PartNumber=number,
                    CopySource=copy_source,
                    CopySourceRange=f"bytes={start}-{end}",
                )
                parts.append({"ETag": response["CopyPartResult"]["ETag"], "PartNumber": number})
            self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=target, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        except BaseException:
            self._abort(target, upload_id)
            raise

    def _delete_quietly(self, object_key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=object_key)
        except ClientError as exc:  # a bucket lifecycle rule on staging/ reaps what is left
            log.warning(
                "removing a staged upload failed", extra={"key": object_key, "error": str(exc)}
            )

    def _abort(self, object_key: str, upload_id: str) -> None:
        try:
            self.client.abort_multipart_upload(
                Bucket=self.bucket, Key=object_key, UploadId=upload_id
            )
        except ClientError as exc:  # a bucket lifecycle rule should reap what is left
            log.warning(
                "aborting a multipart upload failed",
                extra={"key": object_key, "error": str(exc)},
            )

    # ------------------------------------------------------------------ reading
    def _info(self, key: str, response: dict[str, Any]) -> BlobInfo:
        stored: dict[str, str] = dict(response.get("Metadata") or {})
        digest = stored.get(SHA256_METADATA)
        if not digest:
            raise CorruptDataError(key, "the object has no sha256 metadata")
        return BlobInfo(
            key=key,
            size=int(response["ContentLength"]),
            sha256=digest,
            metadata=_user_metadata(stored),
            modified=response.get("LastModified"),
        )

    def head(self, key: str) -> BlobInfo:
        object_key = self.object_key(key)
        try:
            response = self.client.head_object(Bucket=self.bucket, Key=object_key)
        except ClientError as exc:
            if is_not_found(exc):
                raise NotFoundError(key, "blob") from None
            raise
        return self._info(key, response)

    def get(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        object_key = self.object_key(key)
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=object_key)
        except ClientError as exc:
            if is_not_found(exc):
                raise NotFoundError(key, "blob") from None
            raise
        info = self._info(key, response)
        return _S3BlobStream(key, response["Body"], info.size, info.sha256, chunk_size)

    def list(self, prefix: str = "") -> Iterator[BlobInfo]:
        return self._infos(self._keys(prefix))

    def _keys(self, prefix: str) -> Sequence[str]:
        found: builtins.list[str] = []
        token: str | None = None
        while True:
            args: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self._namespace + prefix}
            if token:
                args["ContinuationToken"] = token
            page = self.client.list_objects_v2(**args)
            found.extend(item["Key"][len(self._namespace) :] for item in page.get("Contents", []))
            if not page.get("IsTruncated"):
                break
            token = page.get("NextContinuationToken")
        return sorted(found)

    def _infos(self, keys: Sequence[str]) -> Iterator[BlobInfo]:
        for key in keys:
            try:
                yield self.head(key)
            except NotFoundError:
                continue  # deleted since the listing

    # ------------------------------------------------------------------ removing
    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.object_key(key))
