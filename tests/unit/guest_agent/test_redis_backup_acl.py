"""The ACL section at the front of a Redis backup stream: written, split off again however
the restored bytes are chunked, absent from older backups, and filtered on restore."""

from __future__ import annotations

import io

import pytest

from guest_agent.backup.redis import (
    ACL_MAGIC,
    AclSplitter,
    acl_section,
    restorable_acl_lines,
)
from guest_agent.backup.stream import BackupChecksumError
from guest_agent.datastores.redis import redis_password_hash

RDB = b"REDIS0010" + bytes(range(256)) * 40
USER = f"user app on {redis_password_hash('App-pw-12345')} ~* &* +@all -@dangerous"


def split(stream: bytes, piece: int) -> tuple[list[str], bytes]:
    rdb = io.BytesIO()
    sink = AclSplitter(rdb, "b1")
    for start in range(0, len(stream), piece):
        assert sink.write(stream[start : start + piece]) == len(stream[start : start + piece])
    sink.close()
    return sink.lines, rdb.getvalue()


@pytest.mark.parametrize("piece", [1, 7, 4096, 1 << 20])
def test_the_section_comes_off_whatever_the_chunking(piece: int) -> None:
    stream = acl_section([USER, "user other off #" + "ab" * 32]) + RDB
    lines, rdb = split(stream, piece)
    assert lines == [USER, "user other off #" + "ab" * 32]
    assert rdb == RDB


@pytest.mark.parametrize("piece", [1, 3, 1 << 20])
def test_an_older_backup_without_the_section_is_all_rdb(piece: int) -> None:
    assert split(RDB, piece) == ([], RDB)
    assert split(b"RED", piece) == ([], b"RED")  # shorter than a header: still passed on


def test_an_empty_section_restores_no_user() -> None:
    assert split(acl_section([]) + RDB, 5) == ([], RDB)


def test_a_malformed_section_is_a_checksum_error_naming_the_backup() -> None:
    with pytest.raises(BackupChecksumError, match="b1"):
        split(ACL_MAGIC + (5).to_bytes(4, "big") + b"nope!" + RDB, 64)
    with pytest.raises(BackupChecksumError, match="b1"):
        split(ACL_MAGIC + (1 << 30).to_bytes(4, "big") + RDB, 64)


def test_restore_keeps_tenant_users_with_hashed_passwords_only() -> None:
    lines = [
        USER,
        "user os_admin on #" + "cd" * 32 + " ~* &* +@all",
        "user default on nopass ~* &* +@all",
        "user sneaky on >plaintext ~* +@all",
        "user two on #" + "ef" * 32 + " ~* &* +@all\nuser injected on nopass +@all",
        "not an acl line",
    ]
    assert restorable_acl_lines(lines) == [USER]
