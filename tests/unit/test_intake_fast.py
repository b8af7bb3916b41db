"""ledger/intake_fast.py never accepts what the rule set refuses, and builds exactly the event it builds."""

from __future__ import annotations

import copy
from datetime import datetime, timedelta, timezone
from types import MappingProxyType

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.codec import EventCodec
from ledger.events import Event
from ledger.intake import IntakeLimits, IntakeRejected, parse_record, validate_event
from ledger.intake_fast import fast_payment
from ledger.money import Money

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=timezone.utc)
CODEC = EventCodec()
LIMITS = IntakeLimits()
VALID_ID = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:@/+-]{0,20}", fullmatch=True)
ODD_TEXT = st.one_of(
    VALID_ID, VALID_ID, VALID_ID,  # mostly valid, so that the fast path accepts often and is compared
    st.text(alphabet="abcXYZ019._:@/+-", min_size=1, max_size=130),  # ids near the 128-character bound
    st.text(max_size=300),  # anything: spaces, newlines, symbols, lone surrogates
    st.sampled_from(["", "-lead", "a" * 128, "a" * 129, "x\n", "ok", "\ud800", "é" * 257]),
)
ODD_METADATA = st.one_of(st.dictionaries(st.text(max_size=8), st.text(max_size=20), max_size=3),
                         st.dictionaries(st.text(alphabet="abcdefgh", min_size=1, max_size=4), st.text(max_size=2),
                                         min_size=31, max_size=34),  # near the 32-key bound
                         st.dictionaries(st.text(max_size=40), st.text(max_size=300), max_size=40))
ODD_AMOUNT = st.one_of(st.integers(min_value=1, max_value=10**6), st.integers(min_value=-5, max_value=10**12),
                       st.sampled_from([1, 5_000_000, 5_000_001, 2**63 - 1]))
ODD_TIME = st.one_of(st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2026, 12, 1), timezones=st.just(timezone.utc)),
                     st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30),
                                  timezones=st.sampled_from([timezone.utc, timezone(timedelta(hours=-14)),
                                                             timezone(timedelta(hours=14))])),
                     st.sampled_from([NOW + timedelta(seconds=300), NOW + timedelta(seconds=301), NOW]))


def decoded_payment() -> Event:
    """A valid payment as the sequencer meets it: encoded by a client, decoded from Avro."""
    event = parse_record({"payment_id": "p-1", "payee_id": "barber-1", "amount_minor": 1234, "currency": "USD",
                          "occurred_at": "2026-12-05T10:00:00+00:00", "metadata": {"shop": "north"}}, LIMITS, NOW)
    return CODEC.decode(CODEC.encode(event))


def slow(event: Event, size: int) -> Event | None:
    try:
        return validate_event(event, LIMITS, NOW, size=size)
    except IntakeRejected:
        return None


def test_a_plain_payment_takes_the_fast_path_and_equals_the_rule_sets_event():
    event = decoded_payment()
    fast = fast_payment(event, LIMITS, NOW, 200)
    assert fast is not None and fast == slow(event, 200)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payee=ODD_TEXT, payment_id=ODD_TEXT, source=ODD_TEXT, metadata=ODD_METADATA, minor=ODD_AMOUNT,
       currency=st.sampled_from(["USD", "XOF", "BHD", "JPY", "EUR"]), occurred=ODD_TIME,
       services=st.one_of(st.integers(min_value=0, max_value=5), st.integers(min_value=-2, max_value=10_002),
                          st.just(True)),
       size=st.sampled_from([0, 500, 500, 65_536, 65_537, 2_000_000]), sequenced=st.sampled_from([False, False, True]))
def test_fast_path_never_accepts_what_the_rule_set_refuses(payee, payment_id, source, metadata, minor, currency,
                                                            occurred, services, size, sequenced):
    base = decoded_payment()
    envelope = copy.copy(base.envelope)  # fields set directly: odd values the envelope's own checks would stop
    for name, value in (("payee_id", payee), ("occurred_at", occurred), ("sequence", 3 if sequenced else None)):
        object.__setattr__(envelope, name, value)
    try:
        amount = Money.of(minor, currency)
    except Exception:  # noqa: BLE001 - an amount Money itself refuses never reaches the intake
        amount = Money.of(1, currency)
    event = Event.__new__(Event)
    object.__setattr__(event, "envelope", envelope)
    object.__setattr__(event, "payload", MappingProxyType({
        "payment_id": payment_id, "amount": amount, "services": services, "source": source,
        "metadata": MappingProxyType(metadata)}))
    fast = fast_payment(event, LIMITS, NOW, size)
    if fast is not None:
        ACCEPTED.append(1)
        assert fast == slow(event, size)


ACCEPTED: list[int] = []


def test_the_property_test_compared_many_accepted_events():
    """Runs after the property test (same module, in order): it must have exercised the accepting branch."""
    assert len(ACCEPTED) >= 40, len(ACCEPTED)
