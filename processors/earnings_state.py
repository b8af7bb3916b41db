"""Every payee's earnings from the aggregator's checkpoint plus the tail of ledger.events after it.

The aggregator (processors/aggregator.py) writes the checkpoint: the pickled PayeeEarnings of every
payee with the ledger.events positions they cover and the hash of the record before each position.
`load_earnings` proves it against the log (processors/checkpoints.resume), folds only the records
after it, and falls back to the whole log when there is no checkpoint or it does not prove. `ledger
run` and the operations layer call it read-only: only the aggregator writes its checkpoint.

State per payee (PayeeEarnings) is bounded by what is open: unclosed lines, in-flight payouts, and
settled payouts that can still come back failed (`paid_out`). That last one grows with the payee's
settled payouts; it is a few dozen bytes per payout and is kept because a failure days later must
return the money.
"""

from __future__ import annotations

import logging
import pickle
import time
from dataclasses import dataclass, field
from typing import Callable

import sqlalchemy

from ledger.codec import EventCodec
from ledger.earnings import PayeeEarnings
from processors.checkpoints import CheckpointStore, Positions, Proofs, Resume, resume
from processors.ledger_replay import decode_event
from processors.log_reader import LogReader
from processors.prefetch import BOUNDED_PREFETCH

PROCESSOR = "aggregator"
# Bump when PayeeEarnings (or EarningLine, Schedule, Money inside it) changes shape: an older
# checkpoint is then refused with "full replay: ... state format ..." instead of unpickled wrongly.
STATE_FORMAT = 1
CLOSE_TYPES = ("PayoutRequested", "BalanceCarried")
TAIL_BATCH = 5_000
logger = logging.getLogger("ledger.aggregator")


@dataclass
class EarningsFold:
    """The payees' earnings and the exact ledger.events positions they cover."""

    payees: dict[str, PayeeEarnings]
    positions: dict[int, int]  # partition -> next offset
    proofs: dict[int, str]  # partition -> hash of the record at next offset - 1
    resumed: Resume
    tail: int = 0  # records read after the checkpoint (all of them in a full replay)
    seconds: float = 0.0
    chained: set[str] = field(default_factory=set)  # close ids chained in the tail (if asked)


def snapshot(payees: dict[str, PayeeEarnings]) -> bytes:
    """The state as bytes, taken at once (the caller's thread may go on changing `payees`)."""
    return pickle.dumps(payees, protocol=pickle.HIGHEST_PROTOCOL)


def store_for(engine: sqlalchemy.Engine) -> CheckpointStore:
    return CheckpointStore(engine, PROCESSOR, STATE_FORMAT)


def _resume(bootstrap: str, store: CheckpointStore, log: Callable[[str], None], topic: str) -> tuple[Resume, dict]:
    resumed = resume(bootstrap, store, log, topics=(topic,))
    if resumed.checkpoint is None:
        return resumed, {}
    try:
        payees = pickle.loads(resumed.checkpoint.state)  # noqa: S301 - format and digest checked by the store
        if not isinstance(payees, dict) or not all(isinstance(p, PayeeEarnings) for p in payees.values()):
            raise TypeError(f"a {type(payees).__name__} of something else than PayeeEarnings")
    except Exception as exc:  # noqa: BLE001 - an unreadable state means a full replay, never a crash
        reason = f"the checkpoint's state cannot be read ({type(exc).__name__}: {str(exc)[:200]})"
        log(f"full replay: {reason}")
        return Resume(None, reason, "unreadable"), {}
    return resumed, payees


def load_earnings(bootstrap: str, engine: sqlalchemy.Engine, topic: str, codec: EventCodec | None = None, *,
                  log: Callable[[str], None] = logger.info, close_ids: bool = False,
                  timeout_s: float = 600.0) -> EarningsFold:
    """Prove the aggregator's checkpoint, fold the tail after it to the end of the log (everything if
    there is no usable checkpoint). With close_ids, the ids of the closes chained in that tail."""
    codec = codec or EventCodec()
    started = time.monotonic()
    resumed, payees = _resume(bootstrap, store_for(engine), log, topic)
    checkpoint = resumed.checkpoint
    starts = {topic: checkpoint.positions.get(topic, {}) if checkpoint else {}}
    reader = LogReader(bootstrap, PROCESSOR, starts, batch_max=TAIL_BATCH, config=BOUNDED_PREFETCH,
                       proofs={topic: checkpoint.proofs.get(topic, {})} if checkpoint else None)
    fold = EarningsFold(payees, {}, {}, resumed)
    try:
        for batch in reader.batches_to_end(timeout_s, f"folding {topic}"):
            for message in batch:
                event = decode_event(codec, message)
                payees.setdefault(event.payee_id, PayeeEarnings(event.payee_id)).apply(event)
                if close_ids and event.event_type in CLOSE_TYPES:
                    fold.chained.add(event.envelope.event_id)
                fold.tail += 1
        fold.positions = reader.checkpoint_positions([topic]).get(topic, {})
        fold.proofs = reader.proofs([topic]).get(topic, {})
    finally:
        reader.close()
    fold.seconds = time.monotonic() - started
    return fold


def as_checkpoint(topic: str, positions: dict[int, int], proofs: dict[int, str]) -> tuple[Positions, Proofs]:
    """Per-partition positions and proofs of ledger.events in the shape CheckpointStore.write takes."""
    covered = {partition: offset for partition, offset in positions.items() if offset > 0}
    return {topic: covered}, {topic: {partition: proofs[partition] for partition in covered}}
