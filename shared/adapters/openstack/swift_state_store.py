"""The Swift StateStore: revisioned JSON records as immutable objects, CAS by create-if-absent.

Layout in the container, under `prefix` (the same as the S3 store's)::

    records/<key>/@r/000000042.json     one immutable object per revision (the last K kept)
    leases/<name>/@r/000000007.json     leases: records of {owner, expires_at, token}

The revision protocol (create-if-absent with `If-None-Match: *`, the predecessor check,
compaction to the last K, delete) is shared with the S3 store: shared/adapters/revision_objects.py.
This module gives it Swift's object verbs, sent through openstacksdk's object_store proxy
(see swift_client.py for why raw verbs rather than the sdk's object helpers). Leases are
records in their own namespace (shared/adapters/revision_leases.py).

Two properties of Swift the protocol has to live with:

- `If-None-Match: *` is checked when the object server receives the request, not when it
  commits the new file, and nothing is locked in between (swift/obj/server.py). Two creates of
  one name that overlap in time can both answer 201; the one with the later request timestamp
  is what stays. So each create carries a random claim (`X-Object-Meta-Writer`), and a writer
  that passed the predecessor check finally HEADs its revision and reports ConflictError if
  the claim there is not its own. That catches every racing create committed before the HEAD;
  one whose commit lands after it (a request stalled between the object server's check and its
  rename, longer than the writer's LIST + HEAD) would still overwrite a revision its writer was
  told it won: a lost update. Measured on the all-in-one (Swift 2.38.3): of 40 rounds of 8
  simultaneous `If-None-Match: *` PUTs of one new name, 32 answered 201 to more than one
  writer (13 to all 8); of 200 rounds of 8 simultaneous `put`s at one revision through this
  store, every round had exactly one winner. S3 has no such window (its conditional PUT is
  atomic).
- Container listings are updated by the object servers after each write. On a one-replica
  all-in-one that happens before the PUT answers, so a listing shows every write that
  completed before it. On a replicated cluster under load a container update can be deferred
  (async pending) and listings are only eventually consistent: a reader may then miss the
  newest revision and a writer's predecessor check may miss one, so on such clusters give the
  container's servers headroom (or keep state on a small, quiet container ring) and treat the
  store's CAS as best effort. This is Swift's design, not something a client can fix.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

from shared.adapters.openstack.swift_client import SwiftContainer, normalized_prefix
from shared.adapters.revision_state_store import RevisionObjectStateStore
from shared.ports import Clock

WRITER_HEADER = "X-Object-Meta-Writer"


class SwiftRevisionObjects:
    """The revision protocol's object operations on one Swift container."""

    def __init__(self, container: SwiftContainer) -> None:
        self._container = container

    def names(self, prefix: str, *, recursive: bool) -> Iterator[str]:
        for entry in self._container.listing(prefix, delimiter=None if recursive else "/"):
            yield entry["name"]

    def read(self, name: str) -> bytes | None:
        response = self._container.request("GET", name, expect=(200, 404))
        return response.content if response.status_code == 200 else None

    def create(self, name: str, body: bytes) -> str | None:
        claim = uuid.uuid4().hex
        response = self._container.request(
            "PUT",
            name,
            # 409: an object with a newer timestamp is there (a create that raced ours).
            expect=(201, 409, 412),
            headers={
                "If-None-Match": "*",
                "Content-Type": "application/json",
                WRITER_HEADER: claim,
            },
            data=body,
        )
        return claim if response.status_code == 201 else None

    def confirm(self, name: str, claim: str) -> bool:
        response = self._container.request("HEAD", name, expect=(200, 404))
        return response.status_code == 200 and response.headers.get(WRITER_HEADER) == claim

    def delete(self, name: str) -> None:
        self._container.request("DELETE", name, expect=(204, 404))


class SwiftStateStore(RevisionObjectStateStore):
    """StateStore on one Swift container; `object_store` is an authenticated
    `openstack.connection.Connection().object_store` (see swift_client.py)."""

    def __init__(
        self,
        object_store: Any,
        container: str,
        prefix: str = "",
        clock: Clock | None = None,
        revisions_kept: int = 20,
        *,
        create_container: bool = True,
    ) -> None:
        self.container = SwiftContainer(object_store, container)
        if create_container:
            self.container.ensure()
        objects = SwiftRevisionObjects(self.container)
        super().__init__(objects, normalized_prefix(prefix), clock, revisions_kept)
