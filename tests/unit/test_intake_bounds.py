"""Bounds at the entrance, without a broker: field lengths, record sizes, bounded dead letters, waiting refunds."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone

import pytest

from ledger.intake import (
    RECORD_MAX_BYTES, RECORD_READ_MAX_BYTES, TEXT_MAX_CHARS, IntakeLimits, IntakeRejected, json_size, parse_record,
    shown, strip_byte_order_mark,
)
from processors.dead_letters import KEPT_PREFIX_BYTES, ORIGINAL_SHA256, ORIGINAL_SIZE, dead_letter_message, parse_entry
from processors.kafka_io import Record
from processors.sequencer_input import Rejected, interpret
from processors.sequencer_store import Waiting
from processors.waiting_room import WaitingRoom
from ledger.codec import EventCodec

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc)
LIMITS = IntakeLimits()


def payment(**extra: object) -> dict:
    return {"payment_id": "p1", "payee_id": "barber-1", "amount_minor": 1000, "currency": "USD",
            "occurred_at": "2026-11-22T10:00:00Z", **extra}


def problems(record: dict, size: int | None = None) -> dict[str, str]:
    with pytest.raises(IntakeRejected) as refused:
        parse_record(record, LIMITS, NOW, size=size)
    return dict(refused.value.problems)


@pytest.mark.parametrize("field,limit", sorted(TEXT_MAX_CHARS.items()))
def test_each_text_field_has_a_limit_in_characters(field, limit):
    adjustment = {key: value for key, value in payment().items() if key != "payment_id"}
    record = {"source": payment(), "reason": {"type": "refund", "refund_id": "r1", **payment()},
              "name": {"type": "adjustment", "adjustment_id": "a1", "kind": "BONUS", "name": "n", **adjustment},
              "actor": {"type": "adjustment", "adjustment_id": "a1", "kind": "BONUS", "name": "n", **adjustment}}[field]
    parse_record({**record, field: "é" * limit}, LIMITS, NOW)  # at the limit: accepted (characters, not bytes)
    assert problems({**record, field: "é" * (limit + 1)}) == {field: f"is {limit + 1} characters long, at most {limit} allowed"}


def test_a_record_too_large_to_read_is_refused_before_it_is_parsed():
    assert problems(payment(), size=RECORD_READ_MAX_BYTES + 1) == {
        "record": f"is {RECORD_READ_MAX_BYTES + 1} bytes, larger than {RECORD_READ_MAX_BYTES}: not read "
                  f"(a record may have at most {RECORD_MAX_BYTES})"}


def test_the_size_limit_is_checked_after_the_fields():
    padded = RECORD_MAX_BYTES + 1  # valid fields, padded with whitespace: refused for its size
    assert problems(payment(), size=padded) == {"record": f"is {padded} bytes, at most {RECORD_MAX_BYTES} allowed"}
    # over-long fields are named first, and then the size is not mentioned: the same message everywhere
    assert set(problems(payment(source="s" * 100_000), size=padded)) == {"source"}
    parse_record(payment(), LIMITS, NOW, size=RECORD_MAX_BYTES)


def test_messages_repeat_at_most_a_short_prefix_of_a_value():
    assert shown("x" * 10) == "'xxxxxxxxxx'"
    assert shown("x" * 1000).endswith("... (1000 characters)") and len(shown("x" * 1000)) < 70
    reasons = problems(payment(payee_id="bad id " * 10, metadata={"k" * 5000: 1}, type="payment"))
    assert all(len(name) < 60 and len(reason) < 200 for name, reason in reasons.items())


def test_many_problems_are_listed_up_to_a_bound():
    reasons = problems(payment(metadata={f"k{index}": index for index in range(500)}))
    assert len(reasons) <= 21 and any("more problems not listed" in reason for reason in reasons.values())


def test_json_size_is_compact_utf8_json():
    assert json_size({"a": "é"}) == len('{"a":"é"}'.encode())
    assert json_size({"at": NOW}) == len(f'{{"at":"{NOW}"}}'.encode())


def test_a_byte_order_mark_before_json_is_accepted_and_nothing_else_is_stripped():
    assert strip_byte_order_mark(b"\xef\xbb\xbf{}") == b"{}"
    assert strip_byte_order_mark(b"{}") == b"{}"
    value = b"\xef\xbb\xbf" + b'{"payment_id":"p1","payee_id":"barber-1","amount_minor":1,"currency":"USD",' \
                              b'"occurred_at":"2026-11-22T10:00:00Z"}'
    event = interpret(value, EventCodec(), LIMITS, NOW, b"barber-1", check_key=True)
    assert event.payload["payment_id"] == "p1"


@pytest.mark.parametrize("key,reason", [
    (None, "key: missing: key every record by its payee_id ('barber-1')"),
    (b"other", "key: 'other' is not the record's payee_id 'barber-1': key every record by its payee_id"),
])
def test_a_record_keyed_otherwise_than_by_its_payee_is_refused(key, reason):
    with pytest.raises(Rejected) as refused:
        interpret(b'{"payment_id":"p1","payee_id":"barber-1","amount_minor":1,"currency":"USD",'
                  b'"occurred_at":"2026-11-22T10:00:00Z"}', EventCodec(), LIMITS, NOW, key, check_key=True)
    assert (refused.value.stage, refused.value.reason) == ("validate", reason)


def record(value: bytes, key: bytes | None = b"k", headers=()) -> Record:
    return Record("payments.incoming", 2, 17, key, value, tuple(headers))


def test_a_dead_letter_keeps_the_original_whole_when_it_fits():
    message = dead_letter_message(record(b"x" * 1000), "validate", "why", NOW, max_bytes=10_000)
    assert message.whole and message.value == b"x" * 1000 and message.size <= 10_000


def test_a_dead_letter_too_large_keeps_a_prefix_its_size_and_its_hash():
    value = b"y" * 200_000
    message = dead_letter_message(record(value), "validate", "why", NOW, max_bytes=100_000)
    assert not message.whole and message.size <= 100_000
    assert message.value == value[:KEPT_PREFIX_BYTES]
    headers = dict(message.headers)
    assert headers[ORIGINAL_SIZE] == b"200000" and headers[ORIGINAL_SHA256] == hashlib.sha256(value).hexdigest().encode()
    entry = parse_entry(Record("ledger.dlq", 0, 5, message.key, message.value, tuple(message.headers)))
    assert not entry.whole and entry.original_size == 200_000 and "not kept whole" in entry.reason
    assert entry.source == ("payments.incoming", 2, 17)


def test_a_producers_own_headers_are_kept_up_to_a_bound():
    headers = [(f"h{index}", b"v" * 1000) for index in range(40)]
    message = dead_letter_message(record(b"x", headers=headers), "decode", "why", NOW, max_bytes=1_000_000)
    carried = [name for name, _ in message.headers if name.startswith("h")]
    assert 0 < len(carried) < 40 and dict(message.headers)["ledger-dlq-headers-dropped"] == str(40 - len(carried)).encode()


def waiting(offset: int, payment_id: str, since: datetime) -> Waiting:
    return Waiting(Record("payments.incoming", 0, offset, b"k", b"v", ()), payment_id, since)


def test_refunds_wait_for_their_payment_bounded_in_count_and_time():
    room = WaitingRoom(wait_s=60, max_records=2)
    assert room.add(waiting(1, "p1", NOW)) == []
    assert room.add(waiting(2, "p2", NOW + timedelta(seconds=10))) == []
    pushed = room.add(waiting(3, "p1", NOW + timedelta(seconds=20)))
    assert [item.record.offset for item in pushed] == [1] and len(room) == 2
    assert [item.record.offset for item in room.take_for("p1")] == [3]
    assert room.take_expired(NOW + timedelta(seconds=69)) == []
    assert [item.record.offset for item in room.take_expired(NOW + timedelta(seconds=70))] == [2]
    assert len(room) == 0 and room.payments() == []


def test_a_dead_letter_with_a_huge_key_keeps_the_start_of_the_key_and_says_so():
    message = dead_letter_message(record(b"x", key=b"k" * 100_000), "validate", "why", NOW, max_bytes=1_000_000)
    assert not message.whole and message.key == b"k" * 16_384 and message.value == b"x"
