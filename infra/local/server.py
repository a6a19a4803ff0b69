"""The embedded cloud's host: an HTTP server and the background triggers, in one process.

- HTTP (threaded): `/identity/...` goes to the local Keystone; every other request becomes
  an API Gateway REST proxy event for `functions.api.handler`, exactly what a cloud's API
  gateway would send the function.
- Queue triggers: engine workers (`DurableDriver.work`) and the guest-events consumer
  (`functions.guest_events.work`), each a long-poll receive loop on its own thread. In the
  openstack profile's push mode (`guest_events_push`), Zaqar POSTs guest events to
  `POST /functions/guest-events` (`functions.guest_events.webhook_handler`, outside the API
  and its authentication) instead; `GuestEventsPush` subscribes and runs the backstop.
- Timer: runs the registered periodic functions (TIMER_FUNCTIONS: the backup scheduler and
  the heartbeat watchdog).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from functions import api, backup_scheduler, guest_events, heartbeat_watchdog
from functions.runtime import Runtime
from infra.local.keystone import PREFIX as IDENTITY_PREFIX
from infra.local.keystone import HttpReply, LocalKeystone
from shared.engine.durable import DurableDriver
from shared.observability import get_logger
from shared.settings import Settings

log = get_logger("embedded-server")

GUEST_EVENTS_PATH = "/functions/guest-events"
MAX_BODY_BYTES = 1 << 20  # Trove bodies are small; refuse anything bigger than 1 MiB


@dataclass(frozen=True)
class TimerFunction:
    """A periodic function and how often the timer calls it (seconds, from the settings)."""

    run: Callable[[Runtime], None]
    every: Callable[[Settings], float]


# The backup scheduler fires cron schedules (minute resolution); the watchdog must notice a lost
# agent soon after `heartbeat_expiry`, so it looks twice per expiry.
TIMER_FUNCTIONS: list[TimerFunction] = [
    TimerFunction(backup_scheduler.run, lambda settings: 30.0),
    TimerFunction(heartbeat_watchdog.run, lambda settings: max(0.5, settings.heartbeat_expiry / 2)),
]


def proxy_event(
    method: str, target: str, headers: dict[str, str], body: bytes, source_ip: str
) -> dict[str, Any]:
    """An API Gateway REST (payload 1.0) proxy event for one HTTP request."""
    split = urlsplit(target)
    pairs = parse_qsl(split.query, keep_blank_values=True)
    multi: dict[str, list[str]] = {}
    for key, value in pairs:
        multi.setdefault(key, []).append(value)
    text = body.decode("utf-8", errors="replace") if body else None
    return {
        "resource": "/{proxy+}",
        "path": split.path or "/",
        "httpMethod": method,
        "headers": headers,
        "multiValueHeaders": {k: [v] for k, v in headers.items()},
        "queryStringParameters": {k: v[-1] for k, v in multi.items()} or None,
        "multiValueQueryStringParameters": multi or None,
        "pathParameters": {"proxy": split.path.lstrip("/")},
        "stageVariables": None,
        "requestContext": {
            "resourcePath": "/{proxy+}",
            "httpMethod": method,
            "path": split.path or "/",
            "stage": "$default",
            "requestId": f"local-{time.monotonic_ns()}",
            "identity": {"sourceIp": source_ip},
        },
        "body": text,
        "isBase64Encoded": False,
    }


def _reply_from_proxy(response: dict[str, Any]) -> HttpReply:
    headers = {k: str(v) for k, v in (response.get("headers") or {}).items()}
    for key, values in (response.get("multiValueHeaders") or {}).items():
        if values:
            headers[key] = str(values[-1])
    body = response.get("body") or ""
    return HttpReply(int(response.get("statusCode", 500)), str(body).encode(), headers)


def _handler_class(server: EmbeddedServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "troveless"

        def _serve(self) -> None:
            try:
                reply = self._reply()
            except Exception:  # never leave a client hanging without an answer
                log.exception("request failed in the embedded server")
                reply = HttpReply(
                    500,
                    json.dumps(
                        {"instanceFault": {"code": 500, "message": "internal error; logged"}}
                    ).encode(),
                    {"Content-Type": "application/json"},
                )
            self.send_response(reply.status)
            for key, value in reply.headers.items():
                if key.lower() not in ("content-length", "connection"):
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            if self.command != "HEAD" and reply.body:
                self.wfile.write(reply.body)

        def _reply(self) -> HttpReply:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY_BYTES:
                self.close_connection = True
                return HttpReply(
                    413,
                    json.dumps(
                        {"overLimit": {"code": 413, "message": "The request body is too large."}}
                    ).encode(),
                    {"Content-Type": "application/json"},
                )
            body = self.rfile.read(length) if length else b""
            headers = {k: v for k, v in self.headers.items()}
            host = self.headers.get("Host") or f"{server.host}:{server.port}"
            path = urlsplit(self.path).path
            if path == IDENTITY_PREFIX or path.startswith(IDENTITY_PREFIX + "/"):
                return server.keystone.handle(
                    self.command, path, headers, body, root=f"http://{host}"
                )
            event = proxy_event(self.command, self.path, headers, body, self.client_address[0])
            if path == GUEST_EVENTS_PATH and self.command == "POST":
                return _reply_from_proxy(guest_events.webhook_handler(event, None))
            return _reply_from_proxy(api.handler(event, None))

        # http.server dispatches on these names.
        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _serve  # noqa: N815

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("http", extra={"request": format % args})

    return Handler


@dataclass
class EmbeddedServer:
    """The HTTP server plus the queue triggers and timer of the embedded cloud."""

    runtime: Runtime
    driver: DurableDriver
    keystone: LocalKeystone
    host: str
    port: int
    engine_workers: int = 2
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _http: ThreadingHTTPServer | None = None
    _push: Any = None  # infra.openstack.wiring.GuestEventsPush in push mode

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        """Bind the port (port 0 picks a free one) and start every thread."""
        http = ThreadingHTTPServer((self.host, self.port), _handler_class(self))
        http.daemon_threads = True
        self._http = http
        self.port = int(http.server_address[1])
        self._spawn("http", http.serve_forever)
        for n in range(self.engine_workers):
            self._spawn(f"engine-{n}", lambda: self.driver.work(self._stop.is_set))
        openstack = self.runtime.settings.openstack
        if openstack is not None and openstack.guest_events_push:
            from infra.openstack.wiring import GuestEventsPush  # the openstack profile only

            push = GuestEventsPush(self.runtime, self.url + GUEST_EVENTS_PATH)
            push.start()
            self._push = push
            self._spawn("guest-events-backstop", lambda: push.run(self._stop))
        else:
            self._spawn(
                "guest-events",
                lambda: guest_events.work(self._stop.is_set, runtime=self.runtime),
            )
        self._spawn("timer", self._timer)

    def _spawn(self, name: str, target: Callable[[], object]) -> None:
        thread = threading.Thread(target=target, name=f"troveless-{name}", daemon=True)
        thread.start()
        self._threads.append(thread)

    def _timer(self) -> None:
        settings = self.runtime.settings
        due = [time.monotonic() + timer.every(settings) for timer in TIMER_FUNCTIONS]
        while not self._stop.wait(max(0.0, min(due) - time.monotonic())):
            for index, timer in enumerate(TIMER_FUNCTIONS):
                if time.monotonic() < due[index]:
                    continue
                try:
                    timer.run(self.runtime)
                except Exception:
                    log.exception("timer function failed", extra={"function": timer.run.__name__})
                due[index] = time.monotonic() + timer.every(settings)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting requests, let the loops finish their current batch, and return."""
        self._stop.set()
        if self._push is not None:
            self._push.stop()  # first: no more pushes to a server going away
            self._push = None
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            log.warning("threads still running at stop", extra={"threads": alive})
