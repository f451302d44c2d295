"""The API's request bodies and response models, so the OpenAPI document describes both.

Times are ISO 8601 text with their UTC offset (`2026-11-22T10:15:00+00:00`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from dp.engine.retry import reused_map
from dp.errors import UnstorableValueError
from dp.events import MAX_TOPIC_LENGTH
from dp.ids import ID_PATTERN, MAX_ID_LENGTH, check_id
from dp.limits import check_storable
from dp.store.records import RunRecord, RunStatus, TaskRunRecord, is_stale, owner_of

__all__ = [
    "AttemptInfo",
    "Cancelling",
    "ErrorBody",
    "EventAccepted",
    "EventRequest",
    "FireRequest",
    "Health",
    "Liveness",
    "PipelineDetail",
    "PipelineInfo",
    "PipelineList",
    "Readiness",
    "RunAccepted",
    "RunDetail",
    "RunPage",
    "RunRequest",
    "RunSummary",
    "TaskLogs",
    "TaskRunInfo",
    "TriggerFired",
    "TriggerItem",
    "TriggerList",
    "errors",
]

#: an ISO 8601 time, or null when it has not happened
Time = Annotated[str | None, Field(json_schema_extra={"format": "date-time"})]


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


# --- requests --------------------------------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _run_id(value: str) -> str:
    return check_id("run id", value)  # the pattern cannot say "no '..'"


def _data(where: str) -> AfterValidator:
    """Refuses JSON data that breaks `dp.limits`' rule, naming the item and the limit (its
    `UnstorableValueError` is a ValueError: a 422 like any validation error)."""

    def check(value: dict[str, Any]) -> dict[str, Any]:
        check_storable(value, where=where)
        return value

    return AfterValidator(check)


def _plain_text(value: str | None) -> str | None:
    """Names and ids are stored as text, which cannot hold NUL (PostgreSQL) or lone
    surrogates (anywhere)."""
    if value is not None:
        if "\x00" in value:
            raise UnstorableValueError("value", "contains a NUL character, which ids cannot hold")
        check_storable(value, where="value")
    return value


_DATA_RULE = (
    "No NaN, infinity or lone surrogate; nested at most DP_MAX_DEPTH (64) levels, at most "
    "DP_MAX_BYTES (1 MiB); else 422 naming the item."
)
#: JSON data within `dp.limits`' rule
Params = Annotated[dict[str, Any], _data("params")]
Payload = Annotated[dict[str, Any], _data("payload")]
#: text stored as it is: no NUL, no lone surrogate
PlainText = Annotated[str, AfterValidator(_plain_text)]


class RunRequest(_Body):
    """Start a run: its run parameters, and optionally its id."""

    params: Params = Field(
        default_factory=dict,
        description="Run parameters; they override the pipeline's. " + _DATA_RULE,
    )
    run_id: Annotated[str, AfterValidator(_run_id)] | None = Field(
        default=None,
        pattern=ID_PATTERN,
        max_length=MAX_ID_LENGTH,
        description="The run's id (default: a new one); an id can start only one run. "
        "Letters, digits, '_', '.', '-', not starting with '.' or '-', without '..'.",
    )


class RetryRequest(_Body):
    """Re-run a run from its failure (as `dp runs retry`)."""

    from_task: str | None = Field(
        default=None,
        alias="from",
        max_length=MAX_ID_LENGTH,
        description="Re-run this task and everything downstream of it too (default: only "
        "what did not succeed and its downstream).",
    )


class FireRequest(_Body):
    """Fire a trigger with a payload (an API trigger's payload is the run parameters)."""

    payload: Payload = Field(default_factory=dict, description=_DATA_RULE)


class EventRequest(_Body):
    """Publish an event on the service's bus."""

    topic: str = Field(min_length=1, max_length=MAX_TOPIC_LENGTH, examples=["sales.orders.created"])
    payload: Payload = Field(default_factory=dict, description=_DATA_RULE)
    event_type: PlainText = Field(default="", max_length=200)
    event_id: PlainText | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="Publishing an event id twice starts at most one run.",
    )
    correlation_id: PlainText | None = Field(default=None, max_length=200)


# --- answers to requests that change something -------------------------------------------------


class RunAccepted(BaseModel):
    """A run was recorded and queued; `GET /runs/{run_id}` follows it."""

    run_id: str
    pipeline: str
    status: str = RunStatus.QUEUED.value


class RetryAccepted(RunAccepted):
    """A retry was recorded: a new run, linked to its parent, reusing these tasks' results."""

    parent_run_id: str
    reused: dict[str, str] = Field(description="Reused task -> the run whose results it reads.")


class EventAccepted(BaseModel):
    """An event was published on the bus."""

    event_id: str


class TriggerFired(BaseModel):
    """An API trigger started run `run_id`; another trigger published event `event_id`."""

    run_id: str | None = None
    event_id: str | None = None


class Cancelling(BaseModel):
    """The run was told to stop; it ends `cancelled` once its running tasks stop
    (`cancelled` at once for a run no process of this service was running)."""

    run_id: str
    status: Literal["cancelling", "cancelled"] = "cancelling"


class ErrorBody(BaseModel):
    """Every error: the exception's name and a message saying what is wrong and how to fix it."""

    error: str
    detail: str


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The `responses` of a route that may answer these error statuses."""
    return {status: {"model": ErrorBody} for status in statuses}


# --- pipelines and triggers ------------------------------------------------------------------


class CronInfo(BaseModel):
    expression: str
    timezone: str
    misfire: str


class EventPatternInfo(BaseModel):
    pattern: str
    where: dict[str, Any] = Field(description="Payload keys and values an event must have.")


class PipelineTriggers(BaseModel):
    cron: list[CronInfo]
    events: list[EventPatternInfo]
    api: bool = Field(description="Whether HTTP calls may start it.")


class RunParameterInfo(BaseModel):
    name: str
    type: str
    required: bool
    tasks: list[str] = Field(description="The tasks that take it.")
    default: Any = Field(default=None, description="Only for a parameter that is not required.")


class PipelineInfo(BaseModel):
    """A pipeline: what it runs, what starts it, the parameters it takes."""

    name: str
    description: str | None
    tags: list[str]
    tasks: list[str] = Field(description="What a run runs (also when selected by tag).")
    triggers: PipelineTriggers
    params: dict[str, Any] = Field(description="Default run parameters.")
    run_parameters: list[RunParameterInfo]
    dag_id: str
    max_concurrent_runs: int | None
    active_runs: int


class PipelineDetail(PipelineInfo):
    """A pipeline and its execution plan."""

    plan: dict[str, Any] = Field(description="The plan: order, levels, edges, run parameters.")


class PipelineList(BaseModel):
    items: list[PipelineInfo]


class TriggerItem(BaseModel):
    """A trigger: an API trigger per pipeline HTTP calls may start, then the scheduler's."""

    name: str
    kind: str = Field(description="`api`, `manual`, `cron` or `event`.")
    pipeline: str | None = Field(description="The pipeline it starts, if it starts one.")
    target_topic: str | None
    source: str | None = Field(default=None, description="The cron expression or pattern.")
    next_fire: Time = None
    circuit: str | None = Field(default=None, description="`closed`, `open` or `half_open`.")
    stats: dict[str, Any] | None = None
    label: str | None = None


class TriggerList(BaseModel):
    items: list[TriggerItem]


# --- runs ------------------------------------------------------------------------------------


class Owner(BaseModel):
    host: str
    pid: int | None


class RunSummary(BaseModel):
    """A run as `GET /runs` lists it."""

    run_id: str
    pipeline: str
    dag_id: str
    status: RunStatus
    trigger: str
    event_id: str | None
    params: dict[str, Any]
    created_at: Time
    started_at: Time
    finished_at: Time
    duration: float | None = Field(description="Seconds from start to finish.")
    error: str | None
    epoch: int = Field(description="Ownership epoch: each resume or takeover takes a new one.")
    owner: Owner | None
    lease_until: Time
    stale: bool = Field(description="Marked running, but its owner is gone.")
    scheduled_for: Time = Field(
        default=None,
        description="The tick a cron run is for (UTC; a retry keeps its parent's); null for "
        "other runs, whose tasks get created_at as their scheduled_for.",
    )
    schedule_tz: str | None = Field(default=None, description="The schedule's time zone.")
    parent_run_id: str | None = Field(default=None, description="The run this one retries.")
    reused: dict[str, str] = Field(
        default_factory=dict,
        description="A retry's reused tasks -> the run whose stored results they read.",
    )

    @classmethod
    def of(cls, record: RunRecord) -> RunSummary:
        return cls(**_run_fields(record))


def _run_fields(record: RunRecord) -> dict[str, Any]:
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
        "status": record.status,
        "trigger": record.trigger,
        "event_id": record.event_id,
        "params": record.params,
        "created_at": _iso(record.created_at),
        "started_at": _iso(record.started_at),
        "finished_at": _iso(record.finished_at),
        "duration": duration,
        "error": record.error,
        "epoch": record.epoch,
        "owner": Owner(host=host, pid=pid) if host is not None else None,
        "lease_until": _iso(record.lease_until),
        "stale": is_stale(record),
        "scheduled_for": _iso(record.scheduled_for),
        "schedule_tz": record.schedule_tz,
        "parent_run_id": record.parent_run_id,
        "reused": reused_map(record),
    }


class RunPage(BaseModel):
    items: list[RunSummary]
    total: int = Field(description="Runs matching the filters, on every page.")
    limit: int
    offset: int


class AttemptInfo(BaseModel):
    attempt: int
    status: str
    started_at: Time
    finished_at: Time
    duration: float | None
    error: str | None
    host: str | None
    pid: int | None
    queue: str | None = Field(
        None, description="The broker queue it was sent to (Celery executor); None elsewhere."
    )

    @classmethod
    def of(cls, record: TaskRunRecord) -> AttemptInfo:
        # model_construct: the values come typed from the store's own records, and validating
        # them again was a tenth of GET /runs/{id} for a 5,000-task run (bench dashboard)
        return cls.model_construct(
            attempt=record.attempt,
            status=record.status.value,
            started_at=_iso(record.started_at),
            finished_at=_iso(record.finished_at),
            duration=record.duration,
            error=record.error,
            host=record.host,
            pid=record.pid,
            queue=record.queue,
        )


class TaskRunInfo(BaseModel):
    """A task run (its latest attempt), with every attempt it made."""

    task: str
    instance: str = Field(description="Which chunk of a stream; '' for a task run once.")
    status: str
    attempt: int
    started_at: Time
    finished_at: Time
    duration: float | None
    error: str | None
    result_ids: list[str]
    queue: str | None = Field(
        None,
        description="The broker queue of its latest attempt (Celery executor); while the "
        "status is 'queued' and `host` is None, no worker has taken it from there yet.",
    )
    host: str | None = Field(
        None,
        description="The machine of the worker running it, or (while 'queued') holding it "
        "unstarted; an attempt lost with its worker is kept in `attempts` as 'lost'.",
    )
    pid: int | None = Field(None, description="That worker's process id.")
    attempts: list[AttemptInfo]

    @classmethod
    def of(cls, record: TaskRunRecord, attempts: list[AttemptInfo]) -> TaskRunInfo:
        return cls.model_construct(  # as AttemptInfo.of: typed values from the store
            task=record.task_name,
            instance=record.instance,
            status=record.status.value,
            attempt=record.attempt,
            started_at=_iso(record.started_at),
            finished_at=_iso(record.finished_at),
            duration=record.duration,
            error=record.error,
            result_ids=list(record.result_ids),
            queue=record.queue,
            host=record.host,
            pid=record.pid,
            attempts=attempts,
        )


class RunDetail(RunSummary):
    """A run, its plan and its task runs."""

    results: str = Field(
        default="",
        description="Where the run's results are: a results URL without credentials "
        "(file://..., s3://BUCKET/PREFIX?endpoint=...); empty if not recorded.",
    )
    plan: dict[str, Any] | None
    tasks: list[TaskRunInfo]

    @classmethod
    def of_attempts(cls, record: RunRecord, every: list[TaskRunRecord]) -> RunDetail:
        """`record` with its task runs, from all their attempts (by task, instance, attempt)."""
        attempts: dict[tuple[str, str], list[AttemptInfo]] = {}
        latest: dict[tuple[str, str], TaskRunRecord] = {}
        for attempt in every:  # the last attempt of each is the task run
            key = (attempt.task_name, attempt.instance)
            attempts.setdefault(key, []).append(AttemptInfo.of(attempt))
            latest[key] = attempt
        tasks = sorted(latest.values(), key=_task_order)
        return cls(
            **_run_fields(record),
            results=record.results,
            plan=record.plan,
            tasks=[TaskRunInfo.of(t, attempts[t.task_name, t.instance]) for t in tasks],
        )


def _task_order(record: TaskRunRecord) -> tuple[bool, datetime, str, str]:
    """As `RunStore.get_task_runs` orders: by start time (unstarted last), name, instance."""
    started = record.started_at
    return (
        started is None,
        started or datetime.min.replace(tzinfo=UTC),
        record.task_name,
        record.instance,
    )


class TaskResult(BaseModel):
    """The value a task stored, read from where its run's results are."""

    run_id: str
    task: str
    results: str = Field(description="Where the run's results are (a results URL).")
    result_ids: list[str] = Field(description="The stored results read: one, or each chunk.")
    value: Any = Field(description="The value as JSON (a list of chunks for a stream).")


class TaskLogs(BaseModel):
    """What a task printed, and its traceback, for one attempt."""

    run_id: str
    task: str
    instance: str
    status: str
    attempt: int
    error: str | None
    output: str | None
    traceback: str | None


# --- health ----------------------------------------------------------------------------------


class StoreHealth(BaseModel):
    ok: bool
    error: str | None
    url: str | None = Field(default=None, description="The store, without credentials.")


class Health(BaseModel):
    """Liveness and readiness of each part; answered with 503 when runs cannot start."""

    status: Literal["ok", "degraded", "unavailable"]
    live: bool
    ready: bool
    accepting_runs: bool
    uptime_seconds: float | None
    active_pipelines: int
    queued_pipelines: int
    bus: dict[str, Any] = Field(description="`ok` and the bus's counters.")
    store: StoreHealth
    unavailable: list[str] = Field(
        default_factory=list, description="The dependencies that are down: `store`, `bus`."
    )
    scheduler: dict[str, Any] = Field(description="Status and each trigger's health.")
    sources: dict[str, Any] = Field(
        default_factory=dict, description="Each polling source's health, by name."
    )


class SourceItem(BaseModel):
    """One polling source: its definition, the store's record of it, this instance's counts."""

    name: str
    topic: str
    every: float = Field(description="Seconds between polls.")
    timeout: float
    max_failures: int
    circuit: Literal["closed", "open"]
    cursor: Any = Field(description="The committed cursor (JSON).")
    last_poll_at: Time
    last_error: str | None
    consecutive_failures: int
    holder: str | None = Field(description="The instance polling it, while its lease lasts.")
    polled_here: bool
    next_poll_at: Time
    polls_total: int
    failures_total: int
    events_total: int
    description: str = ""


class SourceList(BaseModel):
    items: list[SourceItem]


class Readiness(BaseModel):
    ready: bool
    status: str
    unavailable: list[str] = Field(
        default_factory=list, description="The dependencies that are down: `store`, `bus`."
    )


class Liveness(BaseModel):
    status: Literal["ok"] = "ok"
