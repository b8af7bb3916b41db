"""ledger.codec: every event type round-trips, the bytes are standard Avro, bad input is refused.

A second, independent Avro implementation (Apache's `avro` package) reads and writes the same
bytes, and the fingerprint is re-derived from the spec's CRC-64-AVRO algorithm, so these tests
do not merely check fastavro against itself.
"""

from __future__ import annotations

import dataclasses
import io
import json
import re
from datetime import timezone
from typing import Any

import avro.io
import avro.schema
import fastavro
import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from event_factory import (
    DEFAULT_CURRENCY,
    MONEY_FIELDS,
    make_event,
    make_payload,
    wire_record,
)
from ledger.codec import (
    CONFLUENT_MAGIC,
    SINGLE_OBJECT_MAGIC,
    ConfluentFraming,
    EventCodec,
    EventEncodingError,
    SchemaSet,
    UndecodableEvent,
)
from ledger.currencies import all_currencies
from ledger.events import EVENT_TYPES, Envelope, Event
from ledger.money import Money

SAMPLE_CODES = ("USD", "XOF", "BHD")  # exponents 2, 0 and 3
TYPES_WITH_MONEY = tuple(t for t in EVENT_TYPES if MONEY_FIELDS[t])
LONG = st.integers(min_value=-(2**63), max_value=2**63 - 1)
CODES = st.sampled_from(all_currencies()).map(lambda cur: cur.code)
IDS = st.text(min_size=1, max_size=40)
UTC_TIMES = st.datetimes(timezones=st.just(timezone.utc))


# --- helpers ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def codec() -> EventCodec:
    return EventCodec()


def crc64_avro(data: bytes) -> bytes:
    """CRC-64-AVRO exactly as the Avro specification writes it out, little-endian as on the wire."""
    empty = 0xC15D213AA4D7A795
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (empty & -(fp & 1))
        table.append(fp)
    fp = empty
    for byte in data:
        fp = (fp >> 8) ^ table[(fp ^ byte) & 0xFF]
    return fp.to_bytes(8, "little")


def craft(codec: EventCodec, event_type: str, record: dict[str, Any]) -> bytes:
    """Single-object bytes for a hand-made record under the current schema, bypassing encode()."""
    known = codec.schemas.current(event_type)
    body = io.BytesIO()
    fastavro.schemaless_writer(body, known.parsed, record)
    return SINGLE_OBJECT_MAGIC + known.fingerprint + body.getvalue()


def decode_error(codec: EventCodec, data: Any) -> UndecodableEvent:
    with pytest.raises(UndecodableEvent) as info:
        codec.decode(data)
    return info.value


def strip_logical_types(node: Any) -> Any:
    """The schema without logicalType attributes, which Parsing Canonical Form strips anyway."""
    if isinstance(node, dict):
        return {key: strip_logical_types(value) for key, value in node.items() if key != "logicalType"}
    if isinstance(node, list):
        return [strip_logical_types(item) for item in node]
    return node


def apache_schema(codec: EventCodec, event_type: str) -> avro.schema.Schema:
    return avro.schema.parse(json.dumps(codec.schemas.current(event_type).definition))


# --- round trips --------------------------------------------------------------------------


@pytest.mark.parametrize("full", [True, False], ids=["optionals-set", "optionals-null"])
@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_every_event_type_round_trips(codec: EventCodec, event_type: str, full: bool) -> None:
    event = make_event(event_type, full=full)
    decoded = codec.decode(codec.encode(event))
    assert decoded == event
    assert decoded.envelope == event.envelope
    assert dict(decoded.payload) == dict(event.payload)
    assert list(decoded.payload) == list(event.payload)  # schema field order, nothing extra


@pytest.mark.parametrize("code", SAMPLE_CODES)
@pytest.mark.parametrize("event_type", TYPES_WITH_MONEY)
def test_money_decodes_as_money_in_its_currency(codec: EventCodec, event_type: str, code: str) -> None:
    event = make_event(event_type, code)
    decoded = codec.decode(codec.encode(event))
    assert decoded == event
    for name in MONEY_FIELDS[event_type]:
        value = decoded.payload[name]
        assert isinstance(value, Money), name
        assert value == event.payload[name]
        assert value.currency.code == code
        assert value.currency.exponent == {"USD": 2, "XOF": 0, "BHD": 3}[code]


def test_deduction_lines_decode_with_money_inside(codec: EventCodec) -> None:
    event = make_event("PayoutRequested", "BHD")
    decoded = codec.decode(codec.encode(event))
    deductions = decoded.payload["deductions"]
    assert deductions == (  # payloads are frozen deeply: lists come back as tuples
        {"name": "booth_rent", "amount": Money.of(150_000, "BHD")},
        {"name": "supply_fee", "amount": Money.of(12_345, "BHD")},
    )
    assert all(isinstance(line["amount"], Money) for line in deductions)


@pytest.mark.parametrize("minimum_payout", [None, Money.of(5000, "XOF"), Money.of(2500, "USD")])
def test_optional_money_union_round_trips_null_and_set(codec: EventCodec, minimum_payout: Money | None) -> None:
    event = make_event("PayeeScheduleSet", minimum_payout=minimum_payout)
    decoded = codec.decode(codec.encode(event))
    assert decoded.payload["minimum_payout"] == minimum_payout
    assert decoded == event


def test_sequenced_envelope_round_trips(codec: EventCodec) -> None:
    event = make_event("PaymentCompleted", sequence=42, previous_hash="ab" * 32)
    decoded = codec.decode(codec.encode(event))
    assert decoded.envelope.sequence == 42
    assert decoded.envelope.previous_hash == "ab" * 32
    assert decoded.envelope.is_sequenced
    assert decoded == event


def test_decoded_timestamps_are_utc_to_the_microsecond(codec: EventCodec) -> None:
    event = make_event("PayoutRequested")
    decoded = codec.decode(codec.encode(event))
    for value in (decoded.envelope.occurred_at, decoded.envelope.recorded_at, decoded.payload["period_start"]):
        assert value.utcoffset() is not None and value.utcoffset().total_seconds() == 0
    assert decoded.envelope.occurred_at.microsecond == 123456


def test_decode_accepts_bytearray_and_memoryview(codec: EventCodec) -> None:
    event = make_event("PayoutSettled")
    data = codec.encode(event)
    assert codec.decode(bytearray(data)) == event
    assert codec.decode(memoryview(data)) == event


def test_encoding_is_deterministic(codec: EventCodec) -> None:
    event = make_event("PayoutRequested")
    assert codec.encode(event) == codec.encode(make_event("PayoutRequested")) == EventCodec().encode(event)


@st.composite
def payments(draw: st.DrawFn) -> Event:
    payload = make_payload("PaymentCompleted")
    payload.update(
        payment_id=draw(IDS),
        amount=Money.of(draw(LONG), draw(CODES)),
        services=draw(st.integers(min_value=-(2**31), max_value=2**31 - 1)),
        source=draw(st.text(max_size=20)),
        metadata=draw(st.dictionaries(st.text(max_size=10), st.text(max_size=20), max_size=5)),
    )
    event = make_event("PaymentCompleted", payee_id=draw(IDS), event_id=draw(IDS))
    envelope = dataclasses.replace(
        event.envelope,
        occurred_at=draw(UTC_TIMES),
        recorded_at=draw(UTC_TIMES),
        causation_id=draw(st.none() | IDS),
        sequence=draw(st.none() | st.integers(min_value=1, max_value=2**63 - 1)),
        previous_hash=draw(st.none() | st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)),
    )
    return Event(envelope, payload)


@st.composite
def payout_requests(draw: st.DrawFn) -> Event:
    code = draw(CODES)
    amounts = st.builds(Money.of, LONG, st.just(code))
    lines = st.lists(st.fixed_dictionaries({"name": IDS, "amount": amounts}), max_size=6)
    return make_event(
        "PayoutRequested",
        code,
        gross=draw(amounts),
        payee_share=draw(amounts),
        fee=draw(amounts),
        carry_over=draw(amounts),
        net=draw(amounts),
        deductions=draw(lines),
        payment_ids=draw(st.lists(IDS, max_size=5)),
        period_start=draw(UTC_TIMES),
        period_end=draw(UTC_TIMES),
        trigger=draw(st.sampled_from(["SCHEDULE", "MANUAL"])),
    )


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payments() | payout_requests())
def test_any_valid_event_round_trips(codec: EventCodec, event: Event) -> None:
    assert codec.decode(codec.encode(event)) == event


# --- the header and the schema version ------------------------------------------------------


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_header_is_magic_and_fingerprint_of_the_current_schema(codec: EventCodec, event_type: str) -> None:
    data = codec.encode(make_event(event_type))
    known = codec.schemas.current(event_type)
    assert data[:2] == b"\xc3\x01"
    assert data[2:10] == known.fingerprint
    # Re-derived from the spec's algorithm over the canonical form, little-endian.
    assert data[2:10] == crc64_avro(known.canonical.encode("utf-8"))
    assert known.name == event_type
    assert known.full_name == f"payout_ledger.events.{event_type}"


def test_every_event_type_has_its_own_fingerprint(codec: EventCodec) -> None:
    fingerprints = {codec.encode(make_event(t))[2:10] for t in EVENT_TYPES}
    assert len(fingerprints) == len(EVENT_TYPES)


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_decoded_schema_version_is_the_writer_schema_version(codec: EventCodec, event_type: str) -> None:
    known = codec.schemas.current(event_type)
    # Whatever version the caller's envelope claims, the encoder writes the schema's own.
    claimed = make_event(event_type)
    claimed = Event(dataclasses.replace(claimed.envelope, schema_version=7), claimed.payload)
    decoded = codec.decode(codec.encode(claimed))
    assert known.version == 1
    assert decoded.envelope.schema_version == known.version


# --- encoding errors ----------------------------------------------------------------------


def required_fields(codec: EventCodec, event_type: str) -> list[str]:
    fields = codec.schemas.current(event_type).definition["fields"]
    return [f["name"] for f in fields if "default" not in f and f["name"] != "envelope"]


@pytest.mark.parametrize(
    ("event_type", "field"),
    [(t, name) for t in EVENT_TYPES for name in required_fields(EventCodec(), t)],
)
def test_missing_required_field_is_refused_naming_it(codec: EventCodec, event_type: str, field: str) -> None:
    payload = make_payload(event_type)
    del payload[field]
    event = Event(make_event(event_type).envelope, payload)
    with pytest.raises(EventEncodingError, match=rf"{event_type}\.{field}\b"):
        codec.encode(event)


def test_amount_minor_as_a_string_is_refused_naming_amount_minor(codec: EventCodec) -> None:
    event = make_event("PaymentCompleted", amount={"amount_minor": "1050", "currency": "USD", "exponent": 2})
    with pytest.raises(EventEncodingError, match=r"PaymentCompleted\.amount must be a ledger\.money\.Money, got a mapping"):
        codec.encode(event)


@pytest.mark.parametrize(
    ("field", "value", "pattern"),
    [
        ("services", "3", r"PaymentCompleted\.services is '3' \(str\), expected an integer"),
        ("services", 3.0, r"PaymentCompleted\.services is 3\.0 \(float\), expected an integer"),
        ("services", 2**31, r"PaymentCompleted\.services is 2147483648, outside the Avro int range"),
        ("payment_id", None, r"PaymentCompleted\.payment_id is None \(NoneType\), expected a string"),
        ("metadata", {"chair": 4}, r"PaymentCompleted\.metadata"),
        ("amount", 1050, r"PaymentCompleted\.amount must be a ledger\.money\.Money, got int"),
    ],
)
def test_wrong_type_is_refused_naming_the_field(codec: EventCodec, field: str, value: Any, pattern: str) -> None:
    with pytest.raises(EventEncodingError, match=pattern):
        codec.encode(make_event("PaymentCompleted", **{field: value}))


def test_amount_beyond_a_long_is_refused(codec: EventCodec) -> None:
    event = make_event("PaymentCompleted", amount=Money.of(2**63, "USD"))
    with pytest.raises(EventEncodingError, match=r"PaymentCompleted\.amount\.amount_minor is 9223372036854775808, outside the Avro long range"):
        codec.encode(event)


def test_unknown_enum_symbol_is_refused_naming_the_field(codec: EventCodec) -> None:
    with pytest.raises(EventEncodingError, match=r"PayoutRequested\.trigger is 'AUTO', expected one of SCHEDULE, MANUAL"):
        codec.encode(make_event("PayoutRequested", trigger="AUTO"))


def test_deduction_line_without_amount_is_refused_naming_it(codec: EventCodec) -> None:
    with pytest.raises(EventEncodingError, match=r"PayoutRequested\.deductions\[0\]\.amount is missing"):
        codec.encode(make_event("PayoutRequested", deductions=[{"name": "booth_rent"}]))


def test_envelope_field_out_of_range_is_refused_naming_it(codec: EventCodec) -> None:
    event = make_event("PaymentCompleted", sequence=2**63, previous_hash="0" * 64)
    with pytest.raises(EventEncodingError, match=r"PaymentCompleted\.envelope\.sequence is 9223372036854775808, outside the Avro long range"):
        codec.encode(event)


def test_bad_money_field_error_names_which_field(codec: EventCodec) -> None:
    event = make_event("PayoutRequested", fee={"amount_minor": "125", "currency": "BHD", "exponent": 3})
    with pytest.raises(EventEncodingError, match=r"\bfee\b"):
        codec.encode(event)


def test_unknown_payload_field_is_refused(codec: EventCodec) -> None:
    event = make_event("PaymentCompleted", sourse="pos-terminal-7")  # misspelt `source`
    with pytest.raises(EventEncodingError, match="sourse"):
        codec.encode(event)


@pytest.mark.parametrize(
    "amount",
    [
        {"amount_minor": 1050, "currency": "USD", "exponent": 3},
        {"amount_minor": 1050, "currency": "usd", "exponent": 2},
    ],
    ids=["wrong-exponent", "lower-case-code"],
)
def test_encode_refuses_money_the_decoder_would_refuse(codec: EventCodec, amount: dict[str, Any]) -> None:
    # Money fields take Money values only, so the currency table always vets currency and exponent.
    with pytest.raises(EventEncodingError, match=r"PaymentCompleted\.amount must be a ledger\.money\.Money"):
        codec.encode(make_event("PaymentCompleted", amount=amount))


def test_encode_of_type_with_no_schema_in_the_set_is_refused(codec: EventCodec) -> None:
    shared = SchemaSet.from_directory()._shared  # noqa: SLF001 - reuse the real shared types
    empty = EventCodec(SchemaSet(shared))
    with pytest.raises(EventEncodingError, match="cannot encode PaymentCompleted: unknown event type"):
        empty.encode(make_event("PaymentCompleted"))


# --- undecodable input --------------------------------------------------------------------


def test_empty_bytes(codec: EventCodec) -> None:
    with pytest.raises(UndecodableEvent, match="not an Avro event: starts with nothing") as info:
        codec.decode(b"")
    assert info.value.raw == b""


@pytest.mark.parametrize("length", range(2, 10))
def test_short_single_object_header(codec: EventCodec, length: int) -> None:
    data = codec.encode(make_event("PaymentCompleted"))[:length]
    with pytest.raises(UndecodableEvent, match=rf"single-object header is {length} bytes, needs 10") as info:
        codec.decode(data)
    assert info.value.raw == data
    assert info.value.reason == f"single-object header is {length} bytes, needs 10"


def test_half_a_magic_is_not_avro(codec: EventCodec) -> None:
    with pytest.raises(UndecodableEvent, match="not an Avro event: starts with c3") as info:
        codec.decode(b"\xc3")
    assert info.value.raw == b"\xc3"


def test_unknown_fingerprint(codec: EventCodec) -> None:
    data = codec.encode(make_event("PaymentCompleted"))
    forged = data[:2] + bytes(8) + data[10:]
    with pytest.raises(UndecodableEvent, match="unknown writer schema fingerprint 0000000000000000") as info:
        codec.decode(forged)
    assert info.value.raw == forged


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_every_truncation_is_undecodable(codec: EventCodec, event_type: str) -> None:
    data = codec.encode(make_event(event_type))
    for cut in range(len(data)):
        truncated = data[:cut]
        if cut == 0:
            pattern = "starts with nothing"
        elif cut == 1:
            pattern = "not an Avro event: starts with c3"
        elif cut < 10:
            pattern = f"single-object header is {cut} bytes"
        else:
            pattern = rf"corrupt {event_type} body"
        with pytest.raises(UndecodableEvent, match=pattern) as info:
            codec.decode(truncated)
        assert info.value.raw == truncated


@pytest.mark.parametrize("extra", [b"\x00", b"\x02\x04", b"garbage after the event"])
def test_trailing_bytes(codec: EventCodec, extra: bytes) -> None:
    data = codec.encode(make_event("PayoutCancelled")) + extra
    with pytest.raises(UndecodableEvent, match=rf"^{len(extra)} trailing bytes after the event$") as info:
        codec.decode(data)
    assert info.value.raw == data


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
@example(b"")
@example(b"\x00")
@example(b"\xc3\x01")
@example(b"\x00\x00\x00\x00\x01")
def test_arbitrary_bytes_raise_only_undecodable_event(codec: EventCodec, data: bytes) -> None:
    with pytest.raises(UndecodableEvent, match=".") as info:
        codec.decode(data)
    assert info.value.raw == data


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(EVENT_TYPES), st.binary(max_size=300))
def test_known_header_with_arbitrary_body_decodes_or_raises_undecodable(
    codec: EventCodec, event_type: str, body: bytes
) -> None:
    data = SINGLE_OBJECT_MAGIC + codec.schemas.current(event_type).fingerprint + body
    try:
        event = codec.decode(data)
    except UndecodableEvent as exc:
        assert exc.raw == data
        assert exc.reason
    else:  # garbage that happens to be a complete, valid record is still a valid event
        assert isinstance(event, Event)
        assert event.event_type == event_type


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(EVENT_TYPES),
    st.lists(st.tuples(st.integers(min_value=0), st.integers(min_value=0, max_value=255)), min_size=1, max_size=4),
)
def test_corrupted_bodies_decode_or_raise_undecodable(
    codec: EventCodec, event_type: str, edits: list[tuple[int, int]]
) -> None:
    data = bytearray(codec.encode(make_event(event_type)))
    for position, value in edits:
        data[10 + position % (len(data) - 10)] = value
    try:
        event = codec.decode(bytes(data))
    except UndecodableEvent as exc:
        assert exc.raw == bytes(data)
    else:
        assert event.event_type == event_type
        assert isinstance(event.envelope, Envelope)


def test_json_text_is_not_avro(codec: EventCodec) -> None:
    data = json.dumps(wire_record(make_event("PaymentCompleted")), default=str).encode()
    with pytest.raises(UndecodableEvent, match=r"not an Avro event: starts with 7b22") as info:
        codec.decode(data)
    assert info.value.raw == data


def test_text_instead_of_bytes(codec: EventCodec) -> None:
    with pytest.raises(UndecodableEvent, match="expected bytes, got str"):
        codec.decode("\xc3\x01")  # type: ignore[arg-type]


def test_confluent_bytes_without_a_registry(codec: EventCodec) -> None:
    registry_codec = EventCodec(framing=ConfluentFraming(SchemaRegistryClient.new_client({"url": "mock://test"})))
    data = registry_codec.encode(make_event("PaymentCompleted"))
    assert data[:1] == CONFLUENT_MAGIC
    with pytest.raises(UndecodableEvent, match="Confluent-framed bytes but no schema registry is configured") as info:
        codec.decode(data)
    assert info.value.raw == data


def test_confluent_short_header_and_unknown_id() -> None:
    registry_codec = EventCodec(framing=ConfluentFraming(SchemaRegistryClient.new_client({"url": "mock://test"})))
    with pytest.raises(UndecodableEvent, match="Confluent header is 3 bytes, needs 5"):
        registry_codec.decode(b"\x00\x00\x01")
    unknown = b"\x00" + (999).to_bytes(4, "big") + b"\x02"
    with pytest.raises(UndecodableEvent, match="schema id lookup failed") as info:
        registry_codec.decode(unknown)
    assert info.value.raw == unknown


def test_confluent_framing_round_trips_and_registers_once() -> None:
    client = SchemaRegistryClient.new_client({"url": "mock://test"})
    writer = EventCodec(framing=ConfluentFraming(client))
    first = writer.encode(make_event("PaymentCompleted"))
    second = writer.encode(make_event("PaymentCompleted", event_id="evt-2"))
    other = writer.encode(make_event("PayoutSettled"))
    assert first[:1] == b"\x00" and first[1:5] == second[1:5]
    assert other[1:5] != first[1:5]
    assert sorted(client.get_subjects()) == ["payout_ledger.events.PaymentCompleted", "payout_ledger.events.PayoutSettled"]
    # A separate reader that shares the registry learns the writer schema from it.
    reader = EventCodec(framing=ConfluentFraming(client))
    assert reader.decode(first) == make_event("PaymentCompleted")
    assert reader.decode(other) == make_event("PayoutSettled")
    # Same Avro body as the single-object encoding: only the prefix differs.
    assert first[5:] == EventCodec().encode(make_event("PaymentCompleted"))[10:]


@pytest.mark.parametrize("exponent", [0, 3, -2])
def test_money_exponent_disagreeing_with_the_currency_table(codec: EventCodec, exponent: int) -> None:
    record = wire_record(make_event("PaymentCompleted", "USD"))
    assert codec.decode(craft(codec, "PaymentCompleted", record)) == make_event("PaymentCompleted", "USD")
    record["amount"]["exponent"] = exponent
    data = craft(codec, "PaymentCompleted", record)
    with pytest.raises(UndecodableEvent, match=rf"USD has exponent 2 in this ledger but the event says {exponent}$") as info:
        codec.decode(data)
    assert info.value.raw == data


def test_money_exponent_disagreeing_inside_a_deduction_line(codec: EventCodec) -> None:
    record = wire_record(make_event("PayoutRequested", "BHD"))
    record["deductions"][1]["amount"]["exponent"] = 2
    data = craft(codec, "PayoutRequested", record)
    with pytest.raises(UndecodableEvent, match="BHD has exponent 3 in this ledger but the event says 2") as info:
        codec.decode(data)
    assert info.value.raw == data


@pytest.mark.parametrize("code", ["usd", "ZZZ", "XAU", ""])
def test_money_in_an_unknown_currency(codec: EventCodec, code: str) -> None:
    record = wire_record(make_event("PayeeScheduleSet"))
    record["minimum_payout"]["currency"] = code
    data = craft(codec, "PayeeScheduleSet", record)
    with pytest.raises(UndecodableEvent, match=rf"amount has an unknown currency: unknown currency '{code}'") as info:
        codec.decode(data)
    assert info.value.raw == data


def test_envelope_event_type_disagreeing_with_the_schema(codec: EventCodec) -> None:
    record = wire_record(make_event("PaymentCompleted"))
    record["envelope"]["event_type"] = "PaymentRefunded"
    data = craft(codec, "PaymentCompleted", record)
    with pytest.raises(
        UndecodableEvent, match="envelope says 'PaymentRefunded' but the schema is 'PaymentCompleted'"
    ) as info:
        codec.decode(data)
    assert info.value.raw == data


@pytest.mark.parametrize(
    ("field", "value", "pattern"),
    [
        ("event_type", "Bogus", r"unknown event type 'Bogus'"),
        ("sequence", 0, r"sequence is 1-based, got 0"),
        ("payee_id", "", r"payee_id must be a non-empty string"),
        ("schema_version", 0, r"schema_version must be >= 1"),
    ],
)
def test_envelope_breaking_an_invariant_is_a_corrupt_body(
    codec: EventCodec, field: str, value: Any, pattern: str
) -> None:
    record = wire_record(make_event("PaymentCompleted"))
    record["envelope"][field] = value
    data = craft(codec, "PaymentCompleted", record)
    with pytest.raises(UndecodableEvent, match=rf"corrupt PaymentCompleted body: InvariantViolation: {pattern}") as info:
        codec.decode(data)
    assert info.value.raw == data


def test_raw_is_kept_when_no_reader_schema_exists(codec: EventCodec) -> None:
    from ledger.codec import DEFAULT_SCHEMA_DIR

    writers_only = SchemaSet(SchemaSet.from_directory()._shared)  # noqa: SLF001
    writers_only.add(json.loads((DEFAULT_SCHEMA_DIR / "PaymentCompleted.avsc").read_text()), current=False)
    data = codec.encode(make_event("PaymentCompleted"))
    with pytest.raises(UndecodableEvent, match="unknown event type 'PaymentCompleted'") as info:
        EventCodec(writers_only).decode(data)
    assert info.value.raw == data


# --- Apache avro cross-check: our bytes are standard Avro ---------------------------------


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_apache_avro_parses_the_writer_schema_and_agrees_on_the_fingerprint(
    codec: EventCodec, event_type: str
) -> None:
    data = codec.encode(make_event(event_type))
    known = codec.schemas.current(event_type)
    schema = apache_schema(codec, event_type)
    assert schema.fullname == f"payout_ledger.events.{event_type}"
    # Apache's Python library (1.12) keeps {"type": "long"} for a primitive that carries a
    # logicalType, against the spec's [PRIMITIVES]/[STRIP] rules, which fastavro and Java follow.
    # logicalType is not part of the canonical form, so stripping it first must not change the
    # fingerprint, and Apache then computes exactly our header bytes.
    stripped = avro.schema.parse(json.dumps(strip_logical_types(known.definition)))
    assert stripped.fingerprint("CRC-64-AVRO") == data[2:10]
    assert crc64_avro(stripped.canonical_form.encode()) == data[2:10]
    # Apache's canonical form differs from ours only by that quirk.
    collapsed = re.sub(r'\{"type":"(long|int)"\}', r'"\1"', schema.canonical_form)
    assert collapsed == known.canonical


@pytest.mark.parametrize("full", [True, False], ids=["optionals-set", "optionals-null"])
@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_apache_avro_reads_our_body(codec: EventCodec, event_type: str, full: bool) -> None:
    event = make_event(event_type, full=full)
    data = codec.encode(event)
    decoder = avro.io.BinaryDecoder(io.BytesIO(data[10:]))
    record = avro.io.DatumReader(apache_schema(codec, event_type)).read(decoder)
    assert decoder.reader.tell() == len(data) - 10  # consumed exactly the body
    assert record == wire_record(event)
    assert record["envelope"]["payee_id"] == "payee-1"
    assert record["envelope"]["event_type"] == event_type
    for name in MONEY_FIELDS[event_type]:
        value = event.payload[name]
        if value is None:
            assert record[name] is None
            continue
        assert record[name]["amount_minor"] == value.amount_minor
        assert record[name]["currency"] == DEFAULT_CURRENCY[event_type]
        assert record[name]["exponent"] == value.currency.exponent
    if event_type in ("PaymentCompleted", "PaymentRefunded"):
        assert record["payment_id"] == "pi_3PqK9L2eZvKYlo2C1x8aB7dE"


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_apache_avro_writes_the_same_body_and_we_read_it(codec: EventCodec, event_type: str) -> None:
    event = make_event(event_type)
    ours = codec.encode(event)
    buffer = io.BytesIO()
    avro.io.DatumWriter(apache_schema(codec, event_type)).write(wire_record(event), avro.io.BinaryEncoder(buffer))
    assert buffer.getvalue() == ours[10:]
    assert codec.decode(SINGLE_OBJECT_MAGIC + codec.schemas.current(event_type).fingerprint + buffer.getvalue()) == event
