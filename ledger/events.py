"""Ledger events: the shared envelope and the event types, as plain immutable values.

The Avro schemas in schemas/avro/ are the single source of each event's fields; a test checks that
EVENT_TYPES and the Envelope here match them.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from types import MappingProxyType
from typing import Any

from ledger.guards import require
from ledger.money import Money

EVENT_TYPES: tuple[str, ...] = (
    "PaymentCompleted",
    "PaymentRefunded",
    "EarningsAdjusted",
    "PayeeScheduleSet",
    "PayeeHoldSet",
    "PayoutRequested",
    "BalanceCarried",
    "PayoutSubmitted",
    "PayoutAccepted",
    "PayoutSettled",
    "PayoutFailed",
    "PayoutRetryScheduled",
    "PayoutCancelled",
)
_EVENT_TYPE_SET = frozenset(EVENT_TYPES)


def _require_utc(name: str, value: datetime) -> None:
    if type(value) is datetime and value.tzinfo is timezone.utc:  # noqa: E721 - the common case, decided at once
        return
    require(isinstance(value, datetime), f"{name} must be a datetime, got {type(value).__name__}")
    require(
        value.tzinfo is not None and value.utcoffset() == timedelta(0),
        f"{name} must be timezone-aware UTC, got {value!r}",
    )


@dataclass(frozen=True, slots=True)
class Envelope:
    """Fields every event carries (see schemas/avro/Envelope.avsc)."""

    event_id: str
    event_type: str
    schema_version: int
    occurred_at: datetime
    recorded_at: datetime
    payee_id: str
    correlation_id: str
    causation_id: str | None = None
    sequence: int | None = None
    previous_hash: str | None = None

    def __post_init__(self) -> None:
        if self.event_type not in _EVENT_TYPE_SET:
            require(False, f"unknown event type {self.event_type!r}")
        if not (isinstance(self.event_id, str) and self.event_id):
            require(False, "event_id must be a non-empty string")
        if not (isinstance(self.payee_id, str) and self.payee_id):
            require(False, "payee_id must be a non-empty string")
        if not self.schema_version >= 1:
            require(False, f"schema_version must be >= 1, got {self.schema_version}")
        _require_utc("occurred_at", self.occurred_at)
        _require_utc("recorded_at", self.recorded_at)
        require(
            self.sequence is None or self.sequence >= 1,
            f"sequence is 1-based, got {self.sequence}",
        )

    @property
    def is_sequenced(self) -> bool:
        return self.sequence is not None and self.previous_hash is not None

    def sequenced(self, sequence: int, previous_hash: str) -> "Envelope":
        """The same envelope with its place in the payee's chain."""
        return Envelope(self.event_id, self.event_type, self.schema_version, self.occurred_at, self.recorded_at,
                        self.payee_id, self.correlation_id, self.causation_id, sequence, previous_hash)


@dataclass(frozen=True, slots=True)
class Event:
    """One ledger event: an envelope and the event type's own fields (Money values as ledger.money.Money)."""

    envelope: Envelope
    payload: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        payload = self.payload
        if "envelope" in payload:
            require(False, "payload must not contain an 'envelope' field")
        if type(payload) is not MappingProxyType or not _flat(payload):
            object.__setattr__(self, "payload", _frozen(payload))

    @property
    def event_type(self) -> str:
        return self.envelope.event_type

    @property
    def payee_id(self) -> str:
        return self.envelope.payee_id


_IMMUTABLE_TYPES = frozenset({str, int, bool, datetime, type(None), Money, MappingProxyType})


def _flat(payload: MappingProxyType) -> bool:
    """A read-only payload whose values are all immutable already (an event's payload passed on): no copy.
    Exact types only: a subclass of one of them takes the copying path, as before."""
    for value in payload.values():
        if type(value) not in _IMMUTABLE_TYPES:
            return False
    return True


def _frozen(value: Any) -> Any:
    """A read-only deep copy: mappings become MappingProxyType, lists become tuples."""
    if isinstance(value, (str, int, datetime)) or value is None:
        return value
    if type(value) is dict or type(value) is MappingProxyType or isinstance(value, Mapping):
        return MappingProxyType({key: _frozen(item) for key, item in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(item) for item in value)
    return value


def new_envelope(
    event_type: str,
    *,
    payee_id: str,
    occurred_at: datetime,
    recorded_at: datetime,
    correlation_id: str | None = None,
    causation_id: str | None = None,
    event_id: str | None = None,
    schema_version: int = 1,
) -> Envelope:
    """An unsequenced envelope; ids default to fresh UUIDs (pass them in for deterministic events)."""
    new_id = event_id or str(uuid.uuid4())
    return Envelope(
        event_id=new_id,
        event_type=event_type,
        schema_version=schema_version,
        occurred_at=occurred_at,
        recorded_at=recorded_at,
        payee_id=payee_id,
        correlation_id=correlation_id or new_id,
        causation_id=causation_id,
    )
