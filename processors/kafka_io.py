"""Producers and bounded topic readers shared by processors, commands and tests.

Readers use assign() (starts at once; subscribe() waits ~23 s for a group join on Tansu) and detect
the end of a partition with partition EOF events: Tansu's ListOffsets high watermark is the last
batch's base offset + 1, not the last offset + 1, so watermarks must not be used to find the end.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterator

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

METADATA_TIMEOUT_S = 10.0


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
    }
    config.update(overrides)
    return Producer(config)


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
    metadata = AdminClient({"bootstrap.servers": bootstrap}).list_topics(topic, timeout=METADATA_TIMEOUT_S)
    if topic not in metadata.topics or metadata.topics[topic].error is not None:
        raise KafkaException(f"topic {topic} does not exist: run `ledger up`")
    return sorted(metadata.topics[topic].partitions)


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
    metadata = AdminClient({"bootstrap.servers": bootstrap}).list_topics(topic, timeout=METADATA_TIMEOUT_S)
    partitions = sorted(metadata.topics[topic].partitions)
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "ledger-reader",  # never committed: assign() reads without joining a group
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": 20,  # an empty partition answers (EOF) at once instead of after 500 ms
        }
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
