"""Throughput of the AWS adapters against raw boto3 doing the same work, on one real moto server.

`python -m bench aws` (TROVELESS_BENCH_AWS_ROUNDS rounds, default 7). Starts a private moto
server for the run (tests/contract/moto_server.py). Each figure is the median of its rounds;
within a round the adapter and its floors take turns (the order rotates each round), and each
ratio is the median of the per-round ratios, so load from other processes hits all sides alike.
moto is the server here, so absolute figures say little about AWS.

Every figure has two floors, so that what our code costs and what the protocol costs show
separately: the barest raw calls for the same result, and raw boto3 making the same requests
the adapter's protocol needs.

- S3 state store: sequential compare-and-swap writes of one record (revision N -> N+1).
  Floors: raw `put_object(IfNoneMatch='*')` of the same revision objects; and raw boto3 sending
  what one CAS write without If-Match needs (DESIGN §4): the create with If-None-Match and a
  writer tag, the listing that checks the predecessor, the HEAD confirming the tag (moto's
  conditional PUTs are not trusted to be atomic), the delete of the revision compaction drops.
- S3 blob store put of BLOB_MB (multipart, sha256 metadata). Floors: boto3 `upload_fileobj`;
  and `upload_fileobj` to a staging key + the server-side copy that attaches the sha256 as the
  object becomes visible + the staged copy's delete.
- S3 blob store full get. Floors: `get_object` read in the same chunks; and the same with the
  sha256 check the adapter makes.
- SQS queue: send_batch of BATCH, receive(BATCH), one ack each. Floors: raw boto3
  send_message_batch / receive_message / delete_message; and the same calls asking for the two
  attributes every Message carries (receive count, sent time).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

import boto3

from shared.adapters.aws.s3_blob_store import S3BlobStore
from shared.adapters.aws.s3_client import make_s3_client
from shared.adapters.aws.s3_state_store import S3StateStore
from shared.adapters.aws.sqs_queue import SqsQueue
from tests.contract import moto_server

REPEATS = int(os.environ.get("TROVELESS_BENCH_AWS_ROUNDS", "7"))
CAS_WRITES = 60
REVISIONS_KEPT = 20  # S3StateStore's default
BLOB_MB = 32
BATCH = 10
MESSAGES = 100
BODY = {"op": "engine.step", "execution": "exec-0123456789", "state": "CreateServer", "attempt": 1}
# About the size of the adapter's revision envelope of {"n": 42}.
_REVISION_BODY = (
    b'{"data":{"n":42},"key":"instances/bench","revision":42,"sha256":"' + b"0" * 64 + b'"}'
)


def _s3(endpoint: str) -> Any:
    return make_s3_client(
        endpoint,
        region=moto_server.REGION,
        access_key=moto_server.ACCESS_KEY,
        secret_key=moto_server.SECRET_KEY,
    )


def _sqs(endpoint: str) -> Any:
    return boto3.client(
        "sqs",
        endpoint_url=endpoint,
        region_name=moto_server.REGION,
        aws_access_key_id=moto_server.ACCESS_KEY,
        aws_secret_access_key=moto_server.SECRET_KEY,
    )


def _fresh_bucket(endpoint: str) -> tuple[Any, str]:
    client = _s3(endpoint)
    bucket = f"bench-{uuid.uuid4().hex[:16]}"
    client.create_bucket(Bucket=bucket)
    return client, bucket


# --------------------------------------------------------------------------- state store
def _cas_ours(endpoint: str) -> float:
    client, bucket = _fresh_bucket(endpoint)
    store = S3StateStore(client, bucket, "state/")
    started = time.perf_counter()
    for revision in range(CAS_WRITES):
        store.put("instances/bench", {"n": revision}, revision)
    return CAS_WRITES / (time.perf_counter() - started)


def _cas_raw(endpoint: str) -> float:
    client, bucket = _fresh_bucket(endpoint)
    started = time.perf_counter()
    for revision in range(1, CAS_WRITES + 1):
        client.put_object(
            Bucket=bucket,
            Key=f"state/records/instances/bench/@r/{revision:09d}.json",
            Body=b'{"n": 1}',
            IfNoneMatch="*",
        )
    return CAS_WRITES / (time.perf_counter() - started)


def _cas_protocol_raw(endpoint: str) -> float:
    """Raw boto3 sending the requests one CAS write needs without If-Match (DESIGN §4), as the
    adapter does on a store whose conditional PUTs may not be atomic (moto): the create with
    If-None-Match and a writer tag, a listing of the record's revisions, a HEAD reading the tag
    back, and the delete of the revision compaction drops."""
    client, bucket = _fresh_bucket(endpoint)
    prefix = "state/records/instances/bench/@r/"
    started = time.perf_counter()
    for revision in range(1, CAS_WRITES + 1):
        key = f"{prefix}{revision:09d}.json"
        client.put_object(
            Bucket=bucket,
            Key=key,
            Body=_REVISION_BODY,
            ContentType="application/json",
            IfNoneMatch="*",
            Metadata={"writer": uuid.uuid4().hex},
        )
        client.list_objects_v2(Bucket=bucket, Prefix=prefix, Delimiter="/")
        client.head_object(Bucket=bucket, Key=key)
        if revision > REVISIONS_KEPT + 1:
            client.delete_object(
                Bucket=bucket, Key=f"{prefix}{revision - REVISIONS_KEPT - 1:09d}.json"
            )
    return CAS_WRITES / (time.perf_counter() - started)


# --------------------------------------------------------------------------- blob store
_PAYLOAD = bytes(range(256)) * (4096 * BLOB_MB)  # BLOB_MB MiB, compressible like nothing real
_PAYLOAD_SHA256 = hashlib.sha256(_PAYLOAD).hexdigest()
_CHUNK = 1 << 20


def _chunks() -> Any:
    view = memoryview(_PAYLOAD)
    return (bytes(view[i : i + _CHUNK]) for i in range(0, len(_PAYLOAD), _CHUNK))


def _blob_put_ours(endpoint: str) -> float:
    client, bucket = _fresh_bucket(endpoint)
    store = S3BlobStore(client, bucket, "backups/")
    started = time.perf_counter()
    store.put("bench/blob", _chunks())
    return BLOB_MB / (time.perf_counter() - started)


def _blob_put_raw(endpoint: str) -> float:
    client, bucket = _fresh_bucket(endpoint)
    started = time.perf_counter()
    client.upload_fileobj(io.BytesIO(_PAYLOAD), bucket, "backups/blobs/bench/blob")
    return BLOB_MB / (time.perf_counter() - started)


def _blob_put_protocol_raw(endpoint: str) -> float:
    """boto3 making the requests the adapter's put needs: the upload to a staging key
    (`upload_fileobj`), the server-side copy that gives the object its sha256 metadata as it
    becomes visible, and the staged copy's delete."""
    client, bucket = _fresh_bucket(endpoint)
    started = time.perf_counter()
    client.upload_fileobj(io.BytesIO(_PAYLOAD), bucket, "backups/staging/bench")
    client.copy_object(
        Bucket=bucket,
        Key="backups/blobs/bench/blob",
        CopySource={"Bucket": bucket, "Key": "backups/staging/bench"},
        Metadata={"sha256": _PAYLOAD_SHA256},
        MetadataDirective="REPLACE",
    )
    client.delete_object(Bucket=bucket, Key="backups/staging/bench")
    return BLOB_MB / (time.perf_counter() - started)


def _blob_get_ours(endpoint: str) -> float:
    client, bucket = _fresh_bucket(endpoint)
    store = S3BlobStore(client, bucket, "backups/")
    store.put("bench/blob", _chunks())
    started = time.perf_counter()
    size = sum(len(chunk) for chunk in store.get("bench/blob"))
    assert size == len(_PAYLOAD)
    return BLOB_MB / (time.perf_counter() - started)


def _blob_get_raw(endpoint: str) -> float:
    client, bucket = _fresh_bucket(endpoint)
    client.upload_fileobj(io.BytesIO(_PAYLOAD), bucket, "raw")
    started = time.perf_counter()
    body = client.get_object(Bucket=bucket, Key="raw")["Body"]
    size = sum(len(chunk) for chunk in body.iter_chunks(_CHUNK))
    assert size == len(_PAYLOAD)
    return BLOB_MB / (time.perf_counter() - started)


def _blob_get_verified_raw(endpoint: str) -> float:
    """`get_object` with the same check the adapter makes: sha256 of the bytes as they come."""
    client, bucket = _fresh_bucket(endpoint)
    client.upload_fileobj(io.BytesIO(_PAYLOAD), bucket, "raw")
    started = time.perf_counter()
    body = client.get_object(Bucket=bucket, Key="raw")["Body"]
    digest = hashlib.sha256()
    for chunk in body.iter_chunks(_CHUNK):
        digest.update(chunk)
    assert digest.hexdigest() == _PAYLOAD_SHA256
    return BLOB_MB / (time.perf_counter() - started)


# --------------------------------------------------------------------------- queue
def _queue_ours(endpoint: str) -> float:
    queue = SqsQueue(_sqs(endpoint), prefix=f"b{uuid.uuid4().hex[:8]}-")
    queue.ensure_queue("bench")
    bodies = [BODY] * BATCH
    started = time.perf_counter()
    for _ in range(MESSAGES // BATCH):
        queue.send_batch("bench", bodies)
        for message in queue.receive("bench", max_messages=BATCH, visibility_timeout=60):
            queue.ack("bench", message.receipt)
    return MESSAGES / (time.perf_counter() - started)


def _queue_raw(endpoint: str, *, as_the_port_needs: bool = False) -> float:
    """Raw boto3 send_message_batch / receive_message / delete_message. `as_the_port_needs`:
    ask for the two attributes every received Message carries (receive count, sent time) and
    pass the delay, as the adapter does; otherwise the barest calls."""
    client = _sqs(endpoint)
    url = client.create_queue(QueueName=f"raw-{uuid.uuid4().hex[:12]}")["QueueUrl"]
    entries: list[dict[str, Any]] = [
        {"Id": str(i), "MessageBody": json.dumps(BODY)} for i in range(BATCH)
    ]
    extra: dict[str, Any] = {}
    if as_the_port_needs:
        entries = [{**entry, "DelaySeconds": 0} for entry in entries]
        extra = {
            "WaitTimeSeconds": 0,
            "MessageSystemAttributeNames": ["ApproximateReceiveCount", "SentTimestamp"],
        }
    started = time.perf_counter()
    for _ in range(MESSAGES // BATCH):
        client.send_message_batch(QueueUrl=url, Entries=entries)
        received = client.receive_message(
            QueueUrl=url, MaxNumberOfMessages=BATCH, VisibilityTimeout=60, **extra
        ).get("Messages", [])
        for message in received:
            client.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    return MESSAGES / (time.perf_counter() - started)


def _queue_raw_as_the_port_needs(endpoint: str) -> float:
    return _queue_raw(endpoint, as_the_port_needs=True)


# --------------------------------------------------------------------------- run
Measure = Callable[[str], float]


def _rounds(sides: list[Measure], endpoint: str) -> list[list[float]]:
    """REPEATS rounds of every side, in an order that rotates each round; rates per side."""
    rates: list[list[float]] = [[] for _ in sides]
    for round_number in range(REPEATS):
        shift = round_number % len(sides)
        for index in [*range(shift, len(sides)), *range(shift)]:
            rates[index].append(sides[index](endpoint))
    return rates


def _rows(
    figure: str, unit: str, ours: Measure, floors: list[tuple[str, Measure]], endpoint: str
) -> list[dict[str, Any]]:
    """One row per floor: our median, the floor's, and the median of the per-round ratios."""
    mine, *theirs = _rounds([ours, *(measure for _, measure in floors)], endpoint)
    return [
        {
            "figure": f"{figure} vs {label}",
            "value": round(statistics.median(mine), 1),
            "unit": unit,
            "goal": "ratio >= 0.9",
            "floor": round(statistics.median(floor), 1),
            "ratio": round(statistics.median(a / b for a, b in zip(mine, floor, strict=True)), 2),
        }
        for (label, _), floor in zip(floors, theirs, strict=True)
    ]


def run() -> list[dict[str, Any]]:
    """Measure the figures; each row has figure, value, unit, goal, floor and ratio."""
    server = moto_server.start_moto_server()
    try:
        endpoint = server.endpoint
        return [
            *_rows(
                "S3 state store CAS writes/s (moto)",
                "ops/s",
                _cas_ours,
                [
                    ("bare conditional PUTs", _cas_raw),
                    ("raw boto3 sending the protocol's requests", _cas_protocol_raw),
                ],
                endpoint,
            ),
            *_rows(
                f"S3 blob store put MB/s ({BLOB_MB} MiB, moto)",
                "MB/s",
                _blob_put_ours,
                [
                    ("boto3 upload_fileobj", _blob_put_raw),
                    ("upload_fileobj + the staging copy and delete", _blob_put_protocol_raw),
                ],
                endpoint,
            ),
            *_rows(
                f"S3 blob store get MB/s ({BLOB_MB} MiB, moto)",
                "MB/s",
                _blob_get_ours,
                [
                    ("boto3 get_object", _blob_get_raw),
                    ("get_object + hashlib sha256", _blob_get_verified_raw),
                ],
                endpoint,
            ),
            *_rows(
                f"SQS queue msg/s (send_batch+receive+ack, batches of {BATCH}, moto)",
                "msg/s",
                _queue_ours,
                [
                    ("bare raw boto3 calls", _queue_raw),
                    (
                        "raw boto3 asking for the attributes a Message needs",
                        _queue_raw_as_the_port_needs,
                    ),
                ],
                endpoint,
            ),
        ]
    finally:
        server.stop()
