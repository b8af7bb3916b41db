"""The one consume loop every long-running processor uses.

`LogReader` owns the consumer: assign() at given positions (it starts at once; subscribe() waits
~23 s for a group join on Tansu), bounded batches (`consume(batch_max, wait)`), end-of-partition
detection (partition EOF events: Tansu's high watermark is short, docs/decisions.md §7), consumer
lag as time (processors/kafka_io.ConsumerLag), transient and fatal errors, and the positions and
proofs a checkpoint needs: the next offset of every assigned partition and the last record read
there. `StopFlag` turns SIGTERM/SIGINT into a flag the loops poll. Processors keep only their own
decisions: what a record does, and when to write.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Any, Collection, Iterable, Iterator, Mapping

from confluent_kafka import OFFSET_STORED, Consumer, KafkaError, KafkaException, TopicPartition

from processors.checkpoints import Positions, Proofs, record_hash
from processors.kafka_io import CLIENT_LOG, ConsumerLag, topic_partitions
from processors.prefetch import BOUNDED_PREFETCH
from runtime.kafka_security import secure

logger = logging.getLogger("ledger.reader")


class StopFlag:
    """Set by stop() or, once installed, by SIGTERM/SIGINT; loops check it between batches."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def install(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: self._event.set())

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()


class LogReader:
    """Reads topics from given positions in bounded batches and knows where it is in each partition."""

    def __init__(self, bootstrap: str, processor: str, starts: Mapping[str, Mapping[int, int] | None], *,
                 group_id: str | None = None, batch_max: int = 1000, wait_s: float = 0.2,
                 proofs: Proofs | None = None, config: Mapping[str, Any] | None = None,
                 only: Mapping[str, Collection[int]] | None = None) -> None:
        """`starts`: per topic, the next offset per partition; None for a topic read from the group's
        committed offsets (OFFSET_STORED, then the beginning). `proofs`: the hashes known for the start
        positions (a checkpoint's), carried over for partitions that get no new record. `only`: for the
        topics it names, the partitions to read (a processor instance that owns some of them)."""
        self.bootstrap, self.processor = bootstrap, processor
        self.batch_max, self.wait_s = batch_max, wait_s
        self.topics = tuple(starts)
        assignment: list[TopicPartition] = []
        self._next: dict[tuple[str, int], int] = {}
        for topic, parts in starts.items():
            for partition in topic_partitions(bootstrap, topic):
                if only is not None and topic in only and partition not in only[topic]:
                    continue
                if parts is None:
                    assignment.append(TopicPartition(topic, partition, OFFSET_STORED))
                else:
                    offset = parts.get(partition, 0)
                    self._next[(topic, partition)] = offset
                    assignment.append(TopicPartition(topic, partition, offset))
        self._partitions = {(tp.topic, tp.partition) for tp in assignment}
        self._last_value: dict[tuple[str, int], bytes] = {}
        self._proofs: dict[tuple[str, int], str] = {
            (topic, partition): digest for topic, parts in (proofs or {}).items() for partition, digest in parts.items()}
        self.at_end: set[tuple[str, int]] = set()
        self.records = 0
        self.lag = ConsumerLag(processor, self.topics)
        self.consumer = Consumer(secure({
            "bootstrap.servers": bootstrap, "group.id": group_id or f"ledger-{processor}-reader",
            "enable.auto.commit": False, "enable.auto.offset.store": False, "enable.partition.eof": True,
            "auto.offset.reset": "earliest", "fetch.wait.max.ms": 50, "logger": CLIENT_LOG,
            **BOUNDED_PREFETCH, **(config or {})}))  # a reader far behind must not hold the history in its queue
        self.consumer.assign(assignment)

    @property
    def caught_up(self) -> bool:
        """Every assigned partition has reached its end since its last record."""
        return self.at_end >= self._partitions

    def poll(self, wait_s: float | None = None, batch_max: int | None = None) -> list:
        """The next batch of records (confluent_kafka.Message, errors handled), at most batch_max."""
        messages = self.consumer.consume(batch_max or self.batch_max, self.wait_s if wait_s is None else wait_s)
        self.lag.observe_batch(messages)
        good = []
        for message in messages:
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    self.at_end.add((message.topic(), message.partition()))
                elif error.fatal():
                    raise KafkaException(error)
                else:
                    logger.warning("%s consumer: %s", self.processor, error.str())  # transient: librdkafka retries
                continue
            where = (message.topic(), message.partition())
            self.at_end.discard(where)
            self._next[where] = message.offset() + 1
            self._last_value[where] = message.value()
            good.append(message)
        self.records += len(good)
        if not good:
            self.lag.caught_up()
        else:
            self.lag.caught_up(topic for topic in self.topics
                               if all(where in self.at_end for where in self._partitions if where[0] == topic))
        return good

    def batches_to_end(self, timeout_s: float, what: str = "") -> Iterator[list]:
        """Batches until every partition is at its end (a tail read at start). TimeoutError when nothing
        arrives for timeout_s without the end being reached: a long replay that makes progress goes on."""
        deadline = time.monotonic() + timeout_s
        while not self.caught_up:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {what or ', '.join(self.topics)}: nothing arrived for {timeout_s} s "
                                   "and the end was not reached")
            batch = self.poll()
            if batch:
                deadline = time.monotonic() + timeout_s
            yield batch

    def positions(self, topics: Iterable[str] | None = None) -> Positions:
        """The next offset of every partition whose position is known (all but unread OFFSET_STORED ones)."""
        chosen = set(self.topics if topics is None else topics)
        positions: Positions = {}
        for (topic, partition), offset in self._next.items():
            if topic in chosen:
                positions.setdefault(topic, {})[partition] = offset
        return positions

    def proofs(self, topics: Iterable[str] | None = None) -> Proofs:
        """The hash of the record before each known position (read here, or carried from the start)."""
        for where, value in self._last_value.items():
            self._proofs[where] = record_hash(value)
        self._last_value.clear()
        proofs: Proofs = {}
        for topic, parts in self.positions(topics).items():
            for partition, offset in parts.items():
                if offset > 0:
                    proofs.setdefault(topic, {})[partition] = self._proofs[(topic, partition)]
        return proofs

    def checkpoint_positions(self, topics: Iterable[str] | None = None) -> Positions:
        """positions() without the partitions at offset 0 (nothing to prove there)."""
        return {topic: {p: o for p, o in parts.items() if o > 0} for topic, parts in self.positions(topics).items()}

    def commit(self, messages: Iterable) -> None:
        """Commit the group offsets past these records (synchronously)."""
        positions: dict[tuple[str, int], int] = {}
        for message in messages:
            where = (message.topic(), message.partition())
            positions[where] = max(positions.get(where, -1), message.offset() + 1)
        if positions:
            self.consumer.commit(offsets=[TopicPartition(topic, partition, offset)
                                          for (topic, partition), offset in positions.items()], asynchronous=False)

    def close(self) -> None:
        self.consumer.close()
