"""A loopback HTTP server that replays recorded request -> response exchanges, in order.

For adapters of clouds that cannot run here (Nova, Cinder): the test points the client at this
server, which answers each request with the next recorded response after checking that the
request is the one recorded: method, path, query string (exactly) and the JSON body fields the
recording names (a recursive subset; the string "<any>" matches any value that is present).
A request that does not match, or that comes after the last exchange, is answered 599 and
recorded as a failure; `Replay.assert_done()` fails the test with every mismatch and with the
exchanges never asked for.

A recording is a JSON file: {"about": "...", "exchanges": [{"note", "request", "response"}]}.
    request:  {"method", "path", "query": {name: value}, "json": {fields that matter}}
    response: {"status", "headers": {...}, "json": {...}}   ("body" for a non-JSON text body)
"{base}" anywhere in a response stands for the server's base URL (http://127.0.0.1:port), so
service catalogs and version documents point back at the replay server.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

RECORDINGS = Path(__file__).with_name("recordings")
ANY = "<any>"
MISMATCH_STATUS = 599


@dataclass(frozen=True)
class ReceivedRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


def _substitute(value: Any, base: str) -> Any:
    if isinstance(value, str):
        return value.replace("{base}", base)
    if isinstance(value, list):
        return [_substitute(v, base) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, base) for k, v in value.items()}
    return value


def subset_mismatch(expected: Any, actual: Any, where: str = "body") -> str | None:
    """Why `actual` does not contain `expected` (None when it does)."""
    if expected == ANY:
        return None
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return f"{where}: expected an object, got {actual!r}"
        for key, value in expected.items():
            if key not in actual:
                return f"{where}.{key}: missing"
            problem = subset_mismatch(value, actual[key], f"{where}.{key}")
            if problem:
                return problem
        return None
    if expected != actual:
        return f"{where}: expected {expected!r}, got {actual!r}"
    return None


@dataclass
class Replay:
    """The state of one replay: the exchanges left, what came in, and what went wrong."""

    exchanges: list[dict[str, Any]]
    base: str = ""
    position: int = 0
    received: list[ReceivedRequest] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, request: ReceivedRequest) -> tuple[int, dict[str, str], bytes]:
        with self.lock:
            self.received.append(request)
            said = f"{request.method} {request.path}?{request.query}"
            if self.position >= len(self.exchanges):
                return self._fail(f"unexpected request after the last exchange: {said}")
            exchange = self.exchanges[self.position]
            problem = self._mismatch(exchange["request"], request)
            if problem:
                note = exchange.get("note", "")
                return self._fail(f"exchange {self.position} ({note}): {problem}; got {said}")
            self.position += 1
            response = _substitute(exchange["response"], self.base)
            headers = dict(response.get("headers", {}))
            if "json" in response:
                body = json.dumps(response["json"]).encode()
                headers.setdefault("Content-Type", "application/json")
            else:
                body = str(response.get("body", "")).encode()
            return int(response["status"]), headers, body

    def _mismatch(self, expected: dict[str, Any], request: ReceivedRequest) -> str | None:
        if expected["method"] != request.method:
            return f"method: expected {expected['method']}"
        if expected["path"] != request.path:
            return f"path: expected {expected['path']}"
        if expected.get("query", {}) != request.query:
            return f"query: expected {expected.get('query', {})}"
        if "json" in expected:
            try:
                body = request.json()
            except ValueError:
                return f"body is not JSON: {request.body[:200]!r}"
            return subset_mismatch(expected["json"], body)
        return None

    def _fail(self, message: str) -> tuple[int, dict[str, str], bytes]:
        self.failures.append(message)
        body = json.dumps({"replay_mismatch": message}).encode()
        return MISMATCH_STATUS, {"Content-Type": "application/json"}, body

    def assert_done(self) -> None:
        problems = list(self.failures)
        left = self.exchanges[self.position :]
        if left:
            notes = [f"{e['request']['method']} {e['request']['path']}" for e in left[:5]]
            problems.append(f"{len(left)} recorded exchanges never requested, first {notes}")
        assert not problems, "replay failed:\n" + "\n".join(problems)


def load_recording(name: str) -> list[dict[str, Any]]:
    """The exchanges of recordings/<name>.json."""
    document = json.loads((RECORDINGS / f"{name}.json").read_text())
    exchanges: list[dict[str, Any]] = document["exchanges"]
    return exchanges


class _Handler(BaseHTTPRequestHandler):
    server: _ReplayServer
    protocol_version = "HTTP/1.1"

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        request = ReceivedRequest(
            method=self.command,
            path=parts.path,
            query=query,
            headers={k: v for k, v in self.headers.items()},
            body=body,
        )
        status, headers, payload = self.server.replay.answer(request)
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    # http.server dispatches on these names.
    def do_GET(self) -> None:
        self._handle()

    def do_HEAD(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_PATCH(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the replay keeps its own record of requests


class _ReplayServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, replay: Replay) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.replay = replay


@contextmanager
def replay_server(exchanges: list[dict[str, Any]]) -> Iterator[Replay]:
    """Serve `exchanges` on a free loopback port until the block ends (then stop the server).
    The caller checks `assert_done()` where the replay should be complete."""
    replay = Replay(list(exchanges))
    server = _ReplayServer(replay)
    replay.base = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(
        target=server.serve_forever, args=(0.05,), name="replay-http", daemon=True
    )
    thread.start()
    try:
        yield replay
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
