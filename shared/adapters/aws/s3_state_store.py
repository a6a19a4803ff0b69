"""The S3 StateStore: revisioned JSON records as immutable objects, CAS by create-if-absent.

Layout under the bucket and `prefix`::

    records/<key>/@r/000000042.json     one immutable object per revision (the last K kept)
    leases/<name>/@r/000000007.json     leases: records of {owner, expires_at, token}

The revision protocol (create-if-absent with `PutObject(IfNoneMatch='*')`, the predecessor
check, compaction to the last K, delete, and its residual hazards) is shared with the Swift
store and described in shared/adapters/revision_objects.py; this module gives it S3's four
object operations.

Not every store that speaks S3 makes a conditional PUT atomic: Swift's s3api and moto's threaded
server check `If-None-Match` when the request arrives and store later, so two racing creates can
both succeed, the later overwriting the earlier (measured on Swift, where 8 simultaneous creates
often all got 201; a contract run on moto once lost 1 increment of 80). So by default each
create carries a random writer tag in its metadata and the writer reads it back (one HEAD)
before it trusts its revision. On AWS S3 itself, whose conditional writes are atomic, pass
`atomic_conditional_put=True` to skip that HEAD.

Leases are records in their own namespace, exactly as in the local store: each acquire, renew
and release is one compare-and-swap, expiry judged by the injected clock, and the fencing token
grows whenever the lease passes to a new holder.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

from botocore.exceptions import ClientError

from shared.adapters.aws.s3_client import (
    ensure_bucket,
    error_code,
    http_status,
    is_not_found,
    normalized_prefix,
)
from shared.adapters.revision_state_store import RevisionObjectStateStore
from shared.ports import Clock

# The random tag a create writes into its revision's metadata (see the module docstring).
WRITER_METADATA = "writer"


class S3RevisionObjects:
    """The revision protocol's object operations on one S3 bucket."""

    def __init__(self, client: Any, bucket: str, *, atomic_conditional_put: bool) -> None:
        self._client = client
        self._bucket = bucket
        self._atomic = atomic_conditional_put

    def names(self, prefix: str, *, recursive: bool) -> Iterator[str]:
        args: dict[str, Any] = {"Bucket": self._bucket, "Prefix": prefix}
        if not recursive:
            args["Delimiter"] = "/"
        token: str | None = None
        while True:
            page = self._client.list_objects_v2(
                **args, **({"ContinuationToken": token} if token else {})
            )
            for item in page.get("Contents", []):
                yield item["Key"]
            if not page.get("IsTruncated"):
                return
            token = page.get("NextContinuationToken")

    def read(self, name: str) -> bytes | None:
        try:
            response = self._client.get_object(Bucket=self._bucket, Key=name)
            body: bytes = response["Body"].read()
        except ClientError as exc:
            if is_not_found(exc):
                return None
            raise
        return body

    def create(self, name: str, body: bytes) -> str | None:
        claim = "" if self._atomic else uuid.uuid4().hex
        try:
            self._client.put_object(
                Bucket=self._bucket,
                Key=name,
                Body=body,
                ContentType="application/json",
                IfNoneMatch="*",
                **({} if self._atomic else {"Metadata": {WRITER_METADATA: claim}}),
            )
        except ClientError as exc:
            if http_status(exc) in (409, 412) or error_code(exc) in (
                "PreconditionFailed",
                "ConditionalRequestConflict",
            ):
                return None
            raise
        return claim

    def confirm(self, name: str, claim: str) -> bool:
        if self._atomic:
            return True  # a create that succeeded is the only one
        try:
            response = self._client.head_object(Bucket=self._bucket, Key=name)
        except ClientError as exc:
            if is_not_found(exc):
                return False
            raise
        return bool(response.get("Metadata", {}).get(WRITER_METADATA) == claim)

    def delete(self, name: str) -> None:
        self._client.delete_object(Bucket=self._bucket, Key=name)


class S3StateStore(RevisionObjectStateStore):
    """StateStore on an S3 bucket (or anything speaking S3 with conditional writes)."""

    def __init__(
        self,
        client: Any,
        bucket: str,
        prefix: str = "",
        clock: Clock | None = None,
        revisions_kept: int = 20,
        *,
        create_bucket: bool = True,
        atomic_conditional_put: bool = False,
    ) -> None:
        self.client = client
        self.bucket = bucket
        if create_bucket:
            ensure_bucket(client, bucket)
        objects = S3RevisionObjects(client, bucket, atomic_conditional_put=atomic_conditional_put)
        super().__init__(objects, normalized_prefix(prefix), clock, revisions_kept)
