"""/v1 schedules, payout runs (the cron endpoint), the emergency stop, alerts and monitoring."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query
from fastapi.responses import JSONResponse

from api.auth import Principal
from api.context import ApiContext, context, operator, reader
from api.middleware import correlation_id
from api.models import AlertActionBody, PauseBody, ResumeBody, RunBody, ScheduleBody
from api.routes_payouts import PathId, verdict_response
from ledger.commission import UnknownPlan
from ledger.currencies import UnknownCurrency
from ledger.money import InvalidAmount, Money
from ledger.schedules import InvalidSchedule
from processors.operations import InvalidRequest
from processors.payee_actions import schedule_event
from projections import queries
from projections.payout_controls import PauseState, read_pause, set_pause
from runtime.plans import plan_book

router = APIRouter(prefix="/v1", tags=["operations"])


def PathInt():  # noqa: N802 - reads like the Path() it returns
    return Path(..., ge=1, le=2**62)


@router.get("/payees/{payee_id}/schedule", summary="A payee's schedule, plan, method and hold (read model)")
def get_schedule(payee_id: str = PathId(), ctx: ApiContext = Depends(context),
                 _: Principal = Depends(reader)) -> dict[str, Any]:
    found = queries.get_schedule(ctx.engine, payee_id)
    if found is None:
        raise HTTPException(404, f"payee {payee_id!r} is not in the read models")
    return found


@router.put("/payees/{payee_id}/schedule", summary="Set a payee's schedule (a PayeeScheduleSet event)")
def set_schedule(body: ScheduleBody, payee_id: str = PathId(), wait_s: float = Query(10.0, ge=0, le=30),
                 ctx: ApiContext = Depends(context), who: Principal = Depends(operator)) -> JSONResponse:
    try:
        minimum = Money.from_major(body.minimum.amount, body.minimum.currency) if body.minimum else None
        event = schedule_event(payee_id, frequency=body.frequency, cutoff_time=body.cutoff_time,
                               timezone=body.timezone, plan=body.plan, method=body.method, book=plan_book(ctx.settings),
                               now=ctx.clock(), day_of_week=body.day_of_week, day_of_month=body.day_of_month,
                               destination=body.destination, minimum=minimum, actor=body.actor or who.name)
    except (InvalidSchedule, UnknownPlan, InvalidAmount, UnknownCurrency) as exc:
        raise InvalidRequest(str(exc)) from None
    return verdict_response(ctx.operations.submit(event, wait_s))


@router.post("/payout-runs", summary="Run payouts now (the cron endpoint: dryRun, forceRun)")
def trigger_run(body: RunBody, ctx: ApiContext = Depends(context), who: Principal = Depends(operator)) -> dict[str, Any]:
    at = body.at.astimezone(timezone.utc) if body.at and body.at.tzinfo else None
    if body.at is not None and at is None:
        raise InvalidRequest("at: needs a UTC offset, e.g. 2026-11-22T23:59:00Z")
    result = ctx.operations.run(at, dry_run=body.dryRun, force_run=body.forceRun, settle_s=10.0)
    return {**result.as_dict(), "correlation_id": correlation_id.get(), "requested_by": who.name}


def _pause_body(state: PauseState) -> dict[str, Any]:
    return {"paused": state.paused, "reason": state.reason, "actor": state.actor,
            "changed_at": state.changed_at.isoformat() if state.changed_at else None}


@router.get("/controls/pause", summary="Whether payouts are paused (emergency stop)")
def pause_state(ctx: ApiContext = Depends(context), _: Principal = Depends(reader)) -> dict[str, Any]:
    return _pause_body(read_pause(ctx.database_url))


@router.post("/controls/pause", summary="Emergency stop: request and attempt no payout until resumed")
def pause(body: PauseBody, ctx: ApiContext = Depends(context), who: Principal = Depends(operator)) -> dict[str, Any]:
    return _pause_body(set_pause(ctx.database_url, True, body.reason, body.actor or who.name))


@router.post("/controls/resume", summary="Resume payouts")
def resume(body: ResumeBody, ctx: ApiContext = Depends(context), who: Principal = Depends(operator)) -> dict[str, Any]:
    return _pause_body(set_pause(ctx.database_url, False, body.reason, body.actor or who.name))


@router.get("/alerts", summary="Alerts, newest first")
def list_alerts(status: str | None = Query(None, pattern="^(open|firing|acknowledged|resolved)$"),
                limit: int = Query(100, ge=1, le=1000), ctx: ApiContext = Depends(context),
                _: Principal = Depends(reader)) -> dict[str, Any]:
    from projections import alert_store

    return {"alerts": alert_store.list_alerts(ctx.database_url, status=status, limit=limit)}


def _alert_action(action: str, alert_id: int, actor: str, ctx: ApiContext) -> dict[str, Any]:
    from ledger.alerts import AlertNotFound, AlertTransitionRefused
    from projections import alert_store

    try:
        return getattr(alert_store, f"{action}_alert")(ctx.database_url, alert_id, actor)
    except AlertNotFound:
        raise HTTPException(404, f"alert {alert_id} does not exist") from None
    except AlertTransitionRefused as exc:
        raise HTTPException(409, str(exc)) from None


@router.post("/alerts/{alert_id}/acknowledge", summary="Acknowledge an alert (no more reminders)")
def acknowledge(body: AlertActionBody, alert_id: int = PathInt(), ctx: ApiContext = Depends(context),
                who: Principal = Depends(operator)) -> dict[str, Any]:
    return _alert_action("acknowledge", alert_id, body.actor or who.name, ctx)


@router.post("/alerts/{alert_id}/resolve", summary="Resolve an alert by hand")
def resolve(body: AlertActionBody, alert_id: int = PathInt(), ctx: ApiContext = Depends(context),
            who: Principal = Depends(operator)) -> dict[str, Any]:
    return _alert_action("resolve", alert_id, body.actor or who.name, ctx)


@router.get("/monitoring", summary="The monitoring dashboard's data")
def monitoring(ctx: ApiContext = Depends(context), _: Principal = Depends(reader)) -> dict[str, Any]:
    from processors.alert_measurements import health_summary

    now = datetime.now(timezone.utc)
    counts = queries.payout_counts(ctx.engine)
    return {"timestamp": now.isoformat(), "controls": _pause_body(read_pause(ctx.database_url)),
            "processing": {"open": sum(counts.get(s, 0) for s in queries.OPEN_STATUSES),
                           "settled": counts.get("settled", 0), "failed": counts.get("failed", 0),
                           "cancelled": counts.get("cancelled", 0), "by_status": counts},
            "health": health_summary(ctx.settings, ctx.database_url, now)}
