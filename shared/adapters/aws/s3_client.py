"""The boto3 S3 client the S3 adapters share, and the few error checks they all need."""

from __future__ import annotations

from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError


def make_s3_client(
    endpoint_url: str | None = None,
    *,
    region: str = "us-east-1",
    access_key: str | None = None,
    secret_key: str | None = None,
    max_pool_connections: int = 16,
) -> Any:
    """A boto3 S3 client; without keys boto3's usual credential chain applies."""
    config = Config(
        region_name=region,
        s3={"addressing_style": "path"},
        # Our own sha256 already guards every byte; skip the extra CRC over large bodies.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        retries={"mode": "standard", "max_attempts": 5},
        max_pool_connections=max_pool_connections,
    )
    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        config=config,
    )


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def http_status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def is_not_found(exc: ClientError) -> bool:
    return http_status(exc) == 404 or error_code(exc) in ("NoSuchKey", "404", "NotFound")


def ensure_bucket(client: Any, bucket: str) -> None:
    """Create `bucket` if it does not exist (owning it already is fine)."""
    try:
        client.head_bucket(Bucket=bucket)
        return
    except ClientError as exc:
        if not is_not_found(exc) and error_code(exc) != "NoSuchBucket":
            raise
    try:
        region = client.meta.region_name
        if region and region != "us-east-1":
            client.create_bucket(
                Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": region}
            )
        else:
            client.create_bucket(Bucket=bucket)
    except ClientError as exc:
        if error_code(exc) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise


def normalized_prefix(prefix: str) -> str:
    """A key prefix ending with '/' (or empty), so stores under one bucket do not overlap."""
    if prefix and not prefix.endswith("/"):
        return prefix + "/"
    return prefix
