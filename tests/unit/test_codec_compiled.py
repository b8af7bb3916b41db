"""The codec's compiled fast paths (ledger/codec_compiled.py) agree with the generic walkers they replace.

The compiled check may only say True where the full check (_check_payload) passes: a value it passes
is written without the full check. Its False only costs time, so here every value the full check
refuses must be refused by the compiled one too, over valid events and over values broken field by field.
The compiled decode must give what the generic _from_wire gives, frozen the way Event freezes payloads.
"""

from __future__ import annotations

import io
import uuid
from datetime import datetime
from types import MappingProxyType
from typing import Any

import fastavro
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.codec import EventCodec, EventEncodingError, _check_payload, _from_wire, _to_wire
from ledger.events import EVENT_TYPES, Event, _frozen
from ledger.intake import EVENT_ID_NAMESPACE, deterministic_event_id
from ledger.money import Money
from tests.unit.event_factory import make_event

CODEC = EventCodec()
ENVELOPE_FIELDS = ("event_id", "event_type", "schema_version", "occurred_at", "recorded_at", "payee_id",
                   "correlation_id", "causation_id", "sequence", "previous_hash")


def checked_value(event: Event) -> dict[str, Any]:
    envelope = {name: getattr(event.envelope, name) for name in ENVELOPE_FIELDS}
    return {"envelope": envelope, **event.payload}


def full_check_passes(value: Any, event_type: str) -> bool:
    try:
        _check_payload(value, CODEC.schemas.current(event_type).definition, event_type, {})
    except EventEncodingError:
        return False
    return True


ODD_VALUES = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70), st.floats(),
                       st.text(max_size=5), st.binary(max_size=3), st.lists(st.integers(), max_size=2),
                       st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2),
                       st.just(Money.of(5, "USD")), st.just(datetime(2025, 1, 1)))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(event_type=st.sampled_from(EVENT_TYPES), full=st.booleans(), data=st.data())
def test_the_compiled_check_never_passes_what_the_full_check_refuses(event_type: str, full: bool, data) -> None:  # noqa: ANN001
    value = checked_value(make_event(event_type, full=full))
    known = CODEC.schemas.current(event_type)
    assert known.check(value) and full_check_passes(value, event_type)  # a valid event passes both
    # break one field (of the payload or of the envelope) with an arbitrary value, or drop it, or add one
    where = data.draw(st.sampled_from(["payload", "envelope"]))
    target = value if where == "payload" else value["envelope"]
    names = [name for name in target if name != "envelope"]
    action = data.draw(st.sampled_from(["replace", "drop", "add"]))
    if action == "replace":
        target[data.draw(st.sampled_from(names))] = data.draw(ODD_VALUES)
    elif action == "drop":
        del target[data.draw(st.sampled_from(names))]
    else:
        target[data.draw(st.text(min_size=1, max_size=8))] = data.draw(ODD_VALUES)
    if known.check(value):
        assert full_check_passes(value, event_type), "the compiled check passed a value the full check refuses"


@pytest.mark.parametrize("event_type", EVENT_TYPES)
@pytest.mark.parametrize("full", [False, True])
def test_the_compiled_decode_gives_the_generic_result_frozen(event_type: str, full: bool) -> None:
    event = make_event(event_type, full=full)
    known = CODEC.schemas.current(event_type)
    record = fastavro.schemaless_reader(io.BytesIO(CODEC.encode(event)[10:]), known.fast, None)
    compiled = known.from_wire(record)
    generic = _from_wire(record, known.definition, {})
    assert {key: _frozen(value) for key, value in generic.items()} == dict(compiled)
    decoded = CODEC.decode(CODEC.encode(event))
    assert type(decoded.payload) is MappingProxyType and decoded == event


def test_a_refused_encode_names_the_field_as_before() -> None:
    event = make_event("PaymentCompleted")
    broken = Event(event.envelope, {**event.payload, "services": "three"})
    with pytest.raises(EventEncodingError, match=r"PaymentCompleted\.services is 'three' \(str\), expected an integer"):
        CODEC.encode(broken)


def test_payload_values_stay_wire_values_for_the_writer() -> None:
    event = make_event("PayoutRequested", full=True)
    assert _to_wire(event.payload)["net"] == {"amount_minor": event.payload["net"].amount_minor,
                                              "currency": event.payload["net"].currency.code,
                                              "exponent": event.payload["net"].currency.exponent}


@settings(max_examples=200, deadline=None)
@given(kind=st.sampled_from(["payment", "refund", "adjustment"]), business_id=st.text(min_size=1, max_size=130))
def test_deterministic_event_ids_are_uuid5(kind: str, business_id: str) -> None:
    try:
        expected = str(uuid.uuid5(EVENT_ID_NAMESPACE, f"{kind}:{business_id}"))
    except UnicodeEncodeError:  # a lone surrogate: uuid5 cannot hash it, and neither may the fast path
        with pytest.raises(UnicodeEncodeError):
            deterministic_event_id(kind, business_id)
        return
    assert deterministic_event_id(kind, business_id) == expected


@pytest.mark.parametrize("event_type", EVENT_TYPES)
@pytest.mark.parametrize("full", [False, True])
def test_the_compiled_to_wire_gives_the_generic_result(event_type: str, full: bool) -> None:
    event = make_event(event_type, full=full)
    assert CODEC.schemas.current(event_type).to_wire(event.payload) == _to_wire(event.payload)
