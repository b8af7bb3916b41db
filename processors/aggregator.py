"""The earnings aggregator (Faust): folds ledger.events per payee; at each clock tick requests due closes.

Its state is rebuilt from ledger.events itself at every start, and is not kept in a Faust table: on
this broker a SIGKILLed worker's restored table missed an update whose input offset had already
been committed, so that payee's close was never decided (docs/decisions.md §20). The rebuild starts
from the aggregator's own checkpoint in PostgreSQL (processors/earnings_state.py) when it proves
against the log, and folds only the tail after it; else it folds everything. After the rebuild the
agent on ledger.events continues from the group's committed offsets and skips, by per-payee
sequence, whatever the rebuild already applied. The agent remembers, per partition, the offset and
bytes of the last record it folded; a timer writes the checkpoint (every N events or T seconds),
pickling the state in the event loop and writing it in a thread. It never emits per input event. The agent on
ledger.clock decides closes from the state at each tick and sends them to ledger.commands with
deterministic ids: a close lost in a crash is decided again at the next tick, and one sent twice is
dropped by the sequencer.

Consumer lag is the age of the record an agent holds (its Kafka timestamp, which Faust exposes on
`stream.events()`), and 0 once an agent has been idle for IDLE_CAUGHT_UP_S: Faust has no end-of-partition
event, and the high watermark is wrong on Tansu (docs/decisions.md §7).
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timezone

import faust

from ledger.codec import EventCodec, UndecodableEvent
from ledger.earnings import PayeeEarnings
from processors.checkpoints import Cadence, announce, record_hash
from processors.earnings_state import as_checkpoint, load_earnings, snapshot, store_for
from processors.fault_points import crash_point
from processors.kafka_io import ConsumerLag
from projections.payout_controls import read_pause
from runtime.database import make_engine
from runtime.logs import log_context
from runtime.plans import plan_book
from runtime.settings import Settings
from runtime.kafka_security import faust_options

# A close refused by the sequencer never comes back: decide that payee again after this long.
PENDING_EXPIRY_S = 300.0
IDLE_CAUGHT_UP_S = 1.0
CHECKPOINT_CHECK_S = 1.0
logger = logging.getLogger("ledger.aggregator")


def make_app(settings: Settings, bootstrap: str, database_url: str) -> faust.App:
    app = faust.App(
        f"ledger-aggregator-{settings.topic_events}", broker=f"kafka://{bootstrap}", store="memory://",
        topic_partitions=settings.partitions_events, topic_replication_factor=settings.replication_factor,
        broker_session_timeout=settings.aggregator_session_timeout_s, broker_heartbeat_interval=1.0,
        processing_guarantee="at_least_once", consumer_auto_offset_reset="earliest", web_enabled=False,
        datadir=str(settings.data_dir / "aggregator"), **faust_options(settings),
    )
    codec = EventCodec()
    book = plan_book(settings)
    policy = settings.payout_policy()
    events = app.topic(settings.topic_events, key_type=bytes, value_type=bytes, value_serializer="raw",
                       key_serializer="raw")
    clock = app.topic(settings.topic_clock, key_type=bytes, value_type=bytes, value_serializer="raw",
                      key_serializer="raw")
    commands = app.topic(settings.topic_commands, key_type=bytes, value_type=bytes, value_serializer="raw",
                         key_serializer="raw")
    state: dict[str, PayeeEarnings] = {}
    pending: dict[str, tuple[set[str], float]] = {}  # payee -> (close ids sent, when), until chained
    ready = asyncio.Event()
    lag = ConsumerLag("aggregator", (settings.topic_events, settings.topic_clock))
    holding: dict[str, float] = {}  # topic -> monotonic time an agent took its current record
    last_seen: dict[str, float] = {}  # topic -> monotonic time an agent last finished a record

    engine = make_engine(database_url)
    store = store_for(engine)
    cadence = Cadence(settings.checkpoint_every_events, settings.checkpoint_every_s)
    covered: dict[int, int] = {}  # ledger.events partition -> next offset the state covers
    proofs: dict[int, str] = {}  # partition -> hash of the record before that offset
    last_values: dict[int, bytes] = {}  # partition -> bytes of the last record folded (hashed when written)

    def cover(partition: int, offset: int, value: bytes) -> None:
        if offset + 1 > covered.get(partition, 0):
            covered[partition] = offset + 1
            last_values[partition] = value

    def write_checkpoint(blob: bytes, positions: dict[int, int], hashes: dict[int, str]) -> None:
        at, proven = as_checkpoint(settings.topic_events, positions, hashes)
        with engine.begin() as connection:
            store.write(connection, at, proven, blob, sum(positions.values()))
            crash_point("aggregator_checkpoint_before_commit")
        crash_point("aggregator_checkpoint_after_commit")

    def took(topic: str, record) -> None:  # noqa: ANN001 - a Faust EventT
        holding[topic] = time.monotonic()
        if record.message.timestamp:
            lag.observe(topic, record.message.timestamp)  # seconds, as Faust gives it

    def done(topic: str) -> None:
        holding.pop(topic, None)
        last_seen[topic] = time.monotonic()

    @app.task
    async def rebuild() -> None:
        fold = await asyncio.to_thread(load_earnings, bootstrap, engine, settings.topic_events, codec)
        state.update(fold.payees)
        covered.update(fold.positions)
        proofs.update(fold.proofs)
        cadence.folded(fold.tail)  # a long replay is checkpointed at once, so the next start reads little
        ready.set()
        announce("aggregator", fold.resumed, fold.tail, fold.seconds, logger.info)
        logger.info("rebuilt %d payees from %s in %.2f s", len(state), settings.topic_events, fold.seconds)

    @app.timer(interval=CHECKPOINT_CHECK_S)
    async def checkpoint() -> None:
        if not ready.is_set() or not cadence.due():
            return
        # taken at once in the event loop: no agent changes the state between these lines
        blob, positions = snapshot(state), dict(covered)
        for partition, value in last_values.items():
            proofs[partition] = record_hash(value)
        last_values.clear()
        cadence.written()
        started = time.monotonic()
        try:
            await asyncio.to_thread(write_checkpoint, blob, positions, dict(proofs))
        except Exception:  # noqa: BLE001 - the state is rebuilt from the log anyway; try again later
            logger.exception("the checkpoint was not written; trying again in %.0f s", settings.checkpoint_every_s)
            cadence.folded(1)
            return
        logger.debug("checkpoint of %d payees at %s written in %.2f s", len(state), positions,
                     time.monotonic() - started)

    @app.timer(interval=IDLE_CAUGHT_UP_S)
    async def idle_lag() -> None:
        now = time.monotonic()
        lag.caught_up(topic for topic in (settings.topic_events, settings.topic_clock)
                      if topic not in holding and now - last_seen.get(topic, 0.0) >= IDLE_CAUGHT_UP_S)

    @app.agent(events, concurrency=1)
    async def fold(stream):  # noqa: ANN001 - a Faust stream
        async for record in stream.events():
            took(settings.topic_events, record)
            await ready.wait()
            try:
                event = codec.decode(record.value)
            except UndecodableEvent as exc:  # ledger.events is written by the sequencer only: stop
                raise RuntimeError(f"ledger.events holds an unreadable event: {exc.reason}") from None
            with log_context(event_id=event.envelope.event_id, correlation_id=event.envelope.correlation_id,
                             payee_id=event.payee_id):
                state.setdefault(event.payee_id, PayeeEarnings(event.payee_id)).apply(event)
            cover(record.message.partition, record.message.offset, record.value)
            cadence.folded(1)
            waiting = pending.get(event.payee_id)
            if waiting is not None:
                waiting[0].discard(event.envelope.event_id)
                if not waiting[0]:
                    del pending[event.payee_id]
            done(settings.topic_events)

    @app.agent(clock, concurrency=1)
    async def tick(stream):  # noqa: ANN001
        async for record in stream.events():
            took(settings.topic_clock, record)
            await ready.wait()
            at = datetime.fromisoformat(record.value.decode()).astimezone(timezone.utc)
            if (await asyncio.to_thread(read_pause, database_url)).paused:
                logger.info("tick %s: payouts are paused, nothing requested", at.isoformat())
                done(settings.topic_clock)
                continue  # emergency stop: nothing is requested; earnings keep folding
            sent = 0
            for payee_id in sorted(state):
                waiting = pending.get(payee_id)
                if waiting is not None and time.monotonic() - waiting[1] < PENDING_EXPIRY_S:
                    continue  # decide again only on top of the closes already sent, once they are chained
                closes = state[payee_id].decide_closes(at, book, policy)
                for close in closes:
                    with log_context(event_id=close.envelope.event_id, correlation_id=close.envelope.correlation_id,
                                     payee_id=payee_id, payout_id=close.payload.get("payout_id")):
                        logger.debug("%s for period %s: %s", close.event_type, close.payload["period_id"],
                                     close.payload["net"])
                    await commands.send(key=payee_id.encode(), value=codec.encode(close))
                if closes:
                    pending[payee_id] = ({close.envelope.event_id for close in closes}, time.monotonic())
                    sent += len(closes)
            if sent:
                logger.info("tick %s: %d closes sent to %s", at.isoformat(), sent, settings.topic_commands)
            done(settings.topic_clock)

    return app


def run_worker(settings: Settings, bootstrap: str, database_url: str) -> None:
    """Run the aggregator until SIGTERM/SIGINT, logging through runtime/logs.py's handler (configure it first)."""
    from faust.worker import Worker

    app = make_app(settings, bootstrap, database_url)
    # override_logging=False: Faust would replace the root handlers with its own coloured ones
    Worker(app, loglevel="WARN", quiet=True, override_logging=False).execute_from_commandline()
