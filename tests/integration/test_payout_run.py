"""Payout runs on the real broker: periods in two timezones, once each, whatever is repeated."""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from datetime import datetime, timezone

from ledger.codec import EventCodec
from processors.ledger_client import LedgerClient
from processors.payout_run import fold_ledger, plan_run, send_commands
from runtime.plans import plan_book
from tests.integration.cli_env import LEDGER, env_for
from tests.integration.sequencing_helpers import chain_breaks, ledger_events, run_sequencer


def ledger_cli(env, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([LEDGER, *args], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result


def pay(payment_id: str, payee_id: str, minor: int, code: str, occurred: str) -> dict:
    return {"payment_id": payment_id, "payee_id": payee_id, "amount_minor": minor, "currency": code,
            "occurred_at": occurred}


def run_at(settings, at: datetime) -> list:
    codec = EventCodec()
    payees = fold_ledger(settings.kafka_bootstrap, settings.topic_events, codec)
    plan = plan_run(payees.values(), at, plan_book(settings), settings.payout_policy())
    send_commands(settings.kafka_bootstrap, settings.topic_commands, plan.closes, codec)
    return plan.closes


def test_two_periods_in_two_timezones_are_paid_once_each_even_if_runs_repeat(settings, tmp_path):
    env = env_for(settings, tmp_path)
    ledger_cli(env, "schedule", "set", "ny-1", "--frequency", "DAILY", "--cutoff", "23:59",
               "--timezone", "America/New_York", "--plan", "flat-80", "--method", "manual")
    ledger_cli(env, "schedule", "set", "tokyo-1", "--frequency", "DAILY", "--cutoff", "23:59",
               "--timezone", "Asia/Tokyo", "--plan", "flat-80", "--method", "manual")
    with LedgerClient(settings.kafka_bootstrap, settings) as client:
        client.record_batch([
            pay("n1", "ny-1", 10_000, "USD", "2026-11-20T15:00:00-05:00"),   # period ending 11-21 04:59Z
            pay("n2", "ny-1", 20_000, "USD", "2026-11-21T01:00:00-05:00"),   # the next day in New York
            pay("t1", "tokyo-1", 50_000, "JPY", "2026-11-20T09:00:00+09:00"),  # period ending 11-20 14:59Z
            pay("t2", "tokyo-1", 30_000, "JPY", "2026-11-21T23:00:00+09:00"),  # period ending 11-21 14:59Z
        ])
    run_sequencer(settings)
    at = datetime(2026, 11, 22, 6, 0, tzinfo=timezone.utc)  # after all four cutoffs

    first = run_at(settings, at)
    again = run_at(settings, at)  # a run repeated before the sequencer caught up (e.g. after a crash)
    assert [e.envelope.event_id for e in first] == [e.envelope.event_id for e in again]
    worker = run_sequencer(settings)
    assert worker.stats.appended == 4 and worker.stats.duplicates == 4
    assert run_at(settings, at) == []  # everything due is closed

    events = ledger_events(settings)
    payouts = [(e.payee_id, e.payload["period_end"].isoformat(), e.payload["gross"].amount_minor,
                e.payload["net"].amount_minor) for e, _ in events if e.event_type == "PayoutRequested"]
    assert sorted(payouts) == [
        ("ny-1", "2026-11-21T04:59:00+00:00", 10_000, 8_000),
        ("ny-1", "2026-11-22T04:59:00+00:00", 20_000, 16_000),
        ("tokyo-1", "2026-11-20T14:59:00+00:00", 50_000, 40_000),
        ("tokyo-1", "2026-11-21T14:59:00+00:00", 30_000, 24_000),
    ]
    assert max(Counter(e.payload["payout_id"] for e, _ in events if e.event_type == "PayoutRequested").values()) == 1
    assert chain_breaks(events) == []


def test_hold_carries_and_release_pays_what_carried(settings, tmp_path):
    env = env_for(settings, tmp_path)
    ledger_cli(env, "schedule", "set", "b-1", "--frequency", "DAILY", "--timezone", "UTC",
               "--plan", "flat-80", "--method", "manual")
    ledger_cli(env, "payee", "hold", "b-1", "--reason", "fraud review")
    with LedgerClient(settings.kafka_bootstrap, settings) as client:
        client.record_batch([pay("h1", "b-1", 10_000, "EUR", "2026-11-20T10:00:00Z")])
    run_sequencer(settings)
    held = run_at(settings, datetime(2026, 11, 21, 1, 0, tzinfo=timezone.utc))
    assert [(e.event_type, e.payload["reason"], e.payload["balance"].amount_minor) for e in held] == [
        ("BalanceCarried", "HELD", 8_000)]
    ledger_cli(env, "payee", "release", "b-1")
    run_sequencer(settings)

    released = json.loads(ledger_cli(env, "run", "--at", "2026-11-22T01:00:00Z", "--json").stdout)
    assert released["payouts_requested"] == 1
    assert released["closes"][0]["net"] == 8_000 and released["closes"][0]["gross"] == 0  # the carried balance


def test_run_refuses_a_naive_instant(settings, tmp_path):
    result = subprocess.run([LEDGER, "run", "--at", "2026-11-22T00:00:00", "--dry-run"], env=env_for(settings, tmp_path),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "has no UTC offset" in result.stderr


def test_emergency_stop_requests_nothing_until_resumed(settings, tmp_path):
    env = env_for(settings, tmp_path)
    ledger_cli(env, "schedule", "set", "p-1", "--frequency", "DAILY", "--timezone", "UTC",
               "--plan", "flat-80", "--method", "manual")
    with LedgerClient(settings.kafka_bootstrap, settings) as client:
        client.record_batch([pay("e1", "p-1", 10_000, "USD", "2026-11-20T10:00:00Z")])
    run_sequencer(settings)
    ledger_cli(env, "payouts", "pause", "--reason", "provider incident", "--actor", "ops")

    paused = subprocess.run([LEDGER, "run", "--at", "2026-11-21T01:00:00Z"], env=env, capture_output=True,
                            text=True, timeout=60)
    assert paused.returncode == 3 and "payouts are paused" in paused.stderr and "provider incident" in paused.stderr
    status = subprocess.run([LEDGER, "payouts", "status", "--json"], env=env, capture_output=True, text=True)
    assert status.returncode == 3 and json.loads(status.stdout)["actor"] == "ops"
    dry = json.loads(ledger_cli(env, "run", "--at", "2026-11-21T01:00:00Z", "--dry-run", "--json").stdout)
    assert dry["payouts_requested"] == 1  # a dry run still shows what is due
    run_sequencer(settings)
    assert not [e for e, _ in ledger_events(settings) if e.event_type == "PayoutRequested"]

    ledger_cli(env, "payouts", "resume", "--reason", "incident over")
    resumed = json.loads(ledger_cli(env, "run", "--at", "2026-11-21T01:00:00Z", "--json").stdout)
    assert resumed["payouts_requested"] == 1 and resumed["closes"][0]["net"] == 8_000  # accrued earnings kept


def test_a_run_waits_for_the_previous_runs_closes_to_be_chained(settings, tmp_path):
    env = env_for(settings, tmp_path)
    with LedgerClient(settings.kafka_bootstrap, settings) as client:
        client.record_batch([pay("w1", "w-1", 10_000, "USD", "2026-11-20T10:00:00Z")])  # default: Fridays 23:59 UTC
    run_sequencer(settings)
    first = json.loads(ledger_cli(env, "run", "--at", "2026-11-21T01:00:00Z", "--json").stdout)
    assert first["payouts_requested"] == 1

    second = subprocess.run([LEDGER, "run", "--at", "2026-11-21T01:00:00Z"], env=env, capture_output=True,
                            text=True, timeout=60)
    assert second.returncode == 1 and "1 close decisions from an earlier run are not in the ledger yet" in second.stderr
    run_sequencer(settings)
    again = json.loads(ledger_cli(env, "run", "--at", "2026-11-21T01:00:00Z", "--json").stdout)
    assert again["payouts_requested"] == 0  # chained now, and nothing else is due


def test_early_payout_on_request_pays_below_the_minimum_once(settings, tmp_path):
    env = env_for(settings, tmp_path)
    with LedgerClient(settings.kafka_bootstrap, settings) as client:
        client.record_batch([pay("m1", "m-1", 1_000, "USD", "2026-11-20T10:00:00Z")])  # 8.00 owed: below 25.00
    run_sequencer(settings)
    first = json.loads(ledger_cli(env, "payout", "now", "m-1", "--currency", "USD", "--request-id", "req-1",
                                  "--json").stdout)
    assert first["net"] == 800
    run_sequencer(settings)
    retry = subprocess.run([LEDGER, "payout", "now", "m-1", "--currency", "USD", "--request-id", "req-1"], env=env,
                           capture_output=True, text=True, timeout=60)
    assert retry.returncode == 1 and "nothing to pay out" in retry.stderr  # already paid: the balance is zero
    requested = [e for e, _ in ledger_events(settings) if e.event_type == "PayoutRequested"]
    assert [(e.payload["trigger"], e.payload["net"].amount_minor) for e in requested] == [("MANUAL", 800)]
    # the next scheduled close starts after the early payout: nothing is paid twice
    assert json.loads(ledger_cli(env, "run", "--at", "2026-12-31T00:00:00Z", "--json").stdout)["closes"] == []

    ledger_cli(env, "payee", "hold", "m-1", "--reason", "review")
    run_sequencer(settings)
    held = subprocess.run([LEDGER, "payout", "now", "m-1", "--currency", "USD"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert held.returncode == 1 and "is on hold" in held.stderr


def test_the_library_sets_schedules_and_holds_with_validation(settings, tmp_path):
    import pytest

    from ledger.commission import UnknownPlan
    from ledger.schedules import InvalidSchedule

    with LedgerClient(settings.kafka_bootstrap, settings) as client:
        client.set_schedule("lib-1", frequency="MONTHLY", cutoff_time="18:00", timezone="Europe/Paris", day_of_month=31,
                            plan="tiered-services", method="stripe_standard")
        client.set_hold("lib-1", held=True, reason="kyc")
        with pytest.raises(InvalidSchedule, match="timezone"):
            client.set_schedule("lib-1", frequency="DAILY", cutoff_time="18:00", timezone="Mars/Olympus",
                                plan="flat-80", method="manual")
        with pytest.raises(UnknownPlan, match="unknown payout method 'paypal'"):
            client.set_schedule("lib-1", frequency="DAILY", cutoff_time="18:00", timezone="UTC", plan="flat-80",
                                method="paypal")
    run_sequencer(settings)
    types = [e.event_type for e, _ in ledger_events(settings)]
    assert types == ["PayeeScheduleSet", "PayeeHoldSet"]
