"""The dashboard's routes: its page, the offline API docs, the live stream, events, resume."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from dp.errors import GroupError
from dp.events import MAX_TOPIC_LENGTH, DeadLetter, TopicMatcher
from dp.service.dashboard.live import LiveFeed, Subscriber, event_dict
from dp.service.handlers import OUTAGE_RETRY_AFTER
from dp.service.runtime import START_GROUP, Service

__all__ = ["STATIC", "ResumeRequest", "routes"]

#: the dashboard's HTML, CSS and JavaScript, and the vendored swagger-ui
STATIC = Path(__file__).parent / "static"
_SWAGGER = "/ui/static/vendor/swagger-ui"


class ResumeRequest(BaseModel):
    """Resume an interrupted run: only tasks without a stored result run again."""

    model_config = ConfigDict(extra="forbid")

    force: bool = Field(
        default=False,
        description="Take over a run recorded as running on another host (its owner is gone).",
    )


def _feed(request: Request) -> LiveFeed:
    feed: LiveFeed = request.app.state.live_feed
    return feed


def _service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


def routes() -> APIRouter:
    router = APIRouter()

    @router.get("/", include_in_schema=False, response_model=None)
    async def index(request: Request) -> FileResponse | HTMLResponse:
        outage = await _service(request).store_check.error()
        if outage is not None:  # a page that says so, not an app that fails on every call
            return _unavailable_page(outage.url, outage.reason)
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    @router.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="dp - API",
            swagger_js_url=f"{_SWAGGER}/swagger-ui-bundle.js",
            swagger_css_url=f"{_SWAGGER}/swagger-ui.css",
            swagger_favicon_url="/ui/static/favicon.svg",
        )

    @router.get(
        "/ui/stream",
        include_in_schema=False,  # endless: generated API clients and fuzzers must not call it
        tags=["dashboard"],
        summary="Live changes as server-sent events",
        description=(
            "One `data:` line per batch (at most a few a second), a JSON object with `runs` "
            "(runs that started or ended), `tasks` (task changes of the run named by `run`, "
            "each in its latest state) and `events` (bus events matching `events`); "
            '`{"resync": true}` when the page fell behind and should reload its state.'
        ),
        response_class=StreamingResponse,
    )
    async def stream(
        request: Request,
        run: Annotated[str | None, Query(max_length=200)] = None,
        events: Annotated[str | None, Query(max_length=MAX_TOPIC_LENGTH)] = None,
    ) -> StreamingResponse:
        matcher = TopicMatcher(events) if events else None
        subscriber = Subscriber(run_id=run, events=matcher)
        return StreamingResponse(
            _feed(request).stream(subscriber),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @router.get("/ui/events", tags=["dashboard"], summary="Recent bus events, oldest first")
    async def recent_events(
        request: Request,
        pattern: Annotated[str | None, Query(max_length=MAX_TOPIC_LENGTH)] = None,
    ) -> dict[str, Any]:
        matcher = TopicMatcher(pattern) if pattern else None
        try:
            letters = await _service(request).broker.dead_letters(START_GROUP)
        except GroupError:  # the service has not started consuming start events
            letters = []
        dead = [_dead_letter_dict(letter) for letter in letters]
        return {"items": _feed(request).recent(matcher), "dead_letters": dead}

    @router.post(
        "/runs/{run_id}/resume",
        tags=["runs"],
        summary="Resume an interrupted run",
        description="Tasks whose results are stored are not run again.",
        status_code=202,
    )
    async def resume_run(
        run_id: str, request: Request, body: ResumeRequest | None = None
    ) -> dict[str, Any]:
        force = body.force if body is not None else False
        handle = await _service(request).resume_run(run_id, force=force)
        return {"run_id": handle.run_id, "status": "resuming"}

    return router


def _unavailable_page(store: str, reason: str) -> HTMLResponse:
    """A readable 503 page that reloads itself until the run store is back."""
    body = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{OUTAGE_RETRY_AFTER}">
<title>dp - run store unavailable</title></head>
<body style="font-family: sans-serif; max-width: 40em; margin: 3em auto">
<h1>The run store is unavailable</h1>
<p>dp cannot reach its run store at <code>{html.escape(store)}</code>:
{html.escape(reason)}.</p>
<p>Runs cannot be shown or started until it is back. Check that the database server runs
and accepts connections; <code>GET /health</code> says which part is down. This page
reloads every {OUTAGE_RETRY_AFTER} seconds.</p>
</body></html>
"""
    return HTMLResponse(
        body,
        status_code=503,
        headers={"Retry-After": str(OUTAGE_RETRY_AFTER), "Cache-Control": "no-cache"},
    )


def _dead_letter_dict(letter: DeadLetter) -> dict[str, Any]:
    """A dead letter of the service's start-event group, shown like an event, with its error."""
    shown = (
        event_dict(letter.event)
        if letter.event is not None
        else {
            "event_id": None,
            "topic": letter.topic,
            "event_type": "(undecodable)",
            "source": "",
            "correlation_id": None,
            "timestamp": letter.failed_at.isoformat(),
            "payload": letter.raw[:500],
        }
    )
    return {**shown, "id": letter.id, "error": letter.error, "deliveries": letter.deliveries}
