"""ledger.ledger_index: dedupe, refund limits and chain heads, folded from the ledger's own events.

Events are built the way the sequencer gets them (parse_record on intake records) and stored with
the real EventCodec, so chains are checked over the bytes that would be written to ledger.events.
"""

from __future__ import annotations

import dataclasses
from collections import Counter, defaultdict
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from event_factory import make_event, with_payload
from ledger.codec import EventCodec
from ledger.events import Event
from ledger.guards import InvariantViolation
from ledger.hashchain import GENESIS_HASH, ChainLink, event_hash, verify_chain
from ledger.intake import IntakeLimits, deterministic_event_id, parse_record
from ledger.ledger_index import LedgerIndex, Verdict, content_digest, dedupe_key
from ledger.money import Money

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc)
LIMITS = IntakeLimits()


def pay(payment_id: str = "pay-1", payee: str = "payee-1", amount: int = 1000, code: str = "USD",
        occurred: str = "2026-11-22T10:00:00Z", now: datetime = NOW, **extra: Any) -> Event:
    record = {"payee_id": payee, "payment_id": payment_id, "amount_minor": amount, "currency": code,
              "occurred_at": occurred, **extra}
    return parse_record(record, LIMITS, now)


def ref(refund_id: str, payment_id: str = "pay-1", amount: int = 100, payee: str = "payee-1",
        code: str = "USD", now: datetime = NOW) -> Event:
    record = {"type": "refund", "refund_id": refund_id, "payment_id": payment_id, "payee_id": payee,
              "amount_minor": amount, "currency": code, "occurred_at": "2026-11-22T11:00:00Z"}
    return parse_record(record, LIMITS, now)


def adj(adjustment_id: str, amount: int = 15000, payee: str = "payee-1", kind: str = "DEDUCTION",
        now: datetime = NOW) -> Event:
    record = {"type": "adjustment", "adjustment_id": adjustment_id, "kind": kind, "name": "booth_rent",
              "payee_id": payee, "amount_minor": amount, "currency": "XOF", "occurred_at": "2026-11-22T11:30:00Z"}
    return parse_record(record, LIMITS, now)


def retried(event: Event, **envelope_changes: Any) -> Event:
    """The same submission arriving again: new recorded_at and correlation id unless told otherwise."""
    changes = {"recorded_at": event.envelope.recorded_at + timedelta(minutes=7), "correlation_id": "corr-retry",
               **envelope_changes}
    return Event(dataclasses.replace(event.envelope, **changes), event.payload)


@pytest.fixture(scope="module")
def codec() -> EventCodec:
    return EventCodec()


@pytest.fixture
def index(codec: EventCodec) -> LedgerIndex:
    return LedgerIndex(codec.encode)


def heads_of(index: LedgerIndex) -> dict[str, tuple[int, str]]:
    return {payee: (head.sequence, head.hash) for payee, head in index.chain.heads.items()}


# --- dedupe_key and content_digest -----------------------------------------------------------------


def test_dedupe_key_is_the_business_id_per_type() -> None:
    assert dedupe_key(pay("pay-1")) == "PaymentCompleted:pay-1"
    assert dedupe_key(ref("ref-1")) == "PaymentRefunded:ref-1"
    assert dedupe_key(adj("adj-1")) == "EarningsAdjusted:adj-1"


def test_dedupe_keys_of_different_types_do_not_collide() -> None:
    assert dedupe_key(pay("same-id")) != dedupe_key(ref("same-id", payment_id="same-id"))
    assert dedupe_key(ref("same-id", payment_id="same-id")) != dedupe_key(adj("same-id"))


def test_dedupe_key_of_other_events_is_their_event_id() -> None:
    settled = make_event("PayeeHoldSet", event_id="evt-42")
    assert dedupe_key(settled) == "event:evt-42"
    assert dedupe_key(make_event("PayeeHoldSet", event_id="evt-43")) != dedupe_key(settled)


@pytest.mark.parametrize("changes", [
    {"recorded_at": NOW + timedelta(days=3)},
    {"correlation_id": "another-correlation"},
    {"causation_id": "some-cause"},
    {"sequence": 7, "previous_hash": "ab" * 32},
], ids=["recorded_at", "correlation_id", "causation_id", "sequence"])
def test_content_digest_ignores_delivery_details(changes: dict[str, Any]) -> None:
    event = pay()
    other = Event(dataclasses.replace(event.envelope, **changes), event.payload)
    assert content_digest(other) == content_digest(event)


@pytest.mark.parametrize("other", [
    lambda e: with_payload(e, amount=Money.of(1001, "USD")),
    lambda e: with_payload(e, amount=Money.of(1000, "EUR")),
    lambda e: Event(dataclasses.replace(e.envelope, payee_id="payee-2"), e.payload),
    lambda e: Event(dataclasses.replace(e.envelope, occurred_at=e.envelope.occurred_at + timedelta(microseconds=1)),
                    e.payload),
    lambda e: with_payload(e, metadata={"chair": "5"}),
    lambda e: with_payload(e, services=2),
    lambda e: with_payload(e, payment_id="pay-2"),
], ids=["amount", "currency", "payee", "occurred_at", "metadata", "services", "payment_id"])
def test_content_digest_changes_with_content(other: Any) -> None:
    event = pay(metadata={"chair": "4"})
    assert content_digest(other(event)) != content_digest(event)


def test_content_digest_is_the_same_for_the_same_instant_in_another_offset() -> None:
    assert content_digest(pay(occurred="2026-11-22T12:00:00+02:00")) == content_digest(pay())


def test_content_digest_survives_the_codec(codec: EventCodec) -> None:
    for event in (pay(metadata={"a": "b", "c": "d"}), ref("ref-1"), adj("adj-1")):
        assert content_digest(codec.decode(codec.encode(event))) == content_digest(event)


# --- verdicts -----------------------------------------------------------------------------------------


def test_first_payment_is_accepted(index: LedgerIndex) -> None:
    assert index.verdict(pay()) == Verdict("accept")
    assert len(index) == 0  # a verdict alone records nothing


def test_same_payment_again_is_a_duplicate_of_the_recorded_event(index: LedgerIndex) -> None:
    first, _ = index.append(pay())
    again = retried(pay(now=NOW + timedelta(hours=2)))
    verdict = index.verdict(again)
    assert verdict.status == "duplicate"
    assert verdict.existing_event_id == first.envelope.event_id == deterministic_event_id("payment", "pay-1")
    assert "PaymentCompleted:pay-1" in verdict.reason


def test_same_payment_in_another_offset_is_a_duplicate(index: LedgerIndex) -> None:
    index.append(pay(occurred="2026-11-22T10:00:00Z"))
    assert index.verdict(pay(occurred="2026-11-22T05:00:00-05:00")).status == "duplicate"


@pytest.mark.parametrize("conflict", [
    lambda: pay(amount=1001),
    lambda: pay(code="EUR"),
    lambda: pay(payee="payee-2"),
    lambda: pay(occurred="2026-11-22T10:00:01Z"),
    lambda: pay(metadata={"note": "changed"}),
], ids=["amount", "currency", "payee", "occurred_at", "metadata"])
def test_same_payment_id_with_different_content_is_rejected(index: LedgerIndex, conflict: Any) -> None:
    first, _ = index.append(pay())
    verdict = index.verdict(conflict())
    assert verdict.status == "reject"
    assert "different content" in verdict.reason
    assert verdict.existing_event_id == first.envelope.event_id


def test_refund_of_unknown_payment_is_rejected(index: LedgerIndex) -> None:
    index.append(pay("pay-1"))
    verdict = index.verdict(ref("ref-1", payment_id="pay-404"))
    assert verdict.status == "reject"
    assert "unknown payment 'pay-404'" in verdict.reason


def test_refund_by_another_payee_is_rejected(index: LedgerIndex) -> None:
    index.append(pay("pay-1", payee="payee-1"))
    verdict = index.verdict(ref("ref-1", payee="payee-2"))
    assert verdict.status == "reject"
    assert "another payee" in verdict.reason and "payee-2" in verdict.reason


def test_refund_in_another_currency_is_rejected(index: LedgerIndex) -> None:
    index.append(pay("pay-1", code="USD"))
    verdict = index.verdict(ref("ref-1", code="EUR"))
    assert verdict.status == "reject"
    assert "EUR" in verdict.reason and "USD" in verdict.reason


def test_partial_refunds_up_to_the_full_amount_then_not_one_unit_more(index: LedgerIndex) -> None:
    index.append(pay("pay-1", amount=1000))
    for number, amount in enumerate([300, 600, 99], start=1):
        refund = ref(f"ref-{number}", amount=amount)
        assert index.verdict(refund) == Verdict("accept")
        index.append(refund)
    last = ref("ref-4", amount=1)
    assert index.verdict(last) == Verdict("accept")  # 999 refunded so far: 1 remains
    index.append(last)
    over = index.verdict(ref("ref-5", amount=1))
    assert over.status == "reject"
    assert "larger than" in over.reason and "USD 0.00" in over.reason


def test_refund_larger_than_what_remains_is_rejected(index: LedgerIndex) -> None:
    index.append(pay("pay-1", amount=1000))
    index.append(ref("ref-1", amount=300))
    verdict = index.verdict(ref("ref-2", amount=701))
    assert verdict.status == "reject"
    assert "larger than the USD 7.00" in verdict.reason
    assert index.verdict(ref("ref-2", amount=700)) == Verdict("accept")


def test_full_refund_at_once_is_accepted_and_a_larger_one_is_not(index: LedgerIndex) -> None:
    index.append(pay("pay-1", amount=1000))
    assert index.verdict(ref("ref-1", amount=1001)).status == "reject"
    assert index.verdict(ref("ref-1", amount=1000)) == Verdict("accept")


def test_refunds_are_limited_per_payment(index: LedgerIndex) -> None:
    index.append(pay("pay-1", amount=1000))
    index.append(pay("pay-2", amount=500))
    index.append(ref("ref-1", payment_id="pay-1", amount=1000))
    assert index.verdict(ref("ref-2", payment_id="pay-2", amount=500)) == Verdict("accept")
    assert index.verdict(ref("ref-2", payment_id="pay-1", amount=1)).status == "reject"


def test_refund_sent_again_is_a_duplicate_even_after_a_full_refund(index: LedgerIndex) -> None:
    index.append(pay("pay-1", amount=1000))
    first, _ = index.append(ref("ref-1", amount=1000))
    verdict = index.verdict(retried(ref("ref-1", amount=1000)))
    assert verdict.status == "duplicate"
    assert verdict.existing_event_id == first.envelope.event_id
    changed = index.verdict(ref("ref-1", amount=999))
    assert changed.status == "reject" and "different content" in changed.reason


def test_adjustments_are_deduplicated_by_adjustment_id(index: LedgerIndex) -> None:
    first, _ = index.append(adj("adj-1"))
    duplicate = index.verdict(retried(adj("adj-1")))
    assert duplicate == Verdict("duplicate", "EarningsAdjusted:adj-1 is already recorded", first.envelope.event_id)
    assert index.verdict(adj("adj-1", amount=15001)).status == "reject"
    assert index.verdict(adj("adj-1", kind="BONUS")).status == "reject"
    assert index.verdict(adj("adj-2")) == Verdict("accept")  # same content, another id: a new adjustment


def test_other_events_are_deduplicated_by_event_id(index: LedgerIndex) -> None:
    settled = make_event("PayeeHoldSet", event_id="evt-settled-1")
    assert index.verdict(settled) == Verdict("accept")
    index.append(settled)
    assert index.verdict(settled).status == "duplicate"
    assert index.verdict(make_event("PayeeHoldSet", event_id="evt-settled-2")) == Verdict("accept")


# --- append -------------------------------------------------------------------------------------------


def test_append_sequences_per_payee_and_chains_hashes(index: LedgerIndex, codec: EventCodec) -> None:
    stored: list[tuple[Event, bytes]] = []
    for event in [pay("pay-1"), pay("pay-2", payee="payee-2"), pay("pay-3"), ref("ref-1", "pay-1"),
                  adj("adj-1", payee="payee-2"), pay("pay-4")]:
        stored.append(index.append(event))
    by_payee: dict[str, list[tuple[Event, bytes]]] = defaultdict(list)
    for event, encoded in stored:
        assert codec.decode(encoded) == event  # the bytes are those of the sequenced event
        by_payee[event.payee_id].append((event, encoded))
    assert [e.envelope.sequence for e, _ in by_payee["payee-1"]] == [1, 2, 3, 4]
    assert [e.envelope.sequence for e, _ in by_payee["payee-2"]] == [1, 2]
    for chain in by_payee.values():
        previous = GENESIS_HASH
        for event, encoded in chain:
            assert event.envelope.previous_hash == previous
            previous = event_hash(encoded)
        assert index.chain.heads[chain[-1][0].payee_id].hash == previous
    assert len(index) == 6


def test_append_keeps_the_submitted_event_apart_from_its_sequence(index: LedgerIndex) -> None:
    event = pay()
    sequenced, _ = index.append(event)
    assert event.envelope.sequence is None  # the input is not mutated
    assert dataclasses.replace(sequenced.envelope, sequence=None, previous_hash=None) == event.envelope
    assert sequenced.payload == event.payload


@pytest.mark.parametrize("again", [
    lambda: pay(),  # duplicate
    lambda: pay(amount=5),  # conflicting content
], ids=["duplicate", "conflict"])
def test_append_of_a_non_accepted_event_raises_and_changes_nothing(index: LedgerIndex, again: Any) -> None:
    index.append(pay())
    before = (heads_of(index), len(index))
    with pytest.raises(InvariantViolation, match=r"append of a non-accepted event"):
        index.append(again())
    assert (heads_of(index), len(index)) == before


def test_append_of_a_refund_over_the_limit_raises(index: LedgerIndex) -> None:
    index.append(pay(amount=1000))
    with pytest.raises(InvariantViolation, match=r"larger than"):
        index.append(ref("ref-1", amount=1001))
    assert index.chain.heads["payee-1"].sequence == 1


def test_append_of_an_already_sequenced_event_raises(index: LedgerIndex) -> None:
    sequenced = make_event("PayeeHoldSet", sequence=1, previous_hash=GENESIS_HASH)
    with pytest.raises(InvariantViolation, match=r"already sequenced"):
        index.append(sequenced)
    assert len(index) == 0
    assert all(head.sequence == 0 for head in index.chain.heads.values())


# --- observe: rebuilding from the log -------------------------------------------------------------------


def _history(index: LedgerIndex) -> list[tuple[Event, bytes]]:
    events = [
        pay("pay-1", amount=1000),
        pay("pay-2", payee="payee-2", amount=2000, code="EUR"),
        ref("ref-1", "pay-1", amount=600),
        adj("adj-1", payee="payee-2"),
        pay("pay-3", amount=50),
        ref("ref-2", "pay-2", payee="payee-2", amount=2000, code="EUR"),
        make_event("PayeeHoldSet", event_id="evt-settled-1", payee_id="payee-3"),
    ]
    return [index.append(event) for event in events]


CANDIDATES = [
    pay("pay-1", amount=1000),  # duplicate
    pay("pay-1", amount=999),  # conflict
    pay("pay-9"),  # new
    ref("ref-1", "pay-1", amount=600),  # duplicate refund
    ref("ref-3", "pay-1", amount=400),  # what remains
    ref("ref-3", "pay-1", amount=401),  # more than remains
    ref("ref-4", "pay-2", payee="payee-2", amount=1, code="EUR"),  # fully refunded already
    ref("ref-5", "pay-3", payee="payee-2", amount=1),  # another payee's payment
    adj("adj-1", payee="payee-2"),  # duplicate adjustment
    adj("adj-2"),  # new adjustment
    make_event("PayeeHoldSet", event_id="evt-settled-1", payee_id="payee-3"),  # duplicate by event id
]


def _verdicts(index: LedgerIndex) -> list[Verdict]:
    return [index.verdict(candidate) for candidate in CANDIDATES]


def test_rebuilt_index_gives_the_same_verdicts_and_heads(codec: EventCodec) -> None:
    live = LedgerIndex(codec.encode)
    stored = _history(live)
    rebuilt = LedgerIndex(codec.encode)
    for event, encoded in stored:
        rebuilt.observe(event, encoded)
    assert heads_of(rebuilt) == heads_of(live)
    assert len(rebuilt) == len(live) == len(stored)
    expected = _verdicts(live)
    assert [v.status for v in expected] == ["duplicate", "reject", "accept", "duplicate", "accept", "reject",
                                            "reject", "reject", "duplicate", "accept", "duplicate"]
    assert _verdicts(rebuilt) == expected


def test_index_rebuilt_from_decoded_bytes_matches_the_live_one(codec: EventCodec) -> None:
    live = LedgerIndex(codec.encode)
    stored = _history(live)
    rebuilt = LedgerIndex(codec.encode)
    for _, encoded in stored:
        rebuilt.observe(codec.decode(encoded), encoded)
    assert heads_of(rebuilt) == heads_of(live)
    assert _verdicts(rebuilt) == _verdicts(live)


def test_rebuild_does_not_depend_on_how_payees_interleave(codec: EventCodec) -> None:
    live = LedgerIndex(codec.encode)
    stored = _history(live)
    by_payee = sorted(stored, key=lambda pair: pair[0].payee_id, reverse=True)  # stable: chain order kept
    assert by_payee != stored
    rebuilt = LedgerIndex(codec.encode)
    for event, encoded in by_payee:
        rebuilt.observe(event, encoded)
    assert heads_of(rebuilt) == heads_of(live)
    assert _verdicts(rebuilt) == _verdicts(live)


def test_rebuilt_index_continues_the_chains(codec: EventCodec) -> None:
    live = LedgerIndex(codec.encode)
    stored = _history(live)
    rebuilt = LedgerIndex(codec.encode)
    for event, encoded in stored:
        rebuilt.observe(event, encoded)
    next_live, bytes_live = live.append(pay("pay-9"))
    next_rebuilt, bytes_rebuilt = rebuilt.append(pay("pay-9"))
    assert next_rebuilt == next_live and bytes_rebuilt == bytes_live
    assert next_rebuilt.envelope.sequence == 4  # pay-1, ref-1, pay-3 came before on payee-1


def _payee_one(codec: EventCodec) -> list[tuple[Event, bytes]]:
    return [pair for pair in _history(LedgerIndex(codec.encode)) if pair[0].payee_id == "payee-1"]


def test_observe_out_of_order_raises_naming_the_payee(codec: EventCodec) -> None:
    first, second, _ = _payee_one(codec)
    index = LedgerIndex(codec.encode)
    with pytest.raises(InvariantViolation, match=r"chain of payee payee-1 is broken at sequence 2"):
        index.observe(*second)
    index = LedgerIndex(codec.encode)
    index.observe(*first)
    index.observe(*second)
    with pytest.raises(InvariantViolation, match=r"payee payee-1"):
        index.observe(*second)  # the same event twice


def test_observe_with_a_gap_raises_naming_the_payee(codec: EventCodec) -> None:
    first, _, third = _payee_one(codec)
    index = LedgerIndex(codec.encode)
    index.observe(*first)
    with pytest.raises(InvariantViolation, match=r"payee payee-1 is broken at sequence 3"):
        index.observe(*third)


def test_observe_of_tampered_bytes_breaks_at_the_next_event(codec: EventCodec) -> None:
    first, second, _ = _payee_one(codec)
    forged = with_payload(first[0], amount=Money.of(100_000, "USD"))
    index = LedgerIndex(codec.encode)
    index.observe(forged, codec.encode(forged))  # cannot be caught yet: nothing names its hash
    with pytest.raises(InvariantViolation, match=r"payee payee-1 is broken at sequence 2"):
        index.observe(*second)


def test_observe_of_a_wrong_previous_hash_raises(codec: EventCodec) -> None:
    first, second, _ = _payee_one(codec)
    event, _ = second
    bad = Event(dataclasses.replace(event.envelope, previous_hash="f" * 64), event.payload)
    index = LedgerIndex(codec.encode)
    index.observe(*first)
    with pytest.raises(InvariantViolation, match=r"payee payee-1 is broken at sequence 2"):
        index.observe(bad, codec.encode(bad))


def test_observe_of_an_unsequenced_event_raises(codec: EventCodec) -> None:
    event = pay()
    with pytest.raises(InvariantViolation, match=r"payee payee-1"):
        LedgerIndex(codec.encode).observe(event, codec.encode(event))


# --- the key property: any stream of retries sequences each payment once, gaplessly --------------------

CODES_AND_MAX = {"USD": 5_000_000, "XOF": 50_000, "BHD": 50_000_000}
OFFSETS = st.integers(min_value=-14 * 60, max_value=14 * 60).map(lambda m: timezone(timedelta(minutes=m)))


@st.composite
def retry_streams(draw: st.DrawFn) -> tuple[list[dict[str, Any]], list[int], list[timezone]]:
    payees = draw(st.lists(st.from_regex(r"payee-[a-z0-9]{1,6}", fullmatch=True), min_size=1, max_size=4,
                           unique=True))
    ids = draw(st.lists(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:@/+-]{0,20}", fullmatch=True), min_size=1,
                        max_size=12, unique=True))
    payments = []
    for payment_id in ids:
        code = draw(st.sampled_from(sorted(CODES_AND_MAX)))
        payments.append({
            "payee_id": draw(st.sampled_from(payees)),
            "payment_id": payment_id,
            "amount_minor": draw(st.integers(min_value=1, max_value=CODES_AND_MAX[code])),
            "currency": code,
            "occurred_at": draw(st.datetimes(min_value=datetime(2024, 1, 1), max_value=datetime(2026, 11, 22),
                                             timezones=st.just(timezone.utc))),
            "metadata": draw(st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2)),
        })
    duplicates = draw(st.lists(st.integers(min_value=0, max_value=len(ids) - 1), max_size=2 * len(ids)))
    stream = draw(st.permutations(list(range(len(ids))) + duplicates))
    offsets = [draw(OFFSETS) for _ in stream]  # each retry may spell the same instant differently
    return payments, stream, offsets


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(retry_streams())
def test_stream_with_retries_appends_each_payment_once_without_gaps(
    codec: EventCodec, case: tuple[list[dict[str, Any]], list[int], list[timezone]]
) -> None:
    payments, stream, offsets = case
    index = LedgerIndex(codec.encode)
    appended: list[tuple[Event, bytes]] = []
    duplicates = 0
    for position, (which, offset) in enumerate(zip(stream, offsets)):
        record = dict(payments[which])
        record["occurred_at"] = record["occurred_at"].astimezone(offset).isoformat()
        event = parse_record(record, LIMITS, NOW + timedelta(seconds=position))
        event = Event(dataclasses.replace(event.envelope, correlation_id=f"attempt-{position}"), event.payload)
        verdict = index.verdict(event)
        if verdict.status == "accept":
            appended.append(index.append(event))
        elif verdict.status == "duplicate":
            duplicates += 1
            assert verdict.existing_event_id == deterministic_event_id("payment", record["payment_id"])
        else:
            pytest.fail(f"retry of {record['payment_id']} rejected: {verdict.reason}")

    ids = [event.payload["payment_id"] for event, _ in appended]
    assert Counter(ids) == Counter(p["payment_id"] for p in payments)  # each exactly once
    assert duplicates == len(stream) - len(payments)
    assert len(index) == len(payments)

    sequences: dict[str, list[int]] = defaultdict(list)
    for event, _ in appended:
        sequences[event.payee_id].append(event.envelope.sequence)
    expected_counts = Counter(p["payee_id"] for p in payments)
    assert {payee: seqs for payee, seqs in sequences.items()} == {
        payee: list(range(1, count + 1)) for payee, count in expected_counts.items()
    }

    links = []
    for _, encoded in appended:
        stored = codec.decode(encoded)
        links.append(ChainLink(stored.payee_id, stored.envelope.sequence, stored.envelope.previous_hash, encoded))
    heads, breaks = verify_chain(links)
    assert breaks == []
    assert heads == {payee: head.hash for payee, head in index.chain.heads.items()}

    rebuilt = LedgerIndex(codec.encode)
    for event, encoded in appended:
        rebuilt.observe(codec.decode(encoded), encoded)
    assert heads_of(rebuilt) == heads_of(index)
    for payment in payments:
        record = {**payment, "occurred_at": payment["occurred_at"].isoformat()}
        assert rebuilt.verdict(parse_record(record, LIMITS, NOW)).status == "duplicate"
