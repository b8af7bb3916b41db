"""Several transfer processor instances, each paying the payouts of some partitions: `ledger transfers --partitioned`.

A payee's payouts, their outcomes and its destination all live in the payee's partition of ledger.events
and ledger.commands, so an instance that holds the leases of some partitions (runtime/partition_leases.py,
the same fair share as the sequencer's) can pay their payouts without seeing the others. Each instance
runs ONE TransferProcessor core over the partitions it holds (one consumer per topic, one lane per
provider), restricted by a TransferShare (processors/transfer_share.py). When its partitions or the
number of live instances change, the core stops cleanly (its per-partition checkpoints written, guarded)
and a new core starts over the new set from those checkpoints: a handover costs each partition its tail
since its checkpoint, never the history. A core that finds a lease lost (Fenced, before a record or a
provider call) is dropped without writing anything more; the partition's new owner resumes it from its
checkpoint and the log, and asks the provider before paying anything recorded but not answered.

Across instances: payout pause (read from PostgreSQL by every core), each provider's limits (each
instance takes 1/n of concurrency, rate and window, n = live instances, lowered before any partition is
handed to a newcomer and raised only once a dead instance's heartbeat has expired), and circuit breakers
(processors/breaker_sync.py).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Callable

import sqlalchemy

from connectors.base import Connector
from processors.kafka_io import same_partition_count
from processors.partition_fence import timing
from processors.transfer_processor import TransferProcessor, TransferStats
from processors.transfer_share import TransferShare
from runtime.database import make_engine
from runtime.partition_leases import Fenced, PartitionLeases
from runtime.settings import Settings

logger = logging.getLogger("ledger.transfers")
NO_PARTITION_WAIT_S = 0.2  # an instance that holds nothing asks for a share this often


def lease_group(settings: Settings) -> str:
    return f"transfers:{settings.topic_events}"


def check_layout(bootstrap: str, settings: Settings) -> int:
    return same_partition_count(bootstrap, (settings.topic_events, settings.topic_commands), "partitioned transfers")


def _add(total: TransferStats, stats: TransferStats) -> None:
    for name, value in vars(stats).items():
        if isinstance(value, dict):
            merged = getattr(total, name)
            for key, count in value.items():
                merged[key] = merged.get(key, 0) + count
        else:
            setattr(total, name, getattr(total, name) + value)


class PartitionedTransfers:
    def __init__(self, settings: Settings, bootstrap: str, database_url: str,
                 connectors: Callable[[], dict[str, Connector]], *, member: str | None = None,
                 log: Callable[[str], None] | None = None) -> None:
        """connectors: makes a fresh set for each core (a core shuts its lanes down when it stops)."""
        self.settings, self.bootstrap, self.database_url = settings, bootstrap, database_url
        self.connectors, self.log = connectors, log or logger.info
        self.partitions = check_layout(bootstrap, settings)
        self.renew_s, self.margin_s, self.message_timeout_s = timing(settings.partition_lease_s)
        self.engine = make_engine(database_url)
        self.leases = PartitionLeases(self.engine, lease_group(settings), self.partitions, member=member,
                                      ttl_s=settings.partition_lease_s, renew_every_s=self.renew_s,
                                      processor="transfers")
        self.stats = TransferStats()
        self.core: TransferProcessor | None = None
        self._stop = threading.Event()
        self._members = 0
        self._to_release: set[int] = set()
        self._next_rebalance = 0.0
        self._changed = False

    @property
    def member(self) -> str:
        return self.leases.member

    def stop(self) -> None:
        self._stop.set()
        if self.core is not None:
            self.core.stop()

    def run(self, idle_exit_s: float | None = None, handle_signals: bool = True) -> TransferStats:
        if handle_signals:
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, lambda *_: self.stop())
        self.leases.start()
        self.log(f"transfer instance {self.member}: sharing {self.partitions} partitions of "
                 f"{self.settings.topic_events} (lease {self.settings.partition_lease_s:g} s)")
        clean = False
        idle_since = time.monotonic()
        try:
            while not self._stop.is_set():
                self._rebalance()
                self._release()
                owned = self.leases.owned()
                if not owned:
                    if idle_exit_s is not None and time.monotonic() - idle_since >= idle_exit_s:
                        break
                    self._stop.wait(NO_PARTITION_WAIT_S)
                    continue
                stats = self._run_core(owned, idle_exit_s)
                if stats is not None and not self._changed and not self._stop.is_set():
                    break  # the core went idle for idle_exit_s with nothing changed: done
                idle_since = time.monotonic()
            clean = True
        finally:
            if clean:
                self.leases.stop()  # released: the others take over at once
            self.engine.dispose()
        return self.stats

    def _run_core(self, owned: dict[int, int], idle_exit_s: float | None) -> TransferStats | None:
        """Run one core over `owned` until it goes idle, stops, or must give way; None if it was fenced."""
        self._changed = False
        share = TransferShare(self.leases, dict(owned), self.partitions, self.margin_s, max(1, self._members),
                              should_yield=self._should_yield)
        core = TransferProcessor(self.settings, self.bootstrap, self.connectors(), database_url=self.database_url,
                                 log=self.log, share=share, message_timeout_s=self.message_timeout_s)
        self.core = core
        if self._stop.is_set():
            core.stop()
        self.log(f"paying the payouts of partitions {share.partitions} (1/{share.members} of each provider's limits)")
        try:
            stats = core.run(idle_exit_s=idle_exit_s, handle_signals=False)
        except Fenced as fenced:
            logger.warning("partition %d: stopped without writing anything more: %s", fenced.partition, fenced.reason)
            self._changed = True
            _add(self.stats, core.stats)
            return None
        finally:
            self.core = None
        _add(self.stats, stats)
        return stats

    def _should_yield(self) -> bool:
        """Asked by the core on every round: rebalance every renew interval; True once something changed."""
        if self._changed:
            return True
        if time.monotonic() >= self._next_rebalance:
            self._rebalance()
        return self._changed

    def _rebalance(self) -> None:
        self._next_rebalance = time.monotonic() + self.renew_s
        try:
            change = self.leases.rebalance()
        except sqlalchemy.exc.SQLAlchemyError as error:  # the leases run down by themselves; next time
            logger.warning("transfers: rebalancing failed (%s)", (str(error).splitlines() or ["?"])[0])
            return
        members = self.leases.live_members
        if change.gained or change.lost or change.to_release or members != self._members:
            self._changed = True
            if members != self._members:
                self.log(f"{members} transfer instances share the providers' limits")
        self._members = members
        self._to_release |= change.to_release

    def _release(self) -> None:
        """Release what the fair share gives to others (the core that held them has written its checkpoint)."""
        if self._to_release:
            self.leases.release(self._to_release)
            self._to_release = set()
