"""The projector: ledger.events (and ledger.dlq) -> PostgreSQL read models, exactly once.

Each batch is written in ONE database transaction: the changed rows (absolute values, so writing a
row again is harmless), the events verbatim into event_archive, each payee's last applied event
(payee + sequence + hash: the idempotency key, independent of Kafka offsets) and the consumer
positions. A crash anywhere leaves the tables at the end of some batch; the next start folds the log
again (state is never trusted from elsewhere, as in every processor here) and writes only what comes
after each payee's recorded head.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import sqlalchemy
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from ledger.codec import EventCodec, UndecodableEvent
from processors.dead_letters import parse_entry
from processors.fault_points import crash_point
from processors.kafka_io import CLIENT_LOG, ConsumerLag, Record, topic_partitions
from processors.ledger_replay import CorruptLedger
from projections.archive import archive_events
from projections.bulk import upsert
from projections.read_model import KEYS, ReadModel
from runtime.database import make_engine
from runtime import metrics
from runtime.logs import log_context
from runtime.settings import Settings

NAME = "read-models"
# Once caught up, events wait at most this long to be written: under a steady stream the partitions are
# rarely all at their end at once, and a batch would otherwise wait for batch_events (bench/README.md).
BATCH_AGE_S = 0.2
PROJECTED = (*KEYS, "dead_letters")
logger = logging.getLogger("ledger.projector")


@dataclass
class ProjectorStats:
    events: int = 0  # folded (the whole log, every start)
    written: int = 0  # beyond the recorded heads: new rows written
    dead_letters: int = 0
    batches: int = 0
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
        self._stop = threading.Event()
        self._engine = make_engine(database_url)
        self._tables = load_tables(self._engine)
        self._archive: list[tuple[Any, bytes]] = []
        self._dead: list[dict] = []
        self._positions: dict[tuple[str, int], int] = {}
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

    def run(self, idle_exit_s: float | None = None, handle_signals: bool = True) -> ProjectorStats:
        """Project until stop() (SIGTERM/SIGINT), or until caught up and idle for idle_exit_s seconds."""
        if handle_signals:
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, lambda *_: self.stop())
        started = time.monotonic()
        heads = self._stored_heads()
        events_topic, dlq_topic = self.settings.topic_events, self.settings.topic_dlq
        dlq_from = self._stored_positions(dlq_topic)
        event_parts = topic_partitions(self.bootstrap, events_topic)
        dlq_parts = topic_partitions(self.bootstrap, dlq_topic)
        consumer = Consumer({
            "bootstrap.servers": self.bootstrap, "group.id": f"ledger-projector-{NAME}", "enable.auto.commit": False,
            "enable.partition.eof": True, "auto.offset.reset": "earliest", "fetch.wait.max.ms": 50,
            "logger": CLIENT_LOG,
        })
        lag = ConsumerLag("projector", (events_topic, dlq_topic))
        # the ledger from its beginning (the fold needs all of it); dead letters from where they were left
        consumer.assign([TopicPartition(events_topic, p, OFFSET_BEGINNING) for p in event_parts]
                        + [TopicPartition(dlq_topic, p, dlq_from.get(p, OFFSET_BEGINNING)) for p in dlq_parts])
        at_end: set[tuple[str, int]] = set()
        total = len(event_parts) + len(dlq_parts)
        caught_up, last_input = False, time.monotonic()
        try:
            while not self._stop.is_set():
                if not self._unwritten:
                    unwritten_since = time.monotonic()  # when the oldest event not yet written arrived, at most
                messages = consumer.consume(1000, 0.2)
                lag.observe_batch(messages)
                for message in messages:
                    error = message.error()
                    if error is not None:
                        if error.code() == KafkaError._PARTITION_EOF:
                            at_end.add((message.topic(), message.partition()))
                            continue
                        if error.fatal():
                            raise KafkaException(error)
                        logger.warning("consumer: %s", error.str())
                        continue
                    at_end.discard((message.topic(), message.partition()))
                    last_input = time.monotonic()
                    if message.topic() == events_topic:
                        self._fold(message, heads)
                    else:
                        self._dead_letter(message)
                    self._positions[(message.topic(), message.partition())] = message.offset() + 1
                    if self._unwritten >= self.batch_events:
                        self._write()
                stale = caught_up and time.monotonic() - unwritten_since >= self.batch_age_s
                if self._unwritten and (not messages or len(at_end) == total or stale):
                    self._write()
                if not messages:
                    lag.caught_up()
                else:
                    lag.caught_up(topic for topic, parts in ((events_topic, event_parts), (dlq_topic, dlq_parts))
                                  if all((topic, p) in at_end for p in parts))
                if not caught_up and len(at_end) == total:
                    caught_up = True
                    self._write(force=True)
                    self.stats.caught_up_s = time.monotonic() - started
                    self.log(f"caught up: {self.stats.events} events folded, {self.stats.written} written "
                             f"in {self.stats.caught_up_s:.2f} s")
                if caught_up and idle_exit_s is not None and time.monotonic() - last_input >= idle_exit_s:
                    break
        finally:
            consumer.close()
            self._engine.dispose()
        return self.stats

    def _fold(self, message, heads: dict[str, int]) -> None:  # noqa: ANN001 - confluent_kafka.Message
        raw = message.value() or b""
        try:
            event = self.codec.decode(raw)
        except UndecodableEvent as exc:
            raise CorruptLedger(f"{message.topic()}[{message.partition()}]@{message.offset()}: {exc.reason}") from None
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

    def _write(self, force: bool = False) -> None:
        """One transaction: changed rows, archive, heads and positions together."""
        changes = self.model.take_changes()
        if not force and not self._unwritten:
            return
        with log_context(batch=self.stats.batches + 1):
            self._write_batch(changes)

    def _write_batch(self, changes: dict[str, list[dict]]) -> None:
        positions = [{"projector": NAME, "topic": topic, "partition": partition, "next_offset": offset}
                     for (topic, partition), offset in sorted(self._positions.items())]
        with self._engine.begin() as connection:
            for table, rows in changes.items():
                upsert(connection, self._tables[table], KEYS[table], rows)
            upsert(connection, self._tables["dead_letters"], ("dlq_id",), self._dead)
            archive_events(connection, self.settings.topic_events, self._archive)
            upsert(connection, self._tables["projection_positions"], ("projector", "topic", "partition"), positions)
            crash_point("projector_before_commit")
        crash_point("projector_after_commit")
        metrics.PROJECTED.inc(len(self._archive))
        logger.debug("batch written: %d events archived, %d dead letters, rows in %d tables", len(self._archive),
                     len(self._dead), len(changes))
        self._archive, self._dead, self._unwritten = [], [], 0
        self.stats.batches += 1
