"""processors/partitioning.py places keys exactly where the ledger's producers (murmur2_random) do."""

from __future__ import annotations

import uuid

from confluent_kafka.admin import AdminClient, NewTopic

from processors.kafka_io import make_producer
from processors.partitioning import murmur2, partition_for


def test_murmur2_matches_known_java_values() -> None:
    # values of org.apache.kafka.common.utils.Utils.murmur2, as published in Kafka's own tests
    assert murmur2(b"21") & 0xFFFFFFFF == (-973932308) & 0xFFFFFFFF
    assert murmur2(b"foobar") & 0xFFFFFFFF == (-790332482) & 0xFFFFFFFF
    assert murmur2(b"a-little-bit-long-string") & 0xFFFFFFFF == (-985981536) & 0xFFFFFFFF
    assert murmur2(b"a-little-bit-longer-string") & 0xFFFFFFFF == (-1486304829) & 0xFFFFFFFF
    assert murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8") & 0xFFFFFFFF == (-58897971) & 0xFFFFFFFF
    assert murmur2(b"abc") & 0xFFFFFFFF == 479470107


def test_partition_for_agrees_with_the_producer(kafka_bootstrap: str) -> None:
    topic = f"partitioning-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    admin.create_topics([NewTopic(topic, 5, 1)])[topic].result(30)
    producer = make_producer(kafka_bootstrap)
    placed: dict[bytes, int] = {}
    keys = [f"payee-{i}".encode() for i in range(200)] + ["café-ü-€".encode(), b"x", b"xy", b"xyz"]
    for key in keys:
        producer.produce(topic, b"v", key, on_delivery=lambda error, message, key=key: placed.__setitem__(
            key, message.partition()) if error is None else None)
    assert producer.flush(30) == 0
    assert placed == {key: partition_for(key, 5) for key in keys}
    admin.delete_topics([topic])
