"""A stand-in guest agent for compute tests (the real one is `guest_agent`).

Runs with the system Python and the standard library only, as the unprivileged guest user.
Reads its user-data and the meta-data beside it, starts a child "datastore" in a session of its
own (as real datastores are started), and writes a heartbeat file on the volume every 50 ms.
user-data switches: `ignore_sigterm` (the agent will not stop: tests SIGKILL escalation) and
`orphan_datastore` (on SIGTERM the agent exits without stopping its datastore).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

DATASTORE = "import time\nwhile True:\n    time.sleep(1)\n"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--user-data", required=True)
    args = parser.parse_args()
    user_data_path = Path(args.user_data)
    user_data = json.loads(user_data_path.read_text())
    meta = json.loads(user_data_path.with_name("meta-data.json").read_text())
    volume = Path(meta["volume"]["mount_point"])

    datastore = subprocess.Popen(
        [sys.executable, "-c", DATASTORE], start_new_session=True, stdin=subprocess.DEVNULL
    )
    (volume / "datastore.pid").write_text(str(datastore.pid))

    stopping = False

    def on_sigterm(signum: int, frame: object) -> None:
        nonlocal stopping
        if user_data.get("ignore_sigterm"):
            return
        stopping = True

    signal.signal(signal.SIGTERM, on_sigterm)
    beat = 0
    while not stopping:
        beat += 1
        heartbeat = {
            "beat": beat,
            "pid": os.getpid(),
            "uid": os.getuid(),
            "sid": os.getsid(0),
            "datastore_pid": datastore.pid,
            "instance_id": meta["instance_id"],
            "address": meta["address"],
            "user_data_marker": user_data.get("marker"),
        }
        tmp = volume / "heartbeat.json.tmp"
        tmp.write_text(json.dumps(heartbeat))
        tmp.replace(volume / "heartbeat.json")
        time.sleep(0.05)
    if not user_data.get("orphan_datastore"):
        datastore.terminate()
        datastore.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
