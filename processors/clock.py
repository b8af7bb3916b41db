"""Ticks on ledger.clock: "close what is due as of T", one per partition so every aggregator worker sees it."""

from __future__ import annotations

from datetime import datetime

from processors.kafka_io import DeliveryTracker, flush_or_raise, make_producer, topic_partitions


def send_tick(bootstrap: str, topic: str, at: datetime) -> int:
    """Send `at` (timezone-aware) to every partition of `topic`; returns how many partitions got it."""
    if at.tzinfo is None:
        raise ValueError(f"tick time {at.isoformat()} has no UTC offset")
    partitions = topic_partitions(bootstrap, topic)
    producer, tracker = make_producer(bootstrap), DeliveryTracker()
    for partition in partitions:
        producer.produce(topic, partition=partition, value=at.isoformat().encode(), on_delivery=tracker)
    flush_or_raise(producer, tracker, len(partitions))
    return len(partitions)
