"""Store keys as directory paths, shared by the local StateStore and BlobStore.

A key `instances/abc` becomes the directory `<namespace>/instances/abc/`, and what the store keeps
for that key lives inside it under a name starting with `@` (`@r` for a record's revisions,
`@meta` for a blob). Key segments cannot contain `@`, so `a` and `a/b` never collide, whatever
the segments are called.

Beyond `KEY_PATTERN`, a filesystem needs two more rules: a segment may not be `.` (it would alias
its parent directory) and may not be longer than a file name can be (255 bytes).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from shared.errors import InvalidKeyError
from shared.ports import KEY_PATTERN

MAX_KEY_LENGTH = 512
MAX_SEGMENT_LENGTH = 255
_KEY_RE = re.compile(KEY_PATTERN)
# Names the stores use inside key directories; key segments never start with this.
INTERNAL_PREFIX = "@"


def key_segments(key: object) -> list[str]:
    """The '/'-separated segments of a valid key; InvalidKeyError names the broken rule."""
    if not isinstance(key, str):
        raise InvalidKeyError(repr(key), "keys are strings")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidKeyError(key, f"longer than {MAX_KEY_LENGTH} characters")
    if not _KEY_RE.fullmatch(key):
        raise InvalidKeyError(
            key, "'/'-separated segments of letters, digits, '.', '_' and '-', without '..'"
        )
    segments = key.split("/")
    for segment in segments:
        if segment == ".":
            raise InvalidKeyError(key, "a segment may not be '.'")
        if len(segment) > MAX_SEGMENT_LENGTH:
            raise InvalidKeyError(key, f"a segment is longer than {MAX_SEGMENT_LENGTH} characters")
    return segments


def key_directory(namespace: Path, key: str) -> Path:
    """The directory that holds `key`'s files under `namespace` (the key is validated)."""
    return namespace.joinpath(*key_segments(key))


def keys_with_entry(namespace: Path, entry: str, prefix: str = "") -> list[str]:
    """Keys under `namespace` whose directory holds `entry`, starting with `prefix`, sorted.

    Only directories that can lead to a matching key are visited.
    """
    found: list[str] = []

    def visit(directory: Path, key_prefix: str) -> None:
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError):
            return  # removed while we walked: it holds nothing live any more
        for item in entries:
            name = item.name
            if name.startswith(INTERNAL_PREFIX):
                if name == entry and key_prefix and key_prefix[:-1].startswith(prefix):
                    found.append(key_prefix[:-1])
                continue
            candidate = key_prefix + name
            could_match = candidate.startswith(prefix) or prefix.startswith(candidate + "/")
            if could_match and item.is_dir(follow_symlinks=False):
                visit(Path(item.path), candidate + "/")

    visit(namespace, "")
    found.sort()
    return found
