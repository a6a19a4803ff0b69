"""The Trove v1.0 HTTP API as one function: `handler(event, context)` takes an API Gateway
(REST, payload 1.0) proxy event and returns the proxy response.

Routes live in `functions/routes/<resource>.py`; this module includes those that exist,
authenticates every call, and turns every exception into Trove's error JSON. Authentication
is central: a call needs `X-Auth-Token` for the project in its path; a token for another
project gets the same 404 as a resource that does not exist, so projects cannot probe each
other. The version documents, the OpenAPI document and Swagger UI need no token.
"""

from __future__ import annotations

import importlib
import json
import threading
from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response
from aws_lambda_powertools.event_handler.exceptions import NotFoundError as RouteNotFoundError
from aws_lambda_powertools.event_handler.openapi.exceptions import RequestValidationError
from aws_lambda_powertools.utilities.typing import LambdaContext

from functions.api_errors import ApiError, error_body, error_for
from functions.routes import ROUTE_MODULES
from functions.runtime import Runtime, get_runtime
from shared.errors import IdentityUnavailableError
from shared.observability import get_logger
from shared.ports import TokenValidator
from shared.services.tokens import AuthenticationError, TokenClaims, TokenService

log = get_logger("api")

API_TITLE = "troveless: Trove v1.0 API"
PUBLIC_PATHS = frozenset({"/", "/v1.0", "/v1.0/", "/docs", "/openapi.json"})
CLAIMS = "claims"  # the request context key routes read the caller's TokenClaims from

app = APIGatewayRestResolver(enable_validation=True)


def _include_routes() -> list[str]:
    included = []
    for name in ROUTE_MODULES:
        module_name = f"functions.routes.{name}"
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise  # the module exists but something it needs does not: say so
            continue
        app.include_router(module.router)
        included.append(name)
    return included


INCLUDED_ROUTES = _include_routes()
app.enable_swagger(path="/docs", title=API_TITLE)


@app.get("/openapi.json", include_in_schema=False)
def openapi_document() -> Response[str]:
    return Response(
        status_code=200,
        content_type="application/json",
        body=app.get_openapi_json_schema(title=API_TITLE),
    )


def _error_response(status: int, message: str) -> Response[str]:
    return Response(
        status_code=status,
        content_type="application/json",
        body=json.dumps(error_body(status, message)),
    )


@app.exception_handler(RequestValidationError)  # type: ignore[untyped-decorator]
def _invalid_request(exc: RequestValidationError) -> Response[str]:
    problems = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "path", "query")]
        problems.append(f"{'.'.join(loc) or 'body'}: {err.get('msg', 'is invalid')}")
    return _error_response(400, "; ".join(problems) or "The request is invalid.")


@app.exception_handler(RouteNotFoundError)  # type: ignore[untyped-decorator]
def _no_route(exc: RouteNotFoundError) -> Response[str]:
    return _error_response(404, "The resource could not be found.")


@app.exception_handler(Exception)  # type: ignore[untyped-decorator]
def _any_error(exc: Exception) -> Response[str]:
    known = error_for(exc)
    if known is not None:
        status, message = known
        if status >= 500 and status != 501:
            log.error("request failed", extra={"error": message})
        return _error_response(status, message)
    log.exception("unexpected error while handling a request")
    return _error_response(500, "The server could not complete the request; it has been logged.")


# ------------------------------------------------------------------ authentication

_token_lock = threading.Lock()
_token_service: tuple[Runtime, TokenService] | None = None


def token_service(runtime: Runtime) -> TokenService:
    """The token service for this runtime (its master key and clock), built once."""
    global _token_service
    with _token_lock:
        # Keyed by the runtime object itself (held here), never by id(): ids are reused.
        if _token_service is None or _token_service[0] is not runtime:
            service = TokenService(
                runtime.master_key, runtime.clock, runtime.settings.token_ttl_seconds
            )
            _token_service = (runtime, service)
        return _token_service[1]


def token_validator(runtime: Runtime) -> TokenValidator:
    """The runtime's validator (Keystone on OpenStack), else our own signed tokens."""
    if runtime.token_validator is not None:
        return runtime.token_validator
    return token_service(runtime)


def _header(event: dict[str, Any], name: str) -> str | None:
    for key, value in (event.get("headers") or {}).items():
        if key.lower() == name:
            return str(value) if value is not None else None
    return None


def authenticate(event: dict[str, Any]) -> TokenClaims | None:
    """The caller's claims (None on a public path); raises ApiError for 401/404."""
    path = str(event.get("path") or "/")
    if path in PUBLIC_PATHS:
        return None
    token = _header(event, "x-auth-token")
    if not token:
        raise ApiError(401, "The request you have made requires authentication: no X-Auth-Token.")
    try:
        claims = token_validator(get_runtime()).validate(token)
    except AuthenticationError as exc:
        raise ApiError(401, f"The request you have made requires authentication: {exc}.") from None
    except IdentityUnavailableError as exc:
        log.error("token validation unavailable", extra={"error": str(exc)})
        raise ApiError(
            503, "The identity service cannot validate tokens now; retry later."
        ) from None
    parts = path.strip("/").split("/")
    if len(parts) >= 2 and parts[0] == "v1.0" and parts[1] != claims.project_id:
        # Another project's resources do not exist as far as this caller can tell.
        raise ApiError(404, "The resource could not be found.")
    return claims


# Powertools keeps the current event on the resolver class, so requests are resolved one at a
# time per process (Lambda runs one at a time anyway; the embedded server's threads queue here).
_resolve_lock = threading.Lock()


def handler(event: dict[str, Any], context: LambdaContext | None) -> dict[str, Any]:
    try:
        claims = authenticate(event)
    except ApiError as exc:
        return {
            "statusCode": exc.status,
            "headers": {"Content-Type": "application/json"},
            "body": json.dumps(error_body(exc.status, exc.message)),
            "isBase64Encoded": False,
        }
    with _resolve_lock:
        app.append_context(**{CLAIMS: claims})  # type: ignore[no-untyped-call]
        try:
            return app.resolve(event, context)  # type: ignore[arg-type]
        finally:
            app.clear_context()  # type: ignore[no-untyped-call]
