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

What the projector keeps for the partitions it reads is a `Fold`: the fold in memory, its checkpoint,
the payouts it stored, the rows not written yet. One projector per ledger has one fold for every
partition (checkpoint `projector:read-models`). An instance of `ledger projector --partitioned`
(projections/projector_instances.py) has one fold per partition it owns (`projector:read-models:p<N>`,
its stored payouts under the same name), each written in transactions of its own that also check the
partition's lease. Every row belongs to one payee, hence to one partition, except the daily totals,
which are kept per partition in both modes (projections/read_model.py): the same rows either way, so
a ledger moves between the modes without a rebuild.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy
from confluent_kafka import Message

from ledger.codec import EventCodec, UndecodableEvent
from ledger.events import Event
from ledger.payouts import named_payout
from processors.checkpoints import Cadence, CheckpointStore, Resume, announce, resume
from processors.dead_letters import parse_entry
from processors.entity_store import EntityStore
from processors.fault_points import crash_point, pause_point
from processors.kafka_io import Record, topic_partitions
from processors.ledger_replay import CorruptLedger
from processors.log_reader import LogReader, StopFlag
from projections.archive import archive_events
from projections.bulk import upsert
from projections.read_model import KEYS, ReadModel
from runtime import metrics
from runtime.database import make_engine
from runtime.logs import log_context
from runtime.partition_leases import Fenced
from runtime.settings import Settings

NAME = "read-models"
CHECKPOINT_NAME = f"projector:{NAME}"
STATE_FORMAT = 2  # bump when ReadModel, PayeeEarnings or Payout change shape (2: daily totals per partition)
# Once caught up, events wait at most this long to be written: under a steady stream the partitions are
# rarely all at their end at once, and a batch would otherwise wait for batch_events (bench/README.md).
BATCH_AGE_S = 0.05
PROJECTED = (*KEYS, "dead_letters")
# librdkafka prefetches up to 64 MiB per partition by default: on a replay that is the log itself in memory
CONSUMER_CONFIG = {"queued.max.messages.kbytes": 4096}
NO_PARTITION_WAIT_S = 0.2  # a partitioned instance that owns nothing looks for a share this often
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

    def add(self, other: ProjectorStats) -> None:
        """Sum another fold's counts into these (a partitioned instance's totals)."""
        for name in ("events", "tail", "written", "dead_letters", "batches", "checkpoints"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.resumed = self.resumed or other.resumed
        self.caught_up_s = max(self.caught_up_s, other.caught_up_s)


def load_tables(engine: sqlalchemy.Engine) -> dict[str, sqlalchemy.Table]:
    metadata = sqlalchemy.MetaData()
    metadata.reflect(engine, only=[*PROJECTED, "projection_positions", "event_archive"])
    return dict(metadata.tables)


def checkpoint_name(partition: int | None) -> str:
    """The checkpoint (and stored payouts) of the fold of every partition, or of one partition."""
    return CHECKPOINT_NAME if partition is None else f"{CHECKPOINT_NAME}:p{partition}"


def clear_checkpoints(connection: sqlalchemy.Connection) -> None:
    """Every checkpoint and stored payout of the projector: the single one's and each partition's."""
    for table in ("processor_checkpoints", "processor_entities"):  # names are ours, not input
        connection.execute(sqlalchemy.text(f"DELETE FROM {table} WHERE processor = :one OR processor LIKE :each"),
                           {"one": CHECKPOINT_NAME, "each": f"{CHECKPOINT_NAME}:p%"})


class Fold:
    """What the projector keeps for one scope of ledger.events: every partition (partition=None) or one.
    `reads_dlq`: the dead letters go with this fold (their rows and ledger.dlq positions in its batches)."""

    def __init__(self, engine: sqlalchemy.Engine, settings: Settings, partition: int | None, *, reads_dlq: bool,
                 stats: ProjectorStats | None = None) -> None:
        self.partition, self.reads_dlq = partition, reads_dlq
        self.name = checkpoint_name(partition)
        self.model = ReadModel(retain_rows=False)
        self.stats = stats if stats is not None else ProjectorStats()
        self.checkpoints = CheckpointStore(engine, self.name, STATE_FORMAT)
        self.entities = EntityStore(engine, self.name)
        self.cadence = Cadence(settings.checkpoint_every_events, settings.checkpoint_every_s)
        self.resumed = Resume(None)
        self.starts: dict[str, dict[int, int]] = {}  # where a reader starts it: topic -> partition -> next offset
        self.proofs: dict[str, dict[int, str]] = {}  # and the hashes proving its ledger.events positions
        self.archive: list[tuple[Event, bytes]] = []
        self.dead: list[dict] = []
        self.unwritten = 0
        self.started = self.unwritten_since = time.monotonic()
        self.caught_up = False
        self.reading = False  # read by the current reader (else it starts from `starts`)

    @property
    def label(self) -> str:
        """How log lines name the fold ("" for the fold of every partition)."""
        return "" if self.partition is None else f"partition {self.partition}: "


class Projector:
    """One projector for the whole ledger: one fold of every partition, and the dead letters."""

    def __init__(self, settings: Settings, bootstrap: str, database_url: str, *, batch_events: int = 2000,
                 batch_age_s: float = BATCH_AGE_S,
                 codec: EventCodec | None = None, log: Callable[[str], None] | None = None,
                 progress: Callable[[int], None] | None = None) -> None:
        self.settings, self.bootstrap, self.database_url = settings, bootstrap, database_url
        self.batch_age_s = batch_age_s
        self.codec = codec or EventCodec()
        self.batch_events, self.log, self.progress = batch_events, log or logger.info, progress
        self.stats = ProjectorStats()
        self.folds: dict[int | None, Fold] = {}
        self._stop = StopFlag()
        self._engine = make_engine(database_url)
        self._tables = load_tables(self._engine)
        self._heads: dict[str, int] = {}  # each payee's last event in the tables when its fold started
        self._reader: LogReader | None = None
        self._dlq_partitions: list[int] = []

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

    def _guard(self, connection: sqlalchemy.Connection, fold: Fold) -> None:
        """In each write transaction of `fold`, just before its commit: nothing to check for the single fold."""

    def _fenced(self, fold: Fold, error: Fenced) -> None:
        raise error  # only a partitioned instance's guard fences

    def _between_polls(self) -> None:
        """What a partitioned instance does between two polls (rebalancing); nothing here."""

    def _resume(self, fold: Fold) -> None:
        """Start the fold from a proven checkpoint that covers this ledger and that the tables have reached;
        else from the beginning of its partitions, on a clean slate (its checkpoint and stored payouts cleared)."""
        log = (lambda line: self.log(fold.label + line)) if fold.label else self.log
        resumed = resume(self.bootstrap, fold.checkpoints, log)
        checkpoint, topic = resumed.checkpoint, self.settings.topic_events
        if checkpoint is not None:
            model: ReadModel = checkpoint.state
            behind = next((payee for payee, (sequence, _, _) in model.heads.items()
                           if self._heads.get(payee, 0) < sequence), None)
            reason = why = ""
            if topic not in checkpoint.positions:
                reason, why = f"the checkpoint covers {sorted(checkpoint.positions)}, not {topic}", "partitions"
            elif behind is not None:
                reason, why = (f"the read models are behind the checkpoint (payee {behind}: tables emptied or "
                               "restored?)"), "behind"
            if reason:
                metrics.FULL_REPLAYS.labels(fold.name, why).inc()
                log(f"full replay: {reason}")
                resumed = Resume(None, reason, why)
            else:
                fold.model, fold.stats.events, fold.stats.resumed = model, checkpoint.events, True
        if resumed.checkpoint is None:
            with self._engine.begin() as connection:
                fold.checkpoints.clear(connection)
                fold.entities.clear(connection)
                self._guard(connection, fold)
        fold.resumed = resumed
        scope = topic_partitions(self.bootstrap, topic) if fold.partition is None else [fold.partition]
        fold.starts[topic] = resumed.start(topic, scope)
        fold.proofs = self._own(fold, resumed.checkpoint.proofs) if resumed.checkpoint else {}
        if fold.reads_dlq:
            fold.starts[self.settings.topic_dlq] = self._stored_positions(self.settings.topic_dlq)

    def run(self, idle_exit_s: float | None = None, handle_signals: bool = True) -> ProjectorStats:
        """Project until stop() (SIGTERM/SIGINT), or until caught up and idle for idle_exit_s seconds."""
        if handle_signals:
            self._stop.install()
        started = time.monotonic()
        try:
            self._heads = self._stored_heads()
            fold = Fold(self._engine, self.settings, None, reads_dlq=True, stats=self.stats)
            fold.started = started
            self._resume(fold)
            self.folds = {None: fold}
            self._open_reader()
            self._loop(idle_exit_s)
            self._finish(fold)  # a clean stop: the next start reads nothing again
        finally:
            if self._reader is not None:
                self._reader.close()
                self._reader = None
            self._engine.dispose()
        return self.stats

    # --- the loop, for the folds there are -------------------------------------------------------

    def _loop(self, idle_exit_s: float | None) -> None:
        last_input = time.monotonic()
        while not self._stop.is_set():
            self._between_polls()
            if self._reader is None:  # a partitioned instance that owns nothing (yet)
                time.sleep(NO_PARTITION_WAIT_S)
            elif self._step():
                last_input = time.monotonic()
            if (idle_exit_s is not None and all(fold.caught_up for fold in self.folds.values())
                    and time.monotonic() - last_input >= idle_exit_s):
                break

    def _step(self) -> bool:
        """One poll: fold what came into its fold, and write each fold whose batch is due. True if anything came."""
        assert self._reader is not None
        now = time.monotonic()
        for fold in self.folds.values():
            if not fold.unwritten:
                fold.unwritten_since = now  # when the oldest event not yet written arrived, at most
        messages = self._reader.poll()
        routed: dict[int | None, list] = {}
        for message in messages:
            routed.setdefault(self._fold_of(message), []).append(message)
        for key in list(self.folds):
            fold = self.folds.get(key)
            if fold is None:
                continue
            try:
                got = routed.get(key, [])
                if got:
                    self._take(fold, got)
                self._maybe_write(fold, bool(got))
            except Fenced as error:
                self._fenced(fold, error)
        return bool(messages)

    def _fold_of(self, message: Message) -> int | None:
        if None in self.folds:
            return None
        if message.topic() == self.settings.topic_events:
            return message.partition()
        return next((key for key, fold in self.folds.items() if fold.reads_dlq), -1)  # -1: no fold (dropped)

    def _at_end(self, fold: Fold) -> bool:
        assert self._reader is not None
        if fold.partition is None:
            return self._reader.caught_up
        wanted = {(self.settings.topic_events, fold.partition)}
        if fold.reads_dlq:
            wanted |= {(self.settings.topic_dlq, partition) for partition in self._dlq_partitions}
        return wanted <= self._reader.at_end

    def _maybe_write(self, fold: Fold, got: bool) -> None:
        caught_up = self._at_end(fold)
        stale = fold.caught_up and time.monotonic() - fold.unwritten_since >= self.batch_age_s
        if fold.unwritten and (not got or caught_up or stale or fold.unwritten >= self.batch_events):
            self._write(fold)
        elif fold.cadence.due():
            self._write(fold, force=True)
        if not fold.caught_up and caught_up:
            fold.caught_up = True
            self._write(fold, force=True)
            stats = fold.stats
            stats.caught_up_s = time.monotonic() - fold.started
            announce(fold.name, fold.resumed, stats.tail, stats.caught_up_s, lambda line: self.log(fold.label + line))
            self.log(f"{fold.label}caught up: {stats.events} events in the read models ({stats.tail} read, "
                     f"{stats.written} written) in {stats.caught_up_s:.2f} s")

    def _finish(self, fold: Fold) -> None:
        """Write what is left and a checkpoint (when anything was folded since the last one)."""
        if fold.unwritten or fold.cadence.pending:
            self._write(fold, force=True, checkpoint=True)

    def _open_reader(self) -> None:
        """One reader for every fold, each partition from where its fold is."""
        starts: dict[str, dict[int, int]] = {}
        proofs: dict[str, dict[int, str]] = {}
        for fold in self.folds.values():
            fold.reading = True
            for topic, parts in fold.starts.items():
                starts.setdefault(topic, {}).update(parts)
            for topic, digests in fold.proofs.items():
                proofs.setdefault(topic, {}).update(digests)
        events = self.settings.topic_events
        only = None if None in self.folds else {events: set(starts.get(events, {}))}
        self._reader = LogReader(
            self.bootstrap, "projector", starts, group_id=f"ledger-projector-{NAME}", batch_max=1000, wait_s=0.05,
            proofs=proofs, config=CONSUMER_CONFIG, only=only)

    def _reopen_reader(self) -> None:
        """A new reader for the folds there are now (none: no reader); the folds that were read by the one
        before go on from where they are in their partitions."""
        reader, self._reader = self._reader, None
        if reader is not None:
            positions, proofs = reader.positions(), reader.proofs([self.settings.topic_events])
            for fold in self.folds.values():
                if fold.reading:  # not a fold that started since (a partition lost and gained again included)
                    fold.starts, fold.proofs = self._own(fold, positions), self._own(fold, proofs)
            reader.close()
        if self.folds:
            self._open_reader()

    def _own(self, fold: Fold, per_topic: dict[str, dict[int, Any]]) -> dict[str, dict[int, Any]]:
        """The part of a per-topic, per-partition mapping that belongs to `fold`."""
        events, owned = self.settings.topic_events, {}
        for topic, parts in per_topic.items():
            if topic == events:
                owned[topic] = {p: v for p, v in parts.items() if fold.partition is None or p == fold.partition}
            elif fold.reads_dlq:
                owned[topic] = dict(parts)
        return owned

    # --- folding and writing one fold --------------------------------------------------------------

    def _take(self, fold: Fold, messages: list) -> None:
        """Fold one polled batch: dead letters as rows; events after the payouts they name are back in memory."""
        events: list[tuple[Event, bytes, int]] = []
        for message in messages:
            if message.topic() != self.settings.topic_events:
                self._dead_letter(fold, message)
                continue
            raw = message.value() or b""
            pause_point(raw)
            try:
                events.append((self.codec.decode(raw), raw, message.partition()))
            except UndecodableEvent as exc:
                raise CorruptLedger(f"{message.topic()}[{message.partition()}]@{message.offset()}: {exc.reason}") from None
        model = fold.model
        named = {named_payout(event) for event, _, _ in events} - {None} - model.book.payouts.keys()
        if named:
            model.restore(fold.entities.get_many("payout", named))
        for event, raw, partition in events:
            self._fold(fold, event, raw, partition)
        fold.stats.tail += len(events)
        fold.cadence.folded(len(events))

    def _fold(self, fold: Fold, event: Event, raw: bytes, partition: int) -> None:
        new = event.envelope.sequence > self._heads.get(event.payee_id, 0)
        fold.model.apply(event, raw, record=new, partition=partition)
        fold.stats.events += 1
        if new:
            fold.archive.append((event, raw))
            fold.unwritten += 1
            fold.stats.written += 1
        if self.progress is not None:
            self.progress(1)

    def _dead_letter(self, fold: Fold, message: Message) -> None:
        entry = parse_entry(Record(message.topic(), message.partition(), message.offset(), message.key(),
                                   message.value(), tuple(message.headers() or ())))
        fold.dead.append({"dlq_id": entry.id, "source_topic": entry.source_topic,
                          "source_partition": entry.source_partition, "source_offset": entry.source_offset,
                          "stage": entry.stage, "reason": entry.reason, "rejected_at": entry.rejected_at,
                          "replayed_from": entry.replayed_from, "key": entry.key, "value": entry.value})
        fold.unwritten += 1
        fold.stats.dead_letters += 1

    def _write(self, fold: Fold, force: bool = False, checkpoint: bool = False) -> None:
        """One transaction: changed rows, archive, heads and positions together (and the checkpoint when due)."""
        changes = fold.model.take_changes()
        if not force and not fold.unwritten:
            return
        with log_context(batch=fold.stats.batches + 1):
            self._write_batch(fold, changes, checkpoint or fold.cadence.due())

    def _write_batch(self, fold: Fold, changes: dict[str, list[dict]], checkpoint: bool = False) -> None:
        assert self._reader is not None
        positions = [{"projector": NAME, "topic": topic, "partition": partition, "next_offset": offset}
                     for topic, parts in sorted(self._own(fold, self._reader.positions()).items())
                     for partition, offset in sorted(parts.items())]
        with self._engine.begin() as connection:
            for table, rows in changes.items():
                upsert(connection, self._tables[table], KEYS[table], rows)
            upsert(connection, self._tables["dead_letters"], ("dlq_id",), fold.dead)
            archive_events(connection, self.settings.topic_events, fold.archive)
            upsert(connection, self._tables["projection_positions"], ("projector", "topic", "partition"), positions)
            if checkpoint:
                self._write_checkpoint(fold, connection)
            # last, so the lease rows stay locked (FOR SHARE) only for the commit: a claim waits for it
            self._guard(connection, fold)
            crash_point("projector_before_commit")
        crash_point("projector_after_commit")
        if checkpoint:
            crash_point("projector_checkpoint_after_commit")
            fold.cadence.written()
            fold.stats.checkpoints += 1
        metrics.PROJECTED.inc(len(fold.archive))
        logger.debug("%sbatch written: %d events archived, %d dead letters, rows in %d tables%s", fold.label,
                     len(fold.archive), len(fold.dead), len(changes), ", checkpoint" if checkpoint else "")
        fold.archive, fold.dead, fold.unwritten = [], [], 0
        fold.stats.batches += 1

    def _write_checkpoint(self, fold: Fold, connection: sqlalchemy.Connection) -> None:
        """The fold without its finished payouts (their rows are in this transaction or an earlier one)."""
        assert self._reader is not None
        topics = [self.settings.topic_events]
        fold.entities.put_many(connection, "payout", fold.model.evict_finished())
        fold.checkpoints.write(connection, self._own(fold, self._reader.checkpoint_positions(topics)),
                               self._own(fold, self._reader.proofs(topics)), fold.model, fold.stats.events)
        crash_point("projector_checkpoint_before_commit")
