"""The web dashboard `dp serve` serves at `/`: pipelines, runs, a run's DAG, events.

Plain HTML, CSS and JavaScript shipped inside the package (no CDN, no build step), reading
the HTTP API and a stream of server-sent events (`GET /ui/stream`) that `LiveFeed` fills from
the lifecycle of runs. `mount(app, service)` adds it to the API's app.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from dp.errors import InvalidArgumentError
from dp.service.dashboard.guard import OriginCheck, ReadAuth
from dp.service.dashboard.live import LiveFeed, Subscriber
from dp.service.dashboard.routes import STATIC, routes
from dp.service.runtime import Service

__all__ = ["STATIC", "LiveFeed", "OriginCheck", "ReadAuth", "Subscriber", "mount"]


def mount(
    app: FastAPI, service: Service, *, token: str | None = None, protect_reads: bool = False
) -> LiveFeed:
    """Serve the dashboard and the offline API docs from `app`, and guard it for browsers.

    Args:
        app: the API's app, created with `docs_url=None` (the docs are served from here).
        service: the service the dashboard shows.
        token: the API token; needed for `protect_reads`.
        protect_reads: reads need the token too (a service listening beyond loopback).
    """
    feed = LiveFeed()
    service.orchestrator.listeners.append(feed)
    app.state.live_feed = feed
    app.include_router(routes())
    app.mount("/ui/static", StaticFiles(directory=STATIC), name="dashboard-static")
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[Any]:
        async with inner(app) as state:
            feed.start(service.broker)
            try:
                yield state
            finally:
                await feed.stop()

    app.router.lifespan_context = lifespan
    app.add_middleware(OriginCheck)
    if protect_reads:
        if not token:
            raise InvalidArgumentError(
                "token", token, "set when protect_reads is on", hint="protect_reads needs a token"
            )
        app.add_middleware(ReadAuth, token=token)
    return feed
