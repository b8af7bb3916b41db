"""Where each partition of a topic really ends, cheaply, on brokers whose high watermark is short.

Tansu's ListOffsets high watermark is the last batch's base offset + 1 (docs/decisions.md §7), so it
can fall short of the true end by up to one batch. Reading from that offset to the partition's EOF
reads at most one batch and gives the exact end on Tansu and on Apache Kafka alike (where the
watermark is already right and the read returns at once).
"""

from __future__ import annotations

import time

from confluent_kafka import Consumer, KafkaError, TopicPartition

from processors.kafka_io import topic_partitions
from runtime.kafka_security import secure


def end_offsets(bootstrap: str, topic: str, timeout_s: float = 5.0) -> dict[int, int]:
    """The next offset to be written, per partition; raises TimeoutError if the broker does not answer."""
    consumer = Consumer(secure({"bootstrap.servers": bootstrap, "group.id": "ledger-log-end", "enable.auto.commit": False,
                         "enable.partition.eof": True, "fetch.wait.max.ms": 50}))
    deadline = time.monotonic() + timeout_s
    try:
        ends: dict[int, int] = {}
        starts = []
        for partition in topic_partitions(bootstrap, topic):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout_s)
            ends[partition] = max(low, high)
            if high > low:
                starts.append(TopicPartition(topic, partition, high - 1))
        if not starts:
            return ends
        consumer.assign(starts)
        open_partitions = {tp.partition for tp in starts}
        while open_partitions:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading the end of {topic} took more than {timeout_s} s")
            message = consumer.poll(0.2)
            if message is None:
                continue
            if message.error() is not None:
                if message.error().code() == KafkaError._PARTITION_EOF:
                    open_partitions.discard(message.partition())
                continue
            ends[message.partition()] = max(ends[message.partition()], message.offset() + 1)
        return ends
    finally:
        consumer.close()
