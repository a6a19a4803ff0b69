"""One record per project listing its instances, so `GET /instances` reads one record, not one
per instance.

    project-listings/<project>   {"index": {<id>: [revision, updated]},
                                  "copies": "<JSON text of {<id>: instance}>",
                                  "removed": [<id>, ...]}

The copies are one JSON text, not nested objects, so a read that finds every (id, revision)
of the index already validated in this process (a warm function) parses only the index.

The instance records stay the truth; the listing is a copy that every write through
`InstanceRecords` merges into right after writing the instance (compare-and-swap on the
listing). Merges are monotonic, so concurrent writers converge on the newest copy whatever
order their merges land in:

- an entry is replaced only by a higher revision of the same instance;
- a removal leaves a tombstone (the id in `removed`), and a tombstoned id is never added
  back, so a slow writer whose merge lands after the delete's cannot resurrect the instance
  (ids are fresh UUIDs: nothing is ever re-created under a removed id). Only the newest
  MAX_TOMBSTONES are kept: a merge lagging that many deletes behind is not a real risk.

A missing listing (a project that predates it, or one dropped after too many lost races) is
seeded from the instance records by whoever needs it first; a seed only ever creates the
record (revision 0), so it cannot overwrite newer merges. The one gap is a process dying
between writing an instance and merging it: the listing then shows the previous copy of that
instance until its next write (`GET /instances/<id>` always reads the record itself).

Cost: each instance write also rewrites the project's listing (about 0.7 KB per instance).
"""

from __future__ import annotations

import contextlib
import json
import random
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shared.errors import ConflictError
from shared.models.instance import Instance
from shared.observability import get_logger
from shared.ports import JSON, StateStore

log = get_logger("instance-listing")

MAX_TOMBSTONES = 1000
_MERGE_ATTEMPTS = 50
_CACHE_ENTRIES = 20_000

# Fields a listing never shows, left out of its copies: the listing stays smaller and the
# sealed guest secret lives in one place only. Listed instances have them None.
OMITTED_FIELDS = ("encrypted_guest_secret", "task_execution_arn")

# id -> (revision, instance JSON), from the instance records themselves.
Seed = Callable[[str], dict[str, tuple[int, JSON]]]


def listing_key(project_id: str) -> str:
    return f"project-listings/{project_id}"


def listing_copy(data: JSON) -> JSON:
    return {k: v for k, v in data.items() if k not in OMITTED_FIELDS}


class _ValidatedInstances:
    """Instances already validated from listing copies, by (id, revision, updated): a warm
    process turns an unchanged copy back into its Instance without parsing it again."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: OrderedDict[tuple[str, int, str], Instance] = OrderedDict()

    def find_all(self, keys: list[tuple[str, int, str]]) -> list[Instance | None]:
        with self._lock:  # once for the whole listing: a thousand lookups take ~1 ms
            found = [self._items.get(key) for key in keys]
            for key, instance in zip(keys, found, strict=True):
                if instance is not None:
                    self._items.move_to_end(key)
            return found

    def add(self, key: tuple[str, int, str], instance: Instance) -> None:
        with self._lock:
            self._items[key] = instance
            while len(self._items) > _CACHE_ENTRIES:
                self._items.popitem(last=False)


# One cache per store (revisions are per store), dropped with the store.
_caches: weakref.WeakKeyDictionary[Any, _ValidatedInstances] = weakref.WeakKeyDictionary()
_caches_lock = threading.Lock()


def forget_validated() -> None:
    """Drop every process-wide cached Instance (a cold start, as benchmarks measure it)."""
    with _caches_lock:
        _caches.clear()


def _cache_for(store: StateStore) -> _ValidatedInstances:
    with _caches_lock:
        try:
            cache = _caches.get(store)
            if cache is None:
                cache = _caches[store] = _ValidatedInstances()
        except TypeError:  # a store that cannot be weakly referenced: no reuse across calls
            cache = _ValidatedInstances()
        return cache


@dataclass
class _Listing:
    """A listing record's content, with the copies parsed only when asked for."""

    index: dict[str, list[Any]]
    copies_text: str
    removed: list[str]
    _copies: dict[str, JSON] | None = None

    @classmethod
    def of(cls, data: JSON) -> _Listing:
        return cls(dict(data["index"]), str(data["copies"]), list(data["removed"]))

    @classmethod
    def new(cls, copies: dict[str, tuple[int, JSON]], removed: list[str]) -> _Listing:
        listing = cls({}, "{}", removed, {})
        for instance_id, (revision, data) in copies.items():
            listing.put(instance_id, revision, data)
        return listing

    @property
    def copies(self) -> dict[str, JSON]:
        if self._copies is None:
            self._copies = dict(json.loads(self.copies_text))
        return self._copies

    def put(self, instance_id: str, revision: int, data: JSON) -> None:
        self.copies[instance_id] = data
        self.index[instance_id] = [revision, str(data.get("updated"))]

    def drop(self, instance_id: str) -> bool:
        self.copies.pop(instance_id, None)
        return self.index.pop(instance_id, None) is not None

    def to_json(self) -> JSON:
        return {
            "index": self.index,
            "copies": json.dumps(self.copies, separators=(",", ":")),
            "removed": self.removed[-MAX_TOMBSTONES:],
        }


class ProjectListing:
    """Reads and merges the per-project listing record."""

    def __init__(self, store: StateStore, seed: Seed) -> None:
        self._store = store
        self._seed = seed

    def read(self, project_id: str) -> list[Instance]:
        """The project's instances, oldest first (seeding the listing if it is missing),
        without the OMITTED_FIELDS."""
        record = self._store.get(listing_key(project_id))
        if record is None:
            listing = self._seeded(project_id, removal=None)
            with contextlib.suppress(ConflictError):  # someone made it first: theirs is newer
                self._store.put(listing_key(project_id), listing.to_json(), 0)
        else:
            listing = _Listing.of(record.data)
        cache = _cache_for(self._store)
        keys = [(i, int(rev), str(updated)) for i, (rev, updated) in listing.index.items()]
        found = []
        for key, cached in zip(keys, cache.find_all(keys), strict=True):
            instance = cached
            if instance is None:
                instance = Instance.model_validate(listing.copies[key[0]])
                cache.add(key, instance)
            if instance.project_id == project_id:
                found.append(instance)
        found.sort(key=lambda i: (i.created, i.id))
        return found

    def record_write(self, project_id: str, instance_id: str, revision: int, data: JSON) -> None:
        self._merge(project_id, upsert=(instance_id, revision, listing_copy(data)))

    def record_removal(self, project_id: str, instance_id: str) -> None:
        self._merge(project_id, removal=instance_id)

    # ------------------------------------------------------------------ internals
    def _seeded(self, project_id: str, removal: str | None) -> _Listing:
        copies = {
            instance_id: (revision, listing_copy(data))
            for instance_id, (revision, data) in self._seed(project_id).items()
            if instance_id != removal
        }
        return _Listing.new(copies, [removal] if removal else [])

    def _merge(
        self,
        project_id: str,
        *,
        upsert: tuple[str, int, JSON] | None = None,
        removal: str | None = None,
    ) -> None:
        key = listing_key(project_id)
        for _ in range(_MERGE_ATTEMPTS):
            record = self._store.get(key)
            if record is None:
                # Seeded from the records, which already hold this write (or lack the removed
                # instance); a lost race to create means another merge made it: merge again.
                try:
                    self._store.put(key, self._seeded(project_id, removal).to_json(), 0)
                    return
                except ConflictError:
                    continue
            listing = _Listing.of(record.data)
            changed = False
            if removal is not None:
                changed = listing.drop(removal) or removal not in listing.removed
                if removal not in listing.removed:
                    listing.removed.append(removal)
            if upsert is not None:
                instance_id, revision, data = upsert
                current = listing.index.get(instance_id)
                if instance_id not in listing.removed and (
                    current is None or int(current[0]) < revision
                ):
                    listing.put(instance_id, revision, data)
                    changed = True
            if not changed:
                return
            try:
                self._store.put(key, listing.to_json(), record.revision)
                return
            except ConflictError:
                time.sleep(random.uniform(0, 0.005))  # back off so racing writers spread out
        # Too contended: drop the listing; the next reader or writer seeds it from the truth.
        log.warning("instance listing dropped after lost races", extra={"project_id": project_id})
        self._store.delete(key)
