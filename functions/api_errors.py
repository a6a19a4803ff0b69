"""Errors as Trove's API shows them: `{"<kind>": {"code": N, "message": "..."}}`.

Every exception a route can raise maps to a 4xx with a message a person can act on; anything
unexpected is a 500 whose message reveals nothing internal (the details go to the log).
Request bodies are parsed here too (`parse_body`), so that malformed JSON or a wrong type is a
400 naming the field, never a 500.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from shared.errors import (
    ActionInProgressError,
    ComputeRequestError,
    ConflictError,
    LeaseHeldError,
    NotFoundError,
    NotSupportedError,
    QuotaExceededError,
    RequestError,
)
from shared.rules.names import NameRuleError
from shared.services.guest_calls import GuestCommandFailedError, GuestTimeoutError
from shared.services.tokens import AuthenticationError

# Trove's error kinds by status (trove/common/wsgi.py's fault map).
ERROR_KINDS: dict[int, str] = {
    400: "badRequest",
    401: "unauthorized",
    403: "forbidden",
    404: "itemNotFound",
    405: "badMethod",
    409: "conflictingRequest",
    413: "overLimit",
    415: "badMediaType",
    422: "unprocessableEntity",
    500: "instanceFault",
    501: "notImplemented",
    503: "serviceUnavailable",
}

ModelT = TypeVar("ModelT", bound=BaseModel)


class ApiError(Exception):
    """An HTTP error raised by the API layer itself (auth, a bad path, a malformed body)."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(message)


def error_body(status: int, message: str) -> dict[str, Any]:
    kind = ERROR_KINDS.get(status, "badRequest" if status < 500 else "instanceFault")
    return {kind: {"code": status, "message": message}}


def error_for(exc: Exception) -> tuple[int, str] | None:
    """(status, message) for an exception the API knows, None for an unexpected one."""
    if isinstance(exc, ApiError):
        return exc.status, exc.message
    if isinstance(exc, AuthenticationError):
        return 401, f"The request you have made requires authentication: {exc}"
    if isinstance(exc, RequestError):
        return exc.status, str(exc)
    if isinstance(exc, NameRuleError):
        return 400, f"{exc.field}: {exc.rule}"
    if isinstance(exc, NotFoundError):
        return 404, _capitalised(str(exc)) + "."
    if isinstance(exc, QuotaExceededError):
        return 413, (
            f"Quota exceeded for resources: ['{exc.resource}']: limit {exc.limit}, "
            f"in use {exc.in_use}, requested {exc.requested}."
        )
    if isinstance(exc, ActionInProgressError):
        return 409, (
            f"Instance {exc.resource_id} is busy ({exc.action} in progress); "
            "retry when it has finished."
        )
    if isinstance(exc, NotSupportedError):
        return 501, f"{exc.what} is not supported: {exc.reason}"
    if isinstance(exc, ComputeRequestError):
        return 400, exc.reason
    if isinstance(exc, ConflictError | LeaseHeldError):
        return 409, "The resource was changed by another request at the same time; retry."
    if isinstance(exc, ValidationError):
        return 400, validation_message(exc)
    if isinstance(exc, GuestTimeoutError):
        return 503, f"{_capitalised(str(exc))}; the instance may be overloaded, retry later."
    if isinstance(exc, GuestCommandFailedError):
        return 422, _capitalised(str(exc))
    return None


def _capitalised(text: str) -> str:
    return text[:1].upper() + text[1:]


def validation_message(exc: ValidationError, root: str = "") -> str:
    """`field: problem` for each error, never echoing the input (it may be a password)."""
    problems = []
    for err in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(p) for p in err["loc"])
        field = f"{root}.{where}" if root and where else (root or where or "body")
        problems.append(f"{field}: {err['msg']}")
    return "; ".join(problems)


def json_body(raw: str | None) -> Any:
    """The request body as JSON; a 400 if it is missing or malformed."""
    if raw is None or not raw.strip():
        raise ApiError(400, "The request body is empty; a JSON object is required.")
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise ApiError(400, f"The request body is not valid JSON: {exc}") from None


def section(body: Any, key: str) -> Any:
    """`body[key]` of a JSON object body, a 400 naming `key` when absent."""
    if not isinstance(body, Mapping):
        raise ApiError(400, "The request body must be a JSON object.")
    if key not in body:
        raise ApiError(400, f"{key}: this field is required.")
    return body[key]


def parse_body(model: type[ModelT], value: Any, root: str) -> ModelT:
    """Validate `value` (a part of the body, at `root`) as `model`; 400 naming the field."""
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        raise ApiError(400, validation_message(exc, root)) from None
