"""What the local StateStore and BlobStore leave on disk: compaction, leftovers, damage."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from shared.adapters.local.blob_store import STALE_DATA_SECONDS, DirectoryBlobStore
from shared.adapters.local.state_store import (
    STALE_STAGING_SECONDS,
    DirectoryStateStore,
    Durability,
)
from shared.errors import ConflictError, CorruptDataError, InvalidKeyError


def revision_files(root: Path, key: str) -> list[str]:
    return sorted(p.name for p in (root / "records" / key / "@r").glob("*.json"))


def test_compaction_keeps_the_last_revisions(tmp_path: Path) -> None:
    store = DirectoryStateStore(tmp_path, revisions_kept=5)
    record = store.put("k", {"n": 0}, 0)
    for n in range(1, 100):
        record = store.put("k", {"n": n}, record.revision)
    names = revision_files(tmp_path, "k")
    assert [int(name.split(".")[0]) for name in names] == [96, 97, 98, 99, 100]
    latest = store.get("k")
    assert latest is not None and (latest.revision, latest.data) == (100, {"n": 99})


def test_a_losing_write_leaves_no_file(tmp_path: Path) -> None:
    store = DirectoryStateStore(tmp_path)
    record = store.put("k", {"n": 0}, 0)
    store.put("k", {"n": 1}, record.revision)
    for _ in range(3):
        with pytest.raises(ConflictError):
            store.put("k", {"n": "late"}, record.revision)
    with pytest.raises(ConflictError):
        store.put("k", {"n": "again"}, 0)
    assert len(revision_files(tmp_path, "k")) == 2
    assert os.listdir(tmp_path / "staging") == []


@pytest.mark.parametrize("durability", list(Durability))
def test_every_durability_mode_reads_back_what_it_wrote(
    tmp_path: Path, durability: Durability
) -> None:
    store = DirectoryStateStore(tmp_path, durability=durability)
    record = store.put("k", {"n": 0}, 0)
    record = store.put("k", {"n": 1}, record.revision)
    reopened = DirectoryStateStore(tmp_path, durability=durability).get("k")
    assert reopened == record


def test_a_token_naming_a_missing_file_is_corruption_not_a_hang(tmp_path: Path) -> None:
    store = DirectoryStateStore(tmp_path)
    store.put("k", {"n": 0}, 0)
    path = store.latest_revision_path("k")
    assert path is not None
    path.unlink()
    with pytest.raises(CorruptDataError) as caught:
        store.get("k")
    assert caught.value.key == "k"


def test_a_dot_segment_is_refused_because_it_would_alias_its_parent(tmp_path: Path) -> None:
    store = DirectoryStateStore(tmp_path)
    for key in (".", "a/.", "./a", "a/./b"):
        with pytest.raises(InvalidKeyError):
            store.put(key, {}, 0)


def test_delete_prunes_emptied_directories_but_not_shared_ones(tmp_path: Path) -> None:
    store = DirectoryStateStore(tmp_path)
    store.put("a/b/c", {}, 0)
    store.put("a/x", {}, 0)
    store.delete("a/b/c")
    assert not (tmp_path / "records" / "a" / "b").exists()
    assert (tmp_path / "records" / "a" / "x" / "@r").is_dir()
    store.delete("a/x")
    assert os.listdir(tmp_path / "records") == []


def test_opening_sweeps_what_dead_processes_left(tmp_path: Path) -> None:
    DirectoryStateStore(tmp_path)
    (tmp_path / "trash" / "half-deleted" / "@r").mkdir(parents=True)
    stale = tmp_path / "staging" / "dead-creator"
    fresh = tmp_path / "staging" / "busy-creator"
    stale.mkdir()
    fresh.mkdir()
    old = time.time() - STALE_STAGING_SECONDS - 60
    os.utime(stale, (old, old))
    DirectoryStateStore(tmp_path)
    assert os.listdir(tmp_path / "trash") == []
    assert os.listdir(tmp_path / "staging") == ["busy-creator"]


# --------------------------------------------------------------------------- blobs
def blob_files(root: Path, key: str) -> list[str]:
    directory = root / "blobs" / key
    return sorted(n for n in os.listdir(directory) if n.startswith("@"))


def test_a_failed_blob_put_leaves_no_files_or_directories(tmp_path: Path) -> None:
    store = DirectoryBlobStore(tmp_path)

    def broken() -> object:
        yield b"x" * 1000
        raise OSError("source gone")

    with pytest.raises(OSError, match="source gone"):
        store.put("backups/inst/b1", broken())  # type: ignore[arg-type]
    assert os.listdir(tmp_path / "blobs") == []


def test_replacing_a_blob_removes_the_old_bytes(tmp_path: Path) -> None:
    store = DirectoryBlobStore(tmp_path)
    store.put("k", [b"one"])
    store.put("k", [b"two"])
    files = blob_files(tmp_path, "k")
    assert len(files) == 2 and "@meta" in files
    assert store.data_path("k").read_bytes() == b"two"
    store.delete("k")
    assert not (tmp_path / "blobs" / "k").exists()


def test_orphaned_blob_files_are_swept_once_old(tmp_path: Path) -> None:
    store = DirectoryBlobStore(tmp_path)
    store.put("k", [b"v1"])
    directory = tmp_path / "blobs" / "k"
    orphan = directory / "@deadbeef.data"  # a concurrent put's version that lost
    young = directory / "@cafe.part"  # a put still streaming
    orphan.write_bytes(b"lost")
    young.write_bytes(b"streaming")
    old = time.time() - STALE_DATA_SECONDS - 60
    os.utime(orphan, (old, old))
    store.put("k", [b"v2"])
    assert not orphan.exists()
    assert young.exists()


def test_a_blob_delete_cut_short_is_finished_by_the_next_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = DirectoryBlobStore(tmp_path)
    store.put("backups/b1", [b"bytes"])
    data = store.data_path("backups/b1")
    # What a delete leaves when its process dies just after the sidecar moved to trash:
    os.rename(tmp_path / "blobs" / "backups" / "b1" / "@meta", tmp_path / "trash" / "x.meta")
    monkeypatch.setattr("shared.adapters.local.blob_store.STALE_GRAVE_SECONDS", -1.0)
    DirectoryBlobStore(tmp_path)
    assert not data.exists()
    assert os.listdir(tmp_path / "trash") == []
