"""Checkpoints: a processor's state with the exact log positions it covers, proven against the log at start.

A checkpoint row (migration 0009, table processor_checkpoints) holds, for one processor:
- its state, a versioned blob (pickle, zlib) with its SHA-256;
- the next offset per topic partition that the state covers;
- the proof: the hash of the record just before each of those offsets.

It is written in ONE transaction with whatever else the processor keeps in PostgreSQL for the same
positions, so the state and the rows never disagree. At start the processor loads it and proves it:
every covered partition still exists, the log reaches the recorded offset, and the record at
`offset - 1` has the recorded hash. Then it reads only the tail. A checkpoint that does not prove is
never trusted: the reason is logged in one line and the processor replays the whole log. That
happens for a row edited by hand, a broker restored from the archive with other offsets, a log
shorter than the checkpoint, or a state format from another code version.

Pickle is safe here only because the blob is never unpickled unless the format number matches this
code and its SHA-256 matches the row. Whoever can write the database can change every read model
anyway; the digest catches edits and torn writes, not an attacker who owns the database.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import time
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Mapping

import sqlalchemy
from confluent_kafka import Consumer, KafkaError, TopicPartition

from processors.kafka_io import CLIENT_LOG
from runtime import metrics
from runtime.kafka_security import secure

Positions = dict[str, dict[int, int]]  # topic -> partition -> next offset
Proofs = dict[str, dict[int, str]]  # topic -> partition -> hash of the record at next offset - 1
PROOF_TIMEOUT_S = 30.0
logger = logging.getLogger("ledger.checkpoints")


def record_hash(value: bytes | None) -> str:
    """Hex SHA-256 of a record's value (for ledger.events: the event's hash in its payee's chain)."""
    return hashlib.sha256(value or b"").hexdigest()


@dataclass(frozen=True)
class Checkpoint:
    processor: str
    format: int
    positions: Positions
    proofs: Proofs
    state: Any
    events: int
    written_at: datetime
    size: int = 0

    def describe(self) -> str:
        where = ", ".join(f"{topic}[{partition}]@{offset}" for topic, parts in sorted(self.positions.items())
                          for partition, offset in sorted(parts.items()))
        return f"checkpoint of {self.written_at.isoformat(timespec='seconds')} at {where or 'the start'}"


@dataclass(frozen=True)
class Resume:
    """Where a processor starts: from a proven checkpoint, or from the beginning (and why)."""

    checkpoint: Checkpoint | None
    reason: str = ""  # why no checkpoint is used ("" when one is)
    why: str = ""  # the reason's short kind, a metric label: none, format, digest, unreadable, partitions, ahead, mismatch

    def start(self, topic: str, partitions: Iterable[int]) -> dict[int, int]:
        """The offset to read `topic` from, per partition: the checkpoint's, else the beginning."""
        covered = self.checkpoint.positions.get(topic, {}) if self.checkpoint else {}
        return {partition: covered.get(partition, 0) for partition in partitions}


def _encode_state(state: Any) -> bytes:
    return zlib.compress(pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL), 1)


def _plain(mapping: Mapping[str, Mapping[int, Any]]) -> dict[str, dict[str, Any]]:
    return {topic: {str(partition): value for partition, value in parts.items()} for topic, parts in mapping.items()}


def _typed(mapping: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[int, Any]]:
    return {topic: {int(partition): value for partition, value in parts.items()} for topic, parts in mapping.items()}


class CheckpointStore:
    """One processor's checkpoint row: load (checking format and digest), and write inside a transaction."""

    def __init__(self, engine: sqlalchemy.Engine, processor: str, state_format: int) -> None:
        self.engine, self.processor, self.format = engine, processor, state_format

    def load(self) -> tuple[Checkpoint | None, str, str]:
        """(checkpoint, "", "") or (None, reason, kind of reason)."""
        with self.engine.connect() as connection:
            row = connection.execute(sqlalchemy.text(
                "SELECT format, positions, proofs, state, state_sha256, events, written_at FROM processor_checkpoints "
                "WHERE processor = :p"), {"p": self.processor}).mappings().first()
        if row is None:
            return None, "no checkpoint yet", "none"
        if row["format"] != self.format:
            return None, (f"the checkpoint's state format is {row['format']}, this code reads format {self.format} "
                          "(written by another version)"), "format"
        blob = bytes(row["state"])
        if hashlib.sha256(blob).hexdigest() != row["state_sha256"]:
            return None, "the checkpoint's state does not match its SHA-256 (edited or torn)", "digest"
        try:
            state = pickle.loads(zlib.decompress(blob))  # noqa: S301 - format and digest checked above
            positions = _typed(row["positions"])
            proofs = _typed(row["proofs"])
        except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint means a full replay, never a crash
            return None, f"the checkpoint cannot be read ({type(exc).__name__}: {str(exc)[:200]})", "unreadable"
        if any(set(parts) != set(proofs.get(topic, {})) for topic, parts in positions.items()):
            return None, "the checkpoint's proofs do not match its positions (edited?)", "unreadable"
        written_at = row["written_at"]
        return Checkpoint(self.processor, row["format"], positions, proofs, state, row["events"], written_at,
                          len(blob)), "", ""

    def write(self, connection: sqlalchemy.Connection, positions: Positions, proofs: Proofs, state: Any,
              events: int, now: datetime | None = None) -> int:
        """Write (replace) the checkpoint in the caller's transaction; returns the state blob's size."""
        blob = _encode_state(state)
        connection.execute(sqlalchemy.text(
            "INSERT INTO processor_checkpoints (processor, format, positions, proofs, state, state_sha256, events, "
            "written_at) VALUES (:p, :f, CAST(:pos AS jsonb), CAST(:proofs AS jsonb), :state, :sha, :events, :at) "
            "ON CONFLICT (processor) DO UPDATE SET format = EXCLUDED.format, positions = EXCLUDED.positions, "
            "proofs = EXCLUDED.proofs, state = EXCLUDED.state, state_sha256 = EXCLUDED.state_sha256, "
            "events = EXCLUDED.events, written_at = EXCLUDED.written_at"),
            {"p": self.processor, "f": self.format, "pos": json.dumps(_plain(positions), sort_keys=True),
             "proofs": json.dumps(_plain(proofs), sort_keys=True), "state": blob,
             "sha": hashlib.sha256(blob).hexdigest(), "events": events, "at": now or datetime.now(timezone.utc)})
        metrics.CHECKPOINT_BYTES.labels(self.processor).set(len(blob))
        return len(blob)

    def clear(self, connection: sqlalchemy.Connection) -> None:
        connection.execute(sqlalchemy.text("DELETE FROM processor_checkpoints WHERE processor = :p"),
                           {"p": self.processor})


def prove(bootstrap: str, checkpoint: Checkpoint, timeout_s: float = PROOF_TIMEOUT_S) -> tuple[str, str]:
    """("", "") when the log still holds, at every covered position, the record the checkpoint was written
    after; else (reason, kind).

    One consumer: per covered partition it reads from the record before the position, or from the last
    batch when the high watermark is lower (Tansu's is the last batch's base offset + 1, and it answers
    nothing at all for a fetch past the end), forward to that record or to the partition's end."""
    consumer = Consumer(secure({"bootstrap.servers": bootstrap, "group.id": "ledger-checkpoint-proof",
                         "enable.auto.commit": False, "enable.partition.eof": True, "auto.offset.reset": "error",
                         "fetch.wait.max.ms": 20, "logger": CLIENT_LOG}))
    try:
        wanted: dict[tuple[str, int], int] = {}
        starts: list[TopicPartition] = []
        for topic, parts in checkpoint.positions.items():
            metadata = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
            existing = set(metadata.partitions) if metadata is not None and metadata.error is None else set()
            if set(parts) - existing:
                return (f"{topic} has partitions {sorted(existing)}, the checkpoint covers {sorted(parts)} "
                        "(another broker or topic layout)"), "partitions"
            for partition, offset in sorted(parts.items()):
                if offset <= 0:
                    continue
                low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout_s)
                if offset - 1 < low:
                    return (f"{topic}[{partition}] no longer holds offset {offset - 1} (it starts at {low}): the "
                            "record the checkpoint was written after is gone"), "mismatch"
                wanted[(topic, partition)] = offset - 1
                starts.append(TopicPartition(topic, partition, min(offset - 1, max(high - 1, low))))
        if not wanted:
            return "", ""
        consumer.assign(starts)
        deadline = time.monotonic() + timeout_s
        while wanted:
            if time.monotonic() > deadline:
                raise TimeoutError(f"proving the checkpoint: no answer for {sorted(wanted)} within {timeout_s} s")
            message = consumer.poll(0.2)
            if message is None:
                continue
            where = (message.topic(), message.partition())
            if where not in wanted:
                continue
            error = message.error()
            if error is not None:
                if error.code() in (KafkaError._PARTITION_EOF, KafkaError.OFFSET_OUT_OF_RANGE,
                                    KafkaError._AUTO_OFFSET_RESET):
                    return (f"the checkpoint is ahead of the log: {where[0]}[{where[1]}] ends before offset "
                            f"{wanted[where] + 1}, the position it covers (a shorter or restored log)"), "ahead"
                raise RuntimeError(f"proving the checkpoint: {error.str()}")
            if message.offset() < wanted[where]:
                continue  # the last batch, on the way to the record
            offset = wanted.pop(where)
            if message.offset() != offset or record_hash(message.value()) != checkpoint.proofs[where[0]][where[1]]:
                return (f"{where[0]}[{where[1]}]@{offset} is not the record the checkpoint was written after "
                        "(another broker, a restore with new offsets, or an edited row)"), "mismatch"
        return "", ""
    finally:
        consumer.close()


def resume(bootstrap: str, store: CheckpointStore, log: Callable[[str], None] | None = None,
           topics: Iterable[str] | None = None) -> Resume:
    """Load and prove the newest checkpoint; a checkpoint that does not prove is never used. With `topics`,
    one that covers any other topic (a ledger configured with other topic names) is not used either."""
    checkpoint, reason, why = store.load()
    foreign = sorted(set(checkpoint.positions) - set(topics)) if checkpoint is not None and topics is not None else []
    if foreign:
        checkpoint, why = None, "topics"
        reason = f"the checkpoint covers {', '.join(foreign)}, which this processor does not read (other topics)"
    if checkpoint is not None:
        reason, why = prove(bootstrap, checkpoint)
        if reason:
            checkpoint = None
    if checkpoint is None:
        metrics.FULL_REPLAYS.labels(store.processor, why).inc()
        (log or logger.info)(f"full replay: {reason}")
        return Resume(None, reason, why)
    metrics.CHECKPOINT_BYTES.labels(store.processor).set(checkpoint.size)
    return Resume(checkpoint)


@dataclass
class Cadence:
    """When to write the next checkpoint: after `every_events` records or `every_s` seconds (if any were folded)."""

    every_events: int
    every_s: float
    clock: Callable[[], float] = time.monotonic
    pending: int = 0
    last_at: float = field(default=0.0)

    def __post_init__(self) -> None:
        self.last_at = self.clock()

    def folded(self, count: int) -> None:
        self.pending += count

    def due(self) -> bool:
        return self.pending >= self.every_events or (self.pending > 0 and self.clock() - self.last_at >= self.every_s)

    def written(self) -> None:
        self.pending, self.last_at = 0, self.clock()


def announce(processor: str, resume_at: Resume, tail: int, seconds: float, log: Callable[[str], None]) -> None:
    """The one start line: where the processor resumed and how much it read to get there."""
    metrics.CHECKPOINT_TAIL.labels(processor).set(tail)
    if resume_at.checkpoint is not None:
        age = (datetime.now(timezone.utc) - resume_at.checkpoint.written_at).total_seconds()
        metrics.CHECKPOINT_AGE.labels(processor).set(max(0.0, age))
        log(f"resumed from {resume_at.checkpoint.describe()}: {tail} records of tail read in {seconds:.2f} s")
    else:
        log(f"full replay ({resume_at.reason}): {tail} records read in {seconds:.2f} s")
