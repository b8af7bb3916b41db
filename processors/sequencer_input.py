"""Judging one input record of the sequencer: decode (JSON or Avro), validate, check its key.

Raises Rejected(stage, reason) for a record that cannot be accepted: the sequencer dead-letters it.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime

from ledger.codec import EventCodec, UndecodableEvent
from ledger.events import Event
from ledger.intake_fast import fast_payment
from ledger.intake import (
    INTAKE_TYPES, RECORD_READ_MAX_BYTES, IntakeLimits, IntakeRejected, check_readable_size, parse_record, shown,
    strip_byte_order_mark, validate_event,
)


class Rejected(Exception):
    def __init__(self, stage: str, reason: str) -> None:
        super().__init__(reason)
        self.stage = stage
        self.reason = reason


def interpret(value: bytes | None, codec: EventCodec, limits: IntakeLimits, now: datetime,
              key: bytes | None = None, *, check_key: bool = False) -> Event:
    """Turn one incoming record (Avro event or JSON object) into a validated, unsequenced event.

    With check_key, the record's Kafka key must be its payee id: the partitioner places a payee's
    records by key, so a record keyed otherwise could overtake or be overtaken by that payee's others.
    """
    if not value:
        raise Rejected("decode", "record has no value")
    try:
        check_readable_size(len(value))
    except IntakeRejected as exc:
        raise Rejected("validate", str(exc)) from None
    text = strip_byte_order_mark(value)
    if text.lstrip()[:1] == b"{":
        try:
            record = json.loads(text)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise Rejected("decode", f"not valid JSON: {str(exc)[:200]}") from None
        try:
            event = parse_record(record, limits, now, size=len(value))
        except IntakeRejected as exc:
            raise Rejected("validate", str(exc)) from None
    else:
        try:
            decoded = codec.decode(value)
        except UndecodableEvent as exc:
            raise Rejected("decode", f"neither a JSON object nor a readable Avro event: {exc.reason}") from None
        try:  # the common valid payment without pydantic; anything else through the whole rule set
            event = fast_payment(decoded, limits, now, len(value)) or validate_event(decoded, limits, now,
                                                                                     size=len(value))
        except IntakeRejected as exc:
            raise Rejected("validate", str(exc)) from None
    if check_key:
        _check_key(key, event.payee_id)
    return event


def _check_key(key: bytes | None, payee_id: str) -> None:
    if key is None:
        raise Rejected("validate", f"key: missing: key every record by its payee_id ({shown(payee_id)})")
    if key != payee_id.encode():
        raise Rejected("validate", f"key: {shown(key.decode('utf-8', 'replace'))} is not the record's payee_id "
                                   f"{shown(payee_id)}: key every record by its payee_id")


def interpret_command(value: bytes | None, codec: EventCodec, now: datetime) -> Event:
    """An internal event from ledger.commands (a close, an outcome, an operator action), checked for chaining."""
    if value and len(value) > RECORD_READ_MAX_BYTES:
        raise Rejected("validate", f"record: is {len(value)} bytes, larger than {RECORD_READ_MAX_BYTES}: not read")
    try:
        event = codec.decode(value or b"")
    except UndecodableEvent as exc:
        raise Rejected("decode", f"not a readable Avro event: {exc.reason}") from None
    if event.event_type in INTAKE_TYPES.values():
        raise Rejected("validate", f"{event.event_type} must be submitted on the intake topic, not as a command")
    if event.envelope.sequence is not None or event.envelope.previous_hash is not None:
        raise Rejected("validate", "envelope.sequence: must be empty on a command: the sequencer assigns it")
    return Event(replace(event.envelope, recorded_at=now), event.payload)
