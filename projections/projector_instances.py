"""Several projector instances, each owning some partitions of ledger.events: `ledger projector --partitioned`.

Every payee's events live in one partition of ledger.events, and every read-model row belongs to one
payee, except the daily totals, which are kept per partition (projections/read_model.py). So a partition
can be projected by one instance without seeing the others. Instances share the partitions through
leases in PostgreSQL (runtime/partition_leases.py, group `projector:<ledger.events>`), as the sequencer's
do (processors/sequencer_instances.py): the fair share gives partition i to the i-th live instance; a
joining instance takes over its share as the others release it after a checkpoint; the partitions of an
instance that dies or stops renewing move after `LEDGER_PARTITION_LEASE_S`, with a higher epoch.

Inside an instance each owned partition is a fold of its own (projections/projector.Fold), as the
sequencer has a core per partition: its checkpoint `projector:read-models:p<N>`, its stored payouts
under the same name (a full replay of one partition clears only its own), its row of
projection_positions. Why a fold per partition rather than one fold of the instance's partitions,
restarted when they change: a checkpoint must cover exactly what its partition's next owner resumes
from, and a lease is lost or handed over one partition at a time. With a fold per partition, a lost
partition's unwritten state is dropped and the others go on untouched; with one fold, every change of
ownership would split or rebuild the whole state. The folds share one engine and one reader; the reader
(a LogReader of the owned partitions) is opened again when they change, each kept fold going on from
where it is.

Every write transaction of a fold checks its partition's lease last, just before the commit
(PartitionLeases.guard: the lease row locked FOR SHARE, owner and epoch checked), so a write of a
paused or dead instance either commits before the new owner claims the partition or not at all.
Handover: a partition to release is written and checkpointed (guarded), then released; a lost partition,
or a write refused by the guard, drops the fold unwritten. The new owner starts from the partition's
checkpoint and each payee's recorded head, so what was dropped is written once, by it.

Dead letters (ledger.dlq) are projected by exactly one instance: the owner of partition 0, in the
batches of partition 0 (the rows, and ledger.dlq's positions, under that partition's lease).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import sqlalchemy

from processors.kafka_io import topic_partitions
from processors.partition_fence import timing
from projections.projector import BATCH_AGE_S, Fold, Projector, ProjectorStats
from runtime.partition_leases import Fenced, PartitionLeases
from runtime.settings import Settings

logger = logging.getLogger("ledger.projector")
DLQ_PARTITION = 0  # its owner projects the dead letters


def lease_group(settings: Settings) -> str:
    return f"projector:{settings.topic_events}"


class PartitionedProjector(Projector):
    def __init__(self, settings: Settings, bootstrap: str, database_url: str, *, member: str | None = None,
                 batch_events: int = 2000, batch_age_s: float = BATCH_AGE_S,
                 log: Callable[[str], None] | None = None) -> None:
        super().__init__(settings, bootstrap, database_url, batch_events=batch_events, batch_age_s=batch_age_s,
                         log=log)
        self.partitions = len(topic_partitions(bootstrap, settings.topic_events))
        self._dlq_partitions = topic_partitions(bootstrap, settings.topic_dlq)
        renew_s, _, _ = timing(settings.partition_lease_s)
        self.rebalance_every_s = renew_s
        self.leases = PartitionLeases(self._engine, lease_group(settings), self.partitions, member=member,
                                      ttl_s=settings.partition_lease_s, renew_every_s=renew_s, processor="projector")
        self.finished = ProjectorStats()  # the counts of the folds no longer owned
        self._next_rebalance = 0.0
        self._changed = False  # the folds changed: the reader must be opened again

    @property
    def member(self) -> str:
        return self.leases.member

    def totals(self) -> ProjectorStats:
        total = ProjectorStats()
        for stats in [self.finished, *(fold.stats for fold in self.folds.values())]:
            total.add(stats)
        return total

    def run(self, idle_exit_s: float | None = None, handle_signals: bool = True) -> ProjectorStats:
        if handle_signals:
            self._stop.install()
        self.leases.start()
        self.log(f"projector instance {self.member}: sharing {self.partitions} partitions of "
                 f"{self.settings.topic_events} (lease {self.settings.partition_lease_s:g} s); the owner of "
                 f"partition {DLQ_PARTITION} projects {self.settings.topic_dlq}")
        clean = False
        try:
            self._loop(idle_exit_s)
            clean = True
        finally:
            try:
                for partition in sorted(self.folds):
                    if clean:
                        self._hand_over(partition)
                    else:  # whatever failed, nothing more is written: the next owner starts from the checkpoint
                        self._abandon(partition, "the instance is stopping after an error")
            finally:
                if self._reader is not None:
                    self._reader.close()
                    self._reader = None
                self.leases.stop()  # released: the others take over at once
                self._engine.dispose()
        self.stats = self.totals()
        return self.stats

    def _between_polls(self) -> None:
        if time.monotonic() >= self._next_rebalance:
            self._rebalance()
            self._next_rebalance = time.monotonic() + self.rebalance_every_s
        if self._changed:
            self._changed = False
            self._reopen_reader()
            owned = sorted(key for key in self.folds if key is not None)
            self.log(f"projector instance {self.member}: reading partitions {owned} of {self.settings.topic_events}"
                     + (f" and {self.settings.topic_dlq}" if DLQ_PARTITION in owned else ""))

    def _rebalance(self) -> None:
        change = self.leases.rebalance()
        for partition in sorted(change.lost):
            if partition in self.folds:
                self._abandon(partition, "its lease was lost")
        for partition in sorted(change.to_release):
            if partition in self.folds:
                self._hand_over(partition)
            self.leases.release([partition])
        if change.gained:
            self._heads = self._stored_heads()  # what the previous owners wrote, up to their last guarded commit
            for partition, epoch in sorted(change.gained.items()):
                self._gain(partition, epoch)

    def _gain(self, partition: int, epoch: int) -> None:
        fold = Fold(self._engine, self.settings, partition, reads_dlq=partition == DLQ_PARTITION)
        try:
            self._resume(fold)
        except Fenced as exc:
            self.log(f"partition {partition} (epoch {epoch}): fenced while taking over: {exc.reason}")
            return
        self.folds[partition] = fold
        self._changed = True
        start = "from its checkpoint" if fold.resumed.checkpoint is not None else f"by a full replay ({fold.resumed.reason})"
        self.log(f"partition {partition} (epoch {epoch}): projecting, {start}"
                 + (f"; and the dead letters of {self.settings.topic_dlq}" if fold.reads_dlq else ""))

    def _hand_over(self, partition: int) -> None:
        """Write what is left of the partition and its checkpoint (guarded); its next owner reads no tail."""
        fold = self.folds.pop(partition)
        try:
            self._finish(fold)
        except Fenced as exc:
            self.log(f"partition {partition}: fenced while handing over ({exc.reason}); the next owner starts from "
                     "the partition's checkpoint")
        self.finished.add(fold.stats)
        self._changed = True

    def _abandon(self, partition: int, why: str) -> None:
        """A lease lost: nothing more is written for this partition; what it had not written is its next owner's."""
        fold = self.folds.pop(partition)
        logger.warning("partition %d: stopped without writing anything more: %s", partition, why)
        self.finished.add(fold.stats)
        self._changed = True

    def _fenced(self, fold: Fold, error: Fenced) -> None:
        assert fold.partition is not None
        self._abandon(fold.partition, str(error))

    def _guard(self, connection: sqlalchemy.Connection, fold: Fold) -> None:
        assert fold.partition is not None
        self.leases.guard(connection, [fold.partition])
