"""What every function handler runs with: the ports, wired for the current profile.

A handler module calls `get_runtime()` and builds the one service it needs from it. On a cloud
the first call builds the runtime from settings (a cold start: `infra.wiring.build_runtime`);
the embedded cloud and tests install theirs with `set_runtime`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from shared.ports import (
    BlobStore,
    Clock,
    Compute,
    Queue,
    StateStore,
    TokenValidator,
    Workflows,
)
from shared.settings import Settings


@dataclass
class Runtime:
    settings: Settings
    clock: Clock
    store: StateStore
    blobs: BlobStore
    queue: Queue
    compute: Compute
    workflows: Workflows
    master_key: bytes  # wraps per-instance secrets before they reach the store
    # Who validates API tokens: None means our own signed tokens (TokenService, local
    # profile); the OpenStack wiring sets Keystone's validator.
    token_validator: TokenValidator | None = None


_lock = threading.Lock()
_runtime: Runtime | None = None


def set_runtime(runtime: Runtime | None) -> None:
    global _runtime
    with _lock:
        _runtime = runtime


def get_runtime() -> Runtime:
    global _runtime
    with _lock:
        if _runtime is None:
            from infra.wiring import build_runtime  # cold start: the composition root
            from shared.settings import load_settings

            _runtime = build_runtime(load_settings())
        return _runtime
