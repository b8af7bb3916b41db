"""The demo's payees and inputs, from a seed: several currencies, timezones, plans and methods,
refunds and adjustments, redelivered duplicates and malformed records.

Pure: no I/O. Destinations of Stripe payees are filled in later (the sandbox makes the accounts).
Amounts are integer minor units drawn per currency; occurred_at times fall inside the simulated days.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

# (role, currency, method, timezone): payee i takes profile i % len(PROFILES)
PROFILES = (
    ("barber", "USD", "stripe_standard", "America/New_York"),
    ("writer", "EUR", "bank_transfer", "Europe/Paris"),
    ("driver", "XOF", "mobile_money", "Africa/Dakar"),
    ("courier", "BHD", "manual", "Asia/Bahrain"),
    ("tutor", "GBP", "stripe_standard", "Europe/London"),
    ("designer", "USD", "stripe_standard", "America/Los_Angeles"),
    ("translator", "EUR", "bank_transfer", "Europe/Berlin"),
    ("rider", "XOF", "mobile_money", "Africa/Abidjan"),
)
# minor units of one payment, per currency (USD 15.00-120.00, XOF 2,000-40,000, BHD 5.000-45.000)
AMOUNTS = {"USD": (1_500, 12_000), "GBP": (1_500, 9_000), "EUR": (1_500, 11_000), "XOF": (2_000, 40_000),
           "BHD": (5_000, 45_000)}
# Payees whose payouts go wrong on purpose (the first payee of each method gets one; see sandboxes.py)
TROUBLES = {
    "stripe_standard": "closed_account",  # Stripe refuses the account; the operator fixes it and retries
    "bank_transfer": "bank_rejects",  # the bank answers AC04 (account closed); the operator holds the payee
    "mobile_money": "wallet_closed",  # the cash-in is accepted, then fails ACCOUNT_CLOSED
    "manual": "operator_fails",  # the operator cannot reach the payee and fails the payout
}
TYPO_IBAN = "DE89370400440532013001"  # one digit off: fails mod-97 before anything is sent


@dataclass(frozen=True)
class DemoPayee:
    payee_id: str
    role: str
    currency: str
    method: str
    timezone: str
    frequency: str
    day_of_week: int | None
    plan: str
    destination: str = ""
    trouble: str = ""


@dataclass
class DemoInputs:
    payees: list[DemoPayee]
    records: list[dict]  # valid payments, refunds, adjustments (each sent once ...)
    duplicates: list[dict]  # ... and these again: redeliveries of records above
    malformed: list[bytes]  # raw bytes for payments.incoming: each must be dead-lettered
    late: list[dict] = field(default_factory=list)  # payments sent after their period closed


def german_iban(account_number: int, bank_code: str = "37040044") -> str:
    """A valid DE IBAN (check digits by ISO 7064 mod 97-10)."""
    bban = f"{bank_code}{account_number:010d}"
    numeric = "".join(str(int(ch, 36)) for ch in bban + "DE00")
    return f"DE{98 - int(numeric) % 97:02d}{bban}"


def make_payees(run_id: str, count: int, rng: random.Random) -> list[DemoPayee]:
    payees: list[DemoPayee] = []
    troubled: set[str] = set()
    for index in range(count):
        role, currency, method, tz = PROFILES[index % len(PROFILES)]
        weekly = rng.random() < 0.4 and index >= len(PROFILES)  # the first of each profile is paid daily
        trouble = ""
        if method not in troubled and index >= len(PROFILES):  # the second round of profiles gets the trouble
            trouble, _ = TROUBLES[method], troubled.add(method)
            weekly = False  # paid daily, so its trouble shows even in a one-day demo
        destination = {"bank_transfer": german_iban(100_000 + index), "mobile_money": f"22177{index:07d}"}.get(method, "")
        payees.append(DemoPayee(
            payee_id=f"demo-{run_id}-{role}-{index:03d}", role=role, currency=currency, method=method, timezone=tz,
            frequency="WEEKLY" if weekly else "DAILY", day_of_week=rng.randrange(7) if weekly else None,
            plan=rng.choice(("flat-80", "tiered-services")), destination=destination, trouble=trouble))
    if count > len(PROFILES) + 1:  # one more bank payee whose IBAN has a typo
        last = payees[-1]
        payees[-1] = replace(last, method="bank_transfer", currency="EUR", destination=TYPO_IBAN,
                             timezone="Europe/Paris", frequency="DAILY", day_of_week=None, trouble="typo_iban")
    return payees


def make_inputs(run_id: str, payees: list[DemoPayee], payments: int, start: datetime, end: datetime,
                rng: random.Random) -> DemoInputs:
    """`payments` payments between start and end (some payees earn much more than others), plus
    refunds (4%), bonuses and deductions (1%), redeliveries (5%), late payments and malformed records."""
    span_s = (end - start).total_seconds()
    weights = [max(rng.paretovariate(1.5), 2.0 if payee.trouble else 0.0) for payee in payees]  # troubled: paid
    records: list[dict] = []
    paid: list[dict] = []
    for index in range(payments):
        payee = rng.choices(payees, weights)[0]
        low, high = AMOUNTS[payee.currency]
        occurred = start + timedelta(seconds=rng.uniform(0, span_s))
        record = {"type": "payment", "payment_id": f"{run_id}-pay-{index}", "payee_id": payee.payee_id,
                  "amount_minor": rng.randint(low, high), "currency": payee.currency, "services": rng.randint(1, 3),
                  "occurred_at": occurred.isoformat(), "source": "ledger-demo",
                  "metadata": {"role": payee.role}}
        records.append(record)
        paid.append(record)
    for index, payment in enumerate(rng.sample(paid, max(1, payments // 25))):
        occurred = min(datetime.fromisoformat(payment["occurred_at"]) + timedelta(hours=rng.uniform(1, 30)), end)
        amount = payment["amount_minor"] if rng.random() < 0.3 else payment["amount_minor"] // 2
        records.append({"type": "refund", "refund_id": f"{run_id}-ref-{index}", "payment_id": payment["payment_id"],
                        "payee_id": payment["payee_id"], "amount_minor": amount, "currency": payment["currency"],
                        "occurred_at": occurred.isoformat()})
    for index in range(max(2, payments // 100)):
        payee = rng.choice(payees)
        low, _ = AMOUNTS[payee.currency]
        bonus = index % 2 == 0
        records.append({"type": "adjustment", "adjustment_id": f"{run_id}-adj-{index}", "payee_id": payee.payee_id,
                        "kind": "BONUS" if bonus else "DEDUCTION", "name": "referral bonus" if bonus else "equipment",
                        "amount_minor": low, "currency": payee.currency,
                        "occurred_at": (start + timedelta(seconds=rng.uniform(0, span_s))).isoformat()})
    records.sort(key=lambda record: record["occurred_at"])
    duplicates = rng.sample(records, max(1, len(records) // 20))
    late_count = max(1, payments // 200)
    late = [dict(paid[i], payment_id=f"{run_id}-late-{n}", occurred_at=(start + timedelta(hours=1)).isoformat())
            for n, i in enumerate(rng.sample(range(len(paid)), late_count))]
    return DemoInputs(payees, records, duplicates, malformed_records(run_id, payees[0]), late)


def malformed_records(run_id: str, payee: DemoPayee) -> list[bytes]:
    """One of each kind of bad input a producer can send; the sequencer dead-letters each with its reason."""
    base = {"payment_id": f"{run_id}-bad", "payee_id": payee.payee_id, "amount_minor": 1_000,
            "currency": payee.currency, "occurred_at": "2026-01-01T00:00:00+00:00"}
    bad = [
        dict(base, payment_id=f"{run_id}-bad-float", amount_minor=10.5),  # a float amount
        dict(base, payment_id=f"{run_id}-bad-currency", currency="ZZZ"),  # not an ISO 4217 code
        dict(base, payment_id=f"{run_id}-bad-negative", amount_minor=-500),  # negative payment
        {key: value for key, value in dict(base, payment_id=f"{run_id}-bad-nopayee").items() if key != "payee_id"},
        dict(base, payment_id=f"{run_id}-bad-future", occurred_at="2999-01-01T00:00:00+00:00"),
        dict(base, payment_id=f"{run_id}-bad-exponent", currency="BHD", amount_minor="12.3456"),  # text, too precise
    ]
    encoded = [json.dumps(record).encode() for record in bad]
    return encoded + [f'{{"payment_id": "{run_id}-bad-truncated", "payee_id": '.encode()]
