"""The engine on OpenStack with no worker thread: a real Zaqar rings the engine-steps
function's webhook for every step posted to the engine queue, and those invocations alone run a
state machine to SUCCEEDED, with its records in a real Swift.

The webhook is a local HTTP server that does what a Qinling webhook does: it answers 202 at once
and runs the function asynchronously, calling the packaged entry's `serve("engine",
"engine_steps", input)` (what the package's `main.main(**input)` calls) with Zaqar's
notification as the input. The definition has a task retried after a failure and a Wait state:
both become delayed messages, which Zaqar pushes when they are posted, so they also check that
a push waits out the delay it announces.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from functions.runtime import Runtime, set_runtime
from infra.openstack.qinling_entry import serve
from infra.openstack.wiring import zaqar
from infra.wiring import FunctionsInvoker
from shared.adapters.local.workflows import EngineWorkflows
from shared.adapters.openstack.swift_client import (
    SwiftContainer,
    SwiftError,
    tempauth_connection,
)
from shared.adapters.openstack.swift_state_store import SwiftStateStore
from shared.adapters.openstack.zaqar_queue import ZaqarQueue
from shared.clock import SystemClock
from shared.engine import TaskError
from shared.engine.durable import QUEUE, DurableDriver
from shared.engine.service import ExecutionService
from shared.openstack_settings import OpenStackSettings
from shared.settings import load_settings
from tests.integration.embedded_cloud import wait_until
from tests.servers.swift import SwiftEndpoint

pytestmark = pytest.mark.slow

RUN_TIMEOUT = 90.0
SWIFT_READY_TIMEOUT = 30.0
STATE_MACHINE = "engine_push_probe"
DEFINITION = {
    "Comment": "Pass, a task retried after a failure, a Wait, a Map of tasks.",
    "StartAt": "Prepare",
    "States": {
        "Prepare": {"Type": "Pass", "Result": [1, 2, 3], "ResultPath": "$.items", "Next": "Flaky"},
        "Flaky": {
            "Type": "Task",
            "Resource": "fn:probe.flaky",
            "Retry": [{"ErrorEquals": ["Probe.Flaky"], "IntervalSeconds": 1, "MaxAttempts": 2}],
            "ResultPath": "$.flaky",
            "Next": "Nap",
        },
        "Nap": {"Type": "Wait", "Seconds": 1, "Next": "Double"},
        "Double": {
            "Type": "Map",
            "ItemsPath": "$.items",
            "ItemProcessor": {
                "StartAt": "Twice",
                "States": {"Twice": {"Type": "Task", "Resource": "fn:probe.twice", "End": True}},
            },
            "ResultPath": "$.doubled",
            "End": True,
        },
    },
}


@dataclass
class QinlingWebhook:
    """A stand-in for a Qinling webhook of the engine-steps function: 202 at once, then the
    function runs in a thread of its own (an asynchronous execution)."""

    server: ThreadingHTTPServer
    executions: list[threading.Thread] = field(default_factory=list)
    results: list[dict[str, Any]] = field(default_factory=list)
    inputs: list[dict[str, Any]] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}/v1/webhooks/engine-steps/invoke"

    def execute(self, function_input: dict[str, Any]) -> None:
        try:
            # Qinling's runtime adds its own `context` keyword argument.
            result = serve("engine", "engine_steps", {**function_input, "context": {}})
            with self.lock:
                self.results.append(result)
        except BaseException as exc:  # asserted on by the test, not lost in the thread
            with self.lock:
                self.errors.append(exc)

    def invoked(self, function_input: dict[str, Any]) -> None:
        thread = threading.Thread(target=self.execute, args=(function_input,))
        with self.lock:
            self.inputs.append(function_input)
            self.executions.append(thread)
        thread.start()

    def join(self, timeout: float) -> None:
        with self.lock:
            threads = list(self.executions)
        for thread in threads:
            thread.join(timeout)


def start_webhook() -> QinlingWebhook:
    holder: dict[str, QinlingWebhook] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            document = json.loads(self.rfile.read(length) or b"{}")
            holder["webhook"].invoked(document)
            answer = json.dumps({"execution_id": str(uuid.uuid4())}).encode()
            self.send_response(202)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: Any) -> None:
            return  # quiet: the test reports what matters

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    webhook = QinlingWebhook(server)
    holder["webhook"] = webhook
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return webhook


def state_store(object_store: Any, container: str, clock: SystemClock) -> SwiftStateStore:
    """The Swift state store, once its container could be made: the all-in-one's readiness
    check covers the proxy and auth, not the container server, which may answer the first
    PUT of a freshly started all-in-one with 503 for a moment."""
    deadline = time.monotonic() + SWIFT_READY_TIMEOUT
    while True:
        try:
            return SwiftStateStore(object_store, container, clock=clock)
        except SwiftError as exc:
            if exc.status != 503 or time.monotonic() > deadline:
                raise
        time.sleep(0.2)


@dataclass
class PushedEngine:
    runtime: Runtime
    queue: ZaqarQueue
    webhook: QinlingWebhook
    calls: Counter[str]


@pytest.fixture
def pushed_engine(
    zaqar_endpoint: str, swift_endpoint: SwiftEndpoint, tmp_path: Path
) -> Iterator[PushedEngine]:
    clock = SystemClock()
    object_store = tempauth_connection(
        swift_endpoint.auth_url, swift_endpoint.user, swift_endpoint.key
    ).object_store
    container = f"tl-engine-push-{uuid.uuid4().hex[:8]}"
    store = state_store(object_store, container, clock)
    openstack = OpenStackSettings(
        swift_auth_url=swift_endpoint.auth_url,
        swift_user=swift_endpoint.user,
        swift_key=swift_endpoint.key,
        zaqar_url=zaqar_endpoint,
        zaqar_project_id=f"tl-engine-{uuid.uuid4().hex[:8]}",
    )
    queue = ZaqarQueue(zaqar(openstack), poll_interval=0.05)
    calls: Counter[str] = Counter()
    calls_lock = threading.Lock()
    failed_once: set[str] = set()

    def flaky(payload: Any, context: Any) -> Any:
        with calls_lock:
            calls[context.idempotency_key] += 1
            first = context.execution_arn not in failed_once
            failed_once.add(context.execution_arn)
        if first:
            raise TaskError("Probe.Flaky", "the first attempt fails")
        return {"attempt": context.attempt}

    def twice(payload: Any, context: Any) -> Any:
        with calls_lock:
            calls[context.idempotency_key] += 1
        return payload * 2

    invoker = FunctionsInvoker()
    invoker.register("fn:probe.flaky", flaky)
    invoker.register("fn:probe.twice", twice)
    driver = DurableDriver(store, queue, invoker, clock)
    definitions = tmp_path / "state_machines"
    definitions.mkdir()
    (definitions / f"{STATE_MACHINE}.asl.json").write_text(json.dumps(DEFINITION))
    settings = load_settings(data_dir=tmp_path / "data", openstack=openstack)
    runtime = Runtime(
        settings=settings,
        clock=clock,
        store=store,
        blobs=None,  # type: ignore[arg-type]  # the engine-steps function uses none of these
        queue=queue,
        compute=None,  # type: ignore[arg-type]
        workflows=EngineWorkflows(ExecutionService(driver), definitions),
        master_key=b"k" * 32,
    )
    with contextlib.ExitStack() as cleanup:  # undone in reverse order, even after a failure
        cleanup.callback(SwiftContainer(object_store, container).delete_container)
        cleanup.callback(set_runtime, None)
        set_runtime(runtime)
        webhook = start_webhook()
        cleanup.callback(webhook.join, 120)  # the executions still running use the runtime
        cleanup.callback(webhook.server.server_close)
        cleanup.callback(webhook.server.shutdown)
        subscription = queue.subscribe_webhook(QUEUE, webhook.url, ttl_seconds=300)
        cleanup.callback(queue.unsubscribe, QUEUE, subscription)
        yield PushedEngine(runtime, queue, webhook, calls)


def test_pushes_alone_run_a_state_machine_to_succeeded(pushed_engine: PushedEngine) -> None:
    runtime, queue, webhook = pushed_engine.runtime, pushed_engine.queue, pushed_engine.webhook

    arn = runtime.workflows.start(STATE_MACHINE, {"n": 1}, name="pushed-1")

    def finished() -> bool:
        return str(runtime.workflows.describe(arn)["status"]) != "RUNNING"

    wait_until(finished, "the pushes to finish the execution", RUN_TIMEOUT)
    described = runtime.workflows.describe(arn)
    assert described["status"] == "SUCCEEDED", (described["error"], described["cause"])
    assert described["output"] == {
        "n": 1,
        "items": [1, 2, 3],
        "flaky": {"attempt": 1},
        "doubled": [2, 4, 6],
    }
    # Each task attempt ran once: the failed first attempt, the retry, three Map items.
    assert sum(pushed_engine.calls.values()) == 5 and set(pushed_engine.calls.values()) == {1}
    # The pushes' bodies were Zaqar notifications of the engine queue, and nothing but the
    # webhook's executions claimed the steps: every one of them is acknowledged.
    assert webhook.inputs and all(i["queue_name"] == QUEUE for i in webhook.inputs)
    # The retry's and the Wait's timers were pushed announcing their delay, which the
    # function waited out (no other trigger exists here to run them later).
    assert any(i.get("delay", 0) > 0 for i in webhook.inputs)
    wait_until(lambda: queue.count(QUEUE) == 0, "the engine queue to be empty", 30.0)
    webhook.join(timeout=60)
    assert webhook.errors == []
    assert all(r["failed"] == 0 and r["trigger"] == "push" for r in webhook.results)
    assert sum(r["handled"] for r in webhook.results) >= 1 + 2 + 1 + 1  # begin, retry, wait, map
