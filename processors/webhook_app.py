"""The Stripe webhook endpoint: verified payout outcomes appended to ledger.commands (FastAPI).

A 2xx tells Stripe to stop retrying, so it is answered only once the ledger events are durably in
Kafka (`append` returns after acks=all); any failure is a 5xx and Stripe retries (for up to 3 days).
Rejected deliveries (bad signature, stale, replayed, unparseable) are 400 and append nothing.
Every delivery is counted (ledger_webhooks_received_total{outcome}) and its log lines carry the Stripe
event id and, once known, the payout's ids.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from typing import Callable

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from connectors.stripe_webhooks import (
    DEFAULT_TOLERANCE_S, SIGNATURE_HEADER, ReplayGuard, UntranslatableEvent, WebhookRejected, interpret,
    verify_delivery,
)
from ledger.codec import EventCodec
from ledger.events import Event
from processors.payout_run import send_commands
from runtime import metrics
from runtime.logs import log_context
from runtime.settings import Settings

BODY_BYTES_MAX = 256 * 1024  # Stripe events are a few KiB; a payout event well under 16 KiB
# An oversized body is read (and discarded) up to this much so the client gets its 413 instead of a
# connection reset; beyond it the answer is sent at once.
_DRAIN_BYTES_MAX = 4 * BODY_BYTES_MAX

log = logging.getLogger("ledger.webhooks")

Append = Callable[[list[Event]], None]


def kafka_append(settings: Settings, bootstrap: str) -> Append:
    """Append events to ledger.commands, keyed by payee; returns once the broker acknowledged all (acks=all)."""
    codec = EventCodec()

    def append(events: list[Event]) -> None:
        send_commands(bootstrap, settings.topic_commands, events, codec)

    return append


async def _read_body(request: Request, body_bytes_max: int) -> bytes | None:
    """The raw body, or None if it is larger than body_bytes_max (read in chunks, never all of it)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > _DRAIN_BYTES_MAX:
        return None
    body = bytearray()
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > body_bytes_max:
            if received > _DRAIN_BYTES_MAX:
                return None
            continue  # keep draining, store nothing more
        body += chunk
    return None if received > body_bytes_max else bytes(body)


def make_app(secret: str, append: Append, *, tolerance_s: int = DEFAULT_TOLERANCE_S,
             clock: Callable[[], float] = time.time, body_bytes_max: int = BODY_BYTES_MAX,
             guard: ReplayGuard | None = None) -> FastAPI:
    """The webhook app: POST /webhooks/stripe, and GET /health, /ready (probes) and /healthz (kept for old checks).

    `append` must block until the events are durably stored and raise if they are not; it runs in
    a worker thread so the event loop keeps serving.
    """
    if not isinstance(secret, str) or not secret.strip():
        raise ValueError("the Stripe webhook signing secret is empty")
    if body_bytes_max < 1 or body_bytes_max > _DRAIN_BYTES_MAX:
        raise ValueError(f"body_bytes_max must be 1..{_DRAIN_BYTES_MAX}")
    replay_guard = guard or ReplayGuard(tolerance_s)
    app = FastAPI(title="payout ledger: Stripe webhooks", docs_url=None, redoc_url=None)

    @app.get("/healthz")
    async def healthz() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/health", summary="Liveness: the process answers")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    # Ready as soon as it serves: the endpoint loads no state, and a delivery it cannot append (Kafka away)
    # is answered 500, which Stripe retries; the app exists only once its secret and append are set.
    @app.get("/ready", summary="Readiness: the endpoint serves deliveries")
    async def ready() -> dict[str, bool]:
        return {"ready": True}

    @app.post("/webhooks/stripe")
    async def stripe_webhook(request: Request) -> JSONResponse:
        body = await _read_body(request, body_bytes_max)
        if body is None:
            return _answer("rejected", {"error": f"body larger than {body_bytes_max} bytes"}, 413)
        now = int(clock())
        try:
            delivery = verify_delivery(body, request.headers.get(SIGNATURE_HEADER), secret, now=now,
                                       tolerance_s=tolerance_s)
            replay_guard.admit(delivery.timestamp, delivery.signature, now=now)
        except WebhookRejected as exc:
            log.warning("stripe webhook rejected: %s", exc.reason)
            return _answer("rejected", {"error": exc.reason}, 400)
        event = delivery.event
        with log_context(stripe_event_id=event["id"], stripe_event_type=event["type"]):
            return await _record(event)

    async def _record(event: dict) -> JSONResponse:
        if replay_guard.already_processed(event["id"]):
            log.info("stripe event %s already recorded", event["id"])
            return _answer("duplicate", {"duplicate": True})
        try:
            translation = interpret(event, received_at=datetime.fromtimestamp(clock(), timezone.utc))
        except UntranslatableEvent as exc:
            # Ours but malformed: not 2xx, so Stripe keeps it visible as a failing delivery.
            log.error("stripe event %s (%s) cannot be recorded: %s", event["id"], event["type"], exc.reason)
            return _answer("rejected", {"error": exc.reason}, 422)
        if not translation.events:
            replay_guard.mark_processed(event["id"])
            log.info("stripe event %s ignored: %s", event["id"], translation.ignored_reason)
            return _answer("ignored", {"ignored": event["type"], "reason": translation.ignored_reason})
        first = translation.events[0]
        with log_context(payout_id=first.payload.get("payout_id"), payee_id=first.payee_id,
                         correlation_id=first.envelope.correlation_id, event_id=first.envelope.event_id):
            try:
                await run_in_threadpool(append, translation.events)
            except Exception:
                log.exception("stripe event %s: appending to the ledger failed; Stripe will retry", event["id"])
                return _answer("error", {"error": "the ledger could not record the event: retry later"}, 500)
            replay_guard.mark_processed(event["id"])
            log.info("stripe event %s (%s) recorded as %s", event["id"], event["type"],
                     ", ".join(e.event_type for e in translation.events))
        return _answer("accepted", {"received": True, "events": len(translation.events)})

    return app


def _answer(outcome: str, body: dict, status_code: int = 200) -> JSONResponse:
    metrics.WEBHOOKS_RECEIVED.labels(outcome).inc()
    return JSONResponse(body, status_code=status_code)
