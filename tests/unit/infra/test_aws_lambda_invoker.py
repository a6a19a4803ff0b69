"""LambdaInvoker's failure mapping, on responses moto cannot give (botocore's Stubber).

The happy paths run against a real moto server in tests/contract/test_lambda_invoker.py.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.response import StreamingBody
from botocore.stub import ANY, Stubber

from shared.adapters.aws.lambda_invoker import (
    UNHANDLED,
    LambdaFunctionError,
    LambdaInvocationError,
    LambdaInvoker,
)
from shared.engine.errors import TaskError, UnknownResourceError
from shared.engine.invoker import describe_exception

RESOURCE = "fn:instance_tasks.create_server"


@pytest.fixture
def stubbed() -> Iterator[tuple[LambdaInvoker, Stubber]]:
    client = boto3.client(
        "lambda", region_name="us-east-1", aws_access_key_id="a", aws_secret_access_key="b"
    )
    with Stubber(client) as stubber:
        yield LambdaInvoker(client, function_prefix="stack-"), stubber
        stubber.assert_no_pending_responses()


def body(data: bytes) -> StreamingBody:
    return StreamingBody(io.BytesIO(data), len(data))


def expect_call(stubber: Stubber, response: dict[str, Any]) -> None:
    stubber.add_response(
        "invoke",
        response,
        {
            "FunctionName": "stack-instance_tasks-create_server",
            "InvocationType": "RequestResponse",
            "Payload": ANY,
        },
    )


def test_a_function_error_keeps_the_functions_error_name(stubbed) -> None:
    invoker, stubber = stubbed
    error = {"errorMessage": "no capacity", "errorType": "ComputeError", "stackTrace": ["x"]}
    expect_call(
        stubber,
        {
            "StatusCode": 200,
            "FunctionError": "Unhandled",
            "Payload": body(json.dumps(error).encode()),
        },
    )
    with pytest.raises(LambdaFunctionError) as raised:
        invoker.invoke(RESOURCE, {})
    assert isinstance(raised.value, TaskError)
    # The engine records it as the function's own error, so Retry/Catch work as in process.
    name, cause = describe_exception(raised.value)
    assert name == "ComputeError"
    assert json.loads(cause) == {"errorMessage": "no capacity", "errorType": "ComputeError"}


def test_a_function_error_without_error_type_is_lambda_unknown(stubbed) -> None:
    invoker, stubber = stubbed
    expect_call(
        stubber, {"StatusCode": 200, "FunctionError": "Unhandled", "Payload": body(b"killed")}
    )
    with pytest.raises(LambdaFunctionError) as raised:
        invoker.invoke(RESOURCE, {})
    assert raised.value.error == UNHANDLED
    assert raised.value.cause == "killed"


def test_a_missing_function_is_an_unknown_resource(stubbed) -> None:
    invoker, stubber = stubbed
    stubber.add_client_error(
        "invoke", service_error_code="ResourceNotFoundException", http_status_code=404
    )
    with pytest.raises(UnknownResourceError):
        invoker.invoke(RESOURCE, {})


def test_lambda_refusing_the_call_is_an_invocation_error(stubbed) -> None:
    invoker, stubber = stubbed
    stubber.add_client_error(
        "invoke",
        service_error_code="TooManyRequestsException",
        service_message="Rate exceeded",
        http_status_code=429,
    )
    with pytest.raises(LambdaInvocationError) as raised:
        invoker.invoke(RESOURCE, {})
    assert raised.value.code == "TooManyRequestsException"
    assert "stack-instance_tasks-create_server" in str(raised.value)
