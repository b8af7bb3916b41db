"""ledger.earnings: the pure earnings fold, driven the way the aggregator and the sequencer drive it.

Intake events come from parse_record and are sequenced by one LedgerIndex per test (dropping
duplicates by its verdict, as the sequencer does); every close the fold decides is sequenced through
the same index and folded back, and so are payout outcomes. After every single step each currency
must satisfy earned_net = settled + in_flight + unpaid.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.codec import EventCodec
from ledger.commission import BUILTIN_CONFIG, PlanBook, load_plan_book, merge_config
from ledger.earnings import PayeeEarnings, PayoutPolicy, close_id
from ledger.events import Event, new_envelope
from ledger.guards import InvariantViolation
from ledger.intake import IntakeLimits, parse_record
from ledger.ledger_index import LedgerIndex
from ledger.money import Money
from ledger.schedules import Schedule

NOW = datetime(2026, 12, 31, tzinfo=UTC)  # intake's clock: every occurred_at below is before it
LIMITS = IntakeLimits(max_amount_major_by_currency={"XOF": "1000000000", "JPY": "1000000000"})
BOOK = load_plan_book(BUILTIN_CONFIG)
POLICY = PayoutPolicy()  # flat-80, manual (no fee), minimum 25.00, weekly Friday 23:59 UTC
CODEC = EventCodec()
PAYEE = "payee-1"


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0,
        microsecond: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, microsecond, tzinfo=UTC)


def iso(instant: datetime | str) -> str:
    return instant if isinstance(instant, str) else instant.isoformat()


# --- building events ----------------------------------------------------------------------------------


def payment(payment_id: str, amount: int, occurred: datetime | str, code: str = "USD", *,
            payee: str = PAYEE, services: int = 1) -> Event:
    return parse_record({"payee_id": payee, "payment_id": payment_id, "amount_minor": amount, "currency": code,
                         "occurred_at": iso(occurred), "services": services}, LIMITS, NOW)


def refund(refund_id: str, payment_id: str, amount: int, occurred: datetime | str, code: str = "USD", *,
           payee: str = PAYEE) -> Event:
    return parse_record({"type": "refund", "refund_id": refund_id, "payment_id": payment_id, "payee_id": payee,
                         "amount_minor": amount, "currency": code, "occurred_at": iso(occurred)}, LIMITS, NOW)


def adjustment(adjustment_id: str, kind: str, name: str, amount: int, occurred: datetime | str,
               code: str = "USD", *, payee: str = PAYEE) -> Event:
    return parse_record({"type": "adjustment", "adjustment_id": adjustment_id, "kind": kind, "name": name,
                         "payee_id": payee, "amount_minor": amount, "currency": code,
                         "occurred_at": iso(occurred)}, LIMITS, NOW)


def _other(event_type: str, payee: str, at: datetime, **payload: Any) -> Event:
    return Event(new_envelope(event_type, payee_id=payee, occurred_at=at, recorded_at=at), payload)


def schedule_set(frequency: str = "DAILY", *, timezone: str = "UTC", cutoff_time: str = "23:59",
                 day_of_week: int | None = None, day_of_month: int | None = None, plan: str = "flat-80",
                 method: str = "manual", minimum: Money | None = None, payee: str = PAYEE,
                 at: datetime = utc(2026, 1, 1)) -> Event:
    return _other("PayeeScheduleSet", payee, at, frequency=frequency, day_of_week=day_of_week,
                  day_of_month=day_of_month, cutoff_time=cutoff_time, timezone=timezone, plan=plan,
                  payout_method=method, destination="", minimum_payout=minimum, actor="test")


def hold_set(held: bool, *, payee: str = PAYEE, at: datetime = utc(2026, 1, 1)) -> Event:
    return _other("PayeeHoldSet", payee, at, held=held, reason="review" if held else "", actor="ops")


def settled(payout_id: str, amount: Money, *, payee: str = PAYEE, at: datetime = utc(2026, 12, 1)) -> Event:
    return _other("PayoutSettled", payee, at, payout_id=payout_id, provider="manual",
                  provider_reference=f"ref-{payout_id}", attempt=1, amount=amount)


def failed(payout_id: str, amount: Money, *, retryable: bool, payee: str = PAYEE,
           at: datetime = utc(2026, 12, 1)) -> Event:
    return _other("PayoutFailed", payee, at, payout_id=payout_id, provider="manual",
                  reason_code="timeout" if retryable else "account_closed", provider_message="", attempt=1,
                  retryable=retryable, amount=amount)


def cancelled(payout_id: str, *, payee: str = PAYEE, at: datetime = utc(2026, 12, 1)) -> Event:
    return _other("PayoutCancelled", payee, at, payout_id=payout_id, reason="ops", actor="ops")


# --- one payee's ledger: sequencer + aggregator -------------------------------------------------------


class PayeeLedger:
    """One payee's events as the sequencer appends them (duplicates dropped) and the fold applies them."""

    def __init__(self, payee: str = PAYEE, *, book: PlanBook = BOOK, policy: PayoutPolicy = POLICY,
                 index: LedgerIndex | None = None) -> None:
        self.payee = payee
        self.book, self.policy = book, policy
        self.index = index or LedgerIndex(CODEC.encode)
        self.fold = PayeeEarnings(payee)
        self.log: list[Event] = []
        self.duplicates = 0

    def submit(self, event: Event) -> Event | None:
        """Sequence one event and fold it in; a redelivery is dropped (None)."""
        verdict = self.index.verdict(event)
        if verdict.status == "duplicate":
            self.duplicates += 1
            return None
        assert verdict.status == "accept", verdict.reason
        sequenced, _ = self.index.append(event)
        assert self.fold.apply(sequenced) is True
        self.log.append(sequenced)
        self.assert_balanced()
        return sequenced

    def submit_all(self, *events: Event) -> list[Event | None]:
        return [self.submit(event) for event in events]

    def decide(self, now: datetime) -> list[Event]:
        return self.fold.decide_closes(now, self.book, self.policy)

    def close(self, now: datetime) -> list[Event]:
        """Decide the closes due at `now`, sequence them and fold them back."""
        applied = [self.submit(event) for event in self.decide(now)]
        assert all(event is not None for event in applied)
        return applied  # type: ignore[return-value]

    def closes(self) -> list[Event]:
        return [event for event in self.log if event.event_type in ("PayoutRequested", "BalanceCarried")]

    def assert_balanced(self) -> None:
        for code in self.fold.currencies() | {"USD"}:
            balance = self.fold.balance(code)
            assert balance.balanced, (code, balance)

    def balance_minor(self, code: str) -> tuple[int, int, int, int]:
        b = self.fold.balance(code)
        return (b.earned_net.amount_minor, b.settled.amount_minor, b.in_flight.amount_minor, b.unpaid.amount_minor)


def minor(money: Money) -> int:
    return money.amount_minor


def digest(*payment_ids: str) -> str:
    return hashlib.sha256("\n".join(sorted(payment_ids)).encode()).hexdigest()


def only(events: list[Event]) -> Event:
    assert len(events) == 1, [(e.event_type, e.payload.get("period_id")) for e in events]
    return events[0]


def snapshot(fold: PayeeEarnings) -> dict[str, Any]:
    return dataclasses.asdict(fold)


# --- 1. daily Abidjan, flat-80, mobile money, XOF -------------------------------------------


def abidjan_payee() -> PayeeLedger:
    ledger = PayeeLedger()
    ledger.submit(schedule_set("DAILY", timezone="Africa/Abidjan", plan="flat-80", method="mobile_money"))
    return ledger


def test_daily_mobile_money_one_payment_one_payout_of_24000_xof() -> None:
    ledger = abidjan_payee()
    paid = ledger.submit(payment("wave-001", 30_000, "2026-11-20T10:00:00Z", "XOF"))
    assert paid is not None and paid.envelope.sequence == 2

    assert ledger.decide(utc(2026, 11, 20, 23, 58, 59)) == []  # before the cutoff nothing is due
    close = only(ledger.close(utc(2026, 11, 21, 8)))

    p = close.payload
    assert close.event_type == "PayoutRequested"
    assert p["period_end"] == utc(2026, 11, 20, 23, 59)  # Abidjan is UTC+0 all year
    assert p["period_start"] == utc(2026, 11, 19, 23, 59)
    assert p["payout_id"] == close_id(PAYEE, p["period_id"], "XOF") == close.envelope.event_id
    assert (minor(p["gross"]), p["rate_bp"], minor(p["payee_share"]), minor(p["fee"]), minor(p["carry_over"]),
            minor(p["net"])) == (30_000, 8000, 24_000, 0, 0, 24_000)
    assert p["net"] == Money.of(24_000, "XOF")
    assert (p["plan"], p["payout_method"], p["trigger"]) == ("flat-80", "mobile_money", "SCHEDULE")
    assert (p["payment_count"], tuple(p["payment_ids"]), p["payment_digest"]) == (1, ("wave-001",),
                                                                                 digest("wave-001"))
    assert (p["late_payment_count"], p["through_sequence"], p["services"]) == (0, 2, 1)
    assert close.envelope.occurred_at == utc(2026, 11, 20, 23, 59)

    assert ledger.balance_minor("XOF") == (24_000, 0, 24_000, 0)
    assert ledger.fold.lines == []
    assert ledger.decide(utc(2026, 11, 21, 8)) == []
    assert ledger.decide(utc(2027, 1, 31)) == []  # nothing more, however late we look


def test_deciding_twice_without_applying_gives_the_same_close_which_dedupes() -> None:
    ledger = abidjan_payee()
    ledger.submit(payment("wave-001", 30_000, "2026-11-20T10:00:00Z", "XOF"))
    first = ledger.decide(utc(2026, 11, 21, 8))
    again = ledger.decide(utc(2026, 11, 25, 8))  # a later clock decides the same close
    assert [e.envelope.event_id for e in first] == [e.envelope.event_id for e in again]
    assert [dict(e.payload) for e in first] == [dict(e.payload) for e in again]
    ledger.submit(first[0])
    assert ledger.index.verdict(again[0]).status == "duplicate"
    assert ledger.submit(again[0]) is None


def test_replaying_the_log_reproduces_the_fold_without_a_clock() -> None:
    ledger = abidjan_payee()
    ledger.submit(payment("wave-001", 30_000, "2026-11-20T10:00:00Z", "XOF"))
    ledger.submit(payment("wave-002", 1_000, "2026-11-21T10:00:00Z", "XOF"))
    ledger.close(utc(2026, 11, 23))
    replayed = PayeeEarnings(PAYEE)
    for event in ledger.log:
        assert replayed.apply(event)
    assert snapshot(replayed) == snapshot(ledger.fold)
    assert replayed.decide_closes(utc(2026, 11, 23), BOOK, POLICY) == []


def test_payment_at_the_cutoff_instant_closes_then_one_microsecond_later_does_not() -> None:
    ledger = abidjan_payee()
    ledger.submit(payment("at-cutoff", 10_000, "2026-11-20T23:59:00Z", "XOF"))
    ledger.submit(payment("after-cutoff", 20_000, "2026-11-20T23:59:00.000001Z", "XOF"))
    first, second = ledger.close(utc(2026, 11, 22))
    assert first.payload["period_end"] == utc(2026, 11, 20, 23, 59)
    assert (tuple(first.payload["payment_ids"]), minor(first.payload["gross"])) == (("at-cutoff",), 10_000)
    assert second.payload["period_end"] == utc(2026, 11, 21, 23, 59)
    assert (tuple(second.payload["payment_ids"]), minor(second.payload["gross"])) == (("after-cutoff",), 20_000)


# --- 2. tiered-services, weekly, through the fold ---------------------------------------------------------------------


def test_weekly_tiered_services_payout_is_66725() -> None:
    ledger = PayeeLedger()
    ledger.submit(schedule_set("WEEKLY", day_of_week=4, plan="tiered-services", method="stripe_standard"))
    # 60 services totalling USD 1,000.00 over the week ending Friday 2026-11-20 23:59 UTC
    amounts = [1_667] * 59 + [100_000 - 59 * 1_667]
    ids = [f"pay-{i:02d}" for i in range(60)]
    for i, (pid, amount) in enumerate(zip(ids, amounts)):
        ledger.submit(payment(pid, amount, utc(2026, 11, 14) + timedelta(hours=2 * i + 1)))
    ledger.submit(adjustment("rent-2026-11-w3", "DEDUCTION", "booth_rent", 5_000, "2026-11-16T09:00:00Z"))
    ledger.submit(payment("next-week", 9_999, "2026-11-21T00:00:00Z"))  # after the cutoff: not in it

    close = only(ledger.close(utc(2026, 11, 21, 12)))
    p = close.payload
    assert close.event_type == "PayoutRequested"
    assert (minor(p["gross"]), p["services"], p["rate_bp"], minor(p["payee_share"]), minor(p["fee"]),
            minor(p["net"])) == (100_000, 60, 7200, 72_000, 275, 66_725)
    assert [(d["name"], minor(d["amount"])) for d in p["deductions"]] == [("booth_rent", 5_000)]
    assert (p["period_start"], p["period_end"]) == (utc(2026, 11, 13, 23, 59), utc(2026, 11, 20, 23, 59))
    assert p["payment_count"] == 60 and tuple(p["payment_ids"]) == ()  # more than 50: count and digest only
    assert p["payment_digest"] == digest(*ids)
    assert ledger.balance_minor("USD") == (66_725, 0, 66_725, 0)
    assert [line.payment_id for line in ledger.fold.lines] == ["next-week"]


def test_a_bonus_is_a_negative_deduction_line() -> None:
    ledger = PayeeLedger()
    ledger.submit(schedule_set("DAILY"))
    ledger.submit(payment("p1", 10_000, "2026-11-20T10:00:00Z"))
    ledger.submit(adjustment("b1", "BONUS", "referral", 1_234, "2026-11-20T11:00:00Z"))
    close = only(ledger.close(utc(2026, 11, 21)))
    assert [(d["name"], minor(d["amount"])) for d in close.payload["deductions"]] == [("referral", -1_234)]
    assert minor(close.payload["net"]) == 8_000 + 1_234


# --- 3. two periods, two time zones -------------------------------------------------------------------


@pytest.mark.parametrize(("zone", "payments", "expected"), [
    ("America/New_York", [  # EST (UTC-5): 23:59 local is 04:59Z the next day
        ("ny-1", 1_000, "2026-11-20T15:00:00Z"),
        ("ny-2", 2_000, "2026-11-21T04:59:00Z"),  # 23:59 on the 20th, local: still the 20th's period
        ("ny-3", 4_000, "2026-11-21T05:00:00Z"),  # 00:00 on the 21st, local
        ("ny-4", 8_000, "2026-11-21T20:00:00Z"),
    ], [(utc(2026, 11, 21, 4, 59), 3_000, ("ny-1", "ny-2")), (utc(2026, 11, 22, 4, 59), 12_000, ("ny-3", "ny-4"))]),
    ("Asia/Tokyo", [  # JST (UTC+9): 23:59 local is 14:59Z the same day
        ("tk-1", 1_000, "2026-11-20T01:00:00+09:00"),
        ("tk-2", 2_000, "2026-11-20T14:59:00Z"),
        ("tk-3", 4_000, "2026-11-20T15:00:00Z"),  # 00:00 on the 21st in Tokyo
        ("tk-4", 8_000, "2026-11-21T23:00:00+09:00"),
    ], [(utc(2026, 11, 20, 14, 59), 3_000, ("tk-1", "tk-2")), (utc(2026, 11, 21, 14, 59), 12_000, ("tk-3", "tk-4"))]),
])
def test_two_daily_periods_in_a_payee_time_zone(zone: str, payments: list[tuple[str, int, str]],
                                                 expected: list[tuple[datetime, int, tuple[str, ...]]]) -> None:
    ledger = PayeeLedger()
    ledger.submit(schedule_set("DAILY", timezone=zone, minimum=Money.of(100, "USD")))
    for pid, amount, occurred in payments:
        ledger.submit(payment(pid, amount, occurred))
    closes = ledger.close(utc(2026, 11, 23))
    assert [(e.event_type, e.payload["period_end"], minor(e.payload["gross"]), tuple(e.payload["payment_ids"]))
            for e in closes] == [("PayoutRequested", *row) for row in expected]
    assert [minor(e.payload["net"]) for e in closes] == [2_400, 9_600]
    assert closes[1].payload["period_start"] == closes[0].payload["period_end"]
    assert len({e.payload["payout_id"] for e in closes}) == 2
    assert ledger.decide(utc(2026, 11, 30)) == []  # once each


def test_two_payees_in_two_zones_share_one_index() -> None:
    index = LedgerIndex(CODEC.encode)
    ny, tokyo = PayeeLedger("ny", index=index), PayeeLedger("tokyo", index=index)
    ny.submit(schedule_set("DAILY", timezone="America/New_York", payee="ny"))
    tokyo.submit(schedule_set("DAILY", timezone="Asia/Tokyo", payee="tokyo"))
    for day in (20, 21):
        ny.submit(payment(f"ny-{day}", 5_000 * (day - 19), f"2026-11-{day}T12:00:00-05:00", payee="ny"))
        tokyo.submit(payment(f"tk-{day}", 7_000 * (day - 19), f"2026-11-{day}T12:00:00+09:00", payee="tokyo"))
    got = {}
    for ledger in (ny, tokyo):
        got[ledger.payee] = [(e.payload["period_end"], minor(e.payload["gross"]), minor(e.payload["net"]))
                             for e in ledger.close(utc(2026, 11, 23))]
        assert ledger.decide(utc(2026, 11, 23)) == []
    assert got == {
        "ny": [(utc(2026, 11, 21, 4, 59), 5_000, 4_000), (utc(2026, 11, 22, 4, 59), 10_000, 8_000)],
        "tokyo": [(utc(2026, 11, 20, 14, 59), 7_000, 5_600), (utc(2026, 11, 21, 14, 59), 14_000, 11_200)],
    }
    assert close_id("ny", "x", "USD") != close_id("tokyo", "x", "USD")


# --- 4. minimum threshold -------------------------------------------------------------------------------


def test_below_the_minimum_carries_then_pays_with_the_carry() -> None:
    ledger = PayeeLedger()  # no schedule of its own: the policy's weekly Friday 23:59 UTC, minimum 25.00
    ledger.submit(payment("small", 1_000, "2026-11-18T10:00:00Z"))
    carried = only(ledger.close(utc(2026, 11, 21)))
    assert carried.event_type == "BalanceCarried"
    assert carried.payload["reason"] == "BELOW_MINIMUM"
    assert carried.payload["period_end"] == utc(2026, 11, 20, 23, 59)
    assert (minor(carried.payload["net"]), minor(carried.payload["carry_over"]),
            minor(carried.payload["balance"])) == (800, 0, 800)
    assert carried.envelope.event_id == close_id(PAYEE, carried.payload["period_id"], "USD")
    assert ledger.balance_minor("USD") == (800, 0, 0, 800)
    assert ledger.decide(utc(2026, 11, 28)) == []  # a carry below the minimum waits for activity

    ledger.submit(payment("bigger", 3_000, "2026-11-25T10:00:00Z"))
    paid = only(ledger.close(utc(2026, 11, 28)))
    assert paid.event_type == "PayoutRequested"
    assert paid.payload["period_end"] == utc(2026, 11, 27, 23, 59)
    assert (minor(paid.payload["carry_over"]), minor(paid.payload["payee_share"]),
            minor(paid.payload["net"])) == (800, 2_400, 3_200)
    assert ledger.balance_minor("USD") == (3_200, 0, 3_200, 0)


def test_exactly_the_minimum_is_paid() -> None:
    ledger = PayeeLedger()
    ledger.submit(schedule_set("DAILY"))
    ledger.submit(payment("p", 3_125, "2026-11-20T10:00:00Z"))  # 80 % is exactly 25.00
    assert only(ledger.close(utc(2026, 11, 21))).event_type == "PayoutRequested"


def test_payee_minimum_overrides_the_policy_in_its_currency() -> None:
    ledger = PayeeLedger()
    ledger.submit(schedule_set("DAILY", minimum=Money.of(10_000, "USD")))
    ledger.submit(payment("p", 10_000, "2026-11-20T10:00:00Z"))
    close = only(ledger.close(utc(2026, 11, 21)))
    assert (close.event_type, close.payload["reason"], minor(close.payload["balance"])) == (
        "BalanceCarried", "BELOW_MINIMUM", 8_000)


# --- 5. late payments -----------------------------------------------------------------------------------


def test_a_late_payment_closes_with_the_next_period_and_is_counted_late() -> None:
    ledger = PayeeLedger()
    ledger.submit(schedule_set("DAILY"))
    ledger.submit(payment("on-time", 5_000, "2026-11-20T10:00:00Z"))
    first = only(ledger.close(utc(2026, 11, 21, 1)))
    assert first.payload["late_payment_count"] == 0

    ledger.submit(payment("late", 4_000, "2026-11-20T12:00:00Z"))  # before the closed cutoff, arrives after
    ledger.submit(payment("next-day", 6_000, "2026-11-21T12:00:00Z"))
    second = only(ledger.close(utc(2026, 11, 22, 1)))
    p = second.payload
    assert p["period_end"] == utc(2026, 11, 21, 23, 59)
    assert (p["late_payment_count"], p["payment_count"], tuple(p["payment_ids"])) == (1, 2, ("late", "next-day"))
    assert (minor(p["gross"]), minor(p["net"])) == (10_000, 8_000)
    assert ledger.balance_minor("USD") == (12_000, 0, 12_000, 0)


def test_a_late_payment_alone_closes_at_the_first_cutoff_after_the_last_close() -> None:
    ledger = PayeeLedger()
    ledger.submit(schedule_set("DAILY"))
    ledger.submit(payment("on-time", 5_000, "2026-11-20T10:00:00Z"))
    ledger.close(utc(2026, 11, 21, 1))
    ledger.submit(payment("late", 4_000, "2026-11-19T12:00:00Z"))  # two periods back
    close = only(ledger.close(utc(2026, 11, 30)))
    assert close.payload["period_end"] == utc(2026, 11, 21, 23, 59)
    assert (close.payload["late_payment_count"], minor(close.payload["net"])) == (1, 3_200)


def test_a_line_sequenced_after_the_decision_stays_for_the_next_close() -> None:
    ledger = PayeeLedger()
    ledger.submit(schedule_set("DAILY"))
    ledger.submit(payment("seen", 5_000, "2026-11-20T10:00:00Z"))
    decided = only(ledger.decide(utc(2026, 11, 21, 1)))
    ledger.submit(payment("unseen", 4_000, "2026-11-20T11:00:00Z"))  # sequenced before the close
    ledger.submit(decided)
    assert [line.payment_id for line in ledger.fold.lines] == ["unseen"]
    late = only(ledger.close(utc(2026, 11, 22, 1)))
    assert (tuple(late.payload["payment_ids"]), late.payload["late_payment_count"]) == (("unseen",), 1)


# --- 6. refunds after payout ---------------------------------------------------------------------------


def test_refund_larger_than_the_next_period_carries_a_negative_balance() -> None:
    ledger = PayeeLedger()
    ledger.submit(schedule_set("DAILY", method="stripe_standard"))
    ledger.submit(payment("p1", 10_000, "2026-11-20T10:00:00Z"))
    first = only(ledger.close(utc(2026, 11, 21)))
    assert (first.event_type, minor(first.payload["net"])) == ("PayoutRequested", 8_000 - 50)  # fee 25 + 25

    ledger.submit(payment("p2", 1_000, "2026-11-21T10:00:00Z"))
    ledger.submit(refund("r1", "p1", 5_000, "2026-11-21T11:00:00Z"))
    second = only(ledger.close(utc(2026, 11, 22)))
    p = second.payload
    assert (second.event_type, p["reason"]) == ("BalanceCarried", "NOT_POSITIVE")
    assert (minor(p["gross"]), minor(p["payee_share"]), minor(p["fee"]), minor(p["net"]),
            minor(p["balance"])) == (-4_000, -3_200, 0, -3_200, -3_200)  # no fee when nothing is paid
    assert ledger.balance_minor("USD") == (7_950 - 3_200, 0, 7_950, -3_200)
    assert ledger.decide(utc(2026, 12, 30)) == []  # a negative carry is never paid on its own

    ledger.submit(payment("p3", 5_000, "2026-11-23T10:00:00Z"))  # 4,000 - 3,200 = 800, below the minimum
    third = only(ledger.close(utc(2026, 11, 24)))
    assert (third.payload["reason"], minor(third.payload["carry_over"]), minor(third.payload["balance"])) == (
        "BELOW_MINIMUM", -3_200, 4_000 - 25 - 13 - 3_200)  # fee: 12.5 -> 13 cents, half up, + 25

    ledger.submit(payment("p4", 10_000, "2026-11-24T10:00:00Z"))
    fourth = only(ledger.close(utc(2026, 11, 25)))
    assert fourth.event_type == "PayoutRequested"
    assert (minor(fourth.payload["carry_over"]), minor(fourth.payload["net"])) == (762, 762 + 7_950)
    for close in ledger.closes():
        if close.event_type == "PayoutRequested":
            assert minor(close.payload["net"]) > 0


def test_a_refund_in_the_same_period_reduces_its_gross_at_its_rate() -> None:
    ledger = PayeeLedger()
    ledger.submit(schedule_set("DAILY"))
    ledger.submit(payment("p1", 10_000, "2026-11-20T10:00:00Z"))
    ledger.submit(refund("r1", "p1", 2_500, "2026-11-20T11:00:00Z"))
    close = only(ledger.close(utc(2026, 11, 21)))
    assert (minor(close.payload["gross"]), minor(close.payload["net"])) == (7_500, 6_000)
    assert tuple(close.payload["payment_ids"]) == ("p1",)


# --- 7. hold ----------------------------------------------------------------------------------------------


def test_held_periods_carry_and_release_pays_the_whole_balance_in_a_carry_only_close() -> None:
    ledger = PayeeLedger()
    ledger.submit(schedule_set("DAILY"))
    ledger.submit(hold_set(True))
    ledger.submit(payment("p1", 10_000, "2026-11-20T10:00:00Z"))
    ledger.submit(payment("p2", 5_000, "2026-11-21T10:00:00Z"))
    held = ledger.close(utc(2026, 11, 22))
    assert [(e.event_type, e.payload["reason"], minor(e.payload["carry_over"]), minor(e.payload["balance"]))
            for e in held] == [("BalanceCarried", "HELD", 0, 8_000), ("BalanceCarried", "HELD", 8_000, 12_000)]
    assert ledger.decide(utc(2026, 11, 25)) == []  # held: a payable carry waits
    assert ledger.balance_minor("USD") == (12_000, 0, 0, 12_000)

    ledger.submit(hold_set(False, at=utc(2026, 11, 25)))
    assert ledger.decide(utc(2026, 11, 22, 23, 58)) == []  # the next cutoff after the last close is not due
    paid = only(ledger.close(utc(2026, 11, 25)))  # days later: one close, at the first cutoff after the last
    p = paid.payload
    assert paid.event_type == "PayoutRequested"
    assert p["period_end"] == utc(2026, 11, 22, 23, 59)
    assert (minor(p["gross"]), p["payment_count"], minor(p["carry_over"]), minor(p["net"])) == (0, 0, 12_000, 12_000)
    assert [(d["name"], minor(d["amount"])) for d in p["deductions"]] == []
    assert ledger.balance_minor("USD") == (12_000, 0, 12_000, 0)
    assert ledger.decide(utc(2026, 12, 30)) == []


def test_a_held_balance_below_the_minimum_is_not_paid_on_release() -> None:
    ledger = PayeeLedger()
    ledger.submit(schedule_set("DAILY"))
    ledger.submit(hold_set(True))
    ledger.submit(payment("p1", 1_000, "2026-11-20T10:00:00Z"))
    assert only(ledger.close(utc(2026, 11, 21))).payload["reason"] == "HELD"
    ledger.submit(hold_set(False))
    assert ledger.decide(utc(2026, 12, 30)) == []


RENT_BOOK = load_plan_book(merge_config(BUILTIN_CONFIG, {
    "plans": {"rent-80": {"base_rate_bp": 8000, "deductions": {"booth_rent": "5.00"}}}}))


def test_recurring_deductions_apply_to_periods_with_activity() -> None:
    ledger = PayeeLedger(book=RENT_BOOK)
    ledger.submit(schedule_set("DAILY", plan="rent-80"))
    ledger.submit(payment("p1", 10_000, "2026-11-20T10:00:00Z"))
    ledger.submit(adjustment("a1", "DEDUCTION", "booth_rent", 100, "2026-11-20T11:00:00Z"))
    close = only(ledger.close(utc(2026, 11, 21)))
    assert [(d["name"], minor(d["amount"])) for d in close.payload["deductions"]] == [("booth_rent", 600)]
    assert minor(close.payload["net"]) == 8_000 - 600


def test_a_carry_only_close_charges_no_recurring_deduction() -> None:
    # Regression: PlanBook.breakdown used to add the plan's recurring deductions to every close, so a
    # carry-only close (a period with no activity) paid 7,000 with booth_rent 500 deducted.
    ledger = PayeeLedger(book=RENT_BOOK)
    ledger.submit(schedule_set("DAILY", plan="rent-80"))
    ledger.submit(hold_set(True))
    ledger.submit(payment("p1", 10_000, "2026-11-20T10:00:00Z"))
    held = only(ledger.close(utc(2026, 11, 21)))
    assert minor(held.payload["balance"]) == 8_000 - 500  # the active period pays its rent once
    ledger.submit(hold_set(False))
    paid = only(ledger.close(utc(2026, 11, 22)))  # 2026-11-21: no activity at all
    assert [(d["name"], minor(d["amount"])) for d in paid.payload["deductions"]] == []
    assert (minor(paid.payload["carry_over"]), minor(paid.payload["net"])) == (7_500, 7_500)


# --- 8. payout outcomes --------------------------------------------------------------------------------


def paid_once(amount: int = 10_000, day: int = 20) -> tuple[PayeeLedger, Event]:
    ledger = PayeeLedger()
    ledger.submit(schedule_set("DAILY"))
    ledger.submit(payment(f"p-{day}", amount, utc(2026, 11, day, 10)))
    return ledger, only(ledger.close(utc(2026, 11, day + 1)))


def test_settled_moves_in_flight_to_settled() -> None:
    ledger, payout = paid_once()
    payout_id, net = payout.payload["payout_id"], payout.payload["net"]
    assert ledger.balance_minor("USD") == (8_000, 0, 8_000, 0)
    ledger.submit(settled(payout_id, net))
    assert ledger.balance_minor("USD") == (8_000, 8_000, 0, 0)
    # an outcome of a payout never requested: the sequencer refuses it, and the fold would move nothing
    assert ledger.index.verdict(settled("unknown-payout", net)).reason == "payout 'unknown-payout' was never requested"
    assert ledger.balance_minor("USD") == (8_000, 8_000, 0, 0)


def test_retryable_failure_changes_nothing() -> None:
    ledger, payout = paid_once()
    before = snapshot(ledger.fold)
    ledger.submit(failed(payout.payload["payout_id"], payout.payload["net"], retryable=True))
    after = snapshot(ledger.fold)
    assert after.pop("last_sequence") == before.pop("last_sequence") + 1
    assert after == before


def test_permanent_failure_returns_the_amount_and_the_next_cutoff_pays_it_again() -> None:
    ledger, payout = paid_once()
    first_id = payout.payload["payout_id"]
    ledger.submit(failed(first_id, payout.payload["net"], retryable=False))
    assert ledger.balance_minor("USD") == (8_000, 0, 0, 8_000)
    ledger.submit(failed(first_id, payout.payload["net"], retryable=False, at=utc(2026, 12, 2)))  # again: no-op
    assert ledger.balance_minor("USD") == (8_000, 0, 0, 8_000)

    again = only(ledger.close(utc(2026, 11, 25)))  # no new payments: a carry-only close
    p = again.payload
    assert again.event_type == "PayoutRequested"
    assert p["payout_id"] != first_id
    assert p["period_end"] == utc(2026, 11, 21, 23, 59)
    assert (minor(p["gross"]), minor(p["carry_over"]), minor(p["net"])) == (0, 8_000, 8_000)
    assert ledger.balance_minor("USD") == (8_000, 0, 8_000, 0)
    ledger.submit(settled(p["payout_id"], p["net"]))
    assert ledger.balance_minor("USD") == (8_000, 8_000, 0, 0)


def test_permanent_failure_joins_the_next_period_s_earnings() -> None:
    ledger, payout = paid_once()
    ledger.submit(failed(payout.payload["payout_id"], payout.payload["net"], retryable=False))
    ledger.submit(payment("p-21", 5_000, "2026-11-21T10:00:00Z"))
    again = only(ledger.close(utc(2026, 11, 22)))
    assert (minor(again.payload["carry_over"]), minor(again.payload["net"])) == (8_000, 12_000)
    assert ledger.balance_minor("USD") == (12_000, 0, 12_000, 0)


def test_cancelled_returns_the_amount_and_a_cancel_after_settle_does_not() -> None:
    ledger, payout = paid_once()
    payout_id = payout.payload["payout_id"]
    ledger.submit(cancelled(payout_id))
    assert ledger.balance_minor("USD") == (8_000, 0, 0, 8_000)
    repaid = only(ledger.close(utc(2026, 11, 23)))
    ledger.submit(settled(repaid.payload["payout_id"], repaid.payload["net"]))
    too_late = cancelled(repaid.payload["payout_id"], at=utc(2026, 12, 3))  # too late to cancel a paid one
    verdict = ledger.index.verdict(too_late)
    assert verdict.status == "reject" and "cannot be cancelled: it is settled" in verdict.reason
    ledger.fold.apply(dataclasses.replace(too_late, envelope=too_late.envelope.sequenced(ledger.fold.last_sequence + 1, "0" * 64)))
    # the fold alone ignores it too
    assert ledger.balance_minor("USD") == (8_000, 8_000, 0, 0)


def test_failure_after_settlement_moves_it_back_to_unpaid() -> None:
    ledger, payout = paid_once()
    payout_id, net = payout.payload["payout_id"], payout.payload["net"]
    ledger.submit(settled(payout_id, net))
    ledger.submit(failed(payout_id, net, retryable=False, at=utc(2026, 12, 5)))  # returned days later
    assert ledger.balance_minor("USD") == (8_000, 0, 0, 8_000)
    ledger.submit(failed(payout_id, net, retryable=False, at=utc(2026, 12, 6)))  # only once
    assert ledger.balance_minor("USD") == (8_000, 0, 0, 8_000)
    repaid = only(ledger.close(utc(2026, 11, 23)))
    assert (minor(repaid.payload["carry_over"]), minor(repaid.payload["net"])) == (8_000, 8_000)


def test_all_outcomes_in_one_history_stay_balanced_at_every_step() -> None:
    ledger = PayeeLedger()  # PayeeLedger.submit checks balance(c).balanced after every event
    ledger.submit(schedule_set("DAILY"))
    expected = []
    for day, amount in ((20, 10_000), (21, 20_000), (22, 30_000), (23, 40_000)):
        ledger.submit(payment(f"p-{day}", amount, utc(2026, 11, day, 10)))
        expected.append(only(ledger.close(utc(2026, 11, day + 1))))
    a, b, c, d = (e.payload["payout_id"] for e in expected)
    ledger.submit(settled(a, Money.of(8_000, "USD")))
    ledger.submit(failed(b, Money.of(16_000, "USD"), retryable=True))
    ledger.submit(failed(b, Money.of(16_000, "USD"), retryable=False))
    ledger.submit(cancelled(c))
    ledger.submit(settled(d, Money.of(32_000, "USD")))
    ledger.submit(failed(a, Money.of(8_000, "USD"), retryable=False))
    assert ledger.balance_minor("USD") == (80_000, 32_000, 0, 8_000 + 16_000 + 24_000)
    repaid = only(ledger.close(utc(2026, 11, 30)))
    assert (minor(repaid.payload["carry_over"]), minor(repaid.payload["net"])) == (48_000, 48_000)
    assert ledger.balance_minor("USD") == (80_000, 32_000, 48_000, 0)


def test_a_failure_sequenced_between_a_decision_and_its_close_is_not_lost() -> None:
    # Regression: closes used to set unpaid (to 0, or to the decided balance) instead of moving
    # carry_over, which lost the 80.00 returned here and left earned 120.00 against 40.00 in flight.
    ledger, payout = paid_once()
    ledger.submit(payment("p-21", 5_000, "2026-11-21T10:00:00Z"))
    decided = only(ledger.decide(utc(2026, 11, 22)))  # the aggregator decides from what it has seen
    assert minor(decided.payload["carry_over"]) == 0
    # the transfer processor's outcome reaches the sequencer before the aggregator's close does
    ledger.fold.apply(ledger.index.append(failed(payout.payload["payout_id"], payout.payload["net"],
                                                 retryable=False))[0])
    assert ledger.balance_minor("USD") == (8_000, 0, 0, 8_000)
    ledger.fold.apply(ledger.index.append(decided)[0])
    assert ledger.fold.balance("USD").balanced
    assert ledger.balance_minor("USD") == (12_000, 0, 4_000, 8_000)  # the 80.00 is still owed
    again = only(ledger.close(utc(2026, 11, 23)))
    assert (again.event_type, minor(again.payload["carry_over"]), minor(again.payload["net"])) == (
        "PayoutRequested", 8_000, 8_000)


def test_a_cancel_sequenced_between_a_decision_and_a_carried_close_is_not_lost() -> None:
    ledger, payout = paid_once()
    ledger.submit(payment("p-21", 1_000, "2026-11-21T10:00:00Z"))
    decided = only(ledger.decide(utc(2026, 11, 22)))
    assert (decided.event_type, decided.payload["reason"], minor(decided.payload["balance"])) == (
        "BalanceCarried", "BELOW_MINIMUM", 800)
    ledger.submit(cancelled(payout.payload["payout_id"]))
    ledger.submit(decided)  # PayeeLedger.submit checks the balance after each
    assert ledger.balance_minor("USD") == (8_800, 0, 0, 8_800)
    again = only(ledger.close(utc(2026, 11, 23)))
    assert (minor(again.payload["carry_over"]), minor(again.payload["net"])) == (8_800, 8_800)


# --- 9. multi-currency -------------------------------------------------------------------------------


def test_each_currency_closes_separately_and_is_never_summed() -> None:
    ledger = PayeeLedger()
    ledger.submit(schedule_set("DAILY"))
    ledger.submit(payment("usd-1", 5_000, "2026-11-20T10:00:00Z", "USD"))
    ledger.submit(payment("eur-1", 7_000, "2026-11-20T11:00:00Z", "EUR"))
    ledger.submit(payment("eur-2", 1_000, "2026-11-20T12:00:00Z", "EUR"))
    ledger.submit(payment("jpy-1", 2_000, "2026-11-20T12:00:00Z", "JPY"))  # 1,600 JPY >= 25 JPY
    closes = ledger.close(utc(2026, 11, 21))
    assert [(e.event_type, e.payload["net"], tuple(e.payload["payment_ids"])) for e in closes] == [
        ("PayoutRequested", Money.of(6_400, "EUR"), ("eur-1", "eur-2")),
        ("PayoutRequested", Money.of(1_600, "JPY"), ("jpy-1",)),
        ("PayoutRequested", Money.of(4_000, "USD"), ("usd-1",)),
    ]
    period_id = closes[0].payload["period_id"]
    assert all(e.payload["period_id"] == period_id for e in closes)
    assert [e.payload["payout_id"] for e in closes] == [close_id(PAYEE, period_id, c) for c in ("EUR", "JPY", "USD")]
    assert len({e.payload["payout_id"] for e in closes}) == 3
    for code, net in (("EUR", 6_400), ("JPY", 1_600), ("USD", 4_000)):
        assert ledger.balance_minor(code) == (net, 0, net, 0)


def test_one_currency_below_minimum_does_not_hold_back_another() -> None:
    ledger = PayeeLedger()
    ledger.submit(schedule_set("DAILY"))
    ledger.submit(payment("usd-1", 1_000, "2026-11-20T10:00:00Z", "USD"))
    ledger.submit(payment("eur-1", 7_000, "2026-11-20T11:00:00Z", "EUR"))
    closes = ledger.close(utc(2026, 11, 21))
    assert [(e.event_type, e.payload.get("reason"), minor(e.payload["net"])) for e in closes] == [
        ("PayoutRequested", None, 5_600), ("BalanceCarried", "BELOW_MINIMUM", 800)]


# --- 10. idempotence and gaps ------------------------------------------------------------------------


def test_applying_an_applied_event_again_is_a_no_op() -> None:
    ledger, payout = paid_once()
    ledger.submit(payment("p-21", 5_000, "2026-11-21T10:00:00Z"))
    before = snapshot(ledger.fold)
    for event in ledger.log:
        assert ledger.fold.apply(event) is False
    assert snapshot(ledger.fold) == before
    assert ledger.fold.apply(payout) is False
    assert snapshot(ledger.fold) == before


def test_a_sequence_gap_stops_the_fold() -> None:
    ledger = PayeeLedger()
    ledger.submit(schedule_set("DAILY"))
    skipped, _ = ledger.index.append(payment("p1", 5_000, "2026-11-20T10:00:00Z"))
    after_gap, _ = ledger.index.append(payment("p2", 5_000, "2026-11-20T11:00:00Z"))
    before = snapshot(ledger.fold)
    with pytest.raises(InvariantViolation, match="missing"):
        ledger.fold.apply(after_gap)
    assert snapshot(ledger.fold) == before
    assert ledger.fold.apply(skipped) and ledger.fold.apply(after_gap)


def test_unsequenced_or_foreign_events_are_refused() -> None:
    fold = PayeeEarnings(PAYEE)
    with pytest.raises(InvariantViolation, match="unsequenced"):
        fold.apply(payment("p1", 5_000, "2026-11-20T10:00:00Z"))
    foreign, _ = LedgerIndex(CODEC.encode).append(payment("p1", 5_000, "2026-11-20T10:00:00Z", payee="other"))
    with pytest.raises(InvariantViolation, match="other"):
        fold.apply(foreign)
    assert fold.last_sequence == 0 and fold.lines == []


# --- 11. manual schedules --------------------------------------------------------------------------------


def test_manual_schedule_never_closes() -> None:
    ledger = PayeeLedger()
    ledger.submit(schedule_set("MANUAL"))
    for i in range(5):
        ledger.submit(payment(f"p{i}", 5_000_000, utc(2026, 11, 1 + i, 10)))
    assert ledger.decide(utc(2026, 12, 30)) == []
    assert ledger.decide(utc(2099, 1, 1)) == []


def test_manual_policy_schedule_never_closes() -> None:
    manual = PayoutPolicy(schedule=Schedule.create("MANUAL", cutoff_time="00:00", timezone="UTC"))
    ledger = PayeeLedger(policy=manual)
    ledger.submit(payment("p1", 5_000_000, "2026-11-01T10:00:00Z"))
    assert ledger.decide(utc(2026, 12, 30)) == []


# --- 12. property A: arrival order and redelivery do not change what closes ----------------------------


ZONES = ["UTC", "America/New_York", "Asia/Tokyo", "Africa/Abidjan", "Europe/London"]
WINDOW_START = utc(2026, 10, 22)  # spans the end of daylight saving in Europe (10-25) and New York (11-01)
WINDOW_US = 10 * 24 * 3600 * 10**6
AFTER_WINDOW = WINDOW_START + timedelta(days=12)
DAY_US = 24 * 3600 * 10**6


def close_summary(events: list[Event]) -> list[tuple[Any, ...]]:
    return [(e.event_type, e.payload["period_id"], e.envelope.event_id,
             minor(e.payload["net"] if e.event_type == "PayoutRequested" else e.payload["balance"]),
             e.payload["payment_digest"], dict(e.payload)) for e in events]


@settings(max_examples=120, deadline=None)
@given(data=st.data())
def test_closes_are_the_same_for_every_arrival_order_and_redelivery(data: st.DataObject) -> None:
    zone = data.draw(st.sampled_from(ZONES), label="zone")
    count = data.draw(st.integers(1, 30), label="count")
    amounts = data.draw(st.lists(st.integers(1, 5_000_000), min_size=count, max_size=count), label="amounts")
    offsets = data.draw(st.lists(st.integers(0, WINDOW_US - 1), min_size=count, max_size=count), label="offsets")
    records = [(f"pay-{i}", amounts[i], WINDOW_START + timedelta(microseconds=offsets[i])) for i in range(count)]

    def run(order: list[int]) -> tuple[list[tuple[Any, ...]], PayeeLedger]:
        ledger = PayeeLedger()
        ledger.submit(schedule_set("DAILY", timezone=zone))
        for i in order:
            ledger.submit(payment(*records[i]))  # re-parsed each time: a redelivery is a fresh record
        closes = ledger.close(AFTER_WINDOW)
        assert ledger.decide(AFTER_WINDOW) == []
        return close_summary(closes), ledger

    baseline, reference = run(list(range(count)))
    redelivered = data.draw(st.lists(st.integers(0, count - 1), max_size=2 * count), label="redelivered")
    order = data.draw(st.permutations(list(range(count)) + redelivered), label="order")
    shuffled, ledger = run(order)

    assert ledger.duplicates == len(redelivered)
    assert shuffled == baseline
    assert ledger.fold.lines == [] and reference.fold.lines == []
    assert sum(minor(e.payload["gross"]) for e in ledger.closes()) == sum(amounts)
    assert sum(e.payload["payment_count"] for e in ledger.closes()) == count
    assert ledger.balance_minor("USD") == reference.balance_minor("USD")


# --- 13. property B: conservation and invariant 4 under random histories -----------------------------


CURRENCIES = ("USD", "EUR")
ACTIONS = ("pay",) * 5 + ("decide",) * 3 + ("refund", "adjust", "hold", "settle", "fail", "fail_retryable", "cancel",
                                             "fail_settled")
OUTCOMES = ("fail", "cancel", "fail_settled", "settle", "fail_retryable")
INTERLEAVED = ("fail", "fail", "cancel", "fail_settled", "settle", "pay", "refund", "hold")  # decision .. its closes


class Model:
    """What the test fed in, to check the fold's totals against."""

    def __init__(self) -> None:
        self.payments: dict[str, tuple[str, int]] = {}  # payment id -> (currency, amount)
        self.refunded: dict[str, int] = defaultdict(int)
        self.gross_fed: dict[str, int] = defaultdict(int)
        self.adjustments_fed: dict[str, int] = defaultdict(int)  # signed like deduction lines


def check_history(ledger: PayeeLedger, model: Model, held_decisions: list[Event]) -> None:
    fold = ledger.fold
    closes = ledger.closes()
    minimum = {code: 2_500 for code in CURRENCIES}
    for code in set(CURRENCIES) | fold.currencies():
        balance = fold.balance(code)
        assert balance.balanced, (code, balance)
        mine = [e for e in closes if e.payload["gross"].currency.code == code]
        closed_gross = sum(minor(e.payload["gross"]) for e in mine)
        open_gross = sum(line.gross_minor for line in fold.lines if line.currency == code)
        assert closed_gross + open_gross == model.gross_fed[code]  # nothing double counted, nothing lost
        closed_deductions = sum(minor(d["amount"]) for e in mine for d in e.payload["deductions"])
        open_deductions = sum(line.deduction[1] for line in fold.lines if line.currency == code and line.deduction)
        assert closed_deductions + open_deductions == model.adjustments_fed[code]
        period_nets = sum(minor(e.payload["net"]) - minor(e.payload["carry_over"])
                          if e.event_type == "PayoutRequested" else minor(e.payload["net"]) for e in mine)
        assert balance.earned_net.amount_minor == period_nets
    for close in closes:
        p = close.payload
        deductions = sum(minor(d["amount"]) for d in p["deductions"])
        assert minor(p["payee_share"]) + (minor(p["gross"]) - minor(p["payee_share"])) == minor(p["gross"])
        assert minor(p["payee_share"]) == ledger.book.breakdown(
            p["plan"], p["payout_method"], p["gross"], p["services"]).payee_share.amount_minor
        own_net = minor(p["payee_share"]) - deductions - minor(p["fee"])
        if close.event_type == "PayoutRequested":
            assert minor(p["net"]) > 0
            assert minor(p["net"]) >= minimum[p["net"].currency.code]
            assert minor(p["net"]) == minor(p["carry_over"]) + own_net
        else:
            assert minor(p["net"]) == own_net
            assert minor(p["balance"]) == minor(p["carry_over"]) + own_net
    payout_ids = Counter(e.payload["payout_id"] for e in closes if e.event_type == "PayoutRequested")
    assert all(n == 1 for n in payout_ids.values())
    assert all(e.event_type == "BalanceCarried" and e.payload["reason"] == "HELD" for e in held_decisions)


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_random_histories_conserve_money_and_stay_balanced(data: st.DataObject) -> None:
    ledger = PayeeLedger()
    ledger.submit(schedule_set("DAILY", timezone=data.draw(st.sampled_from(ZONES), label="zone"),
                               method=data.draw(st.sampled_from(["manual", "stripe_standard", "bank_transfer"]),
                                                label="method")))
    model = Model()
    held_decisions: list[Event] = []
    clock = WINDOW_START
    counter = 0

    def act(action: str, prefer: frozenset[str] = frozenset()) -> None:
        """Submit one non-close event (or nothing when the action has no target yet)."""
        nonlocal counter
        counter += 1
        # around the aggregator's clock: mostly before it (due at the next cutoff), some late, some ahead
        occurred = clock + timedelta(microseconds=data.draw(st.integers(-3 * DAY_US, DAY_US // 2), label="at"))
        # payouts in a preferred currency (that of a close being decided) first, when there are any
        in_flight = sorted(p for p, (c, _) in ledger.fold.in_flight.items() if c in prefer) or sorted(
            ledger.fold.in_flight)
        paid_out = sorted(p for p, (c, _) in ledger.fold.paid_out.items() if c in prefer) or sorted(
            ledger.fold.paid_out)
        if action == "pay":
            code = data.draw(st.sampled_from(("USD", "USD", "EUR")), label="currency")
            amount = data.draw(st.integers(3_125, 100_000) | st.integers(1, 3_124), label="amount")  # most payable
            pid = f"pay-{counter}"
            ledger.submit(payment(pid, amount, occurred, code, services=data.draw(st.integers(0, 3))))
            model.payments[pid] = (code, amount)
            model.gross_fed[code] += amount
        elif action == "refund":
            refundable = sorted(pid for pid, (_, amount) in model.payments.items() if amount > model.refunded[pid])
            if refundable:
                pid = data.draw(st.sampled_from(refundable), label="refunded payment")
                code, amount = model.payments[pid]
                value = data.draw(st.integers(1, amount - model.refunded[pid]), label="refund")
                ledger.submit(refund(f"ref-{counter}", pid, value, occurred, code))
                model.refunded[pid] += value
                model.gross_fed[code] -= value
        elif action == "adjust":
            code = data.draw(st.sampled_from(CURRENCIES), label="currency")
            kind = data.draw(st.sampled_from(["DEDUCTION", "BONUS"]), label="kind")
            amount = data.draw(st.integers(1, 20_000), label="adjustment")
            name = data.draw(st.sampled_from(["booth_rent", "supply_fee", "referral"]), label="name")
            ledger.submit(adjustment(f"adj-{counter}", kind, name, amount, occurred, code))
            model.adjustments_fed[code] += amount if kind == "DEDUCTION" else -amount
        elif action == "hold":
            ledger.submit(hold_set(not ledger.fold.held, at=clock))
        elif action in ("settle", "fail", "fail_retryable", "cancel") and in_flight:
            payout_id = data.draw(st.sampled_from(in_flight), label="payout")
            code, amount = ledger.fold.in_flight[payout_id]
            money = Money.of(amount, code)
            outcome = {"settle": lambda: settled(payout_id, money, at=clock),
                       "fail": lambda: failed(payout_id, money, retryable=False, at=clock),
                       "fail_retryable": lambda: failed(payout_id, money, retryable=True, at=clock),
                       "cancel": lambda: cancelled(payout_id, at=clock)}[action]()
            ledger.submit(outcome)
        elif action == "fail_settled" and paid_out:
            payout_id = data.draw(st.sampled_from(paid_out), label="settled payout")
            code, amount = ledger.fold.paid_out[payout_id]
            ledger.submit(failed(payout_id, Money.of(amount, code), retryable=False, at=clock))

    for _ in range(data.draw(st.integers(1, 40), label="steps")):
        action = data.draw(st.sampled_from(ACTIONS), label="action")
        if action == "decide":
            clock += timedelta(minutes=data.draw(st.integers(6 * 60, 4 * 24 * 60), label="advance"))
            decided = ledger.decide(clock)
            if ledger.fold.held:
                held_decisions.extend(decided)
            # Sometimes another event reaches the sequencer between the decision and its closes.
            if decided and data.draw(st.integers(0, 2), label="interleave"):
                # an outcome of an earlier payout in a currency being closed is the case that matters most
                deciding = frozenset(e.payload["gross"].currency.code for e in decided)
                pending = any(code in deciding for code, _ in ledger.fold.in_flight.values())
                act(data.draw(st.sampled_from(OUTCOMES if pending else INTERLEAVED), label="interleaved"), deciding)
                check_history(ledger, model, held_decisions)
            for close in decided:
                assert ledger.submit(close) is not None
                check_history(ledger, model, held_decisions)
        else:
            act(action)
        check_history(ledger, model, held_decisions)

    # Drain: release any hold and close everything that remains; every line must then be closed.
    if ledger.fold.held:
        ledger.submit(hold_set(False, at=clock))
    ledger.close(max(clock, AFTER_WINDOW) + timedelta(days=30))
    check_history(ledger, model, held_decisions)
    assert ledger.fold.lines == []
    for code in CURRENCIES:
        closed = sum(minor(e.payload["gross"]) for e in ledger.closes() if e.payload["gross"].currency.code == code)
        paid = sum(amount for c, amount in model.payments.values() if c == code)
        refunded = sum(model.refunded[pid] for pid, (c, _) in model.payments.items() if c == code)
        assert closed == paid - refunded
        unpaid = ledger.fold.unpaid.get(code, 0)
        assert unpaid < 2_500  # anything payable was paid by the drain
