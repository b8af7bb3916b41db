"""/v1/payouts: list and show (from the read models), retry, cancel, confirm, fail, pay a payee now."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query
from fastapi.responses import JSONResponse

from api.auth import Principal
from api.context import ApiContext, context, operator, reader
from api.models import CancelBody, ConfirmBody, FailBody, ManualPayoutBody, RetryBody
from processors.operations import ActionResult
from projections import queries

router = APIRouter(prefix="/v1", tags=["payouts"])
Status = Literal["requested", "submitted", "at_provider", "retry_wait", "settled", "failed", "cancelled"]
WAIT = Query(10.0, ge=0, le=30, description="seconds to wait for the sequencer's verdict (0: send and return 202)")
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@+-]{0,199}$"


def PathId():  # noqa: N802 - reads like the Path() it returns
    return Path(..., pattern=ID_PATTERN)


def verdict_response(result: ActionResult) -> JSONResponse:
    """200 chained, 202 sent but not chained yet, 409 refused by the ledger (with its reason)."""
    status = {"chained": 200, "waiting": 202, "refused": 409}[result.verdict]
    body: dict[str, Any] = result.as_dict()
    if result.verdict == "refused":
        body["error"] = f"refused by the ledger: {result.reason}"
    return JSONResponse(body, status_code=status)


@router.get("/payouts", summary="Payouts, newest request first, filtered")
def list_payouts(status: list[Status] | None = Query(None, description="repeatable"),
                 payee_id: str | None = Query(None, pattern=ID_PATTERN),
                 method: str | None = Query(None, pattern=r"^[a-z_]{1,50}$"),
                 currency: str | None = Query(None, pattern=r"^[A-Z]{3}$"),
                 limit: int = Query(50, ge=1, le=500), offset: int = Query(0, ge=0, le=10_000_000),
                 ctx: ApiContext = Depends(context), _: Principal = Depends(reader)) -> dict[str, Any]:
    rows, total = queries.list_payouts(ctx.engine, statuses=status, payee_id=payee_id, method=method,
                                       currency=currency, limit=limit, offset=offset)
    return {"payouts": rows, "total": total, "limit": limit, "offset": offset}


@router.get("/payouts/{payout_id}", summary="A payout with its attempt timeline")
def get_payout(payout_id: str = PathId(), ctx: ApiContext = Depends(context),
               _: Principal = Depends(reader)) -> dict[str, Any]:
    found = queries.get_payout(ctx.engine, payout_id)
    if found is None:
        raise HTTPException(404, f"payout {payout_id!r} is not in the read models (is `ledger projector` running?)")
    return found


@router.post("/payouts/{payout_id}/retry", summary="Attempt a waiting payout now, or pay a failed one's money again")
def retry(body: RetryBody, payout_id: str = PathId(), wait_s: float = WAIT, ctx: ApiContext = Depends(context),
          who: Principal = Depends(operator)) -> JSONResponse:
    return verdict_response(ctx.operations.retry(payout_id, body.actor or who.name, wait_s))


@router.post("/payouts/{payout_id}/cancel", summary="Cancel a payout not yet at its provider")
def cancel(body: CancelBody, payout_id: str = PathId(), wait_s: float = WAIT, ctx: ApiContext = Depends(context),
           who: Principal = Depends(operator)) -> JSONResponse:
    return verdict_response(ctx.operations.cancel(payout_id, body.reason, body.actor or who.name, wait_s))


@router.post("/payouts/{payout_id}/confirm", summary="Confirm a manual or bank payout was paid")
def confirm(body: ConfirmBody, payout_id: str = PathId(), wait_s: float = WAIT, ctx: ApiContext = Depends(context),
            _: Principal = Depends(operator)) -> JSONResponse:
    return verdict_response(ctx.operations.confirm(payout_id, body.reference, wait_s))


@router.post("/payouts/{payout_id}/fail", summary="Record that a manual or bank payout failed")
def fail(body: FailBody, payout_id: str = PathId(), wait_s: float = WAIT, ctx: ApiContext = Depends(context),
         _: Principal = Depends(operator)) -> JSONResponse:
    return verdict_response(ctx.operations.fail(payout_id, body.reason_code, body.message, wait_s))


@router.post("/payees/{payee_id}/payouts", summary="Pay a payee's balance now (manual, early payout)")
def pay_now(body: ManualPayoutBody, payee_id: str = PathId(), wait_s: float = WAIT,
            ctx: ApiContext = Depends(context), _: Principal = Depends(operator)) -> JSONResponse:
    return verdict_response(ctx.operations.pay_now(payee_id, body.currency, body.request_id, wait_s))
