"""The embedded server's translation of HTTP requests into API Gateway proxy events."""

from __future__ import annotations

from infra.local.server import _reply_from_proxy, proxy_event


def test_proxy_event_carries_path_query_headers_and_body():
    event = proxy_event(
        "POST",
        "/v1.0/p/instances?include_clustered=False&x=1&x=2",
        {"X-Auth-Token": "t", "Host": "h:1"},
        b'{"instance": {}}',
        "127.0.0.1",
    )
    assert event["path"] == "/v1.0/p/instances"
    assert event["httpMethod"] == "POST"
    assert event["queryStringParameters"] == {"include_clustered": "False", "x": "2"}
    assert event["multiValueQueryStringParameters"]["x"] == ["1", "2"]
    assert event["headers"]["X-Auth-Token"] == "t"
    assert event["body"] == '{"instance": {}}'
    assert event["requestContext"]["identity"]["sourceIp"] == "127.0.0.1"


def test_proxy_event_without_query_or_body():
    event = proxy_event("GET", "/", {}, b"", "127.0.0.1")
    assert event["queryStringParameters"] is None
    assert event["body"] is None


def test_reply_from_proxy_response():
    reply = _reply_from_proxy(
        {"statusCode": 202, "headers": {"Content-Type": "application/json"}, "body": ""}
    )
    assert (reply.status, reply.body, reply.headers["Content-Type"]) == (
        202,
        b"",
        "application/json",
    )
