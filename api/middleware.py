"""ASGI middleware of the API: a request body size limit, and a correlation id on every request."""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from contextvars import ContextVar
from typing import Any, Awaitable, Callable

from prometheus_client import Counter, Histogram

from runtime.logs import bind, unbind

CORRELATION_HEADER = "x-correlation-id"
_VALID_CORRELATION = re.compile(r"[A-Za-z0-9._:-]{1,100}")
correlation_id: ContextVar[str] = ContextVar("correlation_id", default="")
log = logging.getLogger("ledger.api")
REQUESTS = Counter("ledger_api_requests_total", "API requests answered", ["method", "route", "status"])
LATENCY = Histogram("ledger_api_request_seconds", "API answer time", ["method", "route"],
                    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class _TooLarge(Exception):
    pass


async def _json_response(send: Send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]]) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()), *headers]})
    await send({"type": "http.response.body", "body": data})


class RequestGuard:
    """Refuses bodies above body_bytes_max with 413 (declared or streamed), and gives each request a
    correlation id: the caller's X-Correlation-ID when well-formed, else a new one, echoed in the answer
    and bound for the request's logs."""

    def __init__(self, app: Any, body_bytes_max: int) -> None:
        self.app, self.body_bytes_max = app, body_bytes_max

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        given = headers.get(CORRELATION_HEADER.encode(), b"").decode("latin-1")
        corr = given if _VALID_CORRELATION.fullmatch(given) else f"corr_{uuid.uuid4().hex[:20]}"
        token = correlation_id.set(corr)
        bound = bind(correlation_id=corr)  # every log line of this request carries it (runtime/logs.py)
        echo = [(CORRELATION_HEADER.encode(), corr.encode())]
        started, status, response_started = time.monotonic(), 500, False

        async def send_with_id(message: dict[str, Any]) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status, response_started = message["status"], True
                message = {**message, "headers": [*message.get("headers", []), *echo]}
            await send(message)

        received = 0

        async def limited_receive() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.body_bytes_max:
                    raise _TooLarge
            return message

        too_large = {"error": "request body too large", "limit_bytes": self.body_bytes_max}
        try:
            declared = headers.get(b"content-length", b"")
            if declared.isdigit() and int(declared) > self.body_bytes_max:
                status = 413
                await _json_response(send, 413, too_large, echo)
                return
            await self.app(scope, limited_receive, send_with_id)
        except _TooLarge:
            status = 413
            if not response_started:
                await _json_response(send, 413, too_large, echo)
        finally:
            elapsed = time.monotonic() - started
            route = getattr(scope.get("route"), "path", None) or ("/metrics" if scope.get("path", "").startswith(
                "/metrics") else "unmatched")  # the template, never the raw path: labels stay bounded
            REQUESTS.labels(scope.get("method", ""), route, str(status)).inc()
            LATENCY.labels(scope.get("method", ""), route).observe(elapsed)
            log.info("%s %s -> %s", scope.get("method"), scope.get("path"), status,
                     extra={"correlation_id": corr, "status": status, "duration_ms": int(elapsed * 1000)})
            unbind(bound)
            correlation_id.reset(token)
