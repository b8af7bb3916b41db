"""POST /v1/payments: idempotent payment ingestion for upstream services that cannot speak Kafka.

The same rules as `ledger publish` and LedgerClient (ledger.intake): a batch is checked whole and
refused whole (422 naming each record's index, field and reason) so a caller never has to work out
which half went in. Accepted records go to payments.incoming with acks=all before the 202; event ids
follow from payment, refund and adjustment ids, so sending a batch again is safe: the sequencer drops
what it already recorded. Each token has its own rate (429 with Retry-After beyond it).
"""

from __future__ import annotations

import math
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from pydantic import Field

from api.auth import Principal
from api.context import ApiContext, context, ingester
from api.models import Strict
from ledger.codec import EventCodec
from ledger.events import Event
from ledger.intake import IntakeRejected, json_size, parse_record
from processors.kafka_io import DeliveryFailed, DeliveryTracker, make_producer

router = APIRouter(prefix="/v1", tags=["ingestion"])


class PaymentsBody(Strict):
    records: Annotated[list[dict[str, Any]], Field(min_length=1, max_length=10_000, description=(
        "payments, refunds and adjustments as `ledger publish` takes them (type, payment_id, payee_id, "
        "amount_minor, currency, occurred_at, ...)"))]


class Appender:
    """One producer shared by the API's worker threads; each request waits for its own records only."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic, self.codec = topic, EventCodec()
        self.producer = make_producer(bootstrap)

    def append(self, events: list[Event], timeout_s: float = 30.0) -> None:
        tracker = DeliveryTracker()
        for event in events:
            self.producer.produce(self.topic, key=event.payee_id.encode(), value=self.codec.encode(event),
                                  on_delivery=tracker)
            self.producer.poll(0)
        deadline = time.monotonic() + timeout_s
        while tracker.delivered + len(tracker.errors) < len(events):
            if time.monotonic() > deadline:
                raise DeliveryFailed(f"{tracker.delivered} of {len(events)} records acknowledged in {timeout_s} s")
            self.producer.poll(0.05)
        if tracker.errors:
            raise DeliveryFailed(f"the broker refused records: {tracker.errors[:3]}")


@router.post("/payments", status_code=202, summary="Record payments, refunds and adjustments (idempotent)")
def ingest(body: PaymentsBody, ctx: ApiContext = Depends(context), who: Principal = Depends(ingester)) -> JSONResponse:
    if len(body.records) > ctx.settings.ingest_batch_max:
        return JSONResponse({"error": f"records: at most {ctx.settings.ingest_batch_max} per request, "
                                      f"got {len(body.records)}"}, status_code=413)
    wait_s = ctx.ingest_limiter.admit(who.name, cost=1.0)
    if wait_s > 0:
        return JSONResponse({"error": f"rate limit of {ctx.settings.ingest_rate_per_s}/s exceeded for {who.name}"},
                            status_code=429, headers={"Retry-After": str(max(1, math.ceil(wait_s)))})
    now, limits = ctx.clock(), ctx.settings.intake_limits()
    events, problems = [], []
    for index, record in enumerate(body.records):
        try:
            events.append(parse_record(record, limits, now, size=json_size(record)))
        except IntakeRejected as exc:
            problems.extend({"index": index, "field": field, "reason": reason} for field, reason in exc.problems)
    if problems:
        return JSONResponse({"error": f"{len({p['index'] for p in problems})} of {len(body.records)} records are "
                                      "invalid; nothing was recorded", "problems": problems}, status_code=422)
    ctx.appender.append(events)
    return JSONResponse({"accepted": len(events), "event_ids": [event.envelope.event_id for event in events]},
                        status_code=202)
