"""The API's ASGI middlewares: the Host allow-list, the bearer token check and the request
body limit.

All act before any handler reads the request body, so a refused client cannot make the
service read (or buffer) what it sends.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Iterable
from typing import Any

from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from dp.logs import get_logger
from dp.service.handlers import error_response

__all__ = ["SAFE_METHODS", "BearerAuth", "BodyLimit", "HostAllowList", "host_of"]

_log = get_logger("dp.service.api")

#: methods that change nothing: open without a token, and without a body to limit
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class HostAllowList:
    """Refuses requests whose `Host` header is not one of `hosts`, with 400, before anything
    else runs.

    This is what stops DNS rebinding: a web page on `evil.example` whose name an attacker
    re-points at 127.0.0.1 reaches a local `dp serve` from the user's browser, but its
    requests carry `Host: evil.example`. Names match case-insensitively and without the port;
    `*.example.com` matches any subdomain, `*` anything. `ip_literals=True` (a service bound
    to every address) also accepts any IP address as the host: a rebinding page always sends
    a name. A request without a Host header (HTTP/1.0, not a browser) passes.
    """

    def __init__(self, app: ASGIApp, *, hosts: Iterable[str], ip_literals: bool = False) -> None:
        self.app = app
        self.hosts = frozenset(h.strip().lower().strip("[]") for h in hosts if h.strip())
        self.suffixes = tuple(h[1:] for h in self.hosts if h.startswith("*."))
        self.any = "*" in self.hosts
        self.ip_literals = ip_literals

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and not self.any:
            header = Headers(scope=scope).get("host")
            if header is not None and not self.allows(host_of(header)):
                _log.warning("api.refused_host", host=header[:200], path=scope["path"], status=400)
                await error_response(
                    400,
                    "InvalidHost",
                    f"this server does not answer to the host {header[:200]!r}; reach it by "
                    "one of its addresses, or allow the name with --allowed-host / "
                    "DP_ALLOWED_HOSTS.",
                )(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def allows(self, host: str) -> bool:
        """Whether `host` (without port or brackets) may be served."""
        if host in self.hosts or host.endswith(self.suffixes):
            return True
        if self.ip_literals:
            try:
                ipaddress.ip_address(host)
            except ValueError:
                return False
            return True
        return False


def host_of(header: str) -> str:
    """The host name in a Host header, lower case, without port or IPv6 brackets."""
    header = header.strip().lower()
    if header.startswith("["):  # [::1]:8080
        return header[1:].partition("]")[0]
    if header.count(":") == 1:  # name:port; a bare IPv6 address has several
        return header.partition(":")[0]
    return header


class BearerAuth:
    """Refuses state-changing requests that lack the API token, before their body is read.

    Missing or malformed header: 401 with `WWW-Authenticate: Bearer`; wrong token: 403.
    """

    def __init__(self, app: ASGIApp, *, token: str) -> None:
        self.app = app
        self._token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] not in SAFE_METHODS:
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
            return error_response(
                401,
                "Unauthorized",
                "this request needs the API token: send 'Authorization: Bearer <token>'.",
                {"WWW-Authenticate": "Bearer"},
            )
        # Starlette decodes header bytes as latin-1: encoding back gives the bytes as sent
        if not hmac.compare_digest(credentials.strip().encode("latin-1"), self._token):
            return error_response(403, "Forbidden", "the API token is wrong.")
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
        if scope["type"] != "http" or scope["method"] in SAFE_METHODS:
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
        await error_response(
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
