"""How errors become HTTP answers: each `DPError` to its status, every error a JSON body.

Errors are JSON, `{"error": "<ExceptionName>", "detail": "..."}`: bad input is a 4xx, never
a 500. Refusals that may pass with time (429, 503) carry `Retry-After`. An outage of a
dependency (`DependencyUnavailableError`: the run store, the bus, the results store) is a 503
whose body names it (`"dependency": "store"`), never a 500.
"""

from __future__ import annotations

import http
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from dp.errors import (
    ApiDisabledError,
    AttemptNotFoundError,
    BrokerClosedError,
    CircuitOpenError,
    DependencyUnavailableError,
    DPError,
    DuplicateRunError,
    EventFormatError,
    InvalidIdError,
    InvalidTopicError,
    NoRunStoreError,
    PipelineBusyError,
    PipelineError,
    PlanError,
    QueueFullError,
    ResultDamagedError,
    ResultNotFoundError,
    ResumeError,
    RetryError,
    RunNotActiveError,
    RunNotFoundError,
    SchedulerError,
    ServiceUnavailableError,
    StoreUnavailableError,
    TaskRunNotFoundError,
    TooManyPipelinesError,
    TriggerNotFoundError,
    UnstorableValueError,
)
from dp.limits import preview

__all__ = ["OUTAGE_RETRY_AFTER", "RETRY_AFTER", "error_response", "install", "status_of"]

#: Seconds a client should wait before retrying a refused (429) or unavailable (503) call.
RETRY_AFTER = 1
#: ... and one refused because a dependency is down (it rarely comes back within a second).
OUTAGE_RETRY_AFTER = 5

#: HTTP status of each DPError (the most specific class wins); any other DPError is a 400.
_STATUS: dict[type[DPError], int] = {
    PipelineError: 404,  # only raised for unknown names once the service has started
    RunNotFoundError: 404,
    TaskRunNotFoundError: 404,
    AttemptNotFoundError: 404,
    ResultNotFoundError: 404,
    ResultDamagedError: 409,  # stored, but unreadable: the body names run, task and file
    TriggerNotFoundError: 404,
    ApiDisabledError: 403,
    DuplicateRunError: 409,
    RunNotActiveError: 409,
    ResumeError: 409,
    RetryError: 409,  # still running, interrupted, tasks changed, no such --from task
    PlanError: 422,  # includes missing and invalid run parameters
    InvalidTopicError: 422,
    InvalidIdError: 422,
    EventFormatError: 422,
    UnstorableValueError: 422,
    TooManyPipelinesError: 429,
    PipelineBusyError: 429,
    QueueFullError: 429,
    NoRunStoreError: 501,
    ServiceUnavailableError: 503,
    BrokerClosedError: 503,
    CircuitOpenError: 503,
    SchedulerError: 503,  # not running: the service is starting or stopping
    DependencyUnavailableError: 503,  # the store, bus or results store is down
}


def status_of(exc: DPError) -> int:
    """The HTTP status that answers `exc`."""
    for cls in type(exc).__mro__:
        status = _STATUS.get(cls)
        if status is not None:
            return status
    return 400


def error_response(
    status: int, error: str, detail: str, headers: Mapping[str, str] | None = None, **extra: Any
) -> JSONResponse:
    """The JSON answer to a refused request."""
    return JSONResponse(
        {"error": error, "detail": detail, **extra}, status_code=status, headers=headers
    )


def install(app: FastAPI) -> None:
    """Answer DPErrors, request validation errors and HTTP errors of `app` with JSON bodies."""
    app.add_exception_handler(DPError, _dp_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)


async def _dp_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, DPError)
    status = status_of(exc)
    if isinstance(exc, DependencyUnavailableError):
        check = getattr(getattr(request.app.state, "service", None), "store_check", None)
        if isinstance(exc, StoreUnavailableError) and check is not None:
            check.failed(exc)  # the next requests hear it without asking the store again
        retry = {"Retry-After": str(OUTAGE_RETRY_AFTER)}
        return error_response(
            status, type(exc).__name__, str(exc), retry, dependency=exc.dependency
        )
    headers = {"Retry-After": str(RETRY_AFTER)} if status in (429, 503) else None
    return error_response(status, type(exc).__name__, str(exc), headers)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = [  # preview: a key or message may hold a lone surrogate, which no JSON can carry
        {
            "loc": preview(list(e.get("loc", ())), depth=1, items=100),
            "msg": preview(str(e.get("msg", ""))),
            "type": e.get("type"),
        }
        for e in exc.errors()
    ]
    detail = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors)
    return error_response(422, "ValidationError", detail or "invalid request", errors=errors)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    error = http.HTTPStatus(exc.status_code).phrase.replace(" ", "").replace("-", "")
    return error_response(exc.status_code, error, str(exc.detail), exc.headers)
