"""The control plane's end of a guest-agent test, on any Queue: it sends signed commands
through GuestClient and verifies every event the agent sends back."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from shared.models import GuestResult, Heartbeat
from shared.ports import Queue
from shared.services.guest_channel import EVENTS_QUEUE, GuestClient, GuestEventVerifier

COMMAND_TIMEOUT = 60.0


@dataclass
class ControlPlane:
    """Commands out through `client`; events in from `queue`, verified by `verifier` and kept
    (heartbeats, results by command id, rejections). `poll_seconds` is each receive's wait
    (SQS counts in whole seconds; the local queue answers a short wait)."""

    queue: Queue
    client: GuestClient
    verifier: GuestEventVerifier
    poll_seconds: float = 0.1
    heartbeats: list[Heartbeat] = field(default_factory=list)
    results: dict[str, GuestResult] = field(default_factory=dict)
    rejected: list[str] = field(default_factory=list)

    def pump(self, wait: float | None = None) -> None:
        wait = self.poll_seconds if wait is None else wait
        for message in self.queue.receive(EVENTS_QUEUE, 10, 30, wait):
            verdict = self.verifier.verify(message.body)
            self.queue.ack(EVENTS_QUEUE, message.receipt)
            if isinstance(verdict.message, Heartbeat):
                self.heartbeats.append(verdict.message)
            elif isinstance(verdict.message, GuestResult):
                self.results[verdict.message.command_id] = verdict.message
            else:
                self.rejected.append(f"{verdict.rejection}: {verdict.detail}")

    def wait_until(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            self.pump()

    def pump_for(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.pump(min(self.poll_seconds, max(0.0, deadline - time.monotonic())))

    def call(self, name: str, args: dict[str, Any] | None = None, **kw: Any) -> GuestResult:
        command = self.client.send(name, args, **kw)
        return self.result_of(command.id)

    def result_of(self, command_id: str) -> GuestResult:
        self.wait_until(lambda: command_id in self.results, COMMAND_TIMEOUT, f"result {command_id}")
        return self.results[command_id]

    def next_heartbeat_after(self, t: float, timeout: float) -> Heartbeat:
        def newer() -> list[Heartbeat]:
            return [h for h in self.heartbeats if h.timestamp.timestamp() > t]

        self.wait_until(lambda: bool(newer()), timeout, "a heartbeat")
        return newer()[0]
