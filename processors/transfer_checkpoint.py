"""The transfer processor's checkpoint: its open payouts and unchained submits, with the exact positions
they cover on ledger.events AND ledger.commands, and its finished payouts out of memory.

What the state is, at positions (E on ledger.events, C on ledger.commands):
- the PayoutBook of every payout still open after folding ledger.events up to E, with the outcomes
  this processor had sent by then applied (an outcome is applied when it is sent, and the producer is
  flushed before a checkpoint is written, so the book never holds an outcome the log does not);
- each payee's payout destination;
- the submits sent and not chained yet (resent byte for byte after a restart, so the sequencer drops
  the copy as a duplicate).
Outcomes sent to ledger.commands before C by an earlier run and not applied yet are never part of a
checkpoint: the processor reads ledger.commands from C only after ledger.events is folded, applies
those outcomes once, and only then writes checkpoints again. What is on ledger.commands after C is the
tail a restart reads, so an outcome sent after the checkpoint (a crash before the next one) is found.

Finished payouts (settled, failed, cancelled) leave memory at each checkpoint: they are written to
processor_entities (EntityStore, kind "payout") in the checkpoint's transaction. An event naming a
payout not in memory restores it from there first (one query per batch), so a late event about a
finished payout (a paid payout failing days later, a PayoutRequested read again) finds it finished
and the processor does not act. A full replay clears both tables first: nothing from an unproven
checkpoint is used.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Iterable

import sqlalchemy

from ledger.events import Event
from ledger.payouts import PayoutBook, named_payout
from processors.checkpoints import Cadence, CheckpointStore, Positions, Proofs, Resume, resume
from processors.entity_store import EntityStore
from processors.fault_points import crash_point

PROCESSOR = "transfers"
# Bump when TransferState, PayoutBook, Payout, Attempt or Event change shape: an older checkpoint is
# then refused ("full replay: ... state format ...") instead of unpickled wrongly.
STATE_FORMAT = 1
KIND = "payout"
logger = logging.getLogger("ledger.transfers")


@dataclass
class TransferState:
    """What is pickled. Events are kept as their encoded bytes (payloads are read-only mapping proxies,
    which pickle refuses), and PayoutRequested payloads are left out: the processor never reads them."""

    book: PayoutBook  # open payouts only (and destinations), `requests` empty
    sent_submits: dict[tuple[str, int], bytes] = field(default_factory=dict)


class TransferCheckpoints:
    """Load, prove and write the transfer processor's checkpoint; keep finished payouts in PostgreSQL."""

    def __init__(self, engine: sqlalchemy.Engine, every_events: int, every_s: float) -> None:
        self.engine = engine
        self.store = CheckpointStore(engine, PROCESSOR, STATE_FORMAT)
        self.entities = EntityStore(engine, PROCESSOR)
        self.cadence = Cadence(every_events, every_s)
        self._may_hold = True  # processor_entities may hold finished payouts (False right after a clear)

    def resume(self, bootstrap: str, log: Callable[[str], None],
               topics: tuple[str, ...] | None = None) -> tuple[Resume, TransferState | None]:
        """The proven checkpoint and its state, or a full replay (logged with its reason; both tables cleared)."""
        resumed = resume(bootstrap, self.store, log, topics=topics)
        state = resumed.checkpoint.state if resumed.checkpoint is not None else None
        readable = isinstance(state, TransferState) and isinstance(state.book, PayoutBook)
        if resumed.checkpoint is not None and not readable:
            reason = f"the checkpoint's state is a {type(state).__name__}, not a TransferState"
            log(f"full replay: {reason}")
            resumed, state = Resume(None, reason, "unreadable"), None
        if state is None:
            with self.engine.begin() as connection:
                self.store.clear(connection)
                self.entities.clear(connection)
            self._may_hold = False
        return resumed, state

    def restore_named(self, book: PayoutBook, events: Iterable[Event]) -> int:
        """Put back every finished payout these events name that is not in memory (before they are applied)."""
        if not self._may_hold:
            return 0
        missing = {pid for pid in map(named_payout, events) if pid is not None and pid not in book.payouts}
        restored = self.entities.get_many(KIND, missing)
        for payout, request in restored.values():
            book.restore(payout, request)
        return len(restored)

    def write(self, state: TransferState, positions: Positions, proofs: Proofs, events: int) -> tuple[int, int]:
        """Evict finished payouts and write them with the checkpoint in one transaction; (evicted, blob size).
        The caller has flushed everything it sent."""
        book = state.book
        finished = [pid for pid, payout in book.payouts.items() if payout.status.terminal]
        evicted = {pid: (book.evict(pid)[0], None) for pid in finished}
        try:
            with self.engine.begin() as connection:
                self.entities.put_many(connection, KIND, evicted)
                size = self.store.write(connection, positions, proofs, state, events)
                crash_point("transfers_checkpoint_before_commit")
        except Exception:
            for payout, request in evicted.values():  # still the processor's: written at the next checkpoint
                book.restore(payout, request)
            raise
        crash_point("transfers_checkpoint_after_commit")
        self._may_hold = self._may_hold or bool(evicted)
        self.cadence.written()
        return len(evicted), size
