"""shared/adapters/aws/lambda_invoker.py against a real moto server's Lambda.

moto runs no code without Docker: with `{"lambda": {"use_docker": false}}` a function answers
with the request payload (so we see exactly what the invoker sent), or with the next result
queued through `/moto-api/static/lambda-simple/response`. Function errors (`FunctionError`) are
something moto cannot produce, and moto answers an invocation of a function that does not
exist as if it did; tests/unit/infra/test_aws_lambda_invoker.py covers both with botocore's
Stubber.
"""

from __future__ import annotations

import io
import json
import urllib.request
import uuid
import zipfile
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from infra.aws.definitions import lambda_function_name
from shared.adapters.aws.lambda_invoker import LambdaInvocationError, LambdaInvoker
from shared.engine.errors import UnknownResourceError
from shared.engine.invoker import TaskContext
from shared.engine.task_envelope import unwrap
from tests.contract import moto_server

ROLE_NAME = "troveless-tasks"
PREFIX = "stack-"
TASK = "instance_tasks.create_server"
RESOURCE = f"fn:{TASK}"


def _post(endpoint: str, path: str, body: dict[str, Any]) -> None:
    request = urllib.request.Request(
        f"{endpoint}{path}",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as reply:
        assert reply.status < 300


def _package() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("functions/lambda_tasks.py", "def handler(event, context):\n    pass\n")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def lambda_endpoint() -> Iterator[str]:
    """A moto server of this module's own (its Lambda config and result queue are global)."""
    server = moto_server.start_moto_server()
    try:
        _post(server.endpoint, "/moto-api/config", {"lambda": {"use_docker": False}})
        yield server.endpoint
    finally:
        server.stop()


@pytest.fixture(scope="module")
def lambda_client(lambda_endpoint: str) -> Any:
    credentials = {
        "aws_access_key_id": moto_server.ACCESS_KEY,
        "aws_secret_access_key": moto_server.SECRET_KEY,
        "region_name": moto_server.REGION,
        "endpoint_url": lambda_endpoint,
    }
    iam = boto3.client("iam", **credentials)
    role = iam.create_role(
        RoleName=ROLE_NAME,
        AssumeRolePolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Principal": {"Service": "lambda.amazonaws.com"},
                        "Action": "sts:AssumeRole",
                    }
                ],
            }
        ),
    )["Role"]
    client = boto3.client("lambda", **credentials)
    client.create_function(
        FunctionName=lambda_function_name(TASK, PREFIX),
        Runtime="python3.11",
        Role=role["Arn"],
        Handler="functions.lambda_tasks.handler",
        Code={"ZipFile": _package()},
        Environment={"Variables": {"TROVELESS_TASK_FUNCTION": TASK}},
    )
    return client


@pytest.fixture
def invoker(lambda_client: Any) -> LambdaInvoker:
    return LambdaInvoker(lambda_client, function_prefix=PREFIX)


def queue_results(endpoint: str, *results: str) -> None:
    _post(
        endpoint,
        "/moto-api/static/lambda-simple/response",
        {"results": list(results), "region": moto_server.REGION},
    )


def test_the_function_gets_payload_and_idempotency_key_in_an_envelope(
    invoker: LambdaInvoker,
) -> None:
    key = f"arn:exec/CreateServer/{uuid.uuid4()}/0"
    payload = {"instance_id": "5b1f", "nested": {"list": [1, "é"]}}

    echoed = invoker.invoke(RESOURCE, payload, idempotency_key=key)

    # What functions.lambda_tasks.handler would make of it: the same call as in process.
    received, context = unwrap(echoed, resource=RESOURCE)
    assert received == payload
    assert context.idempotency_key == key
    assert context.resource == RESOURCE


def test_the_whole_task_context_travels(invoker: LambdaInvoker) -> None:
    sent = TaskContext(
        resource=RESOURCE,
        idempotency_key="k",
        task_token="token-1",
        execution_arn="arn:aws:states:us-east-1:123456789012:execution:sm:e",
        state_name="CreateServer",
        attempt=3,
    )
    echoed = invoker.invoke_task(RESOURCE, [1, 2], sent)
    assert unwrap(echoed, resource=RESOURCE) == ([1, 2], sent)


def test_a_lambda_arn_is_invoked_as_it_is(invoker: LambdaInvoker, lambda_client: Any) -> None:
    arn = lambda_client.get_function(FunctionName=lambda_function_name(TASK, PREFIX))[
        "Configuration"
    ]["FunctionArn"]
    echoed = invoker.invoke(arn, {"x": 1})
    assert echoed["payload"] == {"x": 1}


def test_the_functions_json_result_is_returned(
    invoker: LambdaInvoker, lambda_endpoint: str
) -> None:
    queue_results(lambda_endpoint, json.dumps({"server_id": "srv-1", "zone": "az1"}), "null")
    assert invoker.invoke(RESOURCE, {}) == {"server_id": "srv-1", "zone": "az1"}
    assert invoker.invoke(RESOURCE, {}) is None


def test_a_result_that_is_not_json_is_an_invocation_error(
    invoker: LambdaInvoker, lambda_endpoint: str
) -> None:
    queue_results(lambda_endpoint, "Simple Lambda happy path OK")
    with pytest.raises(LambdaInvocationError, match="InvalidResponse"):
        invoker.invoke(RESOURCE, {})


@pytest.mark.parametrize("resource", ["create_server", "fn:", "fn:" + "x" * 70, "arn:aws:sqs:q"])
def test_resources_that_name_no_lambda_are_refused_without_a_call(
    invoker: LambdaInvoker, resource: str
) -> None:
    with pytest.raises(UnknownResourceError):
        invoker.invoke(resource, {})
