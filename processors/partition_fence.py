"""Fencing for one partition a processor instance owns: checked before each write, in time for it to land.

Two checks, because a processor writes to two places:
- PostgreSQL: `guard(connection)` in the transaction of each write locks the partition's lease row and
  checks owner and epoch, so a write either commits before a new owner takes over or not at all.
- Kafka: a record cannot carry a lease check to the broker (the embedded broker ignores transactional
  fencing). So `check()` refuses to produce unless the lease has at least `margin_s` left by the local
  clock, and the producer gives up on any record not delivered within its `message.timeout.ms`, which is
  shorter than the margin by more than librdkafka's 1 s timeout scan. Whatever an instance produced
  while it owned the partition is therefore stored (or failed) before its lease expires, and a new owner
  is only given the partition after that, so it reads everything the old owner wrote. An instance that is
  paused (SIGSTOP, a long GC, a VM migration) past its lease finds 0 s left when it resumes and stops.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy

from runtime.partition_leases import Fenced, PartitionLeases

EPOCH_HEADER = "ledger-epoch"  # "<partition>:<epoch>" on each record a partitioned instance produced
SCAN_S = 1.0  # librdkafka looks for timed-out messages once a second


def timing(lease_s: float) -> tuple[float, float, float]:
    """(renew every, produce while this much is left, producer message timeout) for a lease of lease_s seconds."""
    if lease_s < 3.0:
        raise ValueError(f"a partition lease must last at least 3 s, got {lease_s:g}")
    message_timeout_s = max(0.5, lease_s / 5)
    margin_s = message_timeout_s + SCAN_S + lease_s / 10
    return lease_s / 5, margin_s, message_timeout_s


@dataclass
class PartitionFence:
    leases: PartitionLeases
    partition: int
    margin_s: float
    epoch: int = 0  # the lease's epoch when the partition was gained (written on each record: EPOCH_HEADER)

    def check(self) -> None:
        left = self.leases.valid_for(self.partition)
        if left < self.margin_s:
            raise Fenced(self.partition, f"the lease has {left:.1f} s left, less than the {self.margin_s:.1f} s "
                                         "a record needs to be stored before it ends")

    def guard(self, connection: sqlalchemy.Connection) -> None:
        self.leases.guard(connection, [self.partition])
