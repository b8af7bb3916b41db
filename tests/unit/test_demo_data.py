"""The demo's inputs (demo/data.py): seeded, varied, and bad where they are meant to be bad."""

from __future__ import annotations

import json
import random
from datetime import datetime, timedelta, timezone

import pytest

from demo.data import TROUBLES, TYPO_IBAN, make_inputs, make_payees, malformed_records
from connectors.bank_transfer import iban_problem
from ledger.intake import IntakeLimits, IntakeRejected, parse_record

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc)
START = NOW - timedelta(days=7)


def inputs(seed: int, payees: int = 14, payments: int = 400):
    rng = random.Random(seed)
    people = make_payees("run1", payees, rng)
    return make_inputs("run1", people, payments, START, NOW, rng)


def test_the_same_seed_makes_the_same_inputs_and_another_seed_others():
    assert inputs(5).records == inputs(5).records
    assert inputs(5).payees == inputs(5).payees
    assert inputs(5).records != inputs(6).records


def test_payees_span_currencies_methods_timezones_plans_and_schedules():
    payees = inputs(1, payees=40).payees
    assert {p.currency for p in payees} == {"USD", "EUR", "GBP", "XOF", "BHD"}
    assert {p.method for p in payees} == {"stripe_standard", "bank_transfer", "mobile_money", "manual"}
    assert len({p.timezone for p in payees}) >= 6
    assert {p.plan for p in payees} == {"flat-80", "tiered-services"}
    assert {p.frequency for p in payees} == {"DAILY", "WEEKLY"}
    assert all((p.day_of_week is None) == (p.frequency == "DAILY") for p in payees)
    assert all(p.frequency == "DAILY" for p in payees if p.trouble)  # their trouble shows in a one-day demo
    assert len({p.payee_id for p in payees}) == 40


def test_each_kind_of_trouble_is_given_to_exactly_one_payee_and_the_rest_are_sound():
    payees = inputs(3, payees=14).payees
    troubles = sorted(p.trouble for p in payees if p.trouble)
    assert troubles == sorted([*TROUBLES.values(), "typo_iban"])
    (typo,) = [p for p in payees if p.trouble == "typo_iban"]
    assert typo.destination == TYPO_IBAN and iban_problem(TYPO_IBAN) != ""
    banks = [p for p in payees if p.method == "bank_transfer" and p.trouble != "typo_iban"]
    assert banks and all(iban_problem(p.destination) == "" for p in banks)
    assert inputs(3, payees=8).payees and not any(p.trouble for p in inputs(3, payees=8).payees)


def test_records_are_valid_integer_minor_amounts_inside_the_simulated_days():
    made = inputs(9)
    kinds = {record["type"] for record in made.records}
    assert kinds == {"payment", "refund", "adjustment"}
    payments = [r for r in made.records if r["type"] == "payment"]
    assert len(payments) == 400
    limits = IntakeLimits("50000.00", {"XOF": "30000000"}, 300, 32, 4096)
    for record in made.records + made.late:
        assert isinstance(record["amount_minor"], int) and record["amount_minor"] > 0
        assert START <= datetime.fromisoformat(record["occurred_at"]) <= NOW
        parse_record(record, limits, NOW)  # raises if the intake would refuse it
    refunded = {r["payment_id"]: r for r in payments}
    for refund in (r for r in made.records if r["type"] == "refund"):
        assert refund["amount_minor"] <= refunded[refund["payment_id"]]["amount_minor"]
        assert refund["occurred_at"] >= refunded[refund["payment_id"]]["occurred_at"]


def test_duplicates_are_redeliveries_and_late_payments_are_new_and_old():
    made = inputs(4)
    assert made.duplicates and all(record in made.records for record in made.duplicates)
    ids = {r.get("payment_id") for r in made.records if r["type"] == "payment"}
    assert made.late and not ids & {r["payment_id"] for r in made.late}
    assert all(datetime.fromisoformat(r["occurred_at"]) < START + timedelta(days=1) for r in made.late)


@pytest.mark.parametrize("index", range(6))
def test_every_malformed_record_is_refused_by_the_intake_naming_the_field(index):
    payee = inputs(2).payees[0]
    raw = malformed_records("run1", payee)[index]
    with pytest.raises(IntakeRejected) as refused:
        parse_record(json.loads(raw), IntakeLimits("50000.00", {}, 300, 32, 4096), NOW)
    expected = ["amount_minor", "currency", "amount_minor", "payee_id", "occurred_at", "amount_minor"][index]
    assert expected in {name for name, _ in refused.value.problems}


def test_the_last_malformed_record_is_not_even_json():
    with pytest.raises(ValueError):
        json.loads(malformed_records("run1", inputs(2).payees[0])[-1])
