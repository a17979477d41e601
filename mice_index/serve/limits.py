"""What one client may ask of the server, and the guards in front of the app.

    limits = ServeLimits(max_depth=1000, request_timeout_s=20)   # `mice-index serve --max-depth ...`
    app = create_app(searcher, limits=limits)

`ServeLimits` is the one source of the server's own limits (the CLI's options read its defaults).
`Guard` is a plain ASGI middleware that answers before the app (and before a body is read):
  - 413 for a body above `max_body_bytes` (by its Content-Length, or counted while it streams in
    when it has none), so a large upload is never held in memory;
  - 400 for a Host header that is not the server's own name when it listens on a loopback address
    (DNS rebinding: a web page on another origin resolving its name to 127.0.0.1), or not in
    `allowed_hosts` when that is given;
  - 400 for a query string or path whose percent-escapes are not valid UTF-8 (refused, never
    repaired, as the CLI does).
Every error body has one shape: `{"error": message}` (see `install_error_handlers`), without
file-system paths: index damage and other server faults are logged in full on the server and
reported to the client as 500/503 with a generic message.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

log = logging.getLogger("mice_index.serve")

__all__ = ["Budget", "BudgetExceeded", "Guard", "RequestLog", "ServeLimits", "install_error_handlers", "loopback_hosts"]

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@dataclass(frozen=True)
class ServeLimits:
    """Per-request limits of `mice-index serve` (each is an option of `serve`, with these defaults).

    max_k: hits per query; max_depth: candidates per query re-ranked; max_work: queries x depth
    in one request (the scoring work: 64 queries at depth 100 = 6,400); max_explain: explained hits
    (queries x k with explain=true); request_timeout_s: wall-clock budget of one request from its
    arrival (waiting in the queue included): a request still queued then gets 503, one being scored
    is stopped at the next scoring chunk and gets 504; max_body_bytes: a request body above it gets
    413 before it is read; chunk_work: candidates scored in one pass: a request is scored in
    passes of about this many, its budget checked and the requests that arrived meanwhile run
    between two passes (smaller: a long request delays others less; larger: bigger batches for
    the scorer); allowed_hosts: Host names accepted (None: any, except that a server
    bound to a loopback address accepts only localhost / 127.0.0.1 / [::1])."""

    max_k: int = 1000
    max_depth: int = 1000
    max_work: int = 20_000
    max_explain: int = 200
    request_timeout_s: float = 20.0
    max_body_bytes: int = 1 << 20
    allowed_hosts: tuple[str, ...] | None = None
    chunk_work: int = 1000  # candidates (queries x depth) scored in one pass between two budget checks

    def __post_init__(self):
        bad = [name for name in ("max_k", "max_depth", "max_work", "max_explain", "max_body_bytes", "chunk_work")
               if not isinstance(getattr(self, name), int) or getattr(self, name) < 1]
        if bad or not self.request_timeout_s > 0:
            raise ValueError(f"server limits must be positive: {', '.join(bad) or 'request_timeout_s'}")


def loopback_hosts(bind_host: str) -> tuple[str, ...] | None:
    """The Host names a server listening on `bind_host` accepts by default: its loopback names when
    it is bound to a loopback address, else None (any)."""
    return tuple(sorted(LOOPBACK)) if bind_host in LOOPBACK or bind_host.startswith("127.") else None


class BudgetExceeded(Exception):
    """A request ran past its time budget, or its client went away, or the server is stopping."""


class Budget:
    """The deadline and the cancellation flag of one request, checked by the scoring worker
    between chunks of work (a chunk is never interrupted)."""

    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds
        self.seconds = seconds
        self.cancelled = threading.Event()
        self.reason = ""

    def cancel(self, reason: str) -> None:
        self.reason = self.reason or reason
        self.cancelled.set()

    def check(self) -> None:
        if self.cancelled.is_set():
            raise BudgetExceeded(self.reason or "cancelled")
        if time.monotonic() > self.deadline:
            raise BudgetExceeded(f"the request ran past its time budget ({self.seconds:g} s, --request-timeout)")


def _host_name(value: str) -> str:
    """'example.com:8080' -> 'example.com'; '[::1]:80' -> '::1'."""
    if value.startswith("["):
        return value[1:].split("]", 1)[0]
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


async def _send_error(send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class Guard:
    """ASGI middleware: body size (413), Host header (400), UTF-8 of path and query (400)."""

    def __init__(self, app, limits: ServeLimits):
        self.app, self.limits = app, limits
        self.hosts = {h.lower() for h in limits.allowed_hosts} if limits.allowed_hosts else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        problem = self._refusal(scope)
        if problem:
            status, message = problem
            log.info("%s %s %d refused: %s", scope.get("method"), _safe_path(scope), status, message)
            return await _send_error(send, status, message)
        limit, received, started, refused = self.limits.max_body_bytes, 0, False, False

        async def limited_receive():
            nonlocal received, started, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:  # answer 413 now; the app sees a client gone and stops reading
                    refused = True
                    if not started:
                        started = True
                        await _send_error(send, 413, _too_large(limit))
                    return {"type": "http.disconnect"}
            return message

        async def tracking_send(message):
            nonlocal started
            if refused:
                return  # the 413 was sent: whatever the app answers is dropped
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, limited_receive, tracking_send)

    def _refusal(self, scope) -> tuple[int, str] | None:
        headers = dict(scope.get("headers") or [])
        if self.hosts is not None:
            host = headers.get(b"host", b"").decode("latin-1")
            if _host_name(host).lower() not in self.hosts:
                return 400, (f"Host header {host!r} is not accepted by this server (allowed: "
                             f"{', '.join(sorted(self.hosts))}; see --allowed-hosts)")
        length = headers.get(b"content-length")
        if length is not None:
            if not length.isdigit():
                return 400, "Content-Length is not a number"
            if int(length) > self.limits.max_body_bytes:
                return 413, _too_large(self.limits.max_body_bytes)
        for what, raw in (("path", scope.get("raw_path") or scope.get("path", "").encode("utf-8", "surrogatepass")),
                          ("query string", scope.get("query_string", b""))):
            try:
                unquote_to_bytes(raw.replace(b"+", b" ")).decode("utf-8")
            except UnicodeDecodeError as exc:
                return 400, f"{what}: invalid UTF-8 at byte {exc.start} after decoding its %-escapes (refused, never repaired)"
        return None


class RequestLog:
    """ASGI middleware: one log line per request (method, path, status, ms, and what the handler
    put in `request.state.log`). Plain ASGI rather than FastAPI's `@app.middleware("http")`, whose
    wrapping of `receive` keeps `request.is_disconnected()` from ever seeing a client leave."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), 500

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            extra = (scope.get("state") or {}).get("log", "")
            log.info("%s %s %d %.1f ms%s", scope.get("method"), _safe_path(scope), status,
                     (time.perf_counter() - start) * 1000, extra)


def _too_large(limit: int) -> str:
    return f"request body larger than {limit} bytes (--max-body)"


def _safe_path(scope) -> str:
    return scope.get("path", "").encode("utf-8", "backslashreplace").decode("ascii", "backslashreplace")[:200]


def install_error_handlers(app) -> None:
    """Every error as `{"error": message}`: FastAPI's own HTTP errors (404, 405, a body it cannot
    parse, ...) and anything unexpected (500, logged in full here, reported without details)."""
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    @app.exception_handler(HTTPException)
    async def http_error(request, exc: HTTPException):
        detail = exc.detail if isinstance(exc.detail, str) else "bad request"
        return JSONResponse({"error": detail}, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request, exc: Exception):
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return JSONResponse({"error": "internal error (logged on the server)"}, status_code=500)
