"""The API's routes: pipelines, triggers, events, runs, health and metrics."""

from __future__ import annotations

import asyncio
import dataclasses
import os
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from dp.engine.retry import stored_in
from dp.engine.takeover import cancel_recorded
from dp.errors import (
    ApiDisabledError,
    AttemptNotFoundError,
    InvalidTopicError,
    NoRunStoreError,
    ResultsUnavailableError,
    ServiceUnavailableError,
    TaskRunNotFoundError,
    TriggerNotFoundError,
)
from dp.events import TopicMatcher
from dp.io import results_url
from dp.jsonable import jsonable
from dp.pipelines import Pipeline
from dp.service.models import (
    Cancelling,
    EventAccepted,
    EventRequest,
    FireRequest,
    Health,
    Liveness,
    PipelineDetail,
    PipelineInfo,
    PipelineList,
    PlainText,
    Readiness,
    RetryAccepted,
    RetryRequest,
    RunAccepted,
    RunDetail,
    RunPage,
    RunRequest,
    RunSummary,
    SourceItem,
    SourceList,
    TaskLogs,
    TaskResult,
    TriggerFired,
    TriggerItem,
    TriggerList,
    errors,
)
from dp.service.runtime import Service
from dp.store.records import HOST, RunStatus, RunStore

__all__ = ["routes"]

_FIREABLE = ("api", "manual")
_MAX_OFFSET = 2**31  # SQLite integers are 64-bit; bigger offsets would be a 500
_REFUSED = (401, 403, 404, 409, 422, 429, 503)
#: lifecycle topics only dp publishes (so a client cannot fake a run's success)
_RESERVED = TopicMatcher("dp.run.**")
_RESERVED_TASKS = TopicMatcher("dp.task.**")


#: a name the store is queried by: no NUL (PostgreSQL cannot compare one), no lone surrogate
Name = PlainText


def _service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


ServiceDep = Annotated[Service, Depends(_service)]


def routes() -> APIRouter:
    """Every route of the API (the dashboard adds its own)."""
    router = APIRouter()

    # --- pipelines ---------------------------------------------------------------------

    @router.get("/pipelines", tags=["pipelines"], summary="List the pipelines")
    async def list_pipelines(service: ServiceDep) -> PipelineList:
        return PipelineList(items=[_pipeline(service, p) for p in service.pipelines.values()])

    @router.get(
        "/pipelines/{name}",
        tags=["pipelines"],
        summary="Show a pipeline and its execution plan",
        responses=errors(404),
    )
    async def get_pipeline(name: str, service: ServiceDep) -> PipelineDetail:
        info = _pipeline(service, service.pipeline(name))
        return PipelineDetail(**dict(info), plan=service.plan(name).to_dict())

    @router.post(
        "/pipelines/{name}/runs",
        tags=["runs"],
        summary="Start a run of a pipeline",
        status_code=202,
        responses=errors(*_REFUSED),
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
    async def list_triggers(service: ServiceDep) -> TriggerList:
        return TriggerList(items=_triggers(service))

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
        response_model_exclude_none=True,
        responses=errors(*_REFUSED),
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
            fireable = [t.name for t in _triggers(service) if t.kind in _FIREABLE]
            raise TriggerNotFoundError(
                name, fireable, kind=kinds.get(name), what="triggers that can be fired"
            )
        await service.store_check.require()
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
        responses=errors(*_REFUSED),
    )
    async def publish_event(body: EventRequest, service: ServiceDep) -> EventAccepted:
        if not service.accepting:
            raise ServiceUnavailableError("the service is not accepting events (shutting down)")
        # 503, not 202, for an event no run could be recorded for now
        await service.store_check.require()
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

    @router.get("/runs", tags=["runs"], summary="List runs, newest first", responses=errors(422))
    async def list_runs(
        service: ServiceDep,
        pipeline: Annotated[Name | None, Query(max_length=200)] = None,
        status: Annotated[list[RunStatus] | None, Query()] = None,
        trigger: Annotated[
            Name | None,
            Query(max_length=300, description="`api`, `cron`, `event`, `manual`, or exact"),
        ] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
        offset: Annotated[int, Query(ge=0, le=_MAX_OFFSET)] = 0,
    ) -> RunPage:
        store = _store(service)
        where: dict[str, Any] = {"status": status, "pipeline": pipeline, "trigger": trigger}
        records, total = await asyncio.gather(
            asyncio.to_thread(store.list_runs, **where, limit=limit, offset=offset),
            asyncio.to_thread(store.count_runs, **where),
        )
        return RunPage(
            items=[RunSummary.of(r) for r in records], total=total, limit=limit, offset=offset
        )

    @router.get(
        "/runs/{run_id}",
        tags=["runs"],
        summary="Show a run and its task runs",
        responses=errors(404, 422),
    )
    async def get_run(run_id: str, service: ServiceDep) -> RunDetail:
        store = _store(service)
        record = await asyncio.to_thread(store.get_run, run_id)
        every = await asyncio.to_thread(store.get_attempts, run_id)
        return RunDetail.of_attempts(record, every)

    @router.get(
        "/runs/{run_id}/tasks/{task}/logs",
        tags=["runs"],
        summary="What a task printed, and its traceback",
        responses=errors(404, 422),
    )
    async def get_logs(
        run_id: str,
        task: str,
        service: ServiceDep,
        instance: Annotated[str, Query(max_length=300)] = "",
        attempt: Annotated[int | None, Query(ge=1)] = None,
    ) -> TaskLogs:
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
        return TaskLogs(
            run_id=run_id,
            task=row.task_name,
            instance=row.instance,
            status=row.status.value,
            attempt=row.attempt,
            error=row.error,
            output=row.output,
            traceback=row.traceback,
        )

    @router.get(
        "/runs/{run_id}/tasks/{task}/result",
        tags=["runs"],
        summary="The value a task stored, read where the run's results are",
        responses=errors(404, 409, 422, 503),
    )
    async def get_result(run_id: str, task: str, service: ServiceDep) -> TaskResult:
        store = _store(service)
        record = await asyncio.to_thread(store.get_run, run_id)
        rows = [
            r for r in await asyncio.to_thread(store.get_task_runs, run_id) if r.task_name == task
        ]
        if not rows:
            raise TaskRunNotFoundError(run_id, task, "", [])
        result_ids = [rid for row in rows for rid in row.result_ids]
        io = service.orchestrator.io_manager
        if record.results and record.results != results_url(io):
            if service.open_results is None:
                raise ResultsUnavailableError(
                    record.results, f"read run {run_id}'s results", "this service cannot open them"
                )
            io = service.open_results(record.results)
        source = stored_in(record, task)  # a retry's reused task: where its parent stored it
        values = await asyncio.to_thread(lambda: [io.load(source, task, r) for r in result_ids])
        streamed = len(result_ids) != 1 or any(r.instance for r in rows)
        return TaskResult(
            run_id=run_id,
            task=task,
            results=record.results or results_url(io),
            result_ids=result_ids,
            value=jsonable(values if streamed else values[0]),
        )

    @router.post(
        "/runs/{run_id}/retry",
        tags=["runs"],
        summary="Re-run a run from its failure",
        description="Starts a new run of the same pipeline, linked to this one "
        "(`parent_run_id`), that reuses the stored results of the tasks that succeeded and "
        "runs the others and everything downstream of them; with `from`, that task and its "
        "downstream run again too. 409 for a run still running, interrupted (resume it), "
        "whose tasks changed, or without such a task.",
        status_code=202,
        responses=errors(401, 403, 404, 409, 422, *_REFUSED),
    )
    async def retry_run(
        run_id: str, service: ServiceDep, response: Response, body: RetryRequest | None = None
    ) -> RetryAccepted:
        handle = await service.retry_run(run_id, None if body is None else body.from_task)
        response.headers["Location"] = f"/runs/{handle.run_id}"
        context = handle.context
        return RetryAccepted(
            run_id=handle.run_id,
            pipeline=context.pipeline,
            parent_run_id=run_id,
            reused=dict(context.reuse),
        )

    @router.post(
        "/runs/{run_id}/cancel",
        tags=["runs"],
        summary="Cancel a run",
        status_code=202,
        responses=errors(401, 403, 404, 409, 422),
    )
    async def cancel_run(run_id: str, service: ServiceDep) -> Cancelling:
        if service.orchestrator.cancel(run_id):
            return Cancelling(run_id=run_id)
        # not running here: cancel it in the store, fencing whoever owned it (a dead or
        # stopped process, or another instance, which then stops)
        await asyncio.to_thread(
            cancel_recorded, _store(service), run_id, by=f"the API of {HOST}:{os.getpid()}"
        )
        return Cancelling(run_id=run_id, status="cancelled")

    # --- polling sources --------------------------------------------------------------

    @router.get("/sources", tags=["sources"], summary="List the polling sources")
    async def list_sources(service: ServiceDep) -> SourceList:
        if service.sources is None:
            return SourceList(items=[])
        infos = await service.sources.sources()
        return SourceList(items=[SourceItem(**jsonable(dataclasses.asdict(i))) for i in infos])

    # --- health and metrics ------------------------------------------------------------

    @router.get(
        "/health",
        tags=["health"],
        summary="Health of each part (503 if not ready)",
        response_model=Health,
        responses={503: {"model": Health, "description": "Runs cannot start."}},
    )
    async def health(service: ServiceDep) -> JSONResponse:
        report = Health.model_validate(jsonable(await service.health()))
        return JSONResponse(report.model_dump(mode="json"), status_code=_ready(report.ready))

    @router.get("/health/live", tags=["health"], summary="200 while the process serves")
    async def live() -> Liveness:
        return Liveness()

    @router.get(
        "/health/ready",
        tags=["health"],
        summary="200 if runs can start, else 503",
        response_model=Readiness,
        responses={503: {"model": Readiness, "description": "Runs cannot start."}},
    )
    async def ready(service: ServiceDep) -> JSONResponse:
        report = await service.health()
        readiness = Readiness(
            ready=report["ready"], status=report["status"], unavailable=report["unavailable"]
        )
        return JSONResponse(readiness.model_dump(), status_code=_ready(report["ready"]))

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


def _ready(ready: bool) -> int:
    return 200 if ready else 503


def _store(service: Service) -> RunStore:
    store = service.orchestrator.store
    if store is None:
        raise NoRunStoreError()
    return store


def _pipeline(service: Service, definition: Pipeline) -> PipelineInfo:
    plan = service.plan(definition.name)
    active = sum(
        1 for h in service.orchestrator.active_runs() if h.context.pipeline == definition.name
    )
    return PipelineInfo.model_validate(
        {
            "name": definition.name,
            "description": definition.description,
            "tags": list(definition.tags),
            "tasks": list(plan.execution_order),
            "triggers": {
                "cron": [
                    {"expression": c.expression, "timezone": c.timezone, "misfire": c.misfire}
                    for c in definition.schedules
                ],
                "events": [
                    {"pattern": e.pattern, "where": jsonable(e.where)} for e in definition.events
                ],
                "api": definition.api,
            },
            "params": jsonable(definition.params),
            "run_parameters": [p.to_dict() for p in plan.run_parameters],
            "dag_id": plan.dag_id,
            "max_concurrent_runs": definition.max_concurrent_runs,
            "active_runs": active,
        }
    )


def _triggers(service: Service) -> list[TriggerItem]:
    """An API trigger per pipeline that HTTP calls may start, then the scheduler's."""
    items = [
        TriggerItem(name=p.name, kind="api", pipeline=p.name, target_topic=None)
        for p in service.pipelines.values()
        if p.api
    ]
    for info in service.scheduler.triggers():
        topic = info.target_topic.split(".")
        pipeline = topic[2] if topic[:2] == ["dp", "pipelines"] and len(topic) == 4 else None
        fields: dict[str, Any] = jsonable(dataclasses.asdict(info))
        fields["next_fire"] = info.next_fire.isoformat() if info.next_fire else None
        items.append(TriggerItem(**fields, pipeline=pipeline))
    return items
