"""`python -m guest_agent --user-data PATH [--meta-data PATH]`: run one instance's guest agent.

Exit status: 0 after SIGTERM/SIGINT (an orderly stop), 2 for bad user-data or meta-data,
1 when the agent cannot boot (unreadable state, no such datastore...).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from guest_agent.user_data import UserDataError, load_agent_config
from shared.clock import SystemClock
from shared.observability import get_logger

EXIT_CONFIG = 2
EXIT_BOOT = 1


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m guest_agent", description=__doc__)
    parser.add_argument("--user-data", type=Path, required=True, help="the user-data JSON file")
    parser.add_argument(
        "--meta-data",
        type=Path,
        default=None,
        help="the compute driver's meta-data JSON (default: $TROVELESS_META_DATA, "
        "or meta-data.json beside the user-data)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    log = get_logger("guest-agent")
    try:
        config = load_agent_config(args.user_data, args.meta_data)
    except UserDataError as exc:
        log.error("guest agent cannot start", extra={"error": str(exc)})
        return EXIT_CONFIG
    log.append_keys(instance_id=config.instance_id)

    # Imported after the configuration is known to be good: these pull in the adapters.
    from guest_agent.agent import GuestAgent
    from guest_agent.wiring import build_backends, build_manager, close_backends

    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("signal received: stopping", extra={"signal": signal.Signals(signum).name})
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    clock = SystemClock()
    try:
        backends = build_backends(config, clock)
        manager = build_manager(config)
        agent = GuestAgent(config, backends.queue, manager, clock, blobs=backends.blobs)
        agent.boot()
    except Exception as exc:
        log.exception("guest agent failed to boot", extra={"error": str(exc)})
        return EXIT_BOOT
    try:
        agent.run(stop)
        agent.shutdown()
    finally:
        close_backends(backends)
    return 0


if __name__ == "__main__":
    sys.exit(main())
