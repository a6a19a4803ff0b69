"""Throughput of the AWS adapters against raw boto3 doing the same work, on one real moto server.

Starts a private moto server for the run (tests/contract/moto_server.py). Each figure is the
median of REPEATS rounds; within a round the adapter and the raw side take turns (the order
alternates), and the ratio is the median of the per-round ratios, so load from other processes
hits both sides alike. moto is the server here, so absolute figures say little about AWS; the
ratios say what the adapter's own protocol costs on top of the calls a raw client must make.

- S3 state store: sequential compare-and-swap writes of one record (revision N -> N+1). Floor:
  raw `put_object(IfNoneMatch='*')` of the same revision objects. Ours also lists the record to
  check the predecessor and deletes the revision compaction drops (DESIGN §4): the ratio is the
  price of CAS without If-Match.
- S3 blob store: streamed put of BLOB_MB (multipart, sha256 metadata) and a full get. Floor:
  boto3's `upload_fileobj` / `get_object` of the same bytes.
- SQS queue: send_batch of BATCH, receive(BATCH), one ack each. Floor: raw boto3
  send_message_batch / receive_message / delete_message, the same calls.
"""

from __future__ import annotations

import io
import json
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

REPEATS = 5
CAS_WRITES = 60
BLOB_MB = 32
BATCH = 10
MESSAGES = 100
BODY = {"op": "engine.step", "execution": "exec-0123456789", "state": "CreateServer", "attempt": 1}


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


# --------------------------------------------------------------------------- blob store
_PAYLOAD = bytes(range(256)) * (4096 * BLOB_MB)  # BLOB_MB MiB, compressible like nothing real
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


def _queue_raw(endpoint: str) -> float:
    client = _sqs(endpoint)
    url = client.create_queue(QueueName=f"raw-{uuid.uuid4().hex[:12]}")["QueueUrl"]
    entries = [{"Id": str(i), "MessageBody": json.dumps(BODY)} for i in range(BATCH)]
    started = time.perf_counter()
    for _ in range(MESSAGES // BATCH):
        client.send_message_batch(QueueUrl=url, Entries=entries)
        received = client.receive_message(
            QueueUrl=url, MaxNumberOfMessages=BATCH, VisibilityTimeout=60
        ).get("Messages", [])
        for message in received:
            client.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    return MESSAGES / (time.perf_counter() - started)


# --------------------------------------------------------------------------- run
def _paired(
    ours: Callable[[str], float], raw: Callable[[str], float], endpoint: str
) -> tuple[float, float, float]:
    """Median rate of each side and the median of the per-round ratios (ours / raw)."""
    mine: list[float] = []
    floor: list[float] = []
    for round_number in range(REPEATS):
        sides = [(ours, mine), (raw, floor)]
        for measure, rates in sides if round_number % 2 == 0 else reversed(sides):
            rates.append(measure(endpoint))
    ratio = statistics.median(a / b for a, b in zip(mine, floor, strict=True))
    return statistics.median(mine), statistics.median(floor), ratio


def _row(figure: str, unit: str, measured: tuple[float, float, float]) -> dict[str, Any]:
    value, floor, ratio = measured
    return {
        "figure": figure,
        "value": round(value, 1),
        "unit": unit,
        "goal": "ratio >= 0.9",
        "floor": round(floor, 1),
        "ratio": round(ratio, 2),
    }


def run() -> list[dict[str, Any]]:
    """Measure the figures; each row has figure, value, unit, goal, floor and ratio."""
    server = moto_server.start_moto_server()
    try:
        endpoint = server.endpoint
        return [
            _row(
                "S3 state store CAS writes/s vs raw conditional PUTs (moto)",
                "ops/s",
                _paired(_cas_ours, _cas_raw, endpoint),
            ),
            _row(
                f"S3 blob store put MB/s ({BLOB_MB} MiB) vs boto3 upload_fileobj (moto)",
                "MB/s",
                _paired(_blob_put_ours, _blob_put_raw, endpoint),
            ),
            _row(
                f"S3 blob store get MB/s ({BLOB_MB} MiB) vs boto3 get_object (moto)",
                "MB/s",
                _paired(_blob_get_ours, _blob_get_raw, endpoint),
            ),
            _row(
                f"SQS queue msg/s (send_batch+receive+ack, batches of {BATCH}) vs raw boto3",
                "msg/s",
                _paired(_queue_ours, _queue_raw, endpoint),
            ),
        ]
    finally:
        server.stop()
