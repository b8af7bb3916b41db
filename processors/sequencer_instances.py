"""Several sequencer instances, each owning some partitions: `ledger sequencer --partitioned`.

Every payee's chain lives in one partition of ledger.events, and the ledger's producers place a payee's
input records (payments.incoming, ledger.commands) at the same partition number, so a partition can be
sequenced by one instance without seeing the others. Instances share the partitions through leases in
PostgreSQL (runtime/partition_leases.py): the fair share gives partition i to the i-th live instance
(round robin, instances sorted by name). An instance that joins takes over its share as the others
release it after a checkpoint; an instance that dies or stops renewing loses its leases after
`LEDGER_PARTITION_LEASE_S`, and the others take them over with a higher epoch.

Inside the instance each owned partition is a `Sequencer(partition=p)`: its own chains, checkpoint,
waiting refunds and run marker. They share one consumer and one producer. Every write is fenced
(processors/partition_fence.py): a lost or expiring lease stops that partition before its next write,
and its state is dropped unwritten; the new owner rebuilds from the log and the partition's checkpoint.
A business id stays unique across partitions through claims (processors/sequencer_claims.py).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import fields
from typing import Callable

from confluent_kafka import OFFSET_STORED, TopicPartition

from processors.kafka_io import ConsumerLag, same_partition_count
from processors.partition_fence import PartitionFence, timing
from processors.sequencer import INFRASTRUCTURE_ERRORS, Sequencer, SequencerStats, good_records
from processors.sequencer_outputs import make_output_producer
from runtime.database import make_engine
from runtime.partition_leases import Fenced, PartitionLeases
from runtime.settings import Settings

logger = logging.getLogger("ledger.sequencer")
NO_PARTITION_WAIT_S = 0.2  # an instance that owns nothing checks for a share this often


def lease_group(settings: Settings) -> str:
    return f"sequencer:{settings.topic_events}"


def check_layout(bootstrap: str, settings: Settings) -> int:
    """Partitioned sequencing needs the input topics laid out like ledger.events; returns the partition count."""
    return same_partition_count(bootstrap, (settings.topic_events, settings.topic_incoming, settings.topic_commands),
                                "partitioned sequencing")


def _merge(total: SequencerStats, stats: SequencerStats) -> None:
    for field in fields(SequencerStats):
        value = getattr(stats, field.name)
        if isinstance(value, dict):
            merged = getattr(total, field.name)
            for key, count in value.items():
                merged[key] = merged.get(key, 0) + count
        else:
            setattr(total, field.name, getattr(total, field.name) + value)


class PartitionedSequencer:
    def __init__(self, settings: Settings, bootstrap: str, database_url: str, *,
                 log: Callable[[str], None] | None = None, member: str | None = None) -> None:
        self.settings, self.bootstrap, self.database_url = settings, bootstrap, database_url
        self.log = log or logger.info
        self.partitions = check_layout(bootstrap, settings)
        renew_s, self.margin_s, message_timeout_s = timing(settings.partition_lease_s)
        self.rebalance_every_s = renew_s
        self.engine = make_engine(database_url)
        self.leases = PartitionLeases(self.engine, lease_group(settings), self.partitions, member=member,
                                      ttl_s=settings.partition_lease_s, renew_every_s=renew_s, processor="sequencer")
        self.producer = make_output_producer(bootstrap, message_timeout_s=message_timeout_s)
        self.consumer = Sequencer.make_consumer(bootstrap, settings)
        self.cores: dict[int, Sequencer] = {}
        self.finished = SequencerStats()  # counts of partitions no longer owned
        self._stop = threading.Event()

    @property
    def member(self) -> str:
        return self.leases.member

    def stop(self) -> None:
        self._stop.set()

    def stats(self) -> SequencerStats:
        total = SequencerStats()
        for stats in [self.finished, *(core.stats for core in self.cores.values())]:
            _merge(total, stats)
        return total

    def run(self, idle_exit_s: float | None = None, handle_signals: bool = True) -> SequencerStats:
        if handle_signals:
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, lambda *_: self.stop())
        topics = (self.settings.topic_incoming, self.settings.topic_commands)
        lag = ConsumerLag("sequencer", topics)
        self.leases.start()
        self.log(f"sequencer instance {self.member}: sharing {self.partitions} partitions of "
                 f"{self.settings.topic_events} (lease {self.settings.partition_lease_s:g} s)")
        clean = False
        last_input = next_rebalance = time.monotonic()
        try:
            while not self._stop.is_set():
                if time.monotonic() >= next_rebalance:
                    self._rebalance()
                    next_rebalance = time.monotonic() + self.rebalance_every_s
                if not self.cores:
                    self._stop.wait(NO_PARTITION_WAIT_S)
                    messages: list = []
                else:
                    messages = self.consumer.consume(self.settings.sequencer_batch_max,
                                                     self.settings.sequencer_batch_wait_ms / 1000)
                    lag.observe_batch(messages)
                    if len(messages) < self.settings.sequencer_batch_max:
                        lag.caught_up(set(topics) - {message.topic() for message in messages})
                self._dispatch(good_records(messages))
                if messages:
                    last_input = time.monotonic()
                if not messages and idle_exit_s is not None and time.monotonic() - last_input >= idle_exit_s:
                    break
            clean = True
        except INFRASTRUCTURE_ERRORS:
            for core in self.cores.values():
                core._forget_alone()
            raise
        finally:
            self.consumer.close()
            for partition in sorted(self.cores):
                self._finish(partition, clean)
            if clean:
                self.leases.stop()  # released: the others take over at once
            self.producer.flush(30)
            self.engine.dispose()
        return self.stats()

    def _dispatch(self, records: list) -> None:
        by_partition: dict[int, list] = {}
        for record in records:
            by_partition.setdefault(record.partition, []).append(record)
        for partition in list(self.cores):
            core = self.cores[partition]
            try:
                if partition in by_partition:
                    core.process(self.consumer, by_partition[partition])
                else:
                    core.idle(self.consumer)
                core.tick()
            except Fenced as exc:
                self._abandon(partition, str(exc))

    def _rebalance(self) -> None:
        change = self.leases.rebalance()
        for partition in sorted(change.lost):
            if partition in self.cores:
                self._abandon(partition, "its lease was lost")
        for partition in sorted(change.to_release):
            if partition in self.cores:
                self._finish(partition, clean=True)
            self.leases.release([partition])
        for partition, epoch in sorted(change.gained.items()):
            self._gain(partition, epoch)

    def _gain(self, partition: int, epoch: int) -> None:
        core = Sequencer(self.settings, self.bootstrap, database_url=self.database_url, log=self.log,
                         partition=partition, fence=PartitionFence(self.leases, partition, self.margin_s, epoch),
                         producer=self.producer)
        try:
            core.rebuild()
            self.consumer.incremental_assign(self._inputs(partition))
            core.begin(self.consumer)
        except Fenced as exc:
            core.store.close()
            self.consumer.incremental_unassign(self._inputs(partition))
            self.log(f"partition {partition} (epoch {epoch}): fenced while taking over: {exc.reason}")
            return
        self.cores[partition] = core
        self.log(f"partition {partition} (epoch {epoch}): sequencing, {core.stats.rebuilt_events} records read "
                 f"to take over in {core.stats.rebuild_s:.2f} s")

    def _finish(self, partition: int, clean: bool) -> None:
        """Hand a partition over: its checkpoint is written (fenced), then its inputs are unassigned."""
        core = self.cores.pop(partition)
        try:
            core.finish(clean)
        except Fenced as exc:
            self.log(f"partition {partition}: fenced while handing over ({exc.reason}); the next owner replays")
        self._unassign(partition)
        self._add_finished(core)

    def _abandon(self, partition: int, why: str) -> None:
        """A lease lost: nothing more is written for this partition; what it did not checkpoint is replayed."""
        core = self.cores.pop(partition)
        logger.warning("partition %d: stopped without writing anything more: %s", partition, why)
        core.store.close()
        self._unassign(partition)
        self._add_finished(core)

    def _unassign(self, partition: int) -> None:
        try:
            self.consumer.incremental_unassign(self._inputs(partition))
        except RuntimeError:  # the consumer is already closed (stopping)
            pass

    def _add_finished(self, core: Sequencer) -> None:
        _merge(self.finished, core.stats)

    def _inputs(self, partition: int) -> list[TopicPartition]:
        return [TopicPartition(topic, partition, OFFSET_STORED)
                for topic in (self.settings.topic_incoming, self.settings.topic_commands)]
