"""Trove v1.0 routes, one module per resource, each exposing `router`.

`functions.api` includes the modules named in ROUTE_MODULES that exist. Authentication is
done there, centrally: a route handler only runs for a token scoped to the path's project.
"""

from __future__ import annotations

from aws_lambda_powertools.event_handler.router import APIGatewayRouter
from aws_lambda_powertools.utilities.data_classes.common import BaseProxyEvent

from functions.trove_views import ApiUrls

ROUTE_MODULES = [
    "versions",
    "instances",
    "flavors",
    "datastores",
    "limits",
    "quotas",
    "configurations",
    "parameters",
    "databases",
    "users",
    "root",
    "logs",
    "backups",
    "backup_schedules",
]


def api_urls(event: BaseProxyEvent, project_id: str) -> ApiUrls:
    """Link roots as the client addressed us (Host header; X-Forwarded-Proto behind a proxy)."""
    headers = {k.lower(): v for k, v in (event.headers or {}).items()}
    host = headers.get("host") or "localhost"
    scheme = headers.get("x-forwarded-proto") or "http"
    return ApiUrls(root=f"{scheme}://{host}", project_id=project_id)


def new_router() -> APIGatewayRouter:
    """A router for one resource module (powertools' constructor carries no annotations)."""
    return APIGatewayRouter()  # type: ignore[no-untyped-call]
