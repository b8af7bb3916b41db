"""Checkpoints of a partitioned transfer processor: one per partition of ledger.events (`transfers:p<n>`).

The state of partition n is what processors/transfer_checkpoint.py describes, restricted to the payees
whose records live in partition n (a payee's payouts, destination and submits all do): the open payouts,
the destinations, the submits sent and not chained yet, with the positions on partition n of
ledger.events and of ledger.commands. Finished payouts leave memory into processor_entities under the
partition's name as well, so a full replay of one partition clears only that partition's rows.

An instance resumes each partition it holds from that partition's proven checkpoint (or replays that
partition from the beginning), and writes the checkpoints of all its partitions in one transaction that
first checks (guard) that each lease is still its own with the same epoch. A partition lost meanwhile
is left out: the next owner resumes it from its own last checkpoint and the log.
"""

from __future__ import annotations

from typing import Callable, Iterable

import sqlalchemy

from ledger.codec import EventCodec
from ledger.events import Event
from ledger.payouts import PayoutBook, named_payout
from processors.checkpoints import Cadence, Checkpoint, CheckpointStore, Positions, Proofs, Resume, resume
from processors.entity_store import EntityStore
from processors.fault_points import crash_point
from processors.transfer_checkpoint import KIND, PROCESSOR, STATE_FORMAT, TransferState
from processors.transfer_share import TransferShare


def partition_name(partition: int) -> str:
    return f"{PROCESSOR}:p{partition}"


class PartitionCheckpoints:
    """The same interface as TransferCheckpoints (resume, restore_named, write, cadence), per partition."""

    def __init__(self, engine: sqlalchemy.Engine, share: TransferShare, every_events: int, every_s: float) -> None:
        self.engine, self.share = engine, share
        self.stores = {p: CheckpointStore(engine, partition_name(p), STATE_FORMAT) for p in share.partitions}
        self.entities = {p: EntityStore(engine, partition_name(p)) for p in share.partitions}
        self.cadence = Cadence(every_events, every_s)
        self._codec = EventCodec()

    def resume(self, bootstrap: str, log: Callable[[str], None],
               topics: tuple[str, ...] | None = None) -> tuple[Resume, TransferState | None]:
        """Each partition from its own proven checkpoint, else from the beginning (its rows cleared); merged."""
        book, submits = PayoutBook(), {}
        positions: Positions = {}
        proofs: Proofs = {}
        events, written, used, replayed = 0, [], [], []
        for partition, store in self.stores.items():
            part = resume(bootstrap, store, lambda line, p=partition: log(f"partition {p}: {line}"), topics=topics)
            state = part.checkpoint.state if part.checkpoint is not None else None
            if part.checkpoint is None or not (isinstance(state, TransferState) and isinstance(state.book, PayoutBook)):
                with self.engine.begin() as connection:
                    self.share.guard(connection, [partition])
                    store.clear(connection)
                    self.entities[partition].clear(connection)
                replayed.append(partition)
                continue
            used.append(partition)
            book.payouts.update(state.book.payouts)
            book.destinations.update(state.book.destinations)
            submits.update(state.sent_submits)
            for topic, parts in part.checkpoint.positions.items():
                if partition in parts:
                    positions.setdefault(topic, {})[partition] = parts[partition]
                    proofs.setdefault(topic, {})[partition] = part.checkpoint.proofs[topic][partition]
            events += part.checkpoint.events
            written.append(part.checkpoint.written_at)
        if not used:
            return Resume(None, f"no usable checkpoint for partitions {replayed}", "none"), None
        if replayed:
            log(f"partitions {replayed}: read from the beginning; partitions {used}: from their checkpoints")
        merged = Checkpoint(PROCESSOR, STATE_FORMAT, positions, proofs, None, events, min(written))
        return Resume(merged), TransferState(book, submits)

    def restore_named(self, book: PayoutBook, events: Iterable[Event]) -> int:
        """Put back the finished payouts these events name that are not in memory, each from its partition."""
        missing: dict[int, set[str]] = {}
        for event in events:
            payout_id = named_payout(event)
            if payout_id is not None and payout_id not in book.payouts:
                missing.setdefault(self.share.partition_of(event.payee_id), set()).add(payout_id)
        restored = 0
        for partition, payout_ids in missing.items():
            store = self.entities.get(partition)
            if store is None:
                continue
            for payout, request in store.get_many(KIND, payout_ids).values():
                book.restore(payout, request)
                restored += 1
        return restored

    def write(self, state: TransferState, positions: Positions, proofs: Proofs, events: int) -> tuple[int, int]:
        """The checkpoints of the partitions still held, and their finished payouts, in one guarded transaction."""
        held = self.share.held()
        book = state.book
        by_partition: dict[int, TransferState] = {p: TransferState(PayoutBook(), {}) for p in held}
        finished: dict[int, dict[str, tuple]] = {p: {} for p in held}
        for payout_id, payout in list(book.payouts.items()):
            partition = self.share.partition_of(payout.payee_id)
            if partition not in by_partition:
                continue
            if payout.status.terminal:
                finished[partition][payout_id] = (book.evict(payout_id)[0], None)
            else:
                by_partition[partition].book.payouts[payout_id] = payout
        for payee_id, destination in book.destinations.items():
            part = by_partition.get(self.share.partition_of(payee_id))
            if part is not None:
                part.book.destinations[payee_id] = destination
        for key, value in state.sent_submits.items():
            payout = book.payouts.get(key[0])
            payee_id = payout.payee_id if payout is not None else self._codec.decode(value).payee_id
            part = by_partition.get(self.share.partition_of(payee_id))
            if part is not None:
                part.sent_submits[key] = value
        size = 0
        try:
            with self.engine.begin() as connection:
                self.share.guard(connection, held)
                for partition in held:
                    self.entities[partition].put_many(connection, KIND, finished[partition])
                    mine = {topic: {partition: parts[partition]} for topic, parts in positions.items()
                            if partition in parts}
                    size += self.stores[partition].write(
                        connection, mine, {topic: {partition: proofs[topic][partition]} for topic in mine},
                        by_partition[partition], events)
                crash_point("transfers_checkpoint_before_commit")
        except Exception:
            for payouts in finished.values():  # still the processor's: written at the next checkpoint
                for payout, request in payouts.values():
                    book.restore(payout, request)
            raise
        crash_point("transfers_checkpoint_after_commit")
        self.cadence.written()
        return sum(len(payouts) for payouts in finished.values()), size
