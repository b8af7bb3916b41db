"""Reading the benchmark's topics: the raw read rate (figure a), and a tail that follows ledger.events to its exact end.

Tansu's high watermark can be short by up to one batch (docs/decisions.md §7), so ends come from
processors/log_end.end_offsets (exact on Tansu and Kafka alike) and from partition EOF events, never from
watermarks alone.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from processors.kafka_io import CLIENT_LOG, topic_partitions
from processors.log_end import end_offsets

CONSUME_BATCH = 10_000


@dataclass(frozen=True)
class TailRecord:
    partition: int
    offset: int
    value: bytes
    timestamp_s: float  # the record's Kafka timestamp (producer CreateTime): when the writer produced it


def _consumer(bootstrap: str, group: str) -> Consumer:
    return Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False,
                     "enable.partition.eof": True, "auto.offset.reset": "earliest", "fetch.wait.max.ms": 20,
                     "logger": CLIENT_LOG})


def _read_to_end(consumer: Consumer, topic: str, starts: dict[int, int], deadline: float) -> int:
    """Assign every partition at its start and consume in batches until EOF on each; returns the records read."""
    consumer.assign([TopicPartition(topic, partition, offset) for partition, offset in starts.items()])
    at_end: set[int] = set()
    count = 0
    while len(at_end) < len(starts):
        if time.monotonic() > deadline:
            raise TimeoutError(f"raw read of {topic}: end not reached in time")
        for message in consumer.consume(CONSUME_BATCH, 0.1):
            error = message.error()
            if error is None:
                count += 1
                at_end.discard(message.partition())
            elif error.code() == KafkaError._PARTITION_EOF:
                at_end.add(message.partition())
            else:
                raise KafkaException(error)
    return count


def raw_read_rate(bootstrap: str, topic: str, repeats: int, timeout_s: float) -> dict[str, float]:
    """(a) A plain consumer reads the whole topic `repeats` times; the median rate in records/s is the yardstick.

    One consumer, started at each partition's low watermark (the low one is right on Tansu; only the high one
    is short), warmed up by one untimed read: OFFSET_BEGINNING would add a ~0.5 s offset lookup per read here,
    which would swamp a topic this small.
    """
    consumer = _consumer(bootstrap, "ledger-bench-raw-read")
    deadline = time.monotonic() + timeout_s
    try:
        starts = {partition: consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)[0]
                  for partition in topic_partitions(bootstrap, topic)}
        count = _read_to_end(consumer, topic, starts, deadline)
        if count == 0:
            raise ValueError(f"raw read of {topic}: the topic is empty")
        rates = []
        for _ in range(repeats):
            started = time.monotonic()
            again = _read_to_end(consumer, topic, starts, deadline)
            rates.append(again / (time.monotonic() - started))
            if again != count:
                raise ValueError(f"raw read of {topic}: {again} records, {count} before")
    finally:
        consumer.close()
    return {"records": count, "repeats": repeats, "records_per_s": statistics.median(rates),
            "min_records_per_s": min(rates), "max_records_per_s": max(rates)}


class LogTail:
    """Follows a topic from its end at creation: drain() returns what was written since, up to the exact end."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap, self.topic = bootstrap, topic
        self.positions = end_offsets(bootstrap, topic)
        self._consumer = _consumer(bootstrap, "ledger-bench-tail")
        self._consumer.assign([TopicPartition(topic, p, offset) for p, offset in self.positions.items()])

    def drain(self, timeout_s: float = 30.0) -> list[TailRecord]:
        ends = end_offsets(self.bootstrap, self.topic, timeout_s=timeout_s)
        records: list[TailRecord] = []
        deadline = time.monotonic() + timeout_s
        while any(self.positions.get(p, 0) < end for p, end in ends.items()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"tail of {self.topic}: the end {ends} not reached within {timeout_s} s")
            for message in self._consumer.consume(CONSUME_BATCH, 0.1):
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        continue
                    raise KafkaException(error)
                records.append(TailRecord(message.partition(), message.offset(), message.value() or b"",
                                          message.timestamp()[1] / 1000))
                self.positions[message.partition()] = message.offset() + 1
        return records

    def close(self) -> None:
        self._consumer.close()
