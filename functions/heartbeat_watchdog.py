"""The heartbeat watchdog's timer function: guest agents gone silent fail the guest task a
flow waits on and show SHUTDOWN (shared/services/heartbeat_watchdog.py). `handler` is the
Lambda entry (an EventBridge schedule); `run` is what the embedded server's timer calls with
its runtime. Only one watchdog acts at a time (a StateStore lease), however many timers fire."""

from __future__ import annotations

from typing import Any

from functions.runtime import Runtime, get_runtime
from shared.observability import get_logger
from shared.services.heartbeat_watchdog import HeartbeatWatchdog, WatchdogReport

log = get_logger("heartbeat-watchdog-fn")


def watchdog(runtime: Runtime) -> HeartbeatWatchdog:
    return HeartbeatWatchdog(
        runtime.store,
        runtime.clock,
        runtime.workflows,
        heartbeat_expiry=runtime.settings.heartbeat_expiry,
        heartbeat_interval=runtime.settings.heartbeat_interval,
        queue=runtime.queue,
    )


def _tick(runtime: Runtime) -> WatchdogReport:
    report = watchdog(runtime).tick()
    if report.waits_failed or report.marked_shutdown:
        log.info(
            "lost guest agents handled",
            extra={"waits_failed": report.waits_failed, "shutdown": report.marked_shutdown},
        )
    return report


def run(runtime: Runtime) -> None:
    _tick(runtime)


def handler(event: dict[str, Any] | None, context: object | None) -> dict[str, Any]:
    report = _tick(get_runtime())
    return {
        "skipped": report.skipped,
        "consumer_behind": report.consumer_behind,
        "lost": report.lost,
        "waits_failed": report.waits_failed,
        "marked_shutdown": report.marked_shutdown,
    }
