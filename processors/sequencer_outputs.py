"""What one sequencer batch produces, each record with its own delivery report.

A dead letter must never fail: if the broker (or the producer's own size check) refuses one as too
large, it is sent again in its bounded form (a prefix of the value, the original's size and SHA-256;
processors/dead_letters.py). Any other refusal, of an event or a dead letter, fails the batch:
nothing is committed and the batch is processed again after a restart (at-least-once).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable

from confluent_kafka import KafkaError, KafkaException, Producer

from ledger.intake import OUTPUT_MESSAGE_MAX_BYTES
from processors.dead_letters import DeadLetterMessage, dead_letter_message
from processors.kafka_io import DeliveryFailed, Record, make_producer

SIZE_ERRORS = {KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE}
QUEUE_FULL_POLLS = 300  # 30 s of polling at most when the local queue is full
FLUSH_TIMEOUT_S = 30.0
REROUTED_HEADER = "ledger-rerouted-from"


def make_output_producer(bootstrap: str, message_timeout_s: float | None = None) -> Producer:
    """The sequencer's producer: its own size check lets through anything the output topics take. In partitioned
    mode a record not stored within message_timeout_s fails (processors/partition_fence.py)."""
    extra = {} if message_timeout_s is None else {"message.timeout.ms": int(message_timeout_s * 1000)}
    return make_producer(bootstrap, **{"message.max.bytes": OUTPUT_MESSAGE_MAX_BYTES + 65_536}, **extra)


@dataclass
class _DeadLetterSent:
    source: Record
    stage: str
    reason: str
    rejected_at: datetime
    message: DeadLetterMessage


@dataclass
class BatchOutputs:
    """Produce a batch's events and dead letters; flush() proves every one was stored."""

    producer: Producer
    dlq_topic: str
    dlq_max_bytes: int = OUTPUT_MESSAGE_MAX_BYTES
    sent: int = 0
    delivered: int = 0
    errors: list[str] = field(default_factory=list)
    _too_large: list[_DeadLetterSent] = field(default_factory=list)
    bounded_dead_letters: int = 0  # dead letters that could keep only a prefix of the original
    # per (topic, partition): the offset and value of the last record stored there (a checkpoint's position)
    ends: dict[tuple[str, int], tuple[int, bytes]] = field(default_factory=dict)
    # partitioned mode: raises (runtime.partition_leases.Fenced) when the partition's lease is too short to produce
    check_lease: Callable[[], None] | None = None

    def event(self, topic: str, key: bytes, value: bytes, headers: list[tuple[str, bytes]]) -> None:
        self._produce(topic, key, value, headers, self._on_event)

    def reroute(self, source: Record, partition: int) -> None:
        """Send a record placed on the wrong partition to the one its key belongs to, as it came, plus a header
        naming where it was: the instance that owns that partition chains it."""
        headers = [*source.headers, (REROUTED_HEADER, f"{source.topic}:{source.partition}:{source.offset}".encode())]
        self._produce(source.topic, source.key, source.value or b"", headers, self._on_rerouted, partition=partition)

    def dead_letter(self, source: Record, stage: str, reason: str, rejected_at: datetime) -> DeadLetterMessage:
        message = dead_letter_message(source, stage, reason, rejected_at, self.dlq_max_bytes)
        return self._send_dead_letter(_DeadLetterSent(source, stage, reason, rejected_at, message))

    def _send_dead_letter(self, sent: _DeadLetterSent) -> DeadLetterMessage:
        message = sent.message
        try:
            self._produce(self.dlq_topic, message.key, message.value, message.headers,
                          lambda error, stored: self._on_dead_letter(sent, error, stored))
        except KafkaException as exc:
            if exc.args[0].code() not in SIZE_ERRORS or not message.whole:
                raise
            return self._send_dead_letter(self._bounded(sent))
        if not message.whole:
            self.bounded_dead_letters += 1
        return message

    def _bounded(self, sent: _DeadLetterSent) -> _DeadLetterSent:
        message = dead_letter_message(sent.source, sent.stage, sent.reason, sent.rejected_at, self.dlq_max_bytes,
                                      whole=False)
        return _DeadLetterSent(sent.source, sent.stage, sent.reason, sent.rejected_at, message)

    def _produce(self, topic: str, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]],
                 on_delivery, partition: int = -1) -> None:  # noqa: ANN001 - a delivery callback
        if self.check_lease is not None:
            self.check_lease()
        for _ in range(QUEUE_FULL_POLLS):
            try:
                self.producer.produce(topic, key=key, value=value, headers=headers, on_delivery=on_delivery,
                                      partition=partition)
                break
            except BufferError:  # the local queue is full: let deliveries drain, then try again
                self.producer.poll(0.1)
        else:
            raise DeliveryFailed(f"the producer queue stayed full for {QUEUE_FULL_POLLS // 10} s")
        self.sent += 1
        self.producer.poll(0)

    def _stored(self, message) -> None:  # noqa: ANN001 - confluent_kafka.Message
        where = (message.topic(), message.partition())
        if message.offset() >= self.ends.get(where, (-1, b""))[0]:
            self.ends[where] = (message.offset(), message.value())

    def _on_rerouted(self, error: KafkaError | None, _message) -> None:  # noqa: ANN001
        if error is None:
            self.delivered += 1  # an input topic: not a position of the outputs
        else:
            self.errors.append(error.str())

    def _on_event(self, error: KafkaError | None, message) -> None:  # noqa: ANN001
        if error is None:
            self.delivered += 1
            self._stored(message)
        else:
            self.errors.append(error.str())

    def _on_dead_letter(self, sent: _DeadLetterSent, error: KafkaError | None, message) -> None:  # noqa: ANN001
        if error is None:
            self.delivered += 1
            self._stored(message)
        elif error.code() in SIZE_ERRORS and sent.message.whole:
            self.sent -= 1  # replaced by its bounded form at flush
            self._too_large.append(sent)
        else:
            self.errors.append(error.str())

    def flush(self, timeout_s: float = FLUSH_TIMEOUT_S) -> None:
        """Wait for every report; send refused-as-too-large dead letters again, bounded; raise if any is missing."""
        remaining = self.producer.flush(timeout_s)
        while self._too_large and not remaining and not self.errors:
            retry, self._too_large = self._too_large, []
            for sent in retry:
                self._send_dead_letter(self._bounded(sent))
            remaining = self.producer.flush(timeout_s)
        if remaining or self.errors or self.delivered != self.sent:
            raise DeliveryFailed(f"{self.delivered} of {self.sent} records acknowledged, {remaining} still queued, "
                                 f"errors: {self.errors[:3]}")
