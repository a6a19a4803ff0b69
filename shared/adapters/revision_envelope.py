"""The stored form of one record revision, shared by every StateStore adapter: the data as
canonical JSON inside an envelope naming its key, revision and sha256, so a truncated, damaged
or misplaced revision is reported (CorruptDataError) instead of returned."""

from __future__ import annotations

import json
from hashlib import sha256

from shared.errors import CorruptDataError
from shared.ports import JSON, Record


def canonical_json(data: JSON) -> bytes:
    """The bytes a record's data is stored and checksummed as (sorted keys, no spaces)."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def encode_revision(key: str, revision: int, body: bytes) -> bytes:
    """The stored revision for data serialised as `body` (see `canonical_json`)."""
    digest = sha256(body).hexdigest()
    # Same bytes as json.dumps(envelope, sort_keys=True) without serialising `data` twice.
    return b'{"data":%s,"key":%s,"revision":%d,"sha256":"%s"}' % (
        body,
        json.dumps(key).encode(),
        revision,
        digest.encode(),
    )


def decode_revision(key: str, revision: int, raw: bytes) -> Record:
    """The Record in a stored revision; CorruptDataError naming `key` if it does not check out."""
    try:
        envelope = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise CorruptDataError(
            key, f"revision {revision} is not valid JSON ({len(raw)} bytes; truncated?)"
        ) from None
    if not isinstance(envelope, dict) or not isinstance(envelope.get("data"), dict):
        raise CorruptDataError(key, f"revision {revision} has no data object")
    if envelope.get("key") != key or envelope.get("revision") != revision:
        raise CorruptDataError(
            key,
            f"revision {revision} holds key {envelope.get('key')!r} "
            f"revision {envelope.get('revision')!r}",
        )
    data: JSON = envelope["data"]
    if envelope.get("sha256") != sha256(canonical_json(data)).hexdigest():
        raise CorruptDataError(key, f"revision {revision} does not match its sha256")
    return Record(key, revision, data)
