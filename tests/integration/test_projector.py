"""The projector on the real stack: read models equal a fresh fold of the ledger, exactly once."""

from __future__ import annotations

import json
import subprocess

import sqlalchemy

from ledger import payouts as records
from ledger.codec import EventCodec
from processors.payout_run import send_commands
from processors.ledger_client import LedgerClient
from projections.projector import Projector
from projections.verify import verify
from runtime.database import make_engine
from tests.integration.cli_env import LEDGER, env_for
from tests.integration.sequencing_helpers import send_raw
from tests.integration.transfer_helpers import (TWO_DAYS_AGO, book_of, processor_running, request_payouts,
                                                sequencer_running, wait_until)


def project(settings, **kwargs) -> Projector:
    worker = Projector(settings, settings.kafka_bootstrap, settings.database_url, log=lambda line: None, **kwargs)
    worker.run(idle_exit_s=0.5, handle_signals=False)
    return worker


def rows(settings, sql: str) -> list[dict]:
    engine = make_engine(settings.database_url)
    try:
        with engine.connect() as connection:
            return [dict(row) for row in connection.execute(sqlalchemy.text(sql)).mappings()]
    finally:
        engine.dispose()


def history(settings) -> dict[str, str]:
    """Payments, a refund, an adjustment, a bad record, payouts: one settled, one failed, one at the provider."""
    requested = {e.payee_id: e.payload["payout_id"] for e in request_payouts(
        settings, {name: ("manual", "") for name in ("h-paid", "h-failed", "h-open")})}
    with LedgerClient(settings.kafka_bootstrap, settings) as client:
        client.record_batch([
            {"type": "payment", "payment_id": "late-1", "payee_id": "h-open", "amount_minor": 1_234,
             "currency": "USD", "occurred_at": TWO_DAYS_AGO.isoformat()},
            {"type": "refund", "refund_id": "rf-1", "payment_id": "late-1", "payee_id": "h-open",
             "amount_minor": 234, "currency": "USD", "occurred_at": TWO_DAYS_AGO.isoformat()},
            {"type": "adjustment", "adjustment_id": "adj-1", "kind": "BONUS", "name": "referral",
             "payee_id": "h-paid", "amount_minor": 500, "currency": "USD", "occurred_at": TWO_DAYS_AGO.isoformat()},
        ])
    send_raw(settings, [b'{"payment_id": "x", "amount_minor": 10.5}'])  # dead-lettered
    with sequencer_running(settings):
        with processor_running(settings):
            wait_until(lambda: {p.status.value for p in book_of(settings).payouts.values()} == {"at_provider"}, 30,
                       "manual payouts at the operator")
        book = book_of(settings)
        paid, failed = book.get(requested["h-paid"]), book.get(requested["h-failed"])
        now = paid.requested_at
        send_commands(settings.kafka_bootstrap, settings.topic_commands, [
            records.settled(paid, 1, "manual", "receipt-1", now),
            records.failed(failed, 1, "manual", "account_closed", "closed", False, now)], EventCodec())
        wait_until(lambda: book_of(settings).get(requested["h-failed"]).status.value == "failed", 30, "outcomes chained")
    return requested


def test_read_models_equal_the_ledger_and_a_second_run_writes_nothing(settings):
    requested = history(settings)
    first = project(settings)
    assert first.stats.written == first.stats.events > 0 and first.stats.dead_letters == 1
    report = verify(settings, settings.kafka_bootstrap, settings.database_url)
    assert report.ok, report.differences
    assert report.tables["payouts"] == 3 and report.tables["earnings"] >= 6 and report.unbalanced == 0

    statuses = {r["payee_id"]: (r["status"], r["reason_code"], r["net_minor"]) for r in rows(
        settings, "SELECT payee_id, status, reason_code, net_minor FROM payouts")}
    assert {payee: s[:2] for payee, s in statuses.items()} == {
        "h-paid": ("settled", ""), "h-failed": ("failed", "account_closed"), "h-open": ("at_provider", "")}
    balances = {r["payee_id"]: r for r in rows(settings, "SELECT * FROM payee_balances WHERE currency = 'USD'")}
    assert balances["h-paid"]["settled_minor"] == statuses["h-paid"][2]
    assert balances["h-failed"]["unpaid_minor"] == statuses["h-failed"][2]  # its money is the payee's again
    assert balances["h-open"]["in_flight_minor"] == statuses["h-open"][2]
    assert balances["h-open"]["unclosed_gross_minor"] == 1_000  # 12.34 paid, 2.34 refunded, not closed yet
    (dead,) = rows(settings, "SELECT stage, reason FROM dead_letters")
    assert "amount_minor" in dead["reason"]
    (attempt,) = rows(settings, f"SELECT * FROM payout_attempts WHERE payout_id = '{requested['h-paid']}'")
    assert (attempt["outcome"], attempt["provider_reference"]) == ("settled", "receipt-1")

    again = project(settings)  # a restart: everything folded again, nothing written again
    assert again.stats.events == first.stats.events and again.stats.written == 0 and again.stats.dead_letters == 0
    assert verify(settings, settings.kafka_bootstrap, settings.database_url).ok


def test_a_row_altered_by_hand_makes_verify_fail_and_name_it(settings, tmp_path):
    requested = history(settings)
    project(settings)
    engine = make_engine(settings.database_url)
    with engine.begin() as connection:
        connection.execute(sqlalchemy.text("UPDATE payouts SET status = 'settled' WHERE payout_id = :p"),
                           {"p": requested["h-failed"]})
    engine.dispose()
    result = subprocess.run([LEDGER, "verify", "--json"], env=env_for(settings, tmp_path), capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert report["mismatches"] == 1 and report["events"] > 0 and report["ledger_balanced"] is True
    (difference,) = report["differences"]
    assert difference == {"kind": "different_value", "table": "payouts", "key": [requested["h-failed"]],
                          "column": "status", "ledger": "failed", "table_value": "settled"}
    rebuilt = subprocess.run([LEDGER, "projections", "rebuild", "--json"], env=env_for(settings, tmp_path),
                             capture_output=True, text=True, timeout=120)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert json.loads(rebuilt.stdout)["events_per_s"] > 0
    ok = subprocess.run([LEDGER, "verify"], env=env_for(settings, tmp_path), capture_output=True, text=True,
                        timeout=120)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "verify OK" in ok.stdout


def test_an_empty_broker_is_restored_from_the_archive_and_the_read_models_stay_right(settings):
    import uuid

    from runtime.kafka_admin import ensure_topics
    from runtime.restore import restore_if_empty

    history(settings)
    first = project(settings)
    suffix = uuid.uuid4().hex[:8]  # the same database, a broker that lost everything: new, empty topics
    fresh = settings.with_topic_suffix(suffix)
    ensure_topics(fresh.kafka_bootstrap, fresh.topic_specs())
    assert restore_if_empty(fresh, fresh.kafka_bootstrap, fresh.database_url) == first.stats.events
    assert restore_if_empty(fresh, fresh.kafka_bootstrap, fresh.database_url) == 0  # not empty any more
    again = project(fresh)
    assert (again.stats.events, again.stats.written) == (first.stats.events, 0)  # nothing applied twice
    report = verify(fresh, fresh.kafka_bootstrap, fresh.database_url)
    assert report.ok and report.chain_breaks == 0, report.differences
    (dead,) = rows(settings, "SELECT dlq_id FROM dead_letters")
    assert dead["dlq_id"].startswith("before-restore-")  # kept, and out of the new topic's way


def test_events_without_amounts_in_a_later_batch_still_update_balances(settings):
    from processors.payee_actions import hold_event

    (request,) = request_payouts(settings, {"c-1": ("manual", "")})
    project(settings)
    payout = book_of(settings).get(request.payload["payout_id"])
    at = request.envelope.occurred_at
    send_commands(settings.kafka_bootstrap, settings.topic_commands, [
        hold_event("c-1", held=True, now=at, reason="review"), records.cancelled(payout, "duplicate", "ops", at)],
        EventCodec())
    with sequencer_running(settings):
        wait_until(lambda: book_of(settings).get(payout.payout_id).status.value == "cancelled", 30, "the cancel")
    project(settings)  # a batch of its own: a hold and a cancel, no amount in either
    (balance,) = rows(settings, "SELECT in_flight_minor, unpaid_minor FROM payee_balances WHERE payee_id = 'c-1'")
    assert (balance["in_flight_minor"], balance["unpaid_minor"]) == (0, request.payload["net"].amount_minor)
    assert verify(settings, settings.kafka_bootstrap, settings.database_url).ok
