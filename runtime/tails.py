"""Reading the tail of a topic: from given offsets to the end measured before reading, with timestamps.

The end comes from processors/log_end.py (exact on Tansu, whose high watermark can be short), and a
partition is done when its last record before that end is read, so nothing depends on partition-EOF
events arriving for a start offset in the middle of a batch. Records written after the end was measured
are not read: the caller takes a snapshot.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterator

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Consumer, KafkaException, TopicPartition

from processors.kafka_io import CLIENT_LOG
from processors.log_end import end_offsets
from runtime.kafka_security import secure

Progress = Callable[[str, int, int], None]  # (phase, records done, records in the tail)
STALL_S = 30.0  # no record for this long while records are known to be there: the broker is not answering


@dataclass(frozen=True)
class TailRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...]
    timestamp_ms: int | None


def committed_offsets(bootstrap: str, group: str, topic: str, partitions: list[int],
                      timeout_s: float = 10.0) -> dict[int, int]:
    """The consumer group's committed next offset per partition; 0 where it never committed."""
    consumer = Consumer(secure({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False,
                         "logger": CLIENT_LOG}))
    try:
        offsets = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=timeout_s)
        for tp in offsets:
            if tp.error is not None:
                raise KafkaException(tp.error)
        return {tp.partition: max(tp.offset, 0) for tp in offsets}
    finally:
        consumer.close()


@dataclass(frozen=True)
class Tail:
    topic: str
    starts: dict[int, int]
    ends: dict[int, int]

    @property
    def size(self) -> int:
        return sum(max(0, end - self.starts.get(p, 0)) for p, end in self.ends.items())


def measure(bootstrap: str, topic: str, starts: dict[int, int], timeout_s: float = 10.0) -> Tail:
    """Where the tail of `topic` after `starts` (absent partition: 0) ends right now."""
    ends = end_offsets(bootstrap, topic, timeout_s=timeout_s)
    return Tail(topic, {p: starts.get(p, 0) for p in ends}, ends)


def read_tail(bootstrap: str, tail: Tail, stall_s: float = STALL_S,
              deadline: float | None = None) -> Iterator[TailRecord]:
    """Every record of the measured tail, in offset order per partition. TimeoutError if the broker stalls
    for stall_s, or past `deadline` (time.monotonic())."""
    wanted = {p: (start, tail.ends[p]) for p, start in tail.starts.items() if start < tail.ends[p]}
    if not wanted:
        return
    consumer = Consumer(secure({"bootstrap.servers": bootstrap, "group.id": "ledger-tail-reader", "enable.auto.commit": False,
                         "auto.offset.reset": "earliest", "fetch.wait.max.ms": 50, "logger": CLIENT_LOG}))
    try:
        consumer.assign([TopicPartition(tail.topic, p, start) for p, (start, _) in wanted.items()])
        last_record = time.monotonic()
        while wanted:
            now = time.monotonic()
            if now - last_record > stall_s or (deadline is not None and now > deadline):
                raise TimeoutError(f"reading {tail.topic}: {len(wanted)} partition(s) not read to their end in time")
            for message in consumer.consume(500, 0.2):
                error = message.error()
                if error is not None:
                    if error.fatal():
                        raise KafkaException(error)
                    continue  # transient (librdkafka retries) or a partition EOF
                partition = message.partition()
                if partition not in wanted or message.offset() >= wanted[partition][1]:
                    continue  # beyond the snapshot's end
                last_record = time.monotonic()
                kind, timestamp_ms = message.timestamp()
                yield TailRecord(tail.topic, partition, message.offset(), message.key(), message.value(),
                                 tuple(message.headers() or ()),
                                 None if kind == TIMESTAMP_NOT_AVAILABLE or timestamp_ms < 0 else timestamp_ms)
                if message.offset() + 1 >= wanted[partition][1]:
                    del wanted[partition]
    finally:
        consumer.close()

