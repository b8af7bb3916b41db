"""LedgerClient: the library upstream services use to record payments, refunds and adjustments.

Validates before sending (a caller gets IntakeRejected naming the field and the reason), then
produces Avro events to payments.incoming with an idempotent, acks=all producer, keyed by payee.
The sequencer validates again, deduplicates and appends to the ledger.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Mapping

from ledger.codec import EventCodec
from ledger.events import Event
from ledger.intake import IntakeLimits, IntakeRejected, json_size, parse_record
from ledger.money import Money
from processors.kafka_io import DeliveryFailed, DeliveryTracker, flush_or_raise, make_producer
from processors.payee_actions import hold_event, schedule_event
from runtime.settings import Settings

Clock = Callable[[], datetime]
QUEUE_FULL_RETRIES = 600  # 60 s of polling at most


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class BatchResult:
    """Outcome of record_batch: event ids sent, and (index, reason) for each record refused."""

    sent: list[str] = field(default_factory=list)
    rejected: list[tuple[int, str]] = field(default_factory=list)


class LedgerClient:
    """Send payments, refunds and adjustments to the ledger. Use as a context manager, or call close()."""

    def __init__(self, bootstrap: str, settings: Settings | None = None, *, limits: IntakeLimits | None = None,
                 codec: EventCodec | None = None, clock: Clock = utc_now) -> None:
        self.settings = settings or Settings()
        self.limits = limits or self.settings.intake_limits()
        self.codec = codec or EventCodec()
        self.clock = clock
        self._bootstrap = bootstrap
        self._producer = make_producer(bootstrap)
        self._tracker = DeliveryTracker()
        self._sent = 0

    def __enter__(self) -> "LedgerClient":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def validate(self, record: Mapping[str, Any]) -> Event:
        """The event a record would become; raises IntakeRejected naming each bad field (and the size
        limits, measured on the record as compact JSON: ledger.intake.json_size)."""
        return parse_record(record, self.limits, self.clock(), size=json_size(record))

    def send(self, event: Event, topic: str | None = None) -> str:
        """Queue a validated event for delivery (see flush); returns its event id."""
        value = self.codec.encode(event)
        for _ in range(QUEUE_FULL_RETRIES):
            try:
                self._producer.produce(topic or self.settings.topic_incoming, key=event.payee_id.encode(),
                                       value=value, on_delivery=self._tracker)
                break
            except BufferError:  # the local queue is full: let deliveries drain, then try again
                self._producer.poll(0.1)
        else:
            raise DeliveryFailed(f"the producer queue stayed full for {QUEUE_FULL_RETRIES * 0.1:.0f} s: "
                                 "is the broker reachable?")
        self._producer.poll(0)
        self._sent += 1
        return event.envelope.event_id

    def flush(self, timeout_s: float = 30.0) -> None:
        """Wait until the broker acknowledged everything sent (acks=all); raises DeliveryFailed if not."""
        flush_or_raise(self._producer, self._tracker, self._sent, timeout_s)

    def _record(self, record: Mapping[str, Any], wait: bool) -> str:
        event_id = self.send(self.validate(record))
        if wait:
            self.flush()
        return event_id

    def record_payment(self, *, payment_id: str, payee_id: str, amount_minor: int, currency: str,
                       occurred_at: datetime, services: int = 1, source: str = "",
                       metadata: Mapping[str, str] | None = None, wait: bool = True) -> str:
        """Record a completed payment; with wait (default) returns once the broker has it."""
        return self._record({"type": "payment", "payment_id": payment_id, "payee_id": payee_id,
                             "amount_minor": amount_minor, "currency": currency, "occurred_at": occurred_at,
                             "services": services, "source": source, "metadata": dict(metadata or {})}, wait)

    def record_refund(self, *, refund_id: str, payment_id: str, payee_id: str, amount_minor: int, currency: str,
                      occurred_at: datetime, reason: str = "", metadata: Mapping[str, str] | None = None,
                      wait: bool = True) -> str:
        """Record a full or partial refund of a payment."""
        return self._record({"type": "refund", "refund_id": refund_id, "payment_id": payment_id,
                             "payee_id": payee_id, "amount_minor": amount_minor, "currency": currency,
                             "occurred_at": occurred_at, "reason": reason, "metadata": dict(metadata or {})}, wait)

    def record_adjustment(self, *, adjustment_id: str, payee_id: str, kind: str, name: str, amount_minor: int,
                          currency: str, occurred_at: datetime, reason: str = "", actor: str = "",
                          metadata: Mapping[str, str] | None = None, wait: bool = True) -> str:
        """Record a deduction (booth rent, supply fee) or a bonus; amount is positive, kind gives the sign."""
        return self._record({"type": "adjustment", "adjustment_id": adjustment_id, "payee_id": payee_id,
                             "kind": kind, "name": name, "amount_minor": amount_minor, "currency": currency,
                             "occurred_at": occurred_at, "reason": reason, "actor": actor,
                             "metadata": dict(metadata or {})}, wait)

    def set_schedule(self, payee_id: str, *, frequency: str, cutoff_time: str, timezone: str, plan: str,
                     method: str, day_of_week: int | None = None, day_of_month: int | None = None,
                     destination: str = "", minimum: Money | None = None, actor: str = "", wait: bool = True) -> str:
        """Record a payee's payout schedule, plan and method (validated; raises InvalidSchedule/UnknownPlan).
        With wait=False it is queued like a record (see flush), so many payees cost one round trip."""
        from runtime.plans import plan_book

        event = schedule_event(payee_id, frequency=frequency, cutoff_time=cutoff_time, timezone=timezone, plan=plan,
                               method=method, book=plan_book(self.settings), now=self.clock(),
                               day_of_week=day_of_week, day_of_month=day_of_month, destination=destination,
                               minimum=minimum, actor=actor)
        return self._command(event, wait)

    def _command(self, event: Event, wait: bool) -> str:
        """An operator event for the sequencer to chain, on this client's producer (one connection for many)."""
        self.send(event, self.settings.topic_commands)
        if wait:
            self.flush()
        return event.envelope.event_id

    def set_hold(self, payee_id: str, *, held: bool, reason: str = "", actor: str = "", wait: bool = True) -> str:
        """Hold (held=True) or release a payee's payouts; periods still close, balances carry while held."""
        return self._command(hold_event(payee_id, held=held, now=self.clock(), reason=reason, actor=actor), wait)

    def record_batch(self, records: Iterable[Mapping[str, Any]]) -> BatchResult:
        """Validate and send many records, then wait for all acknowledgements; bad ones are listed, not sent."""
        result = BatchResult()
        for index, record in enumerate(records):
            try:
                result.sent.append(self.send(self.validate(record)))
            except IntakeRejected as exc:
                result.rejected.append((index, str(exc)))
        self.flush()
        return result

    def close(self) -> None:
        self._producer.flush(10)
