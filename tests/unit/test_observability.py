import json
import logging

from shared.observability import get_logger, redact


def test_redact_masks_secret_keys_recursively():
    data = {
        "name": "db1",
        "password": "hunter2",
        "nested": {"admin_password": "x", "api_key": "k", "size": 3},
    }
    out = redact(data)
    assert out == {
        "name": "db1",
        "password": "***",
        "nested": {"admin_password": "***", "api_key": "***", "size": 3},
    }
    assert data["password"] == "hunter2"  # the input is not modified


def test_logger_writes_json_with_service_name(capsys):
    logger = get_logger("test-service")
    logger.info("hello", extra={"instance_id": "abc"})
    for handler in logging.getLogger("test-service").handlers:
        handler.flush()
    err = capsys.readouterr().err.strip().splitlines()
    record = json.loads(err[-1])
    assert record["message"] == "hello"
    assert record["service"] == "test-service"
    assert record["instance_id"] == "abc"
