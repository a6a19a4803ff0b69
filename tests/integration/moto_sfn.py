"""A real moto server with Step Functions execution switched on, for differential tests.

moto's Step Functions interpreter (a port of LocalStack's) is an implementation of the Amazon
States Language written by other people; running the same definition through it and through
our engine catches misreadings of the spec that a test written by the engine's author would share.

Task states: moto runs a Lambda ARN through its Lambda backend. With `{"lambda": {"use_docker":
false}}` that backend runs no code and answers every invocation with the request payload itself, so
a Task on `ECHO_FUNCTION_ARN` behaves like a function that returns its input.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

REGION = "us-east-1"
ACCOUNT_ID = "123456789012"
ROLE_ARN = f"arn:aws:iam::{ACCOUNT_ID}:role/x"
ECHO_FUNCTION_NAME = "echo"
ECHO_FUNCTION_ARN = f"arn:aws:lambda:{REGION}:{ACCOUNT_ID}:function:{ECHO_FUNCTION_NAME}"

_LAMBDA_TRUST_POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Principal": {"Service": "lambda.amazonaws.com"},
            "Action": "sts:AssumeRole",
        }
    ],
}

T = TypeVar("T")


class MotoServerError(RuntimeError):
    """The moto server did not start, answer or finish an execution in time."""


@dataclass(frozen=True)
class Outcome:
    """How an execution ended, in the terms DescribeExecution uses."""

    status: str
    output: Any = None
    error: str | None = None
    cause: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "output": self.output,
            "error": self.error,
            "cause": self.cause,
        }


def wait_for(
    probe: Callable[[], T | None], *, timeout: float, what: str, interval: float = 0.02
) -> T:
    """Call `probe` until it returns something other than None, or fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None:
            return value
        if time.monotonic() >= deadline:
            raise MotoServerError(f"timed out after {timeout:.1f} s waiting for {what}")
        time.sleep(interval)


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _moto_server_command() -> str:
    beside_python = Path(sys.executable).with_name("moto_server")
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("moto_server")
    if found is None:
        raise MotoServerError("moto_server not found (pip install 'moto[server]')")
    return found


def _echo_function_zip() -> bytes:
    # Never run (no Docker), but CreateFunction wants a package.
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("handler.py", "def handler(event, context):\n    return event\n")
    return buffer.getvalue()


def _parse_output(raw: str | None) -> Any:
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise MotoServerError(f"execution output is not JSON: {raw[:200]!r}") from exc


class MotoStepFunctions:
    """A `moto_server` subprocess on loopback; use `start()` and `stop()` (or `with`)."""

    def __init__(self, process: subprocess.Popen[bytes], endpoint: str, workdir: Path) -> None:
        self._process = process
        self.endpoint = endpoint
        self._workdir = workdir
        client_config = Config(retries={"max_attempts": 1, "mode": "standard"})
        credentials = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
        self._sfn = boto3.client(
            "stepfunctions",
            endpoint_url=endpoint,
            region_name=REGION,
            config=client_config,
            **credentials,
        )
        self._iam = boto3.client(
            "iam", endpoint_url=endpoint, region_name=REGION, config=client_config, **credentials
        )
        self._lambda = boto3.client(
            "lambda",
            endpoint_url=endpoint,
            region_name=REGION,
            config=client_config,
            **credentials,
        )

    # -- lifecycle ---------------------------------------------------------------------------

    @classmethod
    def start(cls, *, startup_timeout: float = 30.0, attempts: int = 3) -> MotoStepFunctions:
        """Start a server on a free loopback port, configure it, and return once it answers."""
        last_error: Exception | None = None
        for _ in range(attempts):
            workdir = Path(tempfile.mkdtemp(prefix="moto-sfn-"))
            port = _free_loopback_port()
            log = (workdir / "server.log").open("wb")
            env = dict(os.environ, MOTO_PORT=str(port))
            # The interpreter calls Lambda through http://localhost:MOTO_PORT; keep it off proxies.
            env["NO_PROXY"] = env["no_proxy"] = "localhost,127.0.0.1"
            try:
                process = subprocess.Popen(
                    [_moto_server_command(), "-H", "127.0.0.1", "-p", str(port)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                )
            finally:
                log.close()
            server = cls(process, f"http://127.0.0.1:{port}", workdir)
            try:
                server._wait_until_answering(startup_timeout)
                server._configure()
                return server
            except Exception as exc:
                last_error = exc
                server.stop()
        raise MotoServerError(f"moto server did not start after {attempts} attempts: {last_error}")

    def stop(self) -> None:
        """Kill the server's process group and remove its temp dir; safe to call twice."""
        if self._process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, signal.SIGTERM)
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(self._process.pid, signal.SIGKILL)
                self._process.wait(timeout=5)
        shutil.rmtree(self._workdir, ignore_errors=True)

    def __enter__(self) -> MotoStepFunctions:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def server_log(self) -> str:
        try:
            return (self._workdir / "server.log").read_text(errors="replace")
        except OSError:
            return ""

    def _wait_until_answering(self, timeout: float) -> None:
        def answered() -> bool | None:
            if self._process.poll() is not None:
                log_tail = self.server_log()[-2000:]
                raise MotoServerError(
                    f"moto_server exited with {self._process.returncode}: {log_tail}"
                )
            try:
                with urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=1) as reply:
                    return True if reply.status == 200 else None
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                return None

        wait_for(answered, timeout=timeout, what=f"moto server at {self.endpoint}")

    def _configure(self) -> None:
        self._post_json(
            "/moto-api/config",
            {"stepfunctions": {"execute_state_machine": True}, "lambda": {"use_docker": False}},
        )
        self._iam.create_role(
            RoleName=ROLE_ARN.rsplit("/", 1)[1],
            AssumeRolePolicyDocument=json.dumps(_LAMBDA_TRUST_POLICY),
        )
        self._lambda.create_function(
            FunctionName=ECHO_FUNCTION_NAME,
            Runtime="python3.11",
            Role=ROLE_ARN,
            Handler="handler.handler",
            Code={"ZipFile": _echo_function_zip()},
        )

    def _post_json(self, path: str, body: dict[str, Any]) -> None:
        request = urllib.request.Request(
            f"{self.endpoint}{path}",
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as reply:
            if reply.status >= 300:
                raise MotoServerError(f"POST {path} answered {reply.status}")

    # -- executions --------------------------------------------------------------------------

    def run(
        self,
        definition: dict[str, Any],
        input_value: Any,
        *,
        name: str | None = None,
        timeout: float = 30.0,
    ) -> Outcome:
        """Create a state machine for `definition`, run it on `input_value`, wait for the end.

        A definition moto refuses at CreateStateMachine gives status "INVALID_DEFINITION" with the
        API error code and message as error and cause.
        """
        execution_name = name or f"diff-{uuid.uuid4().hex}"
        try:
            machine = self._sfn.create_state_machine(
                name=f"sm-{uuid.uuid4().hex}",
                definition=json.dumps(definition),
                roleArn=ROLE_ARN,
            )
        except ClientError as exc:
            details = exc.response.get("Error", {})
            return Outcome(
                status="INVALID_DEFINITION",
                error=details.get("Code"),
                cause=details.get("Message"),
            )
        execution = self._sfn.start_execution(
            stateMachineArn=machine["stateMachineArn"],
            name=execution_name,
            input=json.dumps(input_value),
        )
        execution_arn = execution["executionArn"]

        def finished() -> dict[str, Any] | None:
            described: dict[str, Any] = self._sfn.describe_execution(executionArn=execution_arn)
            return None if described["status"] == "RUNNING" else described

        described = wait_for(finished, timeout=timeout, what=f"execution {execution_name}")
        output = None
        if described["status"] == "SUCCEEDED":
            output = _parse_output(self._succeeded_event_output(execution_arn))
        return Outcome(
            status=described["status"],
            output=output,
            error=described.get("error"),
            cause=described.get("cause"),
        )

    def _succeeded_event_output(self, execution_arn: str) -> str | None:
        # DescribeExecution in moto 5.2.5 returns a string result unquoted (`rule 2`, not
        # `"rule 2"`), so read the JSON text from the ExecutionSucceeded history event instead.
        pages = self._sfn.get_paginator("get_execution_history").paginate(
            executionArn=execution_arn, reverseOrder=True
        )
        for page in pages:
            for event in page["events"]:
                if event["type"] == "ExecutionSucceeded":
                    details: dict[str, Any] = event.get("executionSucceededEventDetails", {})
                    output: str | None = details.get("output")
                    return output
        raise MotoServerError(f"no ExecutionSucceeded event in the history of {execution_arn}")
