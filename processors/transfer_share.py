"""What a partitioned transfer processor instance may act for: some partitions, and a share of each provider.

`ledger transfers --partitioned` runs one TransferProcessor core per instance over the partitions the
instance holds leases on (processors/transfer_instances.py). The core gets a TransferShare:
- `check(payee_id)` before each record it produces and each provider call (in the lane's thread, just
  before the call): the payee's partition must be one of the core's, still held with the epoch the core
  started with, and with at least `margin_s` of lease left (processors/partition_fence.py says why that
  margin is enough for a record to be stored before the lease ends);
- `guard(connection, partitions)` in the transaction of each checkpoint it writes;
- `members`: the live instances; each takes 1/members of every provider lane's concurrency, call rate
  and window, so the provider's limits hold for the ledger (runtime/providers.py has the limits);
- `should_yield()`: asked on every round of the core's loop; True when the instance's partitions or
  its member count changed, and the core then stops (cleanly: checkpoint, guarded) for a new one.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Iterable

import sqlalchemy

from processors.partitioning import partition_for
from runtime.partition_leases import Fenced, PartitionLeases


@lru_cache(maxsize=65_536)
def _partition(payee_id: str, partitions: int) -> int:
    return partition_for(payee_id.encode(), partitions)


@dataclass
class TransferShare:
    leases: PartitionLeases
    epochs: dict[int, int]  # the partitions this core acts for -> their epoch when it started
    partitions_total: int  # of ledger.events (and ledger.commands: the same count)
    margin_s: float
    members: int = 1
    should_yield: Callable[[], bool] = lambda: False

    @property
    def member(self) -> str:
        return self.leases.member

    @property
    def partitions(self) -> list[int]:
        return sorted(self.epochs)

    def partition_of(self, payee_id: str) -> int:
        return _partition(payee_id, self.partitions_total)

    def check(self, payee_id: str) -> None:
        """Raise Fenced unless this core may still write (or call a provider) for the payee's partition."""
        partition = self.partition_of(payee_id)
        epoch = self.epochs.get(partition)
        if epoch is None:
            raise Fenced(partition, f"payee {payee_id} is not in a partition of this instance")
        held = self.leases.owned().get(partition)
        if held != epoch:
            raise Fenced(partition, f"the lease of epoch {epoch} is lost" + (f" (now epoch {held})" if held else ""))
        left = self.leases.valid_for(partition)
        if left < self.margin_s:
            raise Fenced(partition, f"the lease has {left:.1f} s left, less than the {self.margin_s:.1f} s a record "
                                    "needs to be stored before it ends")

    def epoch_tag(self, payee_id: str) -> str:
        """`<partition>:<epoch>`, the EPOCH_HEADER of a record produced for the payee."""
        partition = self.partition_of(payee_id)
        return f"{partition}:{self.epochs[partition]}"

    def held(self) -> list[int]:
        """The core's partitions still held with their epoch (a checkpoint is written for these only)."""
        owned = self.leases.owned()
        return [partition for partition, epoch in sorted(self.epochs.items()) if owned.get(partition) == epoch]

    def guard(self, connection: sqlalchemy.Connection, partitions: Iterable[int]) -> None:
        wanted = sorted(set(partitions))
        self.leases.guard(connection, wanted)  # owner, expiry, and the local view's epoch
        owned = self.leases.owned()
        for partition in wanted:
            if owned.get(partition) != self.epochs.get(partition):
                raise Fenced(partition, "claimed again since this core started (another epoch)")
