"""The sequencer: payments.incoming and ledger.commands -> ledger.events exactly once, or ledger.dlq.

Why a plain confluent-kafka loop and not a Faust agent (docs/decisions.md §12): its state is
rebuilt at start from ledger.events itself, and each batch's outputs are flushed before the input
offsets are committed. A crash at any point then only means reprocessing records after the last
commit; those already appended are recognised as duplicates by their business id, and those already
dead-lettered by their source position, so nothing is appended twice and nothing is lost.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Callable

from confluent_kafka import OFFSET_STORED, Consumer, KafkaException, TopicPartition

from ledger.codec import EventCodec, UndecodableEvent
from ledger.events import Event
from ledger.intake import INTAKE_TYPES, IntakeLimits, IntakeRejected, parse_record, validate_event
from ledger.ledger_index import LedgerIndex
from processors.dead_letters import dead_letter_headers, read_dead_letters
from processors.kafka_io import (
    CLIENT_LOG, ConsumerLag, DeliveryTracker, Record, flush_or_raise, make_producer, topic_partitions,
)
from processors.ledger_replay import load_index
from runtime import metrics
from runtime.logs import log_context
from runtime.settings import Settings

Clock = Callable[[], datetime]
SOURCE_HEADER = "ledger-source"
logger = logging.getLogger("ledger.sequencer")


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class SequencerStats:
    appended: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    skipped_already_dead: int = 0
    batches: int = 0
    rebuilt_events: int = 0
    rebuild_s: float = 0.0
    by_reason: dict[str, int] = field(default_factory=dict)


class Rejected(Exception):
    def __init__(self, stage: str, reason: str) -> None:
        super().__init__(reason)
        self.stage = stage
        self.reason = reason


def interpret(value: bytes | None, codec: EventCodec, limits: IntakeLimits, now: datetime) -> Event:
    """Turn one incoming record (Avro event or JSON object) into a validated, unsequenced event."""
    if not value:
        raise Rejected("decode", "record has no value")
    if value.lstrip()[:1] == b"{":
        try:
            record = json.loads(value)
        except (ValueError, UnicodeDecodeError) as exc:
            raise Rejected("decode", f"not valid JSON: {exc}") from None
        try:
            return parse_record(record, limits, now)
        except IntakeRejected as exc:
            raise Rejected("validate", str(exc)) from None
    try:
        event = codec.decode(value)
    except UndecodableEvent as exc:
        raise Rejected("decode", f"neither a JSON object nor a readable Avro event: {exc.reason}") from None
    try:
        return validate_event(event, limits, now)
    except IntakeRejected as exc:
        raise Rejected("validate", str(exc)) from None


def interpret_command(value: bytes | None, codec: EventCodec, now: datetime) -> Event:
    """An internal event from ledger.commands (a close, an outcome, an operator action), checked for chaining."""
    try:
        event = codec.decode(value or b"")
    except UndecodableEvent as exc:
        raise Rejected("decode", f"not a readable Avro event: {exc.reason}") from None
    if event.event_type in INTAKE_TYPES.values():
        raise Rejected("validate", f"{event.event_type} must be submitted on the intake topic, not as a command")
    if event.envelope.sequence is not None or event.envelope.previous_hash is not None:
        raise Rejected("validate", "envelope.sequence: must be empty on a command: the sequencer assigns it")
    return Event(replace(event.envelope, recorded_at=now), event.payload)


class Sequencer:
    """One sequencer for all partitions of payments.incoming (see docs/decisions.md §12 for scale-out)."""

    def __init__(self, settings: Settings, bootstrap: str, *, codec: EventCodec | None = None,
                 clock: Clock = utc_now, log: Callable[[str], None] | None = None) -> None:
        self.settings = settings
        self.bootstrap = bootstrap
        self.codec = codec or EventCodec()
        self.clock = clock
        self.log = log or logger.info
        self.limits = settings.intake_limits()
        self.stats = SequencerStats()
        self.index: LedgerIndex | None = None
        self._dead_sources: set[tuple[str, int, int]] = set()
        self._producer = make_producer(bootstrap)
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def rebuild(self) -> None:
        """Rebuild state from the truth: ledger.events for ids and chains, ledger.dlq for what was refused."""
        started = time.monotonic()
        self.index = load_index(self.bootstrap, self.settings.topic_events, self.codec)
        self._dead_sources = {entry.source for entry in read_dead_letters(self.bootstrap, self.settings.topic_dlq)}
        self.stats.rebuilt_events = len(self.index)
        self.stats.rebuild_s = time.monotonic() - started
        self.log(f"rebuilt from {self.stats.rebuilt_events} ledger events and {len(self._dead_sources)} "
                 f"dead letters in {self.stats.rebuild_s:.2f} s")

    def run(self, idle_exit_s: float | None = None, handle_signals: bool = True) -> SequencerStats:
        """Process until stop() (SIGTERM/SIGINT), or until idle for idle_exit_s seconds."""
        if handle_signals:
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, lambda *_: self.stop())
        if self.index is None:
            self.rebuild()
        consumer = Consumer({
            "bootstrap.servers": self.bootstrap,
            "group.id": self.settings.sequencer_group,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "logger": CLIENT_LOG,
        })
        topics = (self.settings.topic_incoming, self.settings.topic_commands)
        lag = ConsumerLag("sequencer", topics)
        consumer.assign([TopicPartition(topic, partition, OFFSET_STORED)
                         for topic in topics for partition in topic_partitions(self.bootstrap, topic)])
        last_input = time.monotonic()
        try:
            while not self._stop.is_set():
                messages = consumer.consume(self.settings.sequencer_batch_max,
                                            self.settings.sequencer_batch_wait_ms / 1000)
                lag.observe_batch(messages)
                if len(messages) < self.settings.sequencer_batch_max:  # the poll drained what there was
                    lag.caught_up(set(topics) - {message.topic() for message in messages})
                records = [self._record(message) for message in messages if message.error() is None]
                for message in messages:
                    if message.error() is not None:
                        if message.error().fatal():
                            raise KafkaException(message.error())
                        logger.warning("consumer: %s", message.error().str())  # transient: librdkafka retries
                if records:
                    self._process_batch(consumer, records)
                    last_input = time.monotonic()
                elif idle_exit_s is not None and time.monotonic() - last_input >= idle_exit_s:
                    break
        finally:
            consumer.close()
        return self.stats

    @staticmethod
    def _record(message) -> Record:  # noqa: ANN001 - confluent_kafka.Message
        return Record(message.topic(), message.partition(), message.offset(), message.key(), message.value(),
                      tuple(message.headers() or ()))

    def _process_batch(self, consumer: Consumer, records: list[Record]) -> None:
        tracker = DeliveryTracker()
        produced = 0
        for record in records:
            produced += self._handle(record, tracker)
        # Outputs first, then the input position: a crash in between only causes reprocessing.
        flush_or_raise(self._producer, tracker, produced)
        positions: dict[tuple[str, int], int] = {}
        for record in records:
            where = (record.topic, record.partition)
            positions[where] = max(positions.get(where, -1), record.offset + 1)
        consumer.commit(offsets=[TopicPartition(topic, partition, offset)
                                 for (topic, partition), offset in positions.items()], asynchronous=False)
        self.stats.batches += 1

    def _handle(self, record: Record, tracker: DeliveryTracker) -> int:
        """Route one record; returns how many messages it produced (0 or 1)."""
        assert self.index is not None
        if (record.topic, record.partition, record.offset) in self._dead_sources:
            self.stats.skipped_already_dead += 1
            return 0
        now = self.clock()
        try:
            if record.topic == self.settings.topic_commands:
                event = interpret_command(record.value, self.codec, now)
            else:
                event = interpret(record.value, self.codec, self.limits, now)
        except Rejected as exc:
            return self._dead_letter(record, exc.stage, exc.reason, now, tracker)
        envelope = event.envelope
        with log_context(event_id=envelope.event_id, correlation_id=envelope.correlation_id,
                         causation_id=envelope.causation_id, payee_id=envelope.payee_id,
                         payout_id=event.payload.get("payout_id")):
            return self._chain(record, event, now, tracker)

    def _chain(self, record: Record, event: Event, now: datetime, tracker: DeliveryTracker) -> int:
        assert self.index is not None
        verdict = self.index.verdict(event)
        if verdict.status == "duplicate":
            self.stats.duplicates += 1
            metrics.DUPLICATES.labels(record.topic).inc()
            logger.debug("%s %s is a duplicate: %s", event.event_type, event.envelope.event_id, verdict.reason)
            return 0
        if verdict.status == "reject":
            return self._dead_letter(record, "ledger", verdict.reason, now, tracker, event.event_type)
        sequenced, encoded = self.index.append(event)
        self._producer.produce(
            self.settings.topic_events, key=sequenced.payee_id.encode(), value=encoded, on_delivery=tracker,
            headers=[(SOURCE_HEADER, f"{record.topic}:{record.partition}:{record.offset}".encode())],
        )
        self._producer.poll(0)
        self.stats.appended += 1
        metrics.EVENTS_APPENDED.labels(sequenced.event_type).inc()
        if sequenced.event_type == "PayoutRequested":
            net = sequenced.payload["net"]
            metrics.PAYOUTS_REQUESTED.labels(sequenced.payload["payout_method"], net.currency.code).inc()
            metrics.PAYOUT_AMOUNT.labels(net.currency.code, "requested").inc(net.amount_minor)
        logger.debug("chained %s as %s #%d", sequenced.event_type, sequenced.payee_id, sequenced.envelope.sequence)
        return 1

    def _dead_letter(self, record: Record, stage: str, reason: str, now: datetime, tracker: DeliveryTracker,
                     event_type: str | None = None) -> int:
        self._producer.produce(self.settings.topic_dlq, key=record.key, value=record.value or b"",
                               headers=dead_letter_headers(record, stage, reason, now), on_delivery=tracker)
        self._producer.poll(0)
        self._dead_sources.add((record.topic, record.partition, record.offset))
        self.stats.dead_lettered += 1
        metrics.DEAD_LETTERS.labels(stage).inc()
        self.stats.by_reason[stage] = self.stats.by_reason.get(stage, 0) + 1
        source = f"{record.topic}:{record.partition}:{record.offset}"
        # one line per refused input: an operator must see what was refused and why (`ledger dlq list`)
        logger.warning("dead-lettered %s from %s (%s): %s", event_type or "a record", source, stage, reason,
                       extra={"stage": stage, "reason": reason, "source": source,
                              "key": (record.key or b"").decode("utf-8", "replace")})
        return 1
