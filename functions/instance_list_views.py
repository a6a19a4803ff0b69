"""The JSON body of `GET /instances` (and `/instances/detail`), rendered once per instance copy.

`InstanceService.list` hands back the very same Instance objects while their listing copies
are unchanged (shared/services/instance_listing.py keeps them per process), and an
instance's view depends only on it, the URLs and the region. So a warm function keeps each
instance's rendered JSON beside the object it came from and joins those fragments: a listing
of a thousand unchanged instances costs a lookup each, not a thousand views and a large
`json.dumps` (and the garbage-collector pauses their allocations cause).
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict

from functions.trove_views import ApiUrls, instance_view
from shared.models.instance import Instance

_MAX_FRAGMENTS = 20_000

# (id(instance), urls, region, detail) -> (the instance, its JSON). Holding the instance keeps
# its id from being reused while the entry lives; the `is` check makes a reuse harmless anyway.
_Key = tuple[int, str, str, str, bool]
_fragments: OrderedDict[_Key, tuple[Instance, str]] = OrderedDict()
_lock = threading.Lock()


def instance_list_body(
    instances: list[Instance], urls: ApiUrls, region: str, *, detail: bool
) -> str:
    """`{"instances": [...]}` as JSON text, each view rendered at most once per copy."""
    keys = [(id(i), urls.root, urls.project_id, region, detail) for i in instances]
    with _lock:
        known = [_fragments.get(key) for key in keys]
    parts = []
    fresh: list[tuple[_Key, tuple[Instance, str]]] = []
    for key, instance, entry in zip(keys, instances, known, strict=True):
        if entry is not None and entry[0] is instance:
            parts.append(entry[1])
            continue
        fragment = json.dumps(instance_view(instance, urls, region, detail=detail))
        fresh.append((key, (instance, fragment)))
        parts.append(fragment)
    with _lock:
        for key, entry in fresh:
            _fragments[key] = entry
        for key in keys:
            if key in _fragments:
                _fragments.move_to_end(key)
        while len(_fragments) > _MAX_FRAGMENTS:
            _fragments.popitem(last=False)
    return '{"instances": [' + ", ".join(parts) + "]}"


def forget_rendered() -> None:
    """Drop every kept fragment (a cold start, as benchmarks measure it)."""
    with _lock:
        _fragments.clear()
