"""The projector: ledger.events (and ledger.dlq) -> PostgreSQL read models, exactly once.

Each batch is written in ONE database transaction: the changed rows (absolute values, so writing a
row again is harmless), the events verbatim into event_archive, each payee's last applied event
(payee + sequence + hash: the idempotency key, independent of Kafka offsets) and the consumer
positions. Every checkpoint_every_events events or checkpoint_every_s seconds, and at a clean stop,
the same transaction also writes a checkpoint: the in-memory fold (processors/checkpoints.py) with the
ledger.events positions it covers. Finished payouts (settled, failed, cancelled) leave memory then,
into processor_entities, and come back for a batch whose events name them (a paid payout can still
fail), so memory follows payees and open payouts, not the history.

At start a proven checkpoint is loaded and only the tail is read; otherwise (none, or one that does
not prove) the whole log is folded again, checkpointing as it goes. Either way only what comes after
each payee's recorded head is written (a batch after the last checkpoint may have been written).
Dead letters are read from the positions stored with the rows.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

import sqlalchemy

from ledger.codec import EventCodec, UndecodableEvent
from ledger.events import Event
from ledger.payouts import named_payout
from processors.checkpoints import Cadence, CheckpointStore, Resume, announce, resume
from processors.dead_letters import parse_entry
from processors.entity_store import EntityStore
from processors.fault_points import crash_point
from processors.kafka_io import Record, topic_partitions
from processors.ledger_replay import CorruptLedger
from processors.log_reader import LogReader, StopFlag
from projections.archive import archive_events
from projections.bulk import upsert
from projections.read_model import KEYS, ReadModel
from runtime import metrics
from runtime.database import make_engine
from runtime.logs import log_context
from runtime.settings import Settings

NAME = "read-models"
CHECKPOINT_NAME = f"projector:{NAME}"
STATE_FORMAT = 1  # bump when ReadModel, PayeeEarnings or Payout change shape
# Once caught up, events wait at most this long to be written: under a steady stream the partitions are
# rarely all at their end at once, and a batch would otherwise wait for batch_events (bench/README.md).
BATCH_AGE_S = 0.05
PROJECTED = (*KEYS, "dead_letters")
# librdkafka prefetches up to 64 MiB per partition by default: on a replay that is the log itself in memory
CONSUMER_CONFIG = {"queued.max.messages.kbytes": 4096}
logger = logging.getLogger("ledger.projector")


@dataclass
class ProjectorStats:
    events: int = 0  # events the read models' fold covers (the checkpoint's and those read in this run)
    tail: int = 0  # ledger.events records read in this run
    written: int = 0  # beyond the recorded heads: new rows written
    dead_letters: int = 0
    batches: int = 0
    checkpoints: int = 0
    resumed: bool = False  # from a checkpoint (else a full replay)
    caught_up_s: float = 0.0


def load_tables(engine: sqlalchemy.Engine) -> dict[str, sqlalchemy.Table]:
    metadata = sqlalchemy.MetaData()
    metadata.reflect(engine, only=[*PROJECTED, "projection_positions", "event_archive"])
    return dict(metadata.tables)


class Projector:
    def __init__(self, settings: Settings, bootstrap: str, database_url: str, *, batch_events: int = 2000,
                 batch_age_s: float = BATCH_AGE_S,
                 codec: EventCodec | None = None, log: Callable[[str], None] | None = None,
                 progress: Callable[[int], None] | None = None) -> None:
        self.settings, self.bootstrap, self.database_url = settings, bootstrap, database_url
        self.batch_age_s = batch_age_s
        self.codec = codec or EventCodec()
        self.batch_events, self.log, self.progress = batch_events, log or logger.info, progress
        self.model = ReadModel(retain_rows=False)
        self.stats = ProjectorStats()
        self._stop = StopFlag()
        self._engine = make_engine(database_url)
        self._tables = load_tables(self._engine)
        self._checkpoints = CheckpointStore(self._engine, CHECKPOINT_NAME, STATE_FORMAT)
        self._entities = EntityStore(self._engine, CHECKPOINT_NAME)
        self._cadence = Cadence(settings.checkpoint_every_events, settings.checkpoint_every_s)
        self._reader: LogReader | None = None
        self._archive: list[tuple[Any, bytes]] = []
        self._dead: list[dict] = []
        self._unwritten = 0

    def stop(self) -> None:
        self._stop.set()

    def _stored_heads(self) -> dict[str, int]:
        heads = self._tables["projection_heads"]
        with self._engine.connect() as connection:
            return dict(connection.execute(sqlalchemy.select(heads.c.payee_id, heads.c.last_sequence)).all())

    def _stored_positions(self, topic: str) -> dict[int, int]:
        positions = self._tables["projection_positions"]
        with self._engine.connect() as connection:
            return dict(connection.execute(sqlalchemy.select(positions.c.partition, positions.c.next_offset).where(
                positions.c.projector == NAME, positions.c.topic == topic)).all())

    def _resume(self, heads: dict[str, int]) -> Resume:
        """A proven checkpoint that covers this ledger and that the tables have reached; else a full replay
        from a clean slate (no checkpoint, no stored payouts)."""
        resumed = resume(self.bootstrap, self._checkpoints, self.log)
        checkpoint, topic = resumed.checkpoint, self.settings.topic_events
        if checkpoint is not None:
            model: ReadModel = checkpoint.state
            behind = next((payee for payee, (sequence, _, _) in model.heads.items() if heads.get(payee, 0) < sequence),
                          None)
            reason = why = ""
            if topic not in checkpoint.positions:
                reason, why = f"the checkpoint covers {sorted(checkpoint.positions)}, not {topic}", "partitions"
            elif behind is not None:
                reason, why = (f"the read models are behind the checkpoint (payee {behind}: tables emptied or "
                               "restored?)"), "behind"
            if reason:
                metrics.FULL_REPLAYS.labels(CHECKPOINT_NAME, why).inc()
                self.log(f"full replay: {reason}")
                resumed = Resume(None, reason, why)
            else:
                self.model, self.stats.events, self.stats.resumed = model, checkpoint.events, True
                return resumed
        with self._engine.begin() as connection:
            self._checkpoints.clear(connection)
            self._entities.clear(connection)
        return resumed

    def run(self, idle_exit_s: float | None = None, handle_signals: bool = True) -> ProjectorStats:
        """Project until stop() (SIGTERM/SIGINT), or until caught up and idle for idle_exit_s seconds."""
        if handle_signals:
            self._stop.install()
        started = time.monotonic()
        heads = self._stored_heads()
        resumed = self._resume(heads)
        events_topic, dlq_topic = self.settings.topic_events, self.settings.topic_dlq
        starts = {events_topic: resumed.start(events_topic, topic_partitions(self.bootstrap, events_topic)),
                  dlq_topic: self._stored_positions(dlq_topic)}
        self._reader = reader = LogReader(
            self.bootstrap, "projector", starts, group_id=f"ledger-projector-{NAME}", batch_max=1000, wait_s=0.05,
            proofs=resumed.checkpoint.proofs if resumed.checkpoint else None, config=CONSUMER_CONFIG)
        caught_up, last_input, unwritten_since = False, time.monotonic(), time.monotonic()
        try:
            while not self._stop.is_set():
                if not self._unwritten:
                    unwritten_since = time.monotonic()  # when the oldest event not yet written arrived, at most
                messages = reader.poll()
                if messages:
                    last_input = time.monotonic()
                    self._take(messages, heads)
                stale = caught_up and time.monotonic() - unwritten_since >= self.batch_age_s
                if self._unwritten and (not messages or reader.caught_up or stale
                                        or self._unwritten >= self.batch_events):
                    self._write()
                elif self._cadence.due():
                    self._write(force=True)
                if not caught_up and reader.caught_up:
                    caught_up = True
                    self._write(force=True)
                    self.stats.caught_up_s = time.monotonic() - started
                    announce(CHECKPOINT_NAME, resumed, self.stats.tail, self.stats.caught_up_s, self.log)
                    self.log(f"caught up: {self.stats.events} events in the read models ({self.stats.tail} read, "
                             f"{self.stats.written} written) in {self.stats.caught_up_s:.2f} s")
                if caught_up and idle_exit_s is not None and time.monotonic() - last_input >= idle_exit_s:
                    break
            if self._unwritten or self._cadence.pending:
                self._write(force=True, checkpoint=True)  # a clean stop: the next start reads nothing again
        finally:
            reader.close()
            self._reader = None
            self._engine.dispose()
        return self.stats

    def _take(self, messages: list, heads: dict[str, int]) -> None:
        """Fold one polled batch: dead letters as rows; events after the payouts they name are back in memory."""
        events: list[tuple[Event, bytes]] = []
        for message in messages:
            if message.topic() != self.settings.topic_events:
                self._dead_letter(message)
                continue
            raw = message.value() or b""
            try:
                events.append((self.codec.decode(raw), raw))
            except UndecodableEvent as exc:
                raise CorruptLedger(f"{message.topic()}[{message.partition()}]@{message.offset()}: {exc.reason}") from None
        named = {named_payout(event) for event, _ in events} - {None} - self.model.book.payouts.keys()
        if named:
            self.model.restore(self._entities.get_many("payout", named))
        for event, raw in events:
            self._fold(event, raw, heads)
        self.stats.tail += len(events)
        self._cadence.folded(len(events))

    def _fold(self, event: Event, raw: bytes, heads: dict[str, int]) -> None:
        new = event.envelope.sequence > heads.get(event.payee_id, 0)
        self.model.apply(event, raw, record=new)
        self.stats.events += 1
        if new:
            self._archive.append((event, raw))
            self._unwritten += 1
            self.stats.written += 1
        if self.progress is not None:
            self.progress(1)

    def _dead_letter(self, message) -> None:  # noqa: ANN001
        entry = parse_entry(Record(message.topic(), message.partition(), message.offset(), message.key(),
                                   message.value(), tuple(message.headers() or ())))
        self._dead.append({"dlq_id": entry.id, "source_topic": entry.source_topic,
                           "source_partition": entry.source_partition, "source_offset": entry.source_offset,
                           "stage": entry.stage, "reason": entry.reason, "rejected_at": entry.rejected_at,
                           "replayed_from": entry.replayed_from, "key": entry.key, "value": entry.value})
        self._unwritten += 1
        self.stats.dead_letters += 1

    def _write(self, force: bool = False, checkpoint: bool = False) -> None:
        """One transaction: changed rows, archive, heads and positions together (and the checkpoint when due)."""
        changes = self.model.take_changes()
        if not force and not self._unwritten:
            return
        with log_context(batch=self.stats.batches + 1):
            self._write_batch(changes, checkpoint or self._cadence.due())

    def _write_batch(self, changes: dict[str, list[dict]], checkpoint: bool = False) -> None:
        assert self._reader is not None
        positions = [{"projector": NAME, "topic": topic, "partition": partition, "next_offset": offset}
                     for topic, parts in sorted(self._reader.positions().items())
                     for partition, offset in sorted(parts.items())]
        with self._engine.begin() as connection:
            for table, rows in changes.items():
                upsert(connection, self._tables[table], KEYS[table], rows)
            upsert(connection, self._tables["dead_letters"], ("dlq_id",), self._dead)
            archive_events(connection, self.settings.topic_events, self._archive)
            upsert(connection, self._tables["projection_positions"], ("projector", "topic", "partition"), positions)
            if checkpoint:
                self._write_checkpoint(connection)
            crash_point("projector_before_commit")
        crash_point("projector_after_commit")
        if checkpoint:
            crash_point("projector_checkpoint_after_commit")
            self._cadence.written()
            self.stats.checkpoints += 1
        metrics.PROJECTED.inc(len(self._archive))
        logger.debug("batch written: %d events archived, %d dead letters, rows in %d tables%s", len(self._archive),
                     len(self._dead), len(changes), ", checkpoint" if checkpoint else "")
        self._archive, self._dead, self._unwritten = [], [], 0
        self.stats.batches += 1

    def _write_checkpoint(self, connection: sqlalchemy.Connection) -> None:
        """The fold without its finished payouts (their rows are in this transaction or an earlier one)."""
        assert self._reader is not None
        topics = [self.settings.topic_events]
        self._entities.put_many(connection, "payout", self.model.evict_finished())
        self._checkpoints.write(connection, self._reader.checkpoint_positions(topics), self._reader.proofs(topics),
                                self.model, self.stats.events)
        crash_point("projector_checkpoint_before_commit")
