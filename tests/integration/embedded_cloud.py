"""The embedded cloud for integration tests: real local adapters, engine workers and the
guest-events consumer running in threads, torn down completely at the end."""

from __future__ import annotations

import random
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from functions import guest_events
from functions.runtime import Runtime, set_runtime
from infra.local.cloud import LocalCloud
from infra.wiring import build_local
from shared.settings import Settings, load_settings


@dataclass
class RunningCloud:
    root: Path
    settings: Settings
    runtime: Runtime
    cloud: LocalCloud


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 90.0) -> None:
    """Poll `condition` until it holds; AssertionError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


@contextmanager
def running_cloud(
    root: Path | None = None, *, prefix: str = "tl-it-", **overrides: object
) -> Iterator[RunningCloud]:
    """The embedded cloud on `root` (a fresh directory under /tmp, removed at the end, when not
    given: the guest user must be able to reach it, which pytest's 0700 tmp_path forbids)."""
    owned = root is None
    root = root or Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    # A pool of our own: test sessions running side by side must not share 127.x addresses.
    overrides.setdefault(
        "address_pool", f"127.{random.randint(64, 250)}.{random.randint(0, 255)}.0/24"
    )
    settings = load_settings(data_dir=root, heartbeat_interval=0.5, heartbeat_expiry=5, **overrides)
    runtime, cloud, driver = build_local(settings)
    set_runtime(runtime)
    stop = threading.Event()
    threads = [
        threading.Thread(target=driver.work, args=(stop.is_set,), kwargs={"wait_seconds": 0.2}),
        threading.Thread(
            target=guest_events.work,
            args=(stop.is_set,),
            kwargs={"runtime": runtime, "wait_seconds": 0.2},
        ),
    ]
    for thread in threads:
        thread.start()
    try:
        yield RunningCloud(root, settings, runtime, cloud)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        for server in cloud.compute.list_servers():
            with suppress(Exception):
                cloud.compute.delete_server(server.instance_id)
        left = cloud.compute.list_servers()
        set_runtime(None)
        cloud.close()
        if owned:
            shutil.rmtree(root, ignore_errors=True)
        assert not left, f"servers left behind: {left}"
        assert not any(t.is_alive() for t in threads), "a worker thread did not stop"
