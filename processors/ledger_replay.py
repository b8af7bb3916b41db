"""Folding ledger.events into a LedgerIndex: in full (the truth, for an auditor), or from the sequencer's
checkpoint plus the tail (for a submitter predicting the sequencer's verdicts, without reading the history)."""

from __future__ import annotations

from typing import Callable

from ledger.codec import EventCodec, UndecodableEvent
from ledger.events import Event
from ledger.guards import InvariantViolation
from ledger.ledger_index import IndexState, LedgerIndex
from processors.kafka_io import read_topic

REPLAY_TIMEOUT_S = 600.0


class CorruptLedger(RuntimeError):
    """ledger.events holds something that cannot be part of a valid ledger; nothing may be appended."""


def decode_event(codec: EventCodec, message) -> Event:  # noqa: ANN001 - confluent_kafka.Message
    """A record of ledger.events as an event; one that is not readable means the ledger is corrupt."""
    try:
        return codec.decode(message.value() or b"")
    except UndecodableEvent as exc:
        raise CorruptLedger(f"{message.topic()}[{message.partition()}]@{message.offset()} is not a readable event: "
                            f"{exc.reason}") from None


def load_index(bootstrap: str, topic: str, codec: EventCodec, timeout_s: float = REPLAY_TIMEOUT_S) -> LedgerIndex:
    """Fold every event of `topic` into a LedgerIndex; refuse a ledger with undecodable bytes or broken chains."""
    index = LedgerIndex(codec.encode)
    for record in read_topic(bootstrap, topic, timeout_s):
        where = f"{topic}[{record.partition}]@{record.offset}"
        try:
            event = codec.decode(record.value or b"")
            index.observe(event, record.value or b"")
        except UndecodableEvent as exc:
            raise CorruptLedger(f"{where} is not a readable event: {exc.reason}") from None
        except InvariantViolation as exc:
            raise CorruptLedger(f"{where}: {exc}") from None
    return index


def open_index(bootstrap: str, topic: str, database_url: str, codec: EventCodec,
               log: Callable[[str], None] = lambda _: None, dlq_topic: str | None = None) -> LedgerIndex:
    """A read-only index: the sequencer's proven checkpoint (or, for partitioned sequencers, one proven
    checkpoint per partition, merged) and PostgreSQL tables, plus the tail of `topic` folded in memory.
    Without checkpoints that prove, the whole log is folded (load_index). Nothing is written: the
    sequencer owns its checkpoints."""
    from processors.checkpoints import CheckpointStore, resume
    from processors.kafka_io import topic_partitions
    from processors.log_reader import LogReader
    from processors.sequencer import CHECKPOINT_NAME, STATE_FORMAT
    from processors.sequencer_index_store import PostgresIndexBacking
    from runtime.database import make_engine

    engine = make_engine(database_url)
    partitions = topic_partitions(bootstrap, topic)
    topics = (topic, dlq_topic)
    resumed = resume(bootstrap, CheckpointStore(engine, CHECKPOINT_NAME, STATE_FORMAT), log, topics=topics)
    if resumed.checkpoint is not None:
        state = resumed.checkpoint.state["index"]
        starts, proofs = resumed.start(topic, partitions), resumed.checkpoint.proofs
    else:  # partitioned sequencers: each partition's checkpoint covers that partition of the log
        parts = [resume(bootstrap, CheckpointStore(engine, f"{CHECKPOINT_NAME}:p{partition}", STATE_FORMAT), log,
                        topics=topics) for partition in partitions]
        if any(part.checkpoint is None for part in parts):
            engine.dispose()
            return load_index(bootstrap, topic, codec)
        states = [part.checkpoint.state["index"] for part in parts]
        state = IndexState({payee: head for one in states for payee, head in one.heads.items()},
                           {payout: open_ for one in states for payout, open_ in one.open_payouts.items()},
                           sum(one.events for one in states))
        starts = {partition: part.start(topic, [partition])[partition] for partition, part in zip(partitions, parts)}
        proofs = {topic: {partition: part.checkpoint.proofs[topic][partition] for partition, part in
                          zip(partitions, parts) if partition in part.checkpoint.proofs.get(topic, {})}}
    index = LedgerIndex(codec.encode, PostgresIndexBacking(engine), state)
    reader = LogReader(bootstrap, "index-reader", {topic: starts}, proofs=proofs, batch_max=2000)
    try:
        for messages in reader.batches_to_end(REPLAY_TIMEOUT_S):
            events = [(decode_event(codec, message), message.value() or b"") for message in messages]
            index.prefetch(event for event, _ in events)
            for event, encoded in events:
                try:
                    index.observe(event, encoded)
                except InvariantViolation as exc:
                    raise CorruptLedger(str(exc)) from None
    finally:
        reader.close()
    return index
