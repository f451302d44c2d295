"""The HTTP API of a `Service`: start runs, fire triggers, publish events, inspect runs.

`create_app(service, token=...)` returns a FastAPI app whose lifespan starts the service and
stops it gracefully. Reads are open; every state-changing request (any method but GET, HEAD
and OPTIONS) needs `Authorization: Bearer <token>` when a token is configured, checked before
the request body is read. Errors are JSON, `{"error": "<ExceptionName>", "detail": "..."}`:
bad input is a 4xx, never a 500.

The parts live by job: `dp.service.handlers` (errors to HTTP answers), `dp.service.models`
(request bodies and response models), `dp.service.middleware` (token and body limit),
`dp.service.routes` (the routes); this module puts them together.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from dp.errors import (
    ApiDisabledError,
    AttemptNotFoundError,
    NoRunStoreError,
    RunNotActiveError,
    TaskRunNotFoundError,
)
from dp.limits import current_limits
from dp.service import dashboard, handlers
from dp.service.handlers import RETRY_AFTER
from dp.service.middleware import SAFE_METHODS, BearerAuth, BodyLimit, HostAllowList
from dp.service.models import EventRequest, FireRequest, RunRequest
from dp.service.routes import routes
from dp.service.runtime import Service

__all__ = [
    "RETRY_AFTER",
    "ApiDisabledError",
    "AttemptNotFoundError",
    "BearerAuth",
    "BodyLimit",
    "EventRequest",
    "FireRequest",
    "NoRunStoreError",
    "RunNotActiveError",
    "RunRequest",
    "TaskRunNotFoundError",
    "create_app",
]


def create_app(
    service: Service,
    *,
    token: str | None = None,
    max_body_bytes: int | None = None,
    protect_reads: bool = False,
    allowed_hosts: Iterable[str] | None = None,
    any_ip_host: bool = False,
) -> FastAPI:
    """The HTTP API of `service` and its dashboard at `/`; the app's lifespan starts and
    (gracefully) stops the service.

    Args:
        service: the service to expose.
        token: when set, every state-changing request needs `Authorization: Bearer <token>`.
        max_body_bytes: larger request bodies are refused with 413 (default: the one size
            limit of `dp.limits`, `DP_MAX_BYTES`, 1 MiB).
        protect_reads: reads need the token too, except health, metrics and static pages
            (for a service listening beyond loopback).
        allowed_hosts: when given, requests with another `Host` header get 400 before
            anything else runs (against DNS rebinding); `dp serve` passes its addresses.
        any_ip_host: with `allowed_hosts`, also accept any IP address as the host (a
            service bound to every address).
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(
        title="dp",
        summary="Start pipeline runs, fire triggers, publish events, inspect runs.",
        version="1",
        lifespan=lifespan,
        docs_url=None,  # the dashboard serves /docs with swagger-ui shipped in the package
        redoc_url=None,
    )
    app.state.service = service
    app.include_router(routes())
    dashboard.mount(app, service, token=token, protect_reads=protect_reads)
    handlers.install(app)
    if max_body_bytes is None:
        max_body_bytes = current_limits().bytes
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    if token:  # added late, so it runs early: no body is read for a refused request
        app.add_middleware(BearerAuth, token=token)
        app.openapi = _openapi_with_bearer(app)  # type: ignore[method-assign]
    if allowed_hosts is not None:  # added last, so it runs first
        app.add_middleware(HostAllowList, hosts=allowed_hosts, ip_literals=any_ip_host)
    return app


def _openapi_with_bearer(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """The OpenAPI schema, saying which operations need the bearer token."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, summary=app.summary, routes=app.routes
            )
            components = schema.setdefault("components", {})
            components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
            for operations in schema.get("paths", {}).values():
                for method, operation in operations.items():
                    if method.upper() not in SAFE_METHODS:
                        operation["security"] = [{"bearer": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    return openapi
