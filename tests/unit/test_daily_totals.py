"""Daily totals per partition of ledger.events: a fold of some partitions writes exactly the rows of those
partitions, a fold of all of them writes the same rows, and their sum is the total over every payee."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta

from ledger.codec import EventCodec
from ledger.events import Event, new_envelope
from ledger.money import Money
from ledger.sequencing import PayeeChains
from projections.read_model import DAILY_FIELDS, ReadModel

DAY = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
PARTITION = {"payee-a": 0, "payee-b": 1, "payee-c": 0, "payee-d": 2}  # where each payee's chain lives


def _events() -> list[tuple[Event, bytes, int]]:
    """Payments, refunds and adjustments of four payees in three partitions, over two days and two currencies."""
    chains = PayeeChains(EventCodec().encode)
    made = []

    def add(kind: str, payee: str, at: datetime, payload: dict) -> None:
        envelope = new_envelope(kind, payee_id=payee, occurred_at=at, recorded_at=at)
        event, encoded = chains.append(Event(envelope, payload))
        made.append((event, encoded, PARTITION[payee]))

    for n, payee in enumerate(["payee-a", "payee-b", "payee-c", "payee-d", "payee-a", "payee-b"]):
        currency = "USD" if n % 3 else "XOF"
        add("PaymentCompleted", payee, DAY + timedelta(hours=n * 5),
            {"payment_id": f"pay-{n}", "amount": Money.of(1_000 + n, currency), "services": 1, "source": "test",
             "metadata": {}})
    add("PaymentRefunded", "payee-b", DAY + timedelta(hours=1),
        {"refund_id": "ref-1", "payment_id": "pay-1", "amount": Money.of(300, "USD"), "reason": "", "metadata": {}})
    add("EarningsAdjusted", "payee-c", DAY + timedelta(days=1),
        {"adjustment_id": "adj-1", "kind": "BONUS", "name": "referral", "amount": Money.of(500, "USD"),
         "reason": "", "actor": "ops", "metadata": {}})
    add("EarningsAdjusted", "payee-a", DAY + timedelta(days=1),
        {"adjustment_id": "adj-2", "kind": "DEDUCTION", "name": "rent", "amount": Money.of(200, "USD"),
         "reason": "", "actor": "ops", "metadata": {}})
    return made


def _fold(events: list[tuple[Event, bytes, int]]) -> ReadModel:
    model = ReadModel()
    for event, encoded, partition in events:
        model.apply(event, encoded, partition=partition)
    return model


def test_each_partition_folds_its_own_rows_and_all_partitions_fold_the_same_rows():
    events = _events()
    whole = _fold(events).all_rows()["daily_totals_by_partition"]
    parts = {partition: _fold([e for e in events if e[2] == partition]).all_rows()["daily_totals_by_partition"]
             for partition in sorted(set(PARTITION.values()))}
    for partition, rows in parts.items():
        assert rows and {key[2] for key in rows} == {partition}
        assert all(row["partition"] == partition for row in rows.values())
    merged = {key: row for rows in parts.values() for key, row in rows.items()}
    assert merged == whole  # disjoint keys: one fold per partition writes what one fold of all of them writes


def test_the_partitions_add_up_to_the_totals_over_every_payee():
    events = _events()
    summed: dict[tuple, dict[str, int]] = defaultdict(lambda: dict.fromkeys(DAILY_FIELDS, 0))
    for (day, currency, _), row in _fold(events).all_rows()["daily_totals_by_partition"].items():
        for field in DAILY_FIELDS:
            summed[(day, currency)][field] += row[field]
    # the same events all in one partition: the totals over every payee, as one row per day and currency
    alone = {(day, currency): {field: row[field] for field in DAILY_FIELDS} for (day, currency, partition), row
             in _fold([(e, raw, 0) for e, raw, _ in events]).all_rows()["daily_totals_by_partition"].items()}
    assert dict(summed) == alone
    usd_first_day = alone[(DAY.date(), "USD")]
    assert (usd_first_day["payments"], usd_first_day["refunds_minor"]) == (2, 300)  # payee-b and payee-c
    assert alone[(DAY.date() + timedelta(days=1), "USD")]["adjustments_minor"] == 500 - 200


def test_a_batch_marks_only_the_rows_of_the_partitions_it_read():
    events = _events()
    model = ReadModel(retain_rows=False)
    for event, encoded, partition in events[:3]:  # payee-a (0), payee-b (1), payee-c (0)
        model.apply(event, encoded, partition=partition)
    model.take_changes()
    event, encoded, partition = events[3]  # payee-d, partition 2
    model.apply(event, encoded, partition=partition)
    changed = model.take_changes()["daily_totals_by_partition"]
    assert [(row["currency"], row["partition"], row["payments"]) for row in changed] == [("XOF", 2, 1)]
