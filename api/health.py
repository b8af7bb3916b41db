"""GET /health (the process answers) and GET /ready (broker, database, projector lag), without auth.

Ready means the API can do its job: the broker answers and the ledger topic exists, the database is
migrated to this code's newest revision, and the read models the API serves are no more than
LEDGER_READY_PROJECTOR_LAG_MAX events behind the ledger (counted exactly: processors/log_end.py).
"""

from __future__ import annotations

import functools
from typing import Any

import sqlalchemy
from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from api.context import ApiContext, context
from processors.log_end import end_offsets
from projections import queries

router = APIRouter(tags=["health"])


@functools.cache  # the migration scripts ship with the code: read them once, not per probe
def _head_revision() -> str:
    from alembic.script import ScriptDirectory

    from runtime.database import alembic_config

    return ScriptDirectory.from_config(alembic_config("postgresql://unused")).get_current_head() or ""


@router.get("/health", summary="Liveness: the process answers")
def health() -> dict[str, str]:
    return {"status": "ok"}


def readiness(ctx: ApiContext) -> tuple[bool, dict[str, Any]]:
    """Whether the API is ready, and each check (broker, database, projector) with its figures or error."""
    checks: dict[str, Any] = {}
    ends: dict[int, int] | None = None
    try:
        ends = end_offsets(ctx.bootstrap, ctx.settings.topic_events, timeout_s=3.0)
        checks["broker"] = {"ok": True, "ledger_events": sum(ends.values())}
    except Exception as exc:  # any failure to reach the broker is "not ready", with the reason
        checks["broker"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    try:
        with ctx.engine.connect() as connection:
            revision = connection.execute(sqlalchemy.text("SELECT version_num FROM alembic_version")).scalar()
        head = _head_revision()
        checks["database"] = {"ok": revision == head, "revision": revision, "expected": head}
        if ends is not None:
            positions = queries.projector_positions(ctx.engine, ctx.settings.topic_events)
            lag = sum(max(0, end - positions.get(partition, 0)) for partition, end in ends.items())
            checks["projector"] = {"ok": lag <= ctx.settings.ready_projector_lag_max, "lag_events": lag,
                                   "lag_max": ctx.settings.ready_projector_lag_max}
    except sqlalchemy.exc.SQLAlchemyError as exc:
        checks["database"] = {"ok": False, "error": str(exc.orig if hasattr(exc, "orig") else exc).strip()[:300]}
    ok = all(check["ok"] for check in checks.values()) and "projector" in checks
    return ok, checks


@router.get("/ready", summary="Readiness: broker, database and projector lag", responses={503: {"description": "not ready"}})
def ready(ctx: ApiContext = Depends(context)) -> JSONResponse:
    ok, checks = readiness(ctx)
    return JSONResponse({"ready": ok, "checks": checks}, status_code=200 if ok else 503)
