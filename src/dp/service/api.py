"""The HTTP API of a `Service`: start runs, fire triggers, publish events, inspect runs.

`create_app(service, token=...)` returns a FastAPI app whose lifespan starts the service and
stops it gracefully. Reads are open; every state-changing request (any method but GET, HEAD
and OPTIONS) needs `Authorization: Bearer <token>` when a token is configured, checked before
the request body is read. Errors are JSON, `{"error": "<ExceptionName>", "detail": "..."}`:
bad input is a 4xx, never a 500.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import http
import json
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from dp.engine import ResumeError, TooManyPipelinesError
from dp.errors import (
    BrokerClosedError,
    DPError,
    DuplicateRunError,
    EventFormatError,
    InvalidIdError,
    InvalidTopicError,
    PlanError,
    QueueFullError,
    RunNotFoundError,
)
from dp.events import MAX_TOPIC_LENGTH, TopicMatcher
from dp.ids import ID_PATTERN, MAX_ID_LENGTH, check_id
from dp.logs import get_logger
from dp.pipelines import Pipeline, PipelineError
from dp.scheduler import CircuitOpenError, SchedulerError, TriggerNotFoundError
from dp.service.runtime import PipelineBusyError, Service, ServiceUnavailableError
from dp.store.records import RunRecord, RunStatus, TaskRunRecord, is_stale, owner_of

__all__ = [
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

_log = get_logger("dp.service.api")

#: Seconds a client should wait before retrying a refused (429) or unavailable (503) call.
RETRY_AFTER = 1
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_FIREABLE = ("api", "manual")
_MAX_OFFSET = 2**31  # SQLite integers are 64-bit; bigger offsets would be a 500


# --- errors the API adds ---------------------------------------------------------------------


class ApiDisabledError(DPError):
    """The pipeline is defined with `api=False`: HTTP calls may not start it."""

    def __init__(self, pipeline: str) -> None:
        self.pipeline = pipeline
        super().__init__(
            f"pipeline {pipeline!r} is not started over HTTP (api=False); it starts on its "
            "cron and event triggers. Define it with api=True to allow HTTP calls."
        )


class RunNotActiveError(DPError):
    """A run cannot be cancelled: it finished, or no process is running it here."""

    def __init__(self, run_id: str, status: RunStatus) -> None:
        self.run_id = run_id
        self.status = status
        reason = (
            f"it already {status.value}"
            if status.finished
            else f"it is {status.value} but not running in this service"
        )
        super().__init__(f"run {run_id!r} cannot be cancelled: {reason}.")


class TaskRunNotFoundError(DPError, LookupError):
    """A run has no task run with this task name and instance."""

    def __init__(self, run_id: str, task: str, instance: str, instances: list[str]) -> None:
        self.run_id = run_id
        self.task = task
        self.instance = instance
        hint = f"; its instances: {', '.join(instances)}" if instances else ""
        super().__init__(f"run {run_id!r} has no task {task!r} (instance {instance!r}){hint}.")


class AttemptNotFoundError(DPError, LookupError):
    """A task run has no attempt with this number."""

    def __init__(self, run_id: str, task: str, attempt: int, attempts: list[int]) -> None:
        self.run_id = run_id
        self.task = task
        self.attempt = attempt
        made = ", ".join(map(str, attempts))
        super().__init__(
            f"task {task!r} of run {run_id!r} has no attempt {attempt}; it made {made}."
        )


class NoRunStoreError(DPError):
    """The service's orchestrator records no runs, so there are none to list or show."""


#: HTTP status of each DPError (the most specific class wins); any other DPError is a 400.
_STATUS: dict[type[DPError], int] = {
    PipelineError: 404,  # only raised for unknown names once the service has started
    RunNotFoundError: 404,
    TaskRunNotFoundError: 404,
    AttemptNotFoundError: 404,
    TriggerNotFoundError: 404,
    ApiDisabledError: 403,
    DuplicateRunError: 409,
    RunNotActiveError: 409,
    ResumeError: 409,
    PlanError: 422,  # includes missing and invalid run parameters
    InvalidTopicError: 422,
    InvalidIdError: 422,
    EventFormatError: 422,
    TooManyPipelinesError: 429,
    PipelineBusyError: 429,
    QueueFullError: 429,
    NoRunStoreError: 501,
    ServiceUnavailableError: 503,
    BrokerClosedError: 503,
    CircuitOpenError: 503,
    SchedulerError: 503,  # not running: the service is starting or stopping
}


def _status_of(exc: DPError) -> int:
    for cls in type(exc).__mro__:
        status = _STATUS.get(cls)
        if status is not None:
            return status
    return 400


def _error(
    status: int, error: str, detail: str, headers: Mapping[str, str] | None = None, **extra: Any
) -> JSONResponse:
    return JSONResponse(
        {"error": error, "detail": detail, **extra}, status_code=status, headers=headers
    )


async def _dp_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, DPError)
    status = _status_of(exc)
    headers = {"Retry-After": str(RETRY_AFTER)} if status in (429, 503) else None
    return _error(status, type(exc).__name__, str(exc), headers)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": e.get("type")}
        for e in exc.errors()
    ]
    detail = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors)
    return _error(422, "ValidationError", detail or "invalid request", errors=errors)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    error = http.HTTPStatus(exc.status_code).phrase.replace(" ", "").replace("-", "")
    return _error(exc.status_code, error, str(exc.detail), exc.headers)


# --- request and response bodies ---------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _run_id(value: str) -> str:
    return check_id("run id", value)  # the pattern cannot say "no '..'"


class RunRequest(_Body):
    """Start a run: its run parameters, and optionally its id."""

    params: dict[str, Any] = Field(
        default_factory=dict, description="Run parameters; they override the pipeline's."
    )
    run_id: Annotated[str, AfterValidator(_run_id)] | None = Field(
        default=None,
        pattern=ID_PATTERN,
        max_length=MAX_ID_LENGTH,
        description="The run's id (default: a new one); an id can start only one run. "
        "Letters, digits, '_', '.', '-', not starting with '.' or '-', without '..'.",
    )


class FireRequest(_Body):
    """Fire a trigger with a payload (an API trigger's payload is the run parameters)."""

    payload: dict[str, Any] = Field(default_factory=dict)


#: lifecycle topics only dp publishes (so a client cannot fake a run's success)
_RESERVED = TopicMatcher("dp.run.**")
_RESERVED_TASKS = TopicMatcher("dp.task.**")


class EventRequest(_Body):
    """Publish an event on the service's bus."""

    topic: str = Field(min_length=1, max_length=MAX_TOPIC_LENGTH, examples=["sales.orders.created"])
    payload: dict[str, Any] = Field(default_factory=dict)
    event_type: str = Field(default="", max_length=200)
    event_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="Publishing an event id twice starts at most one run.",
    )
    correlation_id: str | None = Field(default=None, max_length=200)


class RunAccepted(BaseModel):
    """A run was recorded and queued; `GET /runs/{run_id}` follows it."""

    run_id: str
    pipeline: str
    status: str = RunStatus.QUEUED.value


class EventAccepted(BaseModel):
    """An event was published on the bus."""

    event_id: str


class TriggerFired(BaseModel):
    """An API trigger started run `run_id`; another trigger published event `event_id`."""

    run_id: str | None = None
    event_id: str | None = None


class ErrorBody(BaseModel):
    """Every error: the exception's name and a message saying what is wrong and how to fix it."""

    error: str
    detail: str


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorBody} for status in statuses}


_REFUSED = (401, 403, 404, 409, 422, 429, 503)


# --- authentication ----------------------------------------------------------------------


class BearerAuth:
    """Refuses state-changing requests that lack the API token, before their body is read.

    Missing or malformed header: 401 with `WWW-Authenticate: Bearer`; wrong token: 403.
    """

    def __init__(self, app: ASGIApp, *, token: str) -> None:
        self.app = app
        self._token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] not in _SAFE_METHODS:
            refusal = self._refusal(Headers(scope=scope).get("authorization", ""))
            if refusal is not None:
                client = scope.get("client") or ("", 0)
                _log.warning(
                    "api.refused",
                    status=refusal.status_code,
                    method=scope["method"],
                    path=scope["path"],
                    client=client[0],
                )
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _refusal(self, header: str) -> Response | None:
        scheme, _, credentials = header.partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            return _error(
                401,
                "Unauthorized",
                "this request needs the API token: send 'Authorization: Bearer <token>'.",
                {"WWW-Authenticate": "Bearer"},
            )
        # Starlette decodes header bytes as latin-1: encoding back gives the bytes as sent
        if not hmac.compare_digest(credentials.strip().encode("latin-1"), self._token):
            return _error(403, "Forbidden", "the API token is wrong.")
        return None


class BodyLimit:
    """Refuses request bodies larger than `max_bytes` with 413, before any handler reads them.

    A body is read whole (it is at most `max_bytes`) and handed on, so a client sending an
    endless chunked body cannot make the service buffer it.
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in _SAFE_METHODS:
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large(scope, receive, send)
            return
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay([message]), send)
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                await self._too_large(scope, receive, send)
                return
        replay = [{"type": "http.request", "body": bytes(body), "more_body": False}]
        await self.app(scope, _replay(replay, receive), send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _error(
            413,
            "RequestTooLarge",
            f"the request body is over {self.max_bytes} bytes; send less data (put large "
            "inputs where a task can read them and pass a reference).",
        )(scope, receive, send)


def _replay(messages: list[Any], then: Receive | None = None) -> Receive:
    async def receive() -> Any:
        if messages:
            return messages.pop(0)
        if then is not None:
            return await then()
        return {"type": "http.disconnect"}

    return receive


# --- the app -----------------------------------------------------------------------------


def create_app(
    service: Service,
    *,
    token: str | None = None,
    max_body_bytes: int = 1024 * 1024,
    protect_reads: bool = False,
) -> FastAPI:
    """The HTTP API of `service` and its dashboard at `/`; the app's lifespan starts and
    (gracefully) stops the service.

    Args:
        service: the service to expose.
        token: when set, every state-changing request needs `Authorization: Bearer <token>`.
        max_body_bytes: larger request bodies are refused with 413.
        protect_reads: reads need the token too, except health, metrics and static pages
            (for a service listening beyond loopback).
    """
    from dp.service import dashboard

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
    app.include_router(_routes())
    dashboard.mount(app, service, token=token, protect_reads=protect_reads)
    app.add_exception_handler(DPError, _dp_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    if token:  # added last, so it runs first: no body is read for a refused request
        app.add_middleware(BearerAuth, token=token)
        app.openapi = _openapi_with_bearer(app)  # type: ignore[method-assign]
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
                    if method.upper() not in _SAFE_METHODS:
                        operation["security"] = [{"bearer": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    return openapi


def _service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


ServiceDep = Annotated[Service, Depends(_service)]


def _routes() -> APIRouter:
    router = APIRouter()

    # --- pipelines ---------------------------------------------------------------------

    @router.get("/pipelines", tags=["pipelines"], summary="List the pipelines")
    async def list_pipelines(service: ServiceDep) -> dict[str, Any]:
        return {"items": [_pipeline_dict(service, p) for p in service.pipelines.values()]}

    @router.get(
        "/pipelines/{name}",
        tags=["pipelines"],
        summary="Show a pipeline and its execution plan",
        responses=_errors(404),
    )
    async def get_pipeline(name: str, service: ServiceDep) -> dict[str, Any]:
        definition = service.pipeline(name)
        return {**_pipeline_dict(service, definition), "plan": service.plan(name).to_dict()}

    @router.post(
        "/pipelines/{name}/runs",
        tags=["runs"],
        summary="Start a run of a pipeline",
        status_code=202,
        response_model=RunAccepted,
        responses=_errors(*_REFUSED),
    )
    async def start_run(
        name: str, body: RunRequest, service: ServiceDep, response: Response
    ) -> RunAccepted:
        if not service.pipeline(name).api:
            raise ApiDisabledError(name)
        handle = await service.start_run(name, body.params, trigger="api", run_id=body.run_id)
        response.headers["Location"] = f"/runs/{handle.run_id}"
        return RunAccepted(run_id=handle.run_id, pipeline=name)

    # --- triggers ----------------------------------------------------------------------

    @router.get("/triggers", tags=["triggers"], summary="List the triggers")
    async def list_triggers(service: ServiceDep) -> dict[str, Any]:
        return {"items": _triggers(service)}

    @router.post(
        "/triggers/{name}/fire",
        tags=["triggers"],
        summary="Fire a trigger",
        description=(
            "An API trigger (named after its pipeline) starts a run at once, with the payload "
            "as run parameters, and answers its `run_id`. Other triggers publish their event "
            "and answer its `event_id`."
        ),
        status_code=202,
        response_model=TriggerFired,
        response_model_exclude_none=True,
        responses=_errors(*_REFUSED),
    )
    async def fire_trigger(name: str, body: FireRequest, service: ServiceDep) -> TriggerFired:
        definition = service.pipelines.get(name)
        if definition is not None and definition.api:
            handle = await service.start_run(name, body.payload, trigger=f"api:{name}")
            return TriggerFired(run_id=handle.run_id)
        if not service.accepting:
            raise ServiceUnavailableError("the service is not accepting events (shutting down)")
        kinds = {t.name: t.kind for t in service.scheduler.triggers()}
        if kinds.get(name) not in _FIREABLE:
            fireable = [t["name"] for t in _triggers(service) if t["kind"] in _FIREABLE]
            raise TriggerNotFoundError(
                name, fireable, kind=kinds.get(name), what="triggers that can be fired"
            )
        event = await service.scheduler.fire(name, body.payload)
        return TriggerFired(event_id=event.event_id)

    # --- events ------------------------------------------------------------------------

    @router.post(
        "/events",
        tags=["events"],
        summary="Publish an event",
        description="Pipelines whose patterns match the topic start, with the payload as run "
        "parameters. Publishing the same `event_id` twice starts at most one run.",
        status_code=202,
        response_model=EventAccepted,
        responses=_errors(*_REFUSED),
    )
    async def publish_event(body: EventRequest, service: ServiceDep) -> EventAccepted:
        if not service.accepting:
            raise ServiceUnavailableError("the service is not accepting events (shutting down)")
        if _RESERVED.matches(body.topic) or _RESERVED_TASKS.matches(body.topic):
            raise InvalidTopicError(
                body.topic,
                "dp.run.* and dp.task.* are the lifecycle events dp itself publishes; publish "
                "to dp.pipelines.<name>.start to start a pipeline, or use your own topic",
            )
        event = await service.publish(
            body.topic,
            body.payload,
            event_type=body.event_type,
            event_id=body.event_id,
            source="api",
            correlation_id=body.correlation_id,
        )
        return EventAccepted(event_id=event.event_id)

    # --- runs --------------------------------------------------------------------------

    @router.get("/runs", tags=["runs"], summary="List runs, newest first", responses=_errors(422))
    async def list_runs(
        service: ServiceDep,
        pipeline: Annotated[str | None, Query(max_length=200)] = None,
        status: Annotated[list[RunStatus] | None, Query()] = None,
        trigger: Annotated[
            str | None,
            Query(max_length=300, description="`api`, `cron`, `event`, `manual`, or exact"),
        ] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
        offset: Annotated[int, Query(ge=0, le=_MAX_OFFSET)] = 0,
    ) -> dict[str, Any]:
        store = _store(service)
        where = {"status": status, "pipeline": pipeline, "trigger": trigger}
        records, total = await asyncio.gather(
            asyncio.to_thread(store.list_runs, **where, limit=limit, offset=offset),
            asyncio.to_thread(store.count_runs, **where),
        )
        return {
            "items": [_run_dict(r) for r in records],
            "total": total,
            "limit": limit,
            "offset": offset,
        }

    @router.get(
        "/runs/{run_id}",
        tags=["runs"],
        summary="Show a run and its task runs",
        responses=_errors(404, 422),
    )
    async def get_run(run_id: str, service: ServiceDep) -> dict[str, Any]:
        store = _store(service)
        record = await asyncio.to_thread(store.get_run, run_id)
        every = await asyncio.to_thread(store.get_attempts, run_id)
        attempts: dict[tuple[str, str], list[dict[str, Any]]] = {}
        latest: dict[tuple[str, str], TaskRunRecord] = {}
        for attempt in every:  # by task, instance and attempt: the last one is the task run
            key = (attempt.task_name, attempt.instance)
            attempts.setdefault(key, []).append(_attempt_dict(attempt))
            latest[key] = attempt
        tasks = sorted(latest.values(), key=_task_order)
        return {
            **_run_dict(record),
            "plan": record.plan,
            "tasks": [
                {**_task_dict(t), "attempts": attempts[t.task_name, t.instance]} for t in tasks
            ],
        }

    @router.get(
        "/runs/{run_id}/tasks/{task}/logs",
        tags=["runs"],
        summary="What a task printed, and its traceback",
        responses=_errors(404, 422),
    )
    async def get_logs(
        run_id: str,
        task: str,
        service: ServiceDep,
        instance: Annotated[str, Query(max_length=300)] = "",
        attempt: Annotated[int | None, Query(ge=1)] = None,
    ) -> dict[str, Any]:
        store = _store(service)
        if attempt is None:
            rows = await asyncio.to_thread(store.get_task_runs, run_id)
        else:
            rows = await asyncio.to_thread(store.get_attempts, run_id)
        rows = [r for r in rows if r.task_name == task]
        row = next(
            (r for r in rows if r.instance == instance and attempt in (None, r.attempt)), None
        )
        if row is None:
            if attempt is not None and any(r.instance == instance for r in rows):
                raise AttemptNotFoundError(
                    run_id, task, attempt, [r.attempt for r in rows if r.instance == instance]
                )
            raise TaskRunNotFoundError(run_id, task, instance, [r.instance for r in rows])
        return {
            "run_id": run_id,
            "task": row.task_name,
            "instance": row.instance,
            "status": row.status.value,
            "attempt": row.attempt,
            "error": row.error,
            "output": row.output,
            "traceback": row.traceback,
        }

    @router.post(
        "/runs/{run_id}/cancel",
        tags=["runs"],
        summary="Cancel a run",
        status_code=202,
        responses=_errors(401, 403, 404, 409, 422),
    )
    async def cancel_run(run_id: str, service: ServiceDep) -> dict[str, Any]:
        if service.orchestrator.cancel(run_id):
            return {"run_id": run_id, "status": "cancelling"}
        record = await asyncio.to_thread(_store(service).get_run, run_id)
        raise RunNotActiveError(run_id, record.status)

    # --- health and metrics ------------------------------------------------------------

    @router.get("/health", tags=["health"], summary="Health of each part (503 if not ready)")
    async def health(service: ServiceDep) -> JSONResponse:
        report = await service.health()
        return JSONResponse(_jsonable(report), status_code=200 if report["ready"] else 503)

    @router.get("/health/live", tags=["health"], summary="200 while the process serves")
    async def live() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/health/ready", tags=["health"], summary="200 if runs can start, else 503")
    async def ready(service: ServiceDep) -> JSONResponse:
        report = await service.health()
        return JSONResponse(
            {"ready": report["ready"], "status": report["status"]},
            status_code=200 if report["ready"] else 503,
        )

    @router.get(
        "/metrics",
        tags=["health"],
        summary="Prometheus metrics",
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
    )
    async def metrics(service: ServiceDep) -> Response:
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return router


# --- helpers -------------------------------------------------------------------------------


def _store(service: Service) -> Any:
    store = service.orchestrator.store
    if store is None:
        raise NoRunStoreError("this service records no runs: its orchestrator has no run store.")
    return store


def _pipeline_dict(service: Service, definition: Pipeline) -> dict[str, Any]:
    plan = service.plan(definition.name)
    active = sum(
        1 for h in service.orchestrator.active_runs() if h.context.pipeline == definition.name
    )
    return {
        "name": definition.name,
        "description": definition.description,
        "tags": list(definition.tags),
        "tasks": list(plan.execution_order),  # what a run runs, also when selected by tag
        "triggers": {
            "cron": [
                {"expression": c.expression, "timezone": c.timezone, "misfire": c.misfire}
                for c in definition.schedules
            ],
            "events": [
                {"pattern": e.pattern, "where": _jsonable(dict(e.where))} for e in definition.events
            ],
            "api": definition.api,
        },
        "params": _jsonable(dict(definition.params)),
        "run_parameters": [p.to_dict() for p in plan.run_parameters],
        "dag_id": plan.dag_id,
        "max_concurrent_runs": definition.max_concurrent_runs,
        "active_runs": active,
    }


def _triggers(service: Service) -> list[dict[str, Any]]:
    """An API trigger per pipeline that HTTP calls may start, then the scheduler's."""
    items: list[dict[str, Any]] = [
        {"name": p.name, "kind": "api", "pipeline": p.name, "target_topic": None}
        for p in service.pipelines.values()
        if p.api
    ]
    for info in service.scheduler.triggers():
        topic = info.target_topic.split(".")
        pipeline = topic[2] if topic[:2] == ["dp", "pipelines"] and len(topic) == 4 else None
        items.append({**_jsonable(dataclasses.asdict(info)), "pipeline": pipeline})
    return items


def _run_dict(record: RunRecord) -> dict[str, Any]:
    host, pid = owner_of(record)
    duration = (
        (record.finished_at - record.started_at).total_seconds()
        if record.started_at and record.finished_at
        else None
    )
    return {
        "run_id": record.run_id,
        "pipeline": record.pipeline,
        "dag_id": record.dag_id,
        "status": record.status.value,
        "trigger": record.trigger,
        "event_id": record.event_id,
        "params": record.params,
        "created_at": _iso(record.created_at),
        "started_at": _iso(record.started_at),
        "finished_at": _iso(record.finished_at),
        "duration": duration,
        "error": record.error,
        "epoch": record.epoch,
        "owner": {"host": host, "pid": pid} if host is not None else None,
        "lease_until": _iso(record.lease_until),
        "stale": is_stale(record),
    }


def _task_order(record: TaskRunRecord) -> tuple[bool, datetime, str, str]:
    """As `RunStore.get_task_runs` orders: by start time (unstarted last), name, instance."""
    started = record.started_at
    return (
        started is None,
        started or datetime.min.replace(tzinfo=UTC),
        record.task_name,
        record.instance,
    )


def _attempt_dict(record: TaskRunRecord) -> dict[str, Any]:
    return {
        "attempt": record.attempt,
        "status": record.status.value,
        "started_at": _iso(record.started_at),
        "finished_at": _iso(record.finished_at),
        "duration": record.duration,
        "error": record.error,
        "host": record.host,
        "pid": record.pid,
    }


def _task_dict(record: TaskRunRecord) -> dict[str, Any]:
    return {
        "task": record.task_name,
        "instance": record.instance,
        "status": record.status.value,
        "attempt": record.attempt,
        "started_at": _iso(record.started_at),
        "finished_at": _iso(record.finished_at),
        "duration": record.duration,
        "error": record.error,
        "result_ids": record.result_ids,
    }


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _jsonable(value: Any) -> Any:
    """`value` with datetimes as ISO 8601 strings and anything else JSON lacks as its repr."""
    return json.loads(json.dumps(value, default=_encode_default))


def _encode_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, set | frozenset):
        return sorted(value, key=repr)
    return repr(value)
