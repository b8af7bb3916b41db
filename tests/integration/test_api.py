"""The operations API against the real stack: broker, PostgreSQL, sequencer and projector running.

Requests go through FastAPI's TestClient (in-process ASGI); everything behind the app is real.
"""

from __future__ import annotations

from contextlib import contextmanager
from datetime import datetime, timedelta, timezone

import pytest
from fastapi.testclient import TestClient

from api.app import make_api
from ledger.earnings import close_id
from processors.alerter import evaluate_alerts
from projections.projector import Projector
from tests.integration.sequencing_helpers import ledger_events
from tests.integration.transfer_helpers import (TWO_DAYS_AGO, book_of, processor_running, request_payouts, running,
                                                sequencer_running, wait_until)

OPERATOR = "op-token-0123456789abcdef"
READER = "ro-token-0123456789abcdef"
INGEST = "in-token-0123456789abcdef"
TOKENS = {OPERATOR: "operator:olga", READER: "read-only:rita", INGEST: "ingest:shop"}


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


OP, RO, IN = auth(OPERATOR), auth(READER), auth(INGEST)


def api_settings(settings, **changes):
    return settings.model_copy(update={"api_tokens": TOKENS, **changes})


@contextmanager
def stack(settings):
    """The sequencer and the projector running, and a client of the API on them."""
    projector = Projector(settings, settings.kafka_bootstrap, settings.database_url, log=lambda line: None)
    with sequencer_running(settings), running(projector):
        with TestClient(make_api(settings, settings.kafka_bootstrap, settings.database_url)) as client:
            yield client


def projected(client, payout_id: str, status: str | None = None, timeout_s: float = 30.0) -> dict:
    found: dict = {}

    def ready() -> bool:
        answer = client.get(f"/v1/payouts/{payout_id}", headers=RO)
        found.update(answer.json() if answer.status_code == 200 else {})
        return answer.status_code == 200 and (status is None or found["status"] == status)

    wait_until(ready, timeout_s, f"payout {payout_id} projected as {status}")
    return found


def payment(payment_id: str, payee_id: str, minor: int = 10_000, **extra) -> dict:
    return {"payment_id": payment_id, "payee_id": payee_id, "amount_minor": minor, "currency": "USD",
            "occurred_at": TWO_DAYS_AGO.isoformat(), **extra}


# --- auth -------------------------------------------------------------------------------------------


def test_auth_missing_wrong_and_insufficient_tokens_are_refused(settings):
    settings = api_settings(settings)
    with TestClient(make_api(settings, settings.kafka_bootstrap, settings.database_url)) as client:
        missing = client.get("/v1/payouts")
        assert missing.status_code == 401 and "missing bearer token" in missing.json()["error"]
        assert missing.headers["WWW-Authenticate"].startswith("Bearer")
        wrong = client.get("/v1/payouts", headers=auth("x" * 25))
        assert wrong.status_code == 401 and wrong.json()["error"] == "unknown bearer token"
        assert client.get("/v1/payouts", headers={"Authorization": f"Basic {OPERATOR}"}).status_code == 401

        read_only = client.post("/v1/controls/pause", json={"reason": "test"}, headers=RO)
        assert read_only.status_code == 403 and "rita has the read-only role" in read_only.json()["error"]
        assert client.get("/v1/controls/pause", headers=RO).json()["paused"] is False  # nothing paused
        assert client.get("/v1/payouts", headers=IN).status_code == 403  # ingest tokens cannot read
        assert client.post("/v1/payments", json={"records": [payment("p", "a")]}, headers=RO).status_code == 403

        assert client.get("/health").json() == {"status": "ok"}  # no token needed
        assert client.get("/openapi.json").json()["info"]["title"] == "payout ledger operations API"
        assert "ledger_api_requests_total" in client.get("/metrics/").text


def test_a_badly_configured_token_stops_the_api_from_starting(settings):
    from api.auth import InvalidTokenConfig

    with pytest.raises(InvalidTokenConfig, match="shorter than 16"):
        make_api(settings.model_copy(update={"api_tokens": {"short": "operator"}}), "x", settings.database_url)
    with pytest.raises(InvalidTokenConfig, match="role 'admin'"):
        make_api(settings.model_copy(update={"api_tokens": {"y" * 20: "admin"}}), "x", settings.database_url)


# --- validation -------------------------------------------------------------------------------------


def test_validation_errors_name_the_field_and_record_nothing(settings):
    settings = api_settings(settings, api_body_bytes_max=4096, ingest_batch_max=3)
    with TestClient(make_api(settings, settings.kafka_bootstrap, settings.database_url)) as client:
        missing = client.post("/v1/payouts/abc/cancel", json={}, headers=OP)
        assert missing.status_code == 422 and missing.json()["problems"][0]["field"] == "reason"
        unknown = client.post("/v1/payouts/abc/cancel", json={"reason": "x", "colour": "red"}, headers=OP)
        assert unknown.status_code == 422 and unknown.json()["problems"][0]["field"] == "colour"
        currency = client.post("/v1/payees/p-1/payouts", json={"currency": "usd"}, headers=OP)
        assert currency.status_code == 422 and "currency" in currency.json()["error"]
        assert client.get("/v1/payouts?limit=0", headers=RO).status_code == 422
        assert client.get("/v1/payouts?status=lost", headers=RO).status_code == 422
        bad_id = client.get("/v1/payouts/%20bad", headers=RO)
        assert bad_id.status_code == 422 and "payout_id" in bad_id.json()["error"]

        batch = client.post("/v1/payments", headers=IN, json={"records": [
            payment("ok-1", "a-1"), payment("bad-1", "a-1", amount_minor=-5), {"payee_id": "a-1"}]})
        assert batch.status_code == 422
        problems = batch.json()["problems"]
        assert {p["index"] for p in problems} == {1, 2} and "nothing was recorded" in batch.json()["error"]
        assert any(p["index"] == 1 and p["field"] == "amount_minor" for p in problems)
        too_many = client.post("/v1/payments", headers=IN, json={"records": [payment(f"m{i}", "a") for i in range(4)]})
        assert too_many.status_code == 413 and "at most 3" in too_many.json()["error"]
        too_large = client.post("/v1/payments", headers={**IN, "Content-Type": "application/json"},
                                content=b'{"records": [' + b" " * 5000 + b"]}")
        assert too_large.status_code == 413 and too_large.json()["limit_bytes"] == 4096
        naive = client.post("/v1/payout-runs", json={"dryRun": True, "at": "2026-11-20T10:00:00"}, headers=OP)
        assert naive.status_code == 422 and "UTC offset" in naive.json()["error"]
    assert [e for e, _ in ledger_events(settings)] == []  # nothing reached the ledger


def test_ingestion_is_rate_limited_per_token(settings):
    settings = api_settings(settings, ingest_rate_per_s=0.01, ingest_burst=2)
    with TestClient(make_api(settings, settings.kafka_bootstrap, settings.database_url)) as client:
        invalid = {"records": [{"payee_id": "a"}]}  # a refused batch still counts against the rate
        assert [client.post("/v1/payments", json=invalid, headers=IN).status_code for _ in range(2)] == [422, 422]
        limited = client.post("/v1/payments", json=invalid, headers=IN)
        assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
        assert client.post("/v1/payments", json=invalid, headers=OP).status_code == 422  # another token's bucket


# --- happy paths ------------------------------------------------------------------------------------


def test_ingestion_is_idempotent_and_reaches_the_ledger(settings):
    settings = api_settings(settings)
    records = [payment("api-1", "shop-1"), payment("api-2", "shop-2", 2_500),
               {"type": "refund", "refund_id": "r-1", "payment_id": "api-1", "payee_id": "shop-1",
                "amount_minor": 1_000, "currency": "USD", "occurred_at": TWO_DAYS_AGO.isoformat()}]
    with stack(settings) as client:
        first = client.post("/v1/payments", json={"records": records}, headers=IN)
        assert first.status_code == 202 and first.json()["accepted"] == 3
        again = client.post("/v1/payments", json={"records": records}, headers=IN)  # a retry after a timeout
        assert again.json()["event_ids"] == first.json()["event_ids"]
        wait_until(lambda: len(ledger_events(settings)) >= 3, 30, "payments chained")
    chained = [event.envelope.event_id for event, _ in ledger_events(settings)]
    assert sorted(chained) == sorted(first.json()["event_ids"])  # each once, whatever was sent twice


def test_schedules_runs_payouts_and_the_emergency_stop(settings):
    settings = api_settings(settings)
    with stack(settings) as client:
        schedule = {"frequency": "DAILY", "cutoff_time": "18:00", "timezone": "Africa/Abidjan", "plan": "flat-80",
                    "method": "manual", "minimum": {"currency": "USD", "amount": "10.00"}}
        for payee in ("s-1", "s-2", "s-3"):
            put = client.put(f"/v1/payees/{payee}/schedule", json=schedule, headers=OP)
            assert put.status_code == 200 and put.json()["verdict"] == "chained", put.json()
        bad_zone = client.put("/v1/payees/s-1/schedule", json={**schedule, "timezone": "Mars/Olympus"}, headers=OP)
        assert bad_zone.status_code == 422 and "timezone" in bad_zone.json()["error"]
        assert client.post("/v1/payments", headers=IN, json={"records": [
            payment("sp-1", "s-1", 5_000), payment("sp-2", "s-2", 7_500), payment("sp-3", "s-3", 500)]}).status_code == 202
        wait_until(lambda: client.get("/v1/payees/s-1/schedule", headers=RO).status_code == 200, 30, "schedule projected")
        shown = client.get("/v1/payees/s-1/schedule", headers=RO).json()
        assert (shown["frequency"], shown["timezone"], shown["minimum_payout_minor"]) == ("DAILY", "Africa/Abidjan", 1000)
        wait_until(lambda: len(ledger_events(settings)) >= 6, 30, "payments chained")

        dry = client.post("/v1/payout-runs", json={"dryRun": True}, headers={**OP, "X-Correlation-ID": "cron-42"})
        assert dry.status_code == 200 and dry.headers["X-Correlation-ID"] == "cron-42"
        body = dry.json()
        assert (body["dry_run"], body["payouts_requested"], body["balances_carried"]) == (True, 2, 1)
        assert body["totals_minor"] == {"USD": 4_000 + 6_000} and body["totals"] == {"USD": "100.00"}
        assert body["correlation_id"] == "cron-42" and body["run_id"].startswith("run_")
        assert datetime.fromisoformat(body["next_scheduled_time"]) > datetime.now(timezone.utc)
        assert not any(e.event_type == "PayoutRequested" for e, _ in ledger_events(settings))  # dry: nothing sent

        paused = client.post("/v1/controls/pause", json={"reason": "bank incident"}, headers=OP).json()
        assert paused["paused"] and paused["actor"] == "olga"
        refused = client.post("/v1/payout-runs", json={}, headers=OP)
        assert refused.status_code == 409 and "paused" in refused.json()["error"]
        assert client.post("/v1/controls/resume", json={}, headers=OP).json()["paused"] is False

        real = client.post("/v1/payout-runs", json={}, headers=OP).json()
        assert real["payouts_requested"] == 2 and real["errors"] == []
        payout_ids = {row["payee_id"]: row["payout_id"] for row in real["closes"] if row["payout_id"]}
        assert client.post("/v1/payout-runs", json={}, headers=OP).json()["payouts_requested"] == 0  # closed once

        listed = projected(client, payout_ids["s-2"], "requested")
        assert (listed["net_minor"], listed["amount"], listed["currency"]) == (6_000, "60.00", "USD")
        wait_until(lambda: client.get("/v1/payouts?status=requested", headers=RO).json()["total"] == 2, 30, "listed")
        page = client.get("/v1/payouts?status=requested&limit=1&offset=1", headers=RO).json()
        assert (len(page["payouts"]), page["total"]) == (1, 2)

        cancelled = client.post(f"/v1/payouts/{payout_ids['s-1']}/cancel", json={"reason": "duplicate"}, headers=OP)
        assert cancelled.status_code == 200 and cancelled.json()["verdict"] == "chained"
        twice = client.post(f"/v1/payouts/{payout_ids['s-1']}/cancel", json={"reason": "again"}, headers=OP)
        assert twice.status_code == 409 and "is cancelled" in twice.json()["error"]
        assert projected(client, payout_ids["s-1"], "cancelled")["status"] == "cancelled"
        assert client.get("/v1/payouts/nope-123", headers=RO).status_code == 404

        forced = client.post("/v1/payout-runs", json={"forceRun": True}, headers=OP).json()
        assert forced["force_run"] and forced["payouts_requested"] == 1  # s-1's cancelled 40.00, paid again now
        assert any("s-3" in error["reason"] and "minimum" in error["reason"] for error in forced["errors"])

        monitoring = client.get("/v1/monitoring", headers=RO).json()
        assert monitoring["controls"]["paused"] is False and "health" in monitoring
        wait_until(lambda: client.get("/ready").json()["checks"]["projector"]["lag_events"] == 0, 30, "caught up")
        ready = client.get("/ready")
        assert ready.status_code == 200 and ready.json()["ready"] is True
        assert ready.json()["checks"]["broker"]["ledger_events"] == len(ledger_events(settings))


def test_manual_payouts_confirm_fail_retry_and_pay_now(settings):
    settings = api_settings(settings)
    requested = {e.payee_id: e.payload["payout_id"] for e in request_payouts(
        settings, {name: ("manual", "") for name in ("h-paid", "h-failed", "h-now")})}
    with stack(settings) as client, processor_running(settings):
        for payout_id in requested.values():
            projected(client, payout_id, "at_provider")
        paid = client.post(f"/v1/payouts/{requested['h-paid']}/confirm", json={"reference": "receipt 9"}, headers=OP)
        assert paid.status_code == 200 and paid.json()["event_type"] == "PayoutSettled"
        failed = client.post(f"/v1/payouts/{requested['h-failed']}/fail",
                             json={"reason_code": "account_closed", "message": "closed"}, headers=OP)
        assert failed.status_code == 200
        shown = projected(client, requested["h-failed"], "failed")
        assert shown["reason_code"] == "account_closed"
        assert [(step["attempt"], step["outcome"]) for step in shown["timeline"]] == [(1, "failed")]
        assert projected(client, requested["h-paid"], "settled")["provider_reference"] == "receipt 9"

        retried = client.post(f"/v1/payouts/{requested['h-failed']}/retry", json={}, headers=OP).json()
        assert retried["verdict"] == "chained" and retried["payout_id"] == close_id(
            "h-failed", f"manual:retry:{requested['h-failed']}", "USD")
        again = client.post(f"/v1/payouts/{requested['h-failed']}/retry", json={}, headers=OP).json()
        assert again["payout_id"] == retried["payout_id"] and "already" in again["reason"]
        assert client.post(f"/v1/payouts/{requested['h-paid']}/retry", json={}, headers=OP).status_code == 409

        nothing = client.post("/v1/payees/h-now/payouts", json={"currency": "USD"}, headers=OP)
        assert nothing.status_code == 409 and "nothing to pay out" in nothing.json()["error"]

        # one of two finished payouts failed: 50 % > 10 %, the failure-rate alert fires (critical: > 2 x 10 %)
        evaluate_alerts(settings, settings.database_url, datetime.now(timezone.utc))
        alerts = [a for a in client.get("/v1/alerts?status=open", headers=RO).json()["alerts"]
                  if a["rule"] == "failure_rate"]  # processing_delay fires too: these payouts are 2 days old
        assert [(a["severity"], a["status"]) for a in alerts] == [("critical", "firing")]
        health = client.get("/v1/monitoring", headers=RO).json()["health"]
        assert health["status"] == "critical" and alerts[0]["id"] in [a["id"] for a in health["open_alerts"]]
        assert client.post(f"/v1/alerts/{alerts[0]['id']}/acknowledge", json={}, headers=RO).status_code == 403
        acked = client.post(f"/v1/alerts/{alerts[0]['id']}/acknowledge", json={}, headers=OP).json()
        assert (acked["status"], acked["acknowledged_by"]) == ("acknowledged", "olga")
        assert client.post(f"/v1/alerts/{alerts[0]['id']}/acknowledge", json={}, headers=OP).status_code == 409
        resolved = client.post(f"/v1/alerts/{alerts[0]['id']}/resolve", json={"actor": "night shift"}, headers=OP)
        assert (resolved.json()["status"], resolved.json()["resolved_by"]) == ("resolved", "night shift")
        assert client.post("/v1/alerts/999999/resolve", json={}, headers=OP).status_code == 404
    book = book_of(settings)
    assert book.get(retried["payout_id"]).amount == book.get(requested["h-failed"]).amount
    assert book.get(requested["h-paid"]).status.value == "settled"


def test_pay_now_requests_an_early_payout_once_per_request_id(settings):
    settings = api_settings(settings)
    with stack(settings) as client:
        assert client.post("/v1/payments", json={"records": [payment("e-1", "early-1", 1_000)]},
                           headers=IN).status_code == 202
        wait_until(lambda: len(ledger_events(settings)) >= 1, 30, "payment chained")
        first = client.post("/v1/payees/early-1/payouts", json={"currency": "USD", "request_id": "req-7"}, headers=OP)
        assert first.status_code == 200 and (first.json()["net"], first.json()["amount"]) == (800, "8.00 USD")
        second = client.post("/v1/payees/early-1/payouts", json={"currency": "USD", "request_id": "req-7"}, headers=OP)
        assert second.status_code == 409  # the balance is paid: the same request pays nothing more
    assert sum(1 for e, _ in ledger_events(settings) if e.event_type == "PayoutRequested") == 1


def test_a_run_waits_briefly_for_the_sequencer_then_says_it_is_behind(settings):
    from processors.operations import LedgerBehind, Operations

    settings = api_settings(settings)
    request_payouts(settings, {"b-1": ("manual", "")})
    later = datetime.now(timezone.utc) + timedelta(days=3)
    with TestClient(make_api(settings, settings.kafka_bootstrap, settings.database_url)) as client:
        client.post("/v1/payments", json={"records": [payment("b-late", "b-1", 9_000)]}, headers=IN)
    operations = Operations(settings, settings.kafka_bootstrap, settings.database_url)
    with sequencer_running(settings):
        wait_until(lambda: any(e.payload.get("payment_id") == "b-late" for e, _ in ledger_events(settings)), 30,
                   "late payment chained")
    operations.run(later)  # its close waits in ledger.commands: nobody chains it
    with pytest.raises(LedgerBehind, match="not in the ledger yet"):
        operations.run(later, settle_s=1.0)
