"""The AWS profile's Invoker: calls task functions deployed as AWS Lambda functions.

`fn:module.func` is the Lambda function `{prefix}module-func` (the naming of
infra/aws/definitions.py `lambda_function_name`; the SAM template uses the stack name and a dash
as prefix); a Lambda ARN (`arn:...:function:NAME[:alias]`) is called as it is. Invocations are
synchronous (RequestResponse) and carry a task envelope (shared/engine/task_envelope.py):
`{"payload": ..., "context": {"resource", "idempotency_key", ...}}`, which
`functions.lambda_tasks.handler` unwraps into the same `(payload, TaskContext)` call the
in-process invoker makes, so the idempotency key reaches the function the same way.

Failures, kept apart so callers can react:
- the function raised: `LambdaFunctionError`, a `TaskError` whose `error` is the function's
  `errorType` and whose `cause` is Lambda's JSON error object. Being a TaskError, the engine
  records exactly that error name, so Retry/Catch on `ComputeError` behave as in process.
- no such function: `UnknownResourceError` (the engine's "no function for this resource").
- Lambda itself refused or failed the call (throttling, permissions, payload too large...):
  `LambdaInvocationError`, naming the function and Lambda's error code.
"""

from __future__ import annotations

import json
import re
from typing import Any

from botocore.exceptions import ClientError

from shared.engine.errors import TaskError, UnknownResourceError
from shared.engine.invoker import TaskContext
from shared.engine.task_envelope import wrap
from shared.errors import TrovelessError
from shared.observability import get_logger

log = get_logger("lambda-invoker")

FUNCTION_PREFIX = "fn:"
LAMBDA_ARN = re.compile(r"^arn:aws[a-z-]*:lambda:[a-z0-9-]+:\d{12}:function:[A-Za-z0-9_-]+(:.+)?$")
LAMBDA_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
UNHANDLED = "Lambda.Unknown"


class LambdaInvocationError(TrovelessError):
    """Lambda did not run the function (throttled, denied, bad payload...): not the function's
    own failure."""

    def __init__(self, function: str, code: str, message: str) -> None:
        self.function = function
        self.code = code
        super().__init__(f"invoking Lambda function {function!r} failed: {code}: {message}")


class LambdaFunctionError(TaskError):
    """The function ran and raised; `error` is its errorType, `cause` Lambda's JSON error."""

    def __init__(self, function: str, error: str, cause: str) -> None:
        self.function = function
        super().__init__(error, cause)


class LambdaInvoker:
    """Invoker over a boto3 Lambda client (`boto3.client("lambda", ...)`)."""

    def __init__(self, client: Any, *, function_prefix: str = "") -> None:
        self._client = client
        self._prefix = function_prefix

    def function_name(self, resource: str) -> str:
        """The Lambda FunctionName for a resource; raises UnknownResourceError for others."""
        if LAMBDA_ARN.match(resource):
            return resource
        function = resource[len(FUNCTION_PREFIX) :]
        if resource.startswith(FUNCTION_PREFIX) and function:
            name = self._prefix + function.replace(".", "-")
            if LAMBDA_NAME.match(name):
                return name
        raise UnknownResourceError(resource)

    def invoke(self, resource: str, payload: Any, *, idempotency_key: str | None = None) -> Any:
        context = TaskContext(resource=resource, idempotency_key=idempotency_key)
        return self.invoke_task(resource, payload, context)

    def invoke_task(self, resource: str, payload: Any, context: TaskContext) -> Any:
        """Invoke with the whole TaskContext (task token, execution...) in the envelope."""
        function = self.function_name(resource)
        body = json.dumps(wrap(payload, context), ensure_ascii=False).encode()
        try:
            response = self._client.invoke(
                FunctionName=function, InvocationType="RequestResponse", Payload=body
            )
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", "")) or "ClientError"
            if code == "ResourceNotFoundException":
                raise UnknownResourceError(resource) from exc
            raise LambdaInvocationError(function, code, str(error.get("Message", ""))) from exc
        raw = response["Payload"].read()
        if response.get("FunctionError"):
            raise _function_error(function, raw)
        if not raw:
            return None
        try:
            return json.loads(raw)
        except json.JSONDecodeError as exc:
            raise LambdaInvocationError(
                function, "InvalidResponse", f"the function's result is not JSON: {exc}"
            ) from None


def _function_error(function: str, raw: bytes) -> LambdaFunctionError:
    text = raw.decode("utf-8", errors="replace")
    try:
        details = json.loads(text)
    except json.JSONDecodeError:
        details = None
    if isinstance(details, dict) and isinstance(details.get("errorType"), str):
        error = details["errorType"]
        # The stack trace stays in the function's own logs; the cause keeps Lambda's shape.
        cause = {k: details[k] for k in ("errorMessage", "errorType") if k in details}
        return LambdaFunctionError(function, error, json.dumps(cause, ensure_ascii=False))
    log.warning("Lambda function error without errorType", extra={"function": function})
    return LambdaFunctionError(function, UNHANDLED, text[:4096])
