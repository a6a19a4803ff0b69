"""The backup timer: fires due backup schedules (exactly once, however many timers run) and
applies retention. `handler` is the Lambda entry (an EventBridge schedule, every minute);
`run` is what the embedded server's timer calls with its runtime."""

from __future__ import annotations

from typing import Any

from functions.runtime import Runtime, get_runtime
from shared.observability import get_logger
from shared.services.backup_schedules import BackupScheduler
from shared.services.backups import BackupService

log = get_logger("backup-scheduler")


def scheduler(runtime: Runtime) -> BackupScheduler:
    return BackupScheduler(
        runtime.store, runtime.clock, BackupService.from_runtime(runtime, runtime.blobs)
    )


def run(runtime: Runtime) -> None:
    started = scheduler(runtime).tick()
    if started:
        log.info("scheduled backups started", extra={"backup_ids": started})


def handler(event: dict[str, Any] | None, context: object | None) -> dict[str, Any]:
    started = scheduler(get_runtime()).tick()
    return {"started": started}
