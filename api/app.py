"""The operations API: `make_api(...)` builds the FastAPI app that `ledger api` serves (OpenAPI at /openapi.json, docs at /docs)."""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Callable

import sqlalchemy.exc
from confluent_kafka import KafkaException
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import make_asgi_app
from starlette.exceptions import HTTPException as StarletteHTTPException

from api import health, routes_admin, routes_ingest, routes_payouts
from api.context import ApiContext
from api.middleware import RequestGuard
from processors.kafka_io import DeliveryFailed
from processors.operations import OperationRefused
from runtime.settings import Settings

log = logging.getLogger("ledger.api")

DESCRIPTION = """Operate the payout ledger: payouts (list, show, retry, cancel, confirm, fail, pay now),
schedules, payout runs, the emergency stop, alerts, monitoring, and payment ingestion.

Authenticate with `Authorization: Bearer <token>` (LEDGER_API_TOKENS). Roles: `read-only` reads,
`operator` does everything, `ingest` may only POST /v1/payments. Every answer carries an
`X-Correlation-ID` (yours, when you send a well-formed one). Amounts are integer minor units with the
currency; `amount` fields are exact major-unit strings."""


def _field(location: tuple) -> str:
    return ".".join(str(part) for part in location if part not in ("body",)) or "body"


def make_api(settings: Settings, bootstrap: str, database_url: str,
             clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> FastAPI:
    app = FastAPI(title="payout ledger operations API", version="1", description=DESCRIPTION)
    app.state.ledger = ApiContext.create(settings, bootstrap, database_url, clock)

    @app.exception_handler(OperationRefused)
    async def refused(_: Request, exc: OperationRefused) -> JSONResponse:
        headers = {"Retry-After": "5"} if exc.status == 503 else None
        return JSONResponse({"error": exc.reason}, status_code=exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [{"field": _field(tuple(error.get("loc", ()))), "reason": error.get("msg", "invalid")}
                    for error in exc.errors()]
        return JSONResponse({"error": "invalid request: " + "; ".join(f"{p['field']}: {p['reason']}" for p in problems),
                             "problems": problems}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(DeliveryFailed)
    @app.exception_handler(KafkaException)
    async def broker_down(_: Request, exc: Exception) -> JSONResponse:
        log.error("broker unavailable: %s", exc)
        return JSONResponse({"error": f"the ledger's broker is unavailable: {exc}"}, status_code=503,
                            headers={"Retry-After": "5"})

    @app.exception_handler(sqlalchemy.exc.OperationalError)
    async def database_down(_: Request, exc: Exception) -> JSONResponse:
        log.error("database unavailable: %s", exc)
        return JSONResponse({"error": "the ledger's database is unavailable"}, status_code=503,
                            headers={"Retry-After": "5"})

    for module in (health, routes_payouts, routes_admin, routes_ingest):
        app.include_router(module.router)
    try:
        from api import page
    except ImportError:  # the operator page is optional while it is being built
        page = None
    if page is not None:
        app.include_router(page.router)
    app.mount("/metrics", make_asgi_app())
    app.add_middleware(RequestGuard, body_bytes_max=settings.api_body_bytes_max)
    return app
