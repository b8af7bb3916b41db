"""The notifier: payouts settled or failed for good in ledger.events -> an outbox of payee notices -> sent.

It reads ledger.events with the shared loop (processors/log_reader.LogReader) from consumer group
`ledger-notifier`'s committed offsets; it keeps nothing per event in memory, so it needs no
checkpoint of its own. librdkafka's read-ahead is bounded (processors/prefetch.py): with its
defaults a notifier far behind (a first start on a long ledger) held a growing part of the history
in memory, ~585 bytes per event read. Each batch's notices are written to `payee_notifications` in one transaction (ON
CONFLICT (event_id, channel) DO NOTHING) and only then are the Kafka offsets committed, so a crash
means reading some events again and the unique key makes that harmless: one notice per event and
channel however often the ledger is read (also after `ledger up` restores a broker that lost its
offsets). Each notice is made once, with the payee's contact at that moment and the payload frozen
in the row, so a retry can only repeat it, never say something else. Delivery is
processors/notification_delivery.py, run between batches against an injectable clock.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Iterable

import sqlalchemy
from confluent_kafka import Consumer, TopicPartition
from sqlalchemy.dialects.postgresql import JSONB, insert

from ledger.codec import EventCodec, UndecodableEvent
from ledger.events import Event
from processors.ledger_replay import CorruptLedger
from processors.fault_points import pause_point
from processors.kafka_io import topic_partitions
from processors.log_reader import LogReader, StopFlag
from processors.notification_delivery import DeliveryStats, deliver_due
from processors.partition_fence import timing
from processors.prefetch import BOUNDED_PREFETCH
from runtime import metrics
from runtime.database import make_engine
from runtime.partition_leases import Fenced, PartitionLeases
from runtime.settings import Settings
from runtime.kafka_security import secure

GROUP_ID = "ledger-notifier"
BATCH_MAX = 500
DELIVERY_BATCH = 50
NO_PARTITION_WAIT_S = 0.2  # a partitioned notifier that owns nothing checks for a share (and delivers) this often
log = logging.getLogger("ledger.notifier")

_OUTBOX = sqlalchemy.table(
    "payee_notifications", *(sqlalchemy.column(name) for name in (
        "event_id", "payee_id", "payout_id", "kind", "channel", "target", "status")),
    sqlalchemy.column("next_attempt_at", sqlalchemy.DateTime(timezone=True)), sqlalchemy.column("payload", JSONB))


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class NotifierStats:
    events: int = 0  # read from ledger.events
    notices: int = 0  # final outcomes among them
    rows: int = 0  # outbox rows created (0 for a notice made before)
    no_contact: int = 0
    batches: int = 0
    sent: int = 0
    retried: int = 0
    given_up: int = 0


# --- what an event tells its payee (pure) --------------------------------------------------------

def notice_kind(event: Event) -> str | None:
    """'settled' or 'failed' for a final outcome; None otherwise (a retryable failure will be retried)."""
    if event.event_type == "PayoutSettled":
        return "settled"
    if event.event_type == "PayoutFailed" and not event.payload["retryable"]:
        return "failed"
    return None


def notice_payload(event: Event, *, returned: bool = False, provider_reference: str = "") -> dict[str, Any]:
    """The notice's content (JSON-ready); `returned`: the payout had settled, and then came back."""
    kind = notice_kind(event)
    if kind is None:
        raise ValueError(f"{event.event_type} {event.envelope.event_id} is not a final payout outcome")
    p, amount = event.payload, event.payload["amount"]
    failed = kind == "failed"
    return {
        "event_id": event.envelope.event_id, "kind": kind, "payout_id": p["payout_id"], "payee_id": event.payee_id,
        "amount_minor": amount.amount_minor, "currency": amount.currency.code, "amount": amount.to_major_string(),
        "status": kind, "returned": failed and returned,
        "reason_code": p["reason_code"] if failed else "", "reason_message": p["provider_message"] if failed else "",
        "provider": p["provider"], "provider_reference": p.get("provider_reference") or provider_reference,
        "attempt": p["attempt"], "occurred_at": event.envelope.occurred_at.isoformat(),
    }


def outbox_rows(payload: dict[str, Any], contact: dict[str, Any] | None, now: datetime) -> list[dict[str, Any]]:
    """One row per channel of the contact; a single no_contact row (channel 'none') when there is none."""
    base = {"event_id": payload["event_id"], "payee_id": payload["payee_id"], "payout_id": payload["payout_id"],
            "kind": payload["kind"], "payload": payload}
    channels = [(channel, contact.get(column)) for channel, column in (("email", "email"), ("webhook", "webhook_url"))
                if contact and contact.get(column)]
    if not channels:
        return [{**base, "channel": "none", "target": "", "status": "no_contact", "next_attempt_at": None}]
    return [{**base, "channel": channel, "target": target, "status": "pending", "next_attempt_at": now}
            for channel, target in channels]


# --- the loop ------------------------------------------------------------------------------------

class Notifier:
    def __init__(self, settings: Settings, bootstrap: str, database_url: str, *,
                 clock: Callable[[], datetime] = utc_now, codec: EventCodec | None = None,
                 group_id: str = GROUP_ID, partitioned: bool = False, member: str | None = None) -> None:
        """partitioned: share the partitions of ledger.events with the other partitioned notifiers (leases in
        PostgreSQL, runtime/partition_leases.py); each records the notices of the partitions it owns."""
        self.settings, self.bootstrap, self.group_id = settings, bootstrap, group_id
        self.clock = clock
        self.codec = codec or EventCodec()
        self.stats = NotifierStats()
        self.engine = make_engine(database_url)
        self._stop = StopFlag()
        self.leases: PartitionLeases | None = None
        self._renew_s, _, _ = timing(settings.partition_lease_s)
        if partitioned:
            self.leases = PartitionLeases(self.engine, f"notifier:{settings.topic_events}",
                                          len(topic_partitions(bootstrap, settings.topic_events)), member=member,
                                          ttl_s=settings.partition_lease_s, renew_every_s=self._renew_s,
                                          processor="notifier")

    def stop(self) -> None:
        self._stop.set()

    def run(self, idle_exit_s: float | None = None, handle_signals: bool = True) -> NotifierStats:
        """Record and deliver notices until stop() (SIGTERM/SIGINT), or until idle for idle_exit_s seconds."""
        if handle_signals:
            self._stop.install()
        if not self.settings.smtp_host:
            log.warning("LEDGER_SMTP_HOST is not set: email notices will fail and be given up")
        if not self.settings.notify_webhook_secret:
            log.warning("LEDGER_NOTIFY_WEBHOOK_SECRET is not set: webhook notices will fail and be given up")
        if self.leases is not None:
            return self._run_partitioned(idle_exit_s)
        started = time.monotonic()
        missing = self._uncommitted_partitions()
        reader = LogReader(self.bootstrap, "notifier", {self.settings.topic_events: None}, group_id=self.group_id,
                           batch_max=BATCH_MAX, wait_s=0.2, config=BOUNDED_PREFETCH)
        last_activity = time.monotonic()
        announced = False
        try:
            while not self._stop.is_set():
                good = reader.poll()
                if good:
                    self._record_batch(reader, good)
                    last_activity = time.monotonic()
                if not announced and reader.caught_up:
                    announced = True
                    self._announce(missing, reader.records, time.monotonic() - started)
                delivered = self.deliver_due()
                if delivered.sent or delivered.retried or delivered.given_up:
                    last_activity = time.monotonic()
                if idle_exit_s is not None and time.monotonic() - last_activity >= idle_exit_s:
                    break
        finally:
            reader.close()
            self.engine.dispose()
        return self.stats

    def _run_partitioned(self, idle_exit_s: float | None) -> NotifierStats:
        """Read only the partitions this instance holds a lease on; a change of them makes a new reader (the
        notifier keeps nothing per event: its position is the group's committed offsets, its state the outbox).
        Each batch's outbox rows are written only if its partitions' leases still hold (fenced)."""
        assert self.leases is not None
        topic = self.settings.topic_events
        self.leases.start()
        reader: LogReader | None = None
        owned: set[int] = set()
        next_rebalance = last_activity = time.monotonic()
        clean = False
        try:
            while not self._stop.is_set():
                if time.monotonic() >= next_rebalance:
                    change = self.leases.rebalance()
                    if change.to_release:  # what was read of them is recorded and committed batch by batch
                        self.leases.release(change.to_release)
                    if set(self.leases.owned()) != owned:
                        if reader is not None:
                            reader.close()
                        owned = set(self.leases.owned())
                        reader = None if not owned else LogReader(
                            self.bootstrap, "notifier", {topic: None}, group_id=self.group_id, batch_max=BATCH_MAX,
                            wait_s=0.2, config=BOUNDED_PREFETCH, only={topic: owned})
                        log.info("notifier %s: reading partitions %s of %s", self.leases.member, sorted(owned), topic)
                    next_rebalance = time.monotonic() + self._renew_s
                if reader is None:
                    time.sleep(NO_PARTITION_WAIT_S)
                else:
                    good = reader.poll()
                    if good:
                        try:
                            self._record_batch(reader, good)
                        except Fenced as exc:
                            log.warning("notifier: %s; the batch was not recorded, its new owner reads it", exc)
                            next_rebalance = 0.0
                            continue
                        last_activity = time.monotonic()
                delivered = self.deliver_due()
                if delivered.sent or delivered.retried or delivered.given_up:
                    last_activity = time.monotonic()
                if idle_exit_s is not None and time.monotonic() - last_activity >= idle_exit_s:
                    break
            clean = True
        finally:
            if reader is not None:
                reader.close()
            if clean:
                self.leases.stop()
            self.engine.dispose()
        return self.stats

    def _uncommitted_partitions(self) -> list[int]:
        """Partitions of ledger.events with no committed offset for this group (read from their beginning)."""
        topic = self.settings.topic_events
        consumer = Consumer(secure({"bootstrap.servers": self.bootstrap, "group.id": self.group_id,
                             "enable.auto.commit": False}))
        try:
            committed = consumer.committed([TopicPartition(topic, p) for p in topic_partitions(self.bootstrap, topic)],
                                           timeout=10)
            return sorted(tp.partition for tp in committed if tp.offset < 0  # an empty partition has nothing to read
                          and consumer.get_watermark_offsets(TopicPartition(topic, tp.partition), timeout=10)[1] > 0)
        finally:
            consumer.close()

    def _announce(self, missing: list[int], records: int, seconds: float) -> None:
        """The start line: its state is the outbox in PostgreSQL, its position the group's committed offsets."""
        metrics.CHECKPOINT_TAIL.labels("notifier").set(records)
        if missing:
            log.info("full replay (no committed offsets for partitions %s of %s; the outbox's unique key keeps "
                     "each notice single): %d records read in %.2f s", missing, self.settings.topic_events, records,
                     seconds)
        else:
            log.info("resumed from committed offsets of %s: %d records of tail read in %.2f s",
                     self.group_id, records, seconds)

    def deliver_due(self) -> DeliveryStats:
        delivered = deliver_due(self.engine, self.settings, self.clock, limit=DELIVERY_BATCH)
        self.stats.sent += delivered.sent
        self.stats.retried += delivered.retried
        self.stats.given_up += delivered.given_up
        return delivered

    def _record_batch(self, reader: LogReader, messages: list) -> None:
        events = []
        for message in messages:
            pause_point(message.value())  # the fencing test freezes an instance here (LEDGER_FAULT_PAUSE)
            try:
                events.append(self.codec.decode(message.value() or b""))
            except UndecodableEvent as exc:
                where = f"{message.topic()}[{message.partition()}]@{message.offset()}"
                raise CorruptLedger(f"{where}: {exc.reason}") from None
        self.record(events, partitions={message.partition() for message in messages})
        reader.commit(messages)  # the outbox rows are committed: only now may the input position move past these events
        self.stats.events += len(events)
        self.stats.batches += 1

    def record(self, events: Iterable[Event], partitions: Iterable[int] = ()) -> int:
        """Write the outbox rows of these events' final outcomes in one transaction; returns rows created.
        Partitioned: `partitions` (of ledger.events, where the events were read) must still be this instance's."""
        finals = [event for event in events if notice_kind(event) is not None]
        if not finals:
            return 0
        now = self.clock()
        with self.engine.begin() as connection:
            if self.leases is not None:
                self.leases.guard(connection, partitions)
            contacts = self._contacts(connection, {event.payee_id for event in finals})
            settled = self._settled_references(connection, {event.payload["payout_id"] for event in finals})
            rows = []
            for event in finals:
                payout_id = event.payload["payout_id"]
                reference = settled.get(payout_id)
                payload = notice_payload(event, returned=reference is not None, provider_reference=reference or "")
                if payload["kind"] == "settled":
                    settled.setdefault(payout_id, payload["provider_reference"])  # a return later in this batch
                rows.extend(outbox_rows(payload, contacts.get(event.payee_id), now))
            created = connection.execute(
                insert(_OUTBOX).on_conflict_do_nothing(index_elements=["event_id", "channel"])
                .returning(_OUTBOX.c.channel, _OUTBOX.c.status), rows).all()
        self.stats.notices += len(finals)
        self.stats.rows += len(created)
        for channel, status in created:
            if status == "no_contact":
                self.stats.no_contact += 1
                metrics.NOTIFICATIONS.labels(channel, "no_contact").inc()
        if created:
            log.info("%d notices recorded for %d final payout outcomes", len(created), len(finals))
        return len(created)

    @staticmethod
    def _contacts(connection: sqlalchemy.Connection, payee_ids: set[str]) -> dict[str, dict]:
        rows = connection.execute(sqlalchemy.text(
            "SELECT payee_id, email, webhook_url FROM payee_contacts WHERE payee_id = ANY(:ids)"),
            {"ids": sorted(payee_ids)}).mappings().all()
        return {row["payee_id"]: dict(row) for row in rows}

    @staticmethod
    def _settled_references(connection: sqlalchemy.Connection, payout_ids: set[str]) -> dict[str, str]:
        """Payouts already notified as settled -> their provider reference (a failure now is a return)."""
        rows = connection.execute(sqlalchemy.text(
            "SELECT DISTINCT ON (payout_id) payout_id, payload->>'provider_reference' FROM payee_notifications "
            "WHERE payout_id = ANY(:ids) AND kind = 'settled' ORDER BY payout_id, id"),
            {"ids": sorted(payout_ids)}).all()
        return {payout_id: reference or "" for payout_id, reference in rows}
