"""The whole server path per datastore, beside the raw floor measured in the same run.

- value: `LocalCompute.create_server` (loop volume, address, cgroup, guest agent started as the
  unprivileged user) -> the agent's first heartbeat -> a signed `prepare` -> its verified result,
  which the guest sends once the datastore accepts connections. Seconds, median of REPEATS.
- floor: init + start of the same binary until its socket accepts (bench.prepare's floors).
- goal: value <= 1.25 x floor + 0.15 s (issue #4); ratio = value / floor.

Needs root (loop mounts, cgroups, the guest user); the guest runs from this venv's interpreter.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.prepare import _floor_mariadb, _floor_postgresql, _floor_redis, _scratch
from infra.local.cloud import LocalCloud
from infra.local.demo import EventPump
from shared.crypto import new_instance_secret
from shared.ports import FlavorSpec
from shared.services.guest_channel import GuestClient, GuestEventVerifier
from shared.settings import load_settings

REPEATS = 3
FLOORS = {"mariadb": _floor_mariadb, "postgresql": _floor_postgresql, "redis": _floor_redis}


def _server_path(cloud: LocalCloud, pump: EventPump, secrets: dict[str, bytes], kind: str) -> float:
    instance_id = str(uuid.uuid4())
    secret = new_instance_secret()
    secrets[instance_id] = secret
    client = GuestClient(cloud.queue, cloud.clock, instance_id, secret)
    started = time.perf_counter()
    try:
        user_data = cloud.guest_user_data(instance_id, kind, "default", secret)
        cloud.compute.create_server(
            instance_id, FlavorSpec(ram_mb=256, vcpus=1), 1, None, user_data
        )
        pump.call(client, "prepare", {"databases": [], "users": []})
        return time.perf_counter() - started
    except Exception:
        server_dir = cloud.compute.root / "servers" / instance_id
        for log in [server_dir / "agent.log", *sorted((server_dir / "data" / "log").glob("*"))]:
            print(f"--- {log}\n{log.read_text()[-3000:]}" if log.is_file() else f"--- no {log}")
        raise
    finally:
        cloud.compute.delete_server(instance_id)


def run() -> list[dict[str, Any]]:
    root = Path(tempfile.mkdtemp(prefix="tl-bench-", dir="/tmp"))
    cloud = LocalCloud.from_settings(
        load_settings(data_dir=root, heartbeat_interval=0.5, heartbeat_expiry=5)
    )
    secrets: dict[str, bytes] = {}
    pump = EventPump(cloud, GuestEventVerifier(cloud.state, cloud.clock, secrets.get))
    rows = []
    try:
        with _scratch() as scratch:
            for kind, floor in FLOORS.items():
                values, floors = [], []
                for _ in range(REPEATS):  # interleaved: machine noise hits both alike
                    floors.append(floor(scratch))
                    values.append(_server_path(cloud, pump, secrets, kind))
                value, floor_value = statistics.median(values), statistics.median(floors)
                rows.append(
                    {
                        "figure": f"server {kind}: create_server -> prepared (agent included)",
                        "value": round(value, 3),
                        "unit": "s",
                        "goal": f"<= {1.25 * floor_value + 0.15:.3f}",
                        "floor": round(floor_value, 3),
                        "ratio": round(value / floor_value, 2),
                    }
                )
    finally:
        for server in cloud.compute.list_servers():
            cloud.compute.delete_server(server.instance_id)
        cloud.close()
        shutil.rmtree(root, ignore_errors=True)
    return rows


if __name__ == "__main__":
    for row in run():
        print(row)
