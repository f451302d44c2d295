"""Middleware guarding the service when browsers use it: tokens for reads, same-origin writes.

`ReadAuth` makes reads need the API token too, for a service listening beyond loopback (task
output and parameters can hold secrets); health checks, metrics and the static shells of the
dashboard and the API docs (which hold no data) stay open. `OriginCheck` refuses state-changing
requests sent by another site's page, so a page elsewhere cannot start a run through a
browser that can reach the service (the dashboard itself sends the token in an
`Authorization` header, which browsers never add on their own).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from dp.logs import get_logger
from dp.service.middleware import BearerAuth

__all__ = ["OPEN_PATHS", "OriginCheck", "ReadAuth"]

_log = get_logger("dp.service.dashboard")

_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

#: paths (exact, or prefixes ending in "/") that reads reach without the token
OPEN_PATHS = ("/", "/health", "/health/", "/metrics", "/ui/static/", "/docs", "/openapi.json")


def _is_open(path: str) -> bool:
    return any(
        path == p or (p.endswith("/") and p != "/" and path.startswith(p)) for p in OPEN_PATHS
    )


class ReadAuth(BearerAuth):
    """Refuses reads without the API token, except health, metrics and static pages.

    Missing or malformed header: 401 with `WWW-Authenticate: Bearer`; wrong token: 403.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] in _SAFE_METHODS
            and not _is_open(scope["path"])
        ):
            refusal = self._refusal(Headers(scope=scope).get("authorization", ""))
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)


class OriginCheck:
    """Refuses state-changing requests whose `Origin` is not the service itself (403).

    Browsers send `Origin` with every cross-site POST; programs (curl, httpx, other services)
    send none and pass. A `Sec-Fetch-Site: cross-site` request is refused too.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] not in _SAFE_METHODS:
            headers = Headers(scope=scope)
            origin = headers.get("origin")
            foreign = headers.get("sec-fetch-site") == "cross-site" or (
                origin is not None
                and urlsplit(origin).netloc.lower() != headers.get("host", "").lower()
            )
            if foreign:
                _log.warning(
                    "api.cross_origin_refused",
                    method=scope["method"],
                    path=scope["path"],
                    origin=origin,
                )
                response = JSONResponse(
                    {
                        "error": "CrossOriginRequest",
                        "detail": f"refusing a {scope['method']} from another site ({origin}): "
                        "state-changing requests must come from the dashboard itself or from a "
                        "program (without an Origin header).",
                    },
                    status_code=403,
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
