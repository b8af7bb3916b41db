"""The sequencer: payments.incoming and ledger.commands -> ledger.events exactly once, or ledger.dlq.

Why a plain confluent-kafka loop and not a Faust agent (docs/decisions.md §12): its state is
rebuilt at start from ledger.events itself, and each batch's outputs are flushed before the input
offsets are committed. A crash at any point then only means reprocessing records after the last
commit; those already appended are recognised as duplicates by their business id, and those already
dead-lettered by their source position, so nothing is appended twice and nothing is lost.

Whatever arrives ends chained or dead-lettered, never as a crash (docs/decisions.md §29): a record
that raises while it is judged is dead-lettered as poison; a dead letter too large for the broker
keeps a bounded prefix; a refund before its payment waits (processors/waiting_room.py); and after an
unclean stop the first records are processed one at a time, each marked in PostgreSQL first, so a
record that kills the process outright is dead-lettered after Settings.sequencer_poison_deaths deaths.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable

from confluent_kafka import OFFSET_STORED, Consumer, KafkaException, Producer, TopicPartition
from sqlalchemy.exc import SQLAlchemyError

from ledger.codec import EventCodec
from ledger.events import Event
from ledger.guards import InvariantViolation
from ledger.intake import RECORD_MAX_BYTES, shown
from ledger.ledger_index import DEDUPE_FIELDS, LedgerIndex, content_digest, dedupe_key
from processors.checkpoints import Cadence, CheckpointStore, Positions, Resume, announce, record_hash, resume
from processors.dead_letters import parse_entry
from processors.fault_points import crash_point, planted, pause_point, poison_point
from processors.kafka_io import CLIENT_LOG, ConsumerLag, DeliveryFailed, Record, topic_partitions
from processors.ledger_replay import REPLAY_TIMEOUT_S, CorruptLedger, decode_event
from processors.log_reader import LogReader
from processors.partition_fence import EPOCH_HEADER, PartitionFence
from processors.partitioning import partition_for
from processors.sequencer_claims import ClaimStore
from processors.sequencer_index_store import PostgresIndexBacking
from processors.sequencer_input import Rejected, interpret, interpret_command
from processors.sequencer_outputs import BatchOutputs, make_output_producer
from processors.sequencer_store import SequencerStore, Waiting
from processors.waiting_room import WaitingRoom
from runtime import metrics
from runtime.logs import log_context
from runtime.settings import Settings
from runtime.kafka_security import secure

Clock = Callable[[], datetime]
SOURCE_HEADER = "ledger-source"
CHECKPOINT_NAME = "sequencer"
HOME_CACHE_MAX = 100_000  # keys whose partition is remembered (cleared when full: bounded memory)
STATE_FORMAT = 1  # bump when IndexState, ChainHead or Payout change shape: older checkpoints are then replayed
logger = logging.getLogger("ledger.sequencer")


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def _reached(suspect: tuple[str, int, int] | None, record: Record) -> bool:
    """Whether `record` is the one the last run died on while processing it alone, or comes after it."""
    return suspect is not None and (record.topic, record.partition) == suspect[:2] and record.offset >= suspect[2]


@dataclass
class SequencerStats:
    appended: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    skipped_already_dead: int = 0
    waiting: int = 0  # refunds that had to wait for their payment (chained or dead-lettered later)
    poison: int = 0
    batches: int = 0
    rerouted: int = 0  # partitioned mode: records sent to the partition their key belongs to
    rebuilt_events: int = 0
    rebuild_s: float = 0.0
    by_reason: dict[str, int] = field(default_factory=dict)


# Errors of the broker or the database, not of the record: they fail the batch (retried after a restart).
INFRASTRUCTURE_ERRORS = (KafkaException, BufferError, DeliveryFailed, SQLAlchemyError)


Source = tuple[str, int, int]


def good_records(messages: list) -> list[Record]:
    """The records of a consume() batch; a fatal client error raises, a transient one is logged (librdkafka retries)."""
    records = []
    for message in messages:
        error = message.error()
        if error is None:
            records.append(Record(message.topic(), message.partition(), message.offset(), message.key(),
                                  message.value(), tuple(message.headers() or ())))
        elif error.fatal():
            raise KafkaException(error)
        else:
            logger.warning("consumer: %s", error.str())
    return records


class Sequencer:
    """One sequencer for all partitions of payments.incoming (see docs/decisions.md §12 for scale-out)."""

    def __init__(self, settings: Settings, bootstrap: str, *, database_url: str | None = None,
                 codec: EventCodec | None = None, clock: Clock = utc_now,
                 log: Callable[[str], None] | None = None, partition: int | None = None,
                 fence: PartitionFence | None = None, producer: Producer | None = None) -> None:
        """partition=None: one sequencer for every partition. With a partition (and its fence), one partition of
        a partitioned instance (processors/sequencer_instances.py): its own chains, checkpoint and waiting
        refunds, ledger-wide dedupe through claims, and every write checked against the partition's lease."""
        self.settings = settings
        self.partition = partition
        self.fence = fence
        self.claims = ClaimStore(partition) if partition is not None else None
        self._epoch_header = f"{partition}:{fence.epoch}".encode() if fence is not None else b""
        self.bootstrap = bootstrap
        self.codec = codec or EventCodec()
        self.clock = clock
        self.log = log or logger.info
        self.limits = settings.intake_limits()
        self.stats = SequencerStats()
        self.index: LedgerIndex | None = None
        self._dead_sources: set[Source] = set()
        database_url = database_url or settings.database_url
        if not database_url:
            raise ValueError("the sequencer needs PostgreSQL (LEDGER_DATABASE_URL or `ledger up`): it keeps "
                             "refunds waiting for their payment and its run marker there")
        suffix = "" if partition is None else f":p{partition}"
        self.checkpoint_name = CHECKPOINT_NAME + suffix
        self.store = SequencerStore(database_url, f"{settings.sequencer_group}:{settings.topic_incoming}{suffix}")
        self.waiting = WaitingRoom(settings.sequencer_wait_s, settings.sequencer_wait_max_records)
        self._producer = producer or make_output_producer(bootstrap)
        self.cadence = Cadence(settings.checkpoint_every_events, settings.checkpoint_every_s)
        self._positions: Positions = {}  # ledger.events and ledger.dlq: the next offset the state covers
        self._carried: dict[str, dict[int, str]] = {}  # proofs of positions not moved since the last checkpoint
        self._last: dict[tuple[str, int], tuple[int, bytes]] = {}  # the last record stored per partition since
        self._stop = threading.Event()
        self._prepared: dict[Source, Event | Exception] = {}
        self._appending = False  # between index.append and its produce: an error there is never the record's
        self._appended_types: dict[str, int] = {}  # events appended in this batch, per type (metrics)
        self._claimed: dict[str, str] = {}  # partitioned mode: key -> content digest, claimed and not chained yet
        self._home: dict[bytes, int] = {}  # partitioned mode: key -> its partition (bounded cache)

    def stop(self) -> None:
        self._stop.set()

    def rebuild(self) -> None:
        """Resume from the newest checkpoint that proves against ledger.events (else replay it all), then read
        the tail: ledger.events for ids and chains, ledger.dlq for what was refused, PostgreSQL for the
        refunds still waiting for their payment."""
        started = time.monotonic()
        engine = self.store.engine
        self.checkpoints = CheckpointStore(engine, self.checkpoint_name, STATE_FORMAT)
        self.backing = PostgresIndexBacking(engine)
        resumed = resume(self.bootstrap, self.checkpoints, self.log,
                         topics=(self.settings.topic_events, self.settings.topic_dlq))
        try:
            tail = self._read_log(resumed)
        except CorruptLedger as exc:
            if resumed.checkpoint is None:
                raise
            # the proof holds one record per partition; a tail that does not continue the checkpoint's chains
            # (a log rebuilt in another order) means the checkpoint is not of this log after all
            reason = f"the log after the checkpoint does not continue its chains ({exc})"
            self.log(f"full replay: {reason}")
            metrics.FULL_REPLAYS.labels(self.checkpoint_name, "chain").inc()
            resumed = Resume(None, reason, "chain")
            self.cadence.written()
            tail = self._read_log(resumed)
        self.waiting = WaitingRoom(self.settings.sequencer_wait_s, self.settings.sequencer_wait_max_records)
        for item in self.store.load_waiting():
            self.waiting.add(item)
        self.stats.rebuilt_events = tail
        self.stats.rebuild_s = time.monotonic() - started
        announce(self.checkpoint_name, resumed, tail, self.stats.rebuild_s, self.log)
        self.log(f"{len(self.index.chain.heads)} payee chains, {len(self._dead_sources)} dead letters of uncommitted "
                 f"inputs and {len(self.waiting)} waiting refunds")

    def _read_log(self, resumed: Resume) -> int:
        """Load the checkpoint's state (or clear everything for a full replay) and fold what follows it."""
        engine = self.store.engine
        state = resumed.checkpoint.state if resumed.checkpoint else None
        if state is None:
            with engine.begin() as connection:  # nothing folded before is trusted
                if self.fence is not None:
                    self.fence.guard(connection)
                if self.partition is None:
                    self.backing.clear(connection)
                # else: other partitions' rows stay; this partition's are written again (ON CONFLICT) as it replays
                self.checkpoints.clear(connection)
        self.index = LedgerIndex(self.codec.encode, self.backing, state["index"] if state else None)
        dead: set[Source] = set(state["dead"]) if state else set()
        events_topic, dlq_topic = self.settings.topic_events, self.settings.topic_dlq
        only = None if self.partition is None else {events_topic: {self.partition}}
        reader = LogReader(self.bootstrap, "sequencer-rebuild", {
            topic: resumed.start(topic, topic_partitions(self.bootstrap, topic)) for topic in (events_topic, dlq_topic)},
            proofs=resumed.checkpoint.proofs if resumed.checkpoint else None, batch_max=2000, only=only)
        tail = 0
        try:
            for messages in reader.batches_to_end(REPLAY_TIMEOUT_S):
                folded = self._fold_tail([m for m in messages if m.topic() == events_topic])
                for message in messages:
                    if message.topic() == dlq_topic:
                        entry = parse_entry(Record(message.topic(), message.partition(), message.offset(),
                                                   message.key(), message.value(), tuple(message.headers() or ())))
                        if self.partition is None or entry.source[1] == self.partition:
                            dead.add(entry.source)
                tail += len(messages)
                self.cadence.folded(folded)
                if self.cadence.pending >= self.settings.checkpoint_every_events:  # bounded memory in a long replay
                    self._positions, self._last = reader.checkpoint_positions(), {}
                    self._carried = reader.proofs()
                    self._checkpoint(dead)
            self._positions, self._last, self._carried = reader.checkpoint_positions(), {}, reader.proofs()
        finally:
            reader.close()
        self._dead_sources = self._uncommitted(dead)
        if self.cadence.pending:
            self._checkpoint(self._dead_sources)
        return tail

    def _fold_tail(self, messages: list) -> int:
        """Fold events read back from ledger.events; refuse a ledger with undecodable bytes or broken chains."""
        assert self.index is not None
        decoded = [(decode_event(self.codec, message), message) for message in messages]
        self.index.prefetch(event for event, _ in decoded)
        for event, message in decoded:
            try:
                self.index.observe(event, message.value() or b"")
            except InvariantViolation as exc:
                raise CorruptLedger(f"{message.topic()}[{message.partition()}]@{message.offset()}: {exc}") from None
        return len(decoded)

    def _uncommitted(self, dead: set[Source]) -> set[Source]:
        """Of these dead-lettered input positions, those the input topics may deliver again (not committed)."""
        if not dead:
            return set()
        consumer = Consumer(secure({"bootstrap.servers": self.bootstrap, "group.id": self.settings.sequencer_group,
                             "enable.auto.commit": False, "logger": CLIENT_LOG}))
        try:
            wanted = sorted({(topic, partition) for topic, partition, _ in dead})
            committed = {(tp.topic, tp.partition): tp.offset for tp in consumer.committed(
                [TopicPartition(topic, partition) for topic, partition in wanted], timeout=10)}
        finally:
            consumer.close()
        return {source for source in dead if source[2] >= committed.get(source[:2], -1)}

    def _checkpoint(self, dead: set[Source]) -> None:
        """Hand what the index folded to PostgreSQL and write the checkpoint, in one transaction."""
        assert self.index is not None
        changes = self.index.take_changes()
        proofs = dict(self._carried)
        for (topic, partition), (_offset, value) in self._last.items():
            proofs.setdefault(topic, {})[partition] = record_hash(value)
        self._carried, self._last = proofs, {}
        state = {"index": self.index.state(), "dead": sorted(dead)}
        with self.store.engine.begin() as connection:
            if self.fence is not None:
                self.fence.guard(connection)
            self.backing.store(connection, changes)
            if self.claims is not None:
                self.claims.settle(connection)
            crash_point("sequencer_checkpoint_before_commit")
            self.checkpoints.write(connection, self._positions, proofs, state, self.index.events)
        crash_point("sequencer_checkpoint_after_commit")
        self.cadence.written()
        metrics.CHECKPOINT_AGE.labels(self.checkpoint_name).set(0)
        logger.debug("checkpoint written: %d ids, %d payments, %d finished payouts", len(changes.recorded),
                     len(changes.payments), len(changes.finished_payouts))

    def _stored(self, outputs: BatchOutputs) -> None:
        """Advance the positions the next checkpoint covers past what this batch stored."""
        for (topic, partition), (offset, value) in outputs.ends.items():
            self._positions.setdefault(topic, {})[partition] = offset + 1
            self._last[(topic, partition)] = (offset, value)

    def run(self, idle_exit_s: float | None = None, handle_signals: bool = True) -> SequencerStats:
        """Process until stop() (SIGTERM/SIGINT), or until idle for idle_exit_s seconds."""
        if handle_signals:
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, lambda *_: self.stop())
        consumer = self.make_consumer(self.bootstrap, self.settings)
        topics = (self.settings.topic_incoming, self.settings.topic_commands)
        lag = ConsumerLag("sequencer", topics)
        consumer.assign([TopicPartition(topic, partition, OFFSET_STORED)
                         for topic in topics for partition in topic_partitions(self.bootstrap, topic)])
        last_input = time.monotonic()
        clean = False
        try:
            self.begin(consumer)
            while not self._stop.is_set():
                messages = consumer.consume(self.settings.sequencer_batch_max,
                                            self.settings.sequencer_batch_wait_ms / 1000)
                lag.observe_batch(messages)
                if len(messages) < self.settings.sequencer_batch_max:  # the poll drained what there was
                    lag.caught_up(set(topics) - {message.topic() for message in messages})
                records = good_records(messages)
                if records:
                    self.process(consumer, records)
                if messages:
                    last_input = time.monotonic()
                else:
                    self.idle(consumer)
                self.tick()
                if not messages and idle_exit_s is not None and time.monotonic() - last_input >= idle_exit_s:
                    break
            clean = True
        except INFRASTRUCTURE_ERRORS:
            self._forget_alone()  # the broker or the database failed, not the record being processed
            raise
        finally:
            consumer.close()
            self.finish(clean)
        return self.stats

    @staticmethod
    def make_consumer(bootstrap: str, settings: Settings) -> Consumer:
        return Consumer(secure({
            "bootstrap.servers": bootstrap,
            "group.id": settings.sequencer_group,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": 20,  # librdkafka's 500 ms default: a record arriving at a waiting fetch waited too
            "logger": CLIENT_LOG,
        }))

    def begin(self, consumer: Consumer) -> None:
        """Before the first batch: rebuild if not yet done, mark the run, judge refunds whose payment came meanwhile."""
        if self.index is None:
            self.rebuild()
        self._marker = self.store.start_run()
        window = min(self.settings.sequencer_careful_window, self.settings.sequencer_batch_max)
        self._careful_left = window if self._marker.running else 0
        self._careful_done = 0
        if self._marker.running:
            marker = self._marker
            where = ":".join(map(str, marker.source)) if marker.source else "none"
            until = f"until {where}, " if marker.source else ""
            self.log(f"the last run did not stop cleanly: the next {self._careful_left} records are processed one "
                     f"at a time, {until}(record processed alone when it stopped: {where}, deaths on it: "
                     f"{marker.attempts})")
        self._process_batch(consumer, [], retry=self._known_payments())

    def process(self, consumer: Consumer, records: list[Record]) -> None:
        """One polled batch of this sequencer's input records (after an unclean stop, the first one at a time).

        The careful window is sequencer_careful_window records (200) if it died in a batch, and only up to the
        record it was processing alone if it died in the window (nothing after that record was in flight). A
        poison record further into the batch than the window kills the next batch again, and each such death
        moves the committed position on by a window, so it is still found, after at most batch_max / window
        more deaths. A window of a whole batch (2,000 records one at a time, ~20 s) would never end under kills
        every few seconds: a livelock the soak found."""
        while records and self._careful_left:
            record, records = records[0], records[1:]
            self._process_alone(consumer, record, self._marker)
            self._careful_left -= 1
            self._careful_done += 1
            if _reached(self._marker.source, record):
                self._careful_left = 0
            if not self._careful_left:
                self.store.mark_alone(None, 0)
                self.log(f"{self._careful_done} records were processed one at a time; back to batches")
        if records:
            self._process_batch(consumer, records)

    def idle(self, consumer: Consumer) -> None:
        """A poll found nothing: refunds that waited too long are dead-lettered."""
        if len(self.waiting):
            self._process_batch(consumer, [])

    def tick(self) -> None:
        if self.cadence.due():
            self._checkpoint(self._dead_sources)

    def finish(self, clean: bool) -> None:
        """After the last batch: a clean stop writes what is pending and clears the run marker."""
        try:
            if clean:
                if self.cadence.pending:
                    self._checkpoint(self._dead_sources)
                self.store.stop_run()
        finally:
            self.store.close()

    def _forget_alone(self) -> None:
        try:
            self.store.mark_alone(None, 0)
        except SQLAlchemyError:
            logger.warning("could not clear the run marker: the database is unreachable")

    def _known_payments(self) -> list[Waiting]:
        assert self.index is not None
        known = self.index.knows_payments(list(self.waiting.payments()))
        return [item for payment_id in sorted(known) for item in self.waiting.take_for(payment_id)]

    def _process_alone(self, consumer: Consumer, record: Record, marker) -> None:  # noqa: ANN001 - RunMarker
        """One record in its own batch, marked first: if it kills the process, the next start knows which."""
        source = (record.topic, record.partition, record.offset)
        deaths = marker.attempts if marker.source == source else 0
        if deaths >= self.settings.sequencer_poison_deaths:
            self.store.mark_alone(None, 0)
            outputs = BatchOutputs(self._producer, self.settings.topic_dlq)
            self.stats.poison += 1
            self._dead_letter(record, "poison", f"the sequencer died {deaths} times while processing this record "
                              "alone; it is dead-lettered without being processed again", self.clock(), outputs)
            outputs.flush()
            self._stored(outputs)
            self._after_commit(outputs, self._commit(consumer, [record]))
            return
        self.store.mark_alone(source, deaths + 1)
        self._process_batch(consumer, [record])

    def _process_batch(self, consumer: Consumer, records: list[Record], retry: list[Waiting] = ()) -> None:
        outputs = BatchOutputs(self._producer, self.settings.topic_dlq,
                               check_lease=self.fence.check if self.fence is not None else None)
        parked: dict[Source, Waiting] = {}
        done: list[Source] = []  # waiting refunds chained or dead-lettered in this batch
        early: dict[tuple[str, int], int] = {}
        if records and planted("commit_before_flush"):  # a deliberate defect, only for the soak's own test:
            early = self._commit(consumer, records)  # the inputs are committed before their outputs exist
            crash_point("sequencer_planted_window")  # a crash here loses the batch: what the soak must notice
        self._prepare(records, retry)
        if self.claims is not None:
            self._claim_batch()
        for item in retry:
            self._handle(item.record, outputs, parked, done, waited=True)
        for record in records:
            self._handle(record, outputs, parked, done)
        for item in self.waiting.take_expired(self.clock()):
            self._expire(item, outputs, "it waited longer than LEDGER_SEQUENCER_WAIT_S "
                                        f"({self.settings.sequencer_wait_s} s)", done)
        # Outputs first, then the durable waiting list, then the input position: a crash in between only
        # causes reprocessing (duplicates are dropped, a refund parked twice is one row).
        if self._claimed:
            self._release_claims()
        if records:
            crash_point("sequencer_before_flush")
        outputs.flush()
        self._stored(outputs)
        if records:
            crash_point("sequencer_before_commit")
        self.store.add_waiting([item for source, item in parked.items() if source not in done])
        self.store.remove_waiting([source for source in done if source not in parked])
        committed: dict[tuple[str, int], int] = early
        if records and not early:
            committed = self._commit(consumer, records)
        if records:
            self.stats.batches += 1
        self._after_commit(outputs, committed)

    def _after_commit(self, outputs: BatchOutputs, committed: dict[tuple[str, int], int]) -> None:
        """Inputs are committed up to `committed`: their dead letters cannot come back; checkpoint when due."""
        if self._dead_sources and committed:
            self._dead_sources = {source for source in self._dead_sources
                                  if source[2] >= committed.get(source[:2], -1)}
        self.cadence.folded(outputs.delivered)
        for event_type, count in self._appended_types.items():  # counted per batch: a label lookup is not free
            metrics.EVENTS_APPENDED.labels(event_type).inc(count)
        self._appended_types.clear()
        if self.cadence.due():
            self._checkpoint(self._dead_sources)

    def _prepare(self, records: list[Record], retry: list[Waiting]) -> None:
        """Interpret the batch's records first, so the index asks PostgreSQL once per batch, not per record."""
        assert self.index is not None
        self._prepared: dict[Source, Event | Exception] = {}
        now = self.clock()
        for record in [*(item.record for item in retry), *records]:
            source = (record.topic, record.partition, record.offset)
            if self._belongs_elsewhere(record) is not None:
                continue  # rerouted in _handle, never judged here
            try:
                self._prepared[source] = self._interpret(record, now)
            except Exception as exc:  # noqa: BLE001 - judged again, one at a time, in _handle
                self._prepared[source] = exc
        self.index.prefetch(event for event in self._prepared.values() if isinstance(event, Event))

    def _interpret(self, record: Record, now: datetime) -> Event:
        if record.topic == self.settings.topic_commands:
            return interpret_command(record.value, self.codec, now)
        return interpret(record.value, self.codec, self.limits, now, record.key, check_key=True)

    @staticmethod
    def _commit(consumer: Consumer, records: list[Record]) -> dict[tuple[str, int], int]:
        positions: dict[tuple[str, int], int] = {}
        for record in records:
            where = (record.topic, record.partition)
            positions[where] = max(positions.get(where, -1), record.offset + 1)
        consumer.commit(offsets=[TopicPartition(topic, partition, offset)
                                 for (topic, partition), offset in positions.items()], asynchronous=False)
        return positions

    def _handle(self, record: Record, outputs: BatchOutputs, parked: dict[Source, Waiting], done: list[Source],
                waited: bool = False) -> None:
        """Route one record: chained, dropped as a duplicate, parked to wait for its payment, or dead-lettered."""
        source = (record.topic, record.partition, record.offset)
        if not waited and source in self._dead_sources:
            self.stats.skipped_already_dead += 1
            return
        if not waited and self.waiting.holds(source, record.value):
            return  # parked before a crash that came before its commit: it waits already
        home = self._belongs_elsewhere(record)
        if home is not None:  # a foreign producer's partitioner placed it here: its payee's chain is elsewhere
            outputs.reroute(record, home)
            self.stats.rerouted += 1
            logger.info("record %s:%s:%s belongs to partition %d (its key's): sent there", *source, home)
            return
        now = self.clock()
        poison_point(record.value)
        pause_point(record.value)
        try:
            prepared = self._prepared.pop(source, None)
            if isinstance(prepared, Event):
                event = prepared
            else:  # not prepared, or it raised there: interpreted (and judged) here
                event = self._interpret(record, now)
            envelope = event.envelope
            with log_context(event_id=envelope.event_id, correlation_id=envelope.correlation_id,
                             causation_id=envelope.causation_id, payee_id=envelope.payee_id,
                             payout_id=event.payload.get("payout_id")):
                self._chain(record, event, now, outputs, parked, done, waited)
        except Rejected as exc:
            self._settle_waiting(source, waited, done)
            self._dead_letter(record, exc.stage, exc.reason, now, outputs)
        except INFRASTRUCTURE_ERRORS:
            raise
        except Exception as exc:  # a record that breaks the code must not stop every other payee's payments
            if self._appending:
                raise  # the index already holds the event: only a restart (a rebuild) makes it consistent again
            logger.exception("processing %s:%s:%s raised", *source)
            self._settle_waiting(source, waited, done)
            self.stats.poison += 1
            self._dead_letter(record, "poison", f"processing it raised {type(exc).__name__}: {str(exc)[:500]}",
                              now, outputs)

    @staticmethod
    def _settle_waiting(source: Source, waited: bool, done: list[Source]) -> None:
        if waited:
            done.append(source)

    def _chain(self, record: Record, event: Event, now: datetime, outputs: BatchOutputs,
               parked: dict[Source, Waiting], done: list[Source], waited: bool) -> None:
        assert self.index is not None
        source = (record.topic, record.partition, record.offset)
        if self.claims is not None and event.event_type in DEDUPE_FIELDS:  # not claimed with its batch (a refund
            key = dedupe_key(event)                                       # that waited, a record judged alone)
            if key not in self._claimed and not self.index.is_recorded(key):
                self._claim({key: (event.envelope.event_id, content_digest(event))})
        verdict = self.index.verdict(event)
        if verdict.status == "duplicate":
            self._settle_waiting(source, waited, done)
            self.stats.duplicates += 1
            metrics.DUPLICATES.labels(record.topic).inc()
            logger.debug("%s %s is a duplicate: %s", event.event_type, event.envelope.event_id, verdict.reason)
            return
        if verdict.status == "reject":
            if verdict.waits_for is not None and not waited:
                self._park(Waiting(record, verdict.waits_for, now), outputs, parked, done)
                return
            self._settle_waiting(source, waited, done)
            self._dead_letter(record, "ledger", verdict.reason, now, outputs, event.event_type)
            return
        self._settle_waiting(source, waited, done)
        self._appending = True
        digest = self._claimed.pop(dedupe_key(event), None) if self._claimed else None
        sequenced, encoded = self.index.append(event, verdict, digest)
        headers = [(SOURCE_HEADER, f"{record.topic}:{record.partition}:{record.offset}".encode())]
        if self.fence is not None:
            headers.append((EPOCH_HEADER, self._epoch_header))
        outputs.event(self.settings.topic_events, sequenced.payee_id.encode(), encoded, headers)
        self._appending = False
        self.stats.appended += 1
        self._appended_types[sequenced.event_type] = self._appended_types.get(sequenced.event_type, 0) + 1
        if sequenced.event_type == "PayoutRequested":
            net = sequenced.payload["net"]
            metrics.PAYOUTS_REQUESTED.labels(sequenced.payload["payout_method"], net.currency.code).inc()
            metrics.PAYOUT_AMOUNT.labels(net.currency.code, "requested").inc(net.amount_minor)
        logger.debug("chained %s as %s #%d", sequenced.event_type, sequenced.payee_id, sequenced.envelope.sequence)
        if sequenced.event_type == "PaymentCompleted":
            for item in self.waiting.take_for(sequenced.payload["payment_id"]):
                self._handle(item.record, outputs, parked, done, waited=True)

    def _belongs_elsewhere(self, record: Record) -> int | None:
        """Partitioned mode: the partition a record's key belongs to when it is not this one (else None). A record
        too large to be valid is judged (and dead-lettered) where it is: sent on, with one more header, it could
        exceed the input topic's limit, and a refused reroute would fail this partition's batch at every start."""
        if self.partition is None or record.key is None or len(record.value or b"") > RECORD_MAX_BYTES:
            return None
        home = self._home.get(record.key)
        if home is None:
            if len(self._home) >= HOME_CACHE_MAX:
                self._home.clear()
            home = self._home[record.key] = partition_for(record.key, self.settings.partitions_events)
        return None if home == self.partition else home

    def _claim_batch(self) -> None:
        """Claim, in one round trip, the business ids of the batch that this partition does not know already."""
        assert self.index is not None
        candidates: dict[str, tuple[str, str]] = {}
        for event in self._prepared.values():
            if isinstance(event, Event) and event.event_type in DEDUPE_FIELDS:
                key = dedupe_key(event)
                if key not in candidates and not self.index.is_recorded(key):
                    candidates[key] = (event.envelope.event_id, content_digest(event))
        self._claim(candidates)

    def _claim(self, candidates: dict[str, tuple[str, str]]) -> None:
        assert self.index is not None and self.claims is not None and self.fence is not None
        if not candidates:
            return
        with self.store.engine.begin() as connection:
            self.fence.guard(connection)
            foreign = self.claims.claim(connection, candidates)
        self.index.recorded_elsewhere(foreign)  # judged against the other partition's claim: duplicate or conflict
        self._claimed.update((key, digest) for key, (_, digest) in candidates.items() if key not in foreign)

    def _release_claims(self) -> None:
        """Claims of this batch that were not chained (refused, waiting, duplicates within the batch)."""
        assert self.claims is not None and self.fence is not None
        with self.store.engine.begin() as connection:
            self.fence.guard(connection)
            self.claims.release(connection, self._claimed)
        self._claimed.clear()

    def _park(self, item: Waiting, outputs: BatchOutputs, parked: dict[Source, Waiting], done: list[Source]) -> None:
        """A refund before its payment: it waits (bounded), and the oldest waiting one may be pushed out."""
        self.stats.waiting += 1
        parked[item.source] = item
        logger.info("refund from %s:%s:%s waits for payment %s", *item.source, shown(item.waits_for))
        for pushed in self.waiting.add(item):
            self._expire(pushed, outputs, f"more than LEDGER_SEQUENCER_WAIT_MAX_RECORDS "
                                          f"({self.settings.sequencer_wait_max_records}) refunds were waiting", done)

    def _expire(self, item: Waiting, outputs: BatchOutputs, why: str, done: list[Source]) -> None:
        done.append(item.source)
        reason = (f"refund of unknown payment {shown(item.waits_for)}: {why} and the payment did not arrive; "
                  "replay it with `ledger dlq replay ID` once the payment is recorded")
        self._dead_letter(item.record, "ledger", reason, self.clock(), outputs, "PaymentRefunded")

    def _dead_letter(self, record: Record, stage: str, reason: str, now: datetime, outputs: BatchOutputs,
                     event_type: str | None = None) -> None:
        message = outputs.dead_letter(record, stage, reason, now)
        self._dead_sources.add((record.topic, record.partition, record.offset))
        self.stats.dead_lettered += 1
        metrics.DEAD_LETTERS.labels(stage).inc()
        self.stats.by_reason[stage] = self.stats.by_reason.get(stage, 0) + 1
        source = f"{record.topic}:{record.partition}:{record.offset}"
        kept = "" if message.whole else f" (kept {len(message.value)} of {len(record.value or b'')} bytes)"
        # one line per refused input: an operator must see what was refused and why (`ledger dlq list`)
        logger.warning("dead-lettered %s from %s (%s): %s%s", event_type or "a record", source, stage, reason[:500],
                       kept, extra={"stage": stage, "reason": reason[:2000], "source": source,
                                    "key": (record.key or b"")[:200].decode("utf-8", "replace")})
