"""Waiting for the ledger to go quiet: every input chained by the sequencer, every event projected.

Called once the processors that make events on their own are stopped. Quiet means: the sequencer's
committed offsets reach the end of payments.incoming and ledger.commands, ledger.events did not grow
since the previous look, and the projector's positions reach its end. Bounded by a deadline.
"""

from __future__ import annotations

import time
from typing import Callable

from confluent_kafka import Consumer, TopicPartition

from processors.kafka_io import CLIENT_LOG
from processors.log_end import end_offsets
from projections.queries import projector_positions
from runtime.database import make_engine
from runtime.settings import Settings
from runtime.kafka_security import secure

POLL_S = 0.3


def committed(bootstrap: str, group: str, topic: str, partitions: list[int]) -> dict[int, int]:
    consumer = Consumer(secure({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False,
                         "logger": CLIENT_LOG}))
    try:
        offsets = consumer.committed([TopicPartition(topic, partition) for partition in partitions], timeout=10)
        return {tp.partition: max(tp.offset, 0) for tp in offsets}
    finally:
        consumer.close()


def sequencer_lag(settings: Settings, bootstrap: str) -> int:
    """Records in payments.incoming and ledger.commands the sequencer has not committed past."""
    lag = 0
    for topic in (settings.topic_incoming, settings.topic_commands):
        ends = end_offsets(bootstrap, topic)
        done = committed(bootstrap, settings.sequencer_group, topic, sorted(ends))
        lag += sum(max(0, end - done.get(partition, 0)) for partition, end in ends.items())
    return lag


def wait_quiet(settings: Settings, bootstrap: str, database_url: str, timeout_s: float,
               alive: Callable[[], None] = lambda: None) -> dict[str, int]:
    """Block until the ledger is quiet and projected; returns the final lags (all 0). TimeoutError if not."""
    engine = make_engine(database_url)
    deadline = time.monotonic() + timeout_s
    previous: dict[int, int] | None = None
    try:
        while True:
            alive()
            ends = end_offsets(bootstrap, settings.topic_events)
            behind = sequencer_lag(settings, bootstrap)
            positions = projector_positions(engine, settings.topic_events)
            unprojected = sum(max(0, end - positions.get(partition, 0)) for partition, end in ends.items())
            if behind == 0 and unprojected == 0 and ends == previous:
                return {"sequencer_lag": 0, "projector_lag": 0, "events": sum(ends.values())}
            if time.monotonic() > deadline:
                raise TimeoutError(f"the ledger did not go quiet within {timeout_s:.0f} s: the sequencer is {behind}"
                                   f" records behind, the projector {unprojected} events")
            previous = ends
            time.sleep(POLL_S)  # polling the broker and the database, bounded by the deadline above
    finally:
        engine.dispose()
