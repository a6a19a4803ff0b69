"""Structured JSON logging (aws-lambda-powertools Logger) used by every component.

Logs go to stderr so command output on stdout stays machine-readable. Secrets must never be
passed to a logger: models mark them as SecretStr, and `redact` masks known secret keys in dicts.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import Any

from aws_lambda_powertools import Logger

SECRET_KEYS = frozenset(
    {"password", "secret", "token", "key", "admin_password", "root_password", "signature"}
)

_loggers: dict[str, Logger] = {}


def get_logger(service: str = "troveless") -> Logger:
    """One JSON logger per service name, writing to stderr at TROVELESS_LOG_LEVEL (default INFO)."""
    logger = _loggers.get(service)
    if logger is None:
        logger = Logger(
            service=service,
            level=os.environ.get("TROVELESS_LOG_LEVEL", "INFO"),
            logger_handler=logging.StreamHandler(sys.stderr),
        )
        _loggers[service] = logger
    return logger


def redact(data: Mapping[str, Any]) -> dict[str, Any]:
    """Copy of `data` with values of secret-looking keys replaced, recursively."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        if k.lower() in SECRET_KEYS or k.lower().endswith(("_password", "_secret", "_key")):
            out[k] = "***"
        elif isinstance(v, Mapping):
            out[k] = redact(v)
        else:
            out[k] = v
    return out
