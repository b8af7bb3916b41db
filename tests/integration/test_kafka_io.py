"""Topic creation and bounded reads on the real broker."""

from __future__ import annotations

import uuid

import pytest

from processors.kafka_io import DeliveryTracker, flush_or_raise, make_producer, read_topic
from runtime.kafka_admin import TopicError, ensure_topics, topic_partition_counts
from runtime.settings import TopicSpec


def test_read_topic_reads_every_record_of_large_batches(settings):
    # Tansu reports a batch-based high watermark; reading to partition EOF must still see everything.
    producer = make_producer(settings.kafka_bootstrap, **{"linger.ms": 50, "batch.num.messages": 10_000})
    tracker = DeliveryTracker()
    count = 3_000
    for index in range(count):
        producer.produce(settings.topic_events, key=f"payee-{index % 7}".encode(), value=b"%d" % index,
                         on_delivery=tracker)
        producer.poll(0)
    flush_or_raise(producer, tracker, count)

    values = sorted(int(record.value) for record in read_topic(settings.kafka_bootstrap, settings.topic_events))

    assert values == list(range(count))


def test_ensure_topics_is_idempotent_and_refuses_a_partition_mismatch(kafka_bootstrap):
    name = f"t-{uuid.uuid4().hex[:8]}"
    assert ensure_topics(kafka_bootstrap, [TopicSpec(name, 3, {})]) == [name]
    assert ensure_topics(kafka_bootstrap, [TopicSpec(name, 3, {})]) == []
    assert topic_partition_counts(kafka_bootstrap)[name] == 3
    with pytest.raises(TopicError, match=f"{name} has 3 partitions but the settings say 5"):
        ensure_topics(kafka_bootstrap, [TopicSpec(name, 5, {})])
