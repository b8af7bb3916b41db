"""Producers and bounded topic readers shared by processors, commands and tests.

Readers use assign() (starts at once; subscribe() waits ~23 s for a group join on Tansu) and detect
the end of a partition with partition EOF events: Tansu's ListOffsets high watermark is the last
batch's base offset + 1, not the last offset + 1, so watermarks must not be used to find the end,
nor to measure lag: ConsumerLag measures it as time, from the records' own timestamps.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from runtime import metrics
from runtime.kafka_security import secure

METADATA_TIMEOUT_S = 10.0
# librdkafka's own log lines (broker down, ...) through Python logging, so they follow LEDGER_LOG_FORMAT
# instead of being printed raw on stderr. Pass it as the "logger" of every client.
CLIENT_LOG = logging.getLogger("ledger.kafka")


class DeliveryFailed(RuntimeError):
    """The broker did not acknowledge every record within the deadline."""


def make_producer(bootstrap: str, **overrides: object) -> Producer:
    """An idempotent producer that waits for all in-sync replicas (acks=all)."""
    config: dict[str, object] = {
        "bootstrap.servers": bootstrap,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "compression.type": "none",
        # Java clients, Faust and Kafka Streams hash keys with murmur2; librdkafka's default differs.
        "partitioner": "murmur2_random",
        "logger": CLIENT_LOG,
    }
    config.update(overrides)
    return Producer(secure(config))


class DeliveryTracker:
    """Counts acknowledgements so a caller can prove every record it sent was stored."""

    def __init__(self) -> None:
        self.delivered = 0
        self.errors: list[str] = []

    def __call__(self, error: KafkaError | None, _message: object) -> None:
        if error is None:
            self.delivered += 1
        else:
            self.errors.append(error.str())


def flush_or_raise(producer: Producer, tracker: DeliveryTracker, expected: int, timeout_s: float = 30.0) -> None:
    remaining = producer.flush(timeout_s)
    if remaining or tracker.errors or tracker.delivered != expected:
        raise DeliveryFailed(
            f"{tracker.delivered} of {expected} records acknowledged, {remaining} still queued, "
            f"errors: {tracker.errors[:3]}"
        )


def topic_partitions(bootstrap: str, topic: str) -> list[int]:
    """The topic's partition numbers; a clear error when the topic does not exist."""
    metadata = AdminClient(secure({"bootstrap.servers": bootstrap})).list_topics(topic, timeout=METADATA_TIMEOUT_S)
    if topic not in metadata.topics or metadata.topics[topic].error is not None:
        raise KafkaException(f"topic {topic} does not exist: run `ledger up`")
    return sorted(metadata.topics[topic].partitions)


def same_partition_count(bootstrap: str, topics: tuple[str, ...], who: str) -> int:
    """The partition count shared by `topics`; ValueError naming each count when they differ. A partitioned
    processor (`who`) needs it: a payee's records must sit at the partition number of its chain."""
    counts = {topic: len(topic_partitions(bootstrap, topic)) for topic in topics}
    if len(set(counts.values())) != 1:
        shown = ", ".join(f"{topic} {count}" for topic, count in counts.items())
        raise ValueError(f"{who} needs the same number of partitions on every topic it reads and writes, found "
                         f"{shown}: a payee's records must sit at the partition number of its chain")
    return counts[topics[0]]


@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]


def read_topic(bootstrap: str, topic: str, timeout_s: float = 30.0) -> Iterator[Record]:
    """Every record in `topic` from the beginning to its current end, in partition order.

    Bounded: raises TimeoutError if the end of every partition is not reached within timeout_s.
    """
    metadata = AdminClient(secure({"bootstrap.servers": bootstrap})).list_topics(topic, timeout=METADATA_TIMEOUT_S)
    partitions = sorted(metadata.topics[topic].partitions)
    consumer = Consumer(
        secure({
            "bootstrap.servers": bootstrap,
            "group.id": "ledger-reader",  # never committed: assign() reads without joining a group
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": 20,  # an empty partition answers (EOF) at once instead of after 500 ms
            "logger": CLIENT_LOG,
        })
    )
    try:
        consumer.assign([TopicPartition(topic, partition, 0) for partition in partitions])
        at_end: set[int] = set()
        deadline = time.monotonic() + timeout_s
        while len(at_end) < len(partitions):
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic}: end not reached within {timeout_s} s")
            message = consumer.poll(0.1)
            if message is None:
                continue
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    at_end.add(message.partition())
                    continue
                raise KafkaException(error)
            at_end.discard(message.partition())
            yield Record(
                message.topic(),
                message.partition(),
                message.offset(),
                message.key(),
                message.value(),
                tuple(message.headers() or ()),
            )
    finally:
        consumer.close()


class ConsumerLag:
    """`ledger_consumer_lag_seconds{processor,topic}`: how old the record being processed is (now minus its
    Kafka timestamp), and 0 when a poll finds the processor caught up; plus the last record's timestamp.

    Time, not offsets: Tansu's high watermark is wrong (docs/decisions.md §7), and an age is what an
    alert wants anyway. Set once per polled batch (its newest record per topic), not per record.
    """

    def __init__(self, processor: str, topics: Iterable[str], clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._lag = {topic: metrics.CONSUMER_LAG.labels(processor, topic) for topic in topics}
        self._last = {topic: metrics.CONSUMER_LAST_RECORD.labels(processor, topic) for topic in topics}

    def observe(self, topic: str, timestamp_s: float) -> None:
        """One record of `topic` with this timestamp (Unix seconds) is being processed."""
        if topic in self._lag:
            self._last[topic].set(timestamp_s)
            self._lag[topic].set(max(0.0, self.clock() - timestamp_s))

    def observe_batch(self, messages: Iterable) -> None:  # confluent_kafka.Message
        """The batch just polled: its newest record per topic (errors and EOF events are skipped)."""
        newest: dict[str, int] = {}
        for message in messages:
            if message.error() is None:
                kind, timestamp_ms = message.timestamp()
                if kind != TIMESTAMP_NOT_AVAILABLE and timestamp_ms > 0:
                    newest[message.topic()] = max(newest.get(message.topic(), 0), timestamp_ms)
        for topic, timestamp_ms in newest.items():
            self.observe(topic, timestamp_ms / 1000)

    def caught_up(self, topics: Iterable[str] | None = None) -> None:
        """A poll found nothing more on these topics (None: on every topic)."""
        for topic in tuple(self._lag) if topics is None else topics:
            if topic in self._lag:
                self._lag[topic].set(0)
