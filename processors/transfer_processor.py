"""The transfer processor: PayoutRequested -> a provider -> PayoutSettled / PayoutFailed / a retry.

Exactly-once payment rests on three rules (docs/decisions.md §23):

1. Record before calling. For each attempt it sends PayoutSubmitted to ledger.commands and calls the
   provider only once that event is *chained* in ledger.events. The sequencer checks every submit and
   cancel against the payout's lifecycle (ledger/payouts.py), so a payout cancelled by an operator can
   never reach a provider, and an attempt is recorded before any money moves.
2. Idempotency keys decided before any call: the payout id for the first attempt, `<payout id>:<n>`
   for a retry (providers replay a stored failure under its key, so a retry needs its own), and every
   retry first asks the provider for anything under the payout id. A repeated call cannot pay twice.
3. Never guess after a crash. At start the state is the last checkpoint (processors/transfer_checkpoint.py:
   open payouts and unchained submits, with its positions on ledger.events and ledger.commands) plus
   the tail of ledger.events after it, then the outcomes and submits found on ledger.commands after it
   that are not chained yet (without a usable checkpoint: both whole logs). An attempt that is submitted
   but has no outcome is resolved by asking the provider (lookup with the same key) and only then, if the
   provider never saw it, submitted.

The loop reads through processors/log_reader.LogReader: ledger.events to its end, then ledger.commands
to its end, then both. Checkpoints are written every settings.checkpoint_every_events records or
checkpoint_every_s seconds and at a clean stop; finished payouts leave memory at each one.

Outcome events have deterministic ids (payout, attempt, kind): recording one twice chains it once.
Retryable failures are retried on a schedule (by default 5 min, 15 min, 1 h; settings.retry_delays_s),
as due times folded from PayoutRetryScheduled events, without blocking other payouts. A failure that
left no answer (connection reset or refused, a timeout, the key still in use: QUICK_RETRY_CODES) first
gets settings.provider_quick_retries quick retries of the same attempt under the same key, 0.5 s
doubling up to 5 s apart, as Stripe's SDK does: the call again where the provider replays a request by
its key (REPLAYS_BY_KEY), otherwise a lookup first. They are made here, for every provider, rather than
by the SDK's max_network_retries, which would hold a lane's thread through each wait, retry replayed 500s
too, and keep the circuit breaker from hearing the failures. Each provider has its own lane: circuit breaker,
bounded concurrency and call rate (processors/provider_lane.py, limits from runtime/providers.py).

Pipelined: the loop records attempts ahead (up to the lane's window), hands the lane its next calls
before the running ones end (the lane's queue), and sends outcomes without waiting for the broker's
acknowledgement (a delivery failure stops the process; the producer is flushed before a checkpoint and
at a stop). While calls run it waits at most BUSY_WAIT_S for records, and it decides what to do next
(a pass over the open payouts) at most every SCHEDULE_EVERY_S while things change (or twice as long as
the last pass took, with thousands open), IDLE_SCHEDULE_S otherwise. The interpreter switches threads
every GIL_SWITCH_S while it runs, so a lane thread holding an answer is not kept waiting by the loop.
"""

from __future__ import annotations

import logging
import queue
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Callable

from connectors.base import Connector, Outcome, TransferRequest, attempt_key, provider_for
from connectors.circuit_breaker import BreakerState, CircuitBreaker
from connectors.classification import QUICK_RETRY_CODES
from ledger import payouts as records
from ledger.codec import EventCodec, UndecodableEvent
from ledger.events import Event
from ledger.payouts import Payout, PayoutBook, PayoutStatus, named_payout
from ledger.retry_policy import RetryPolicy
from processors.checkpoints import Resume, announce
from processors.fault_points import crash_point
from processors.breaker_sync import SYNC_EVERY_S, BreakerSync
from processors.kafka_io import DeliveryFailed, DeliveryTracker, flush_or_raise, make_producer, topic_partitions
from processors.ledger_replay import CorruptLedger
from processors.log_reader import LogReader, StopFlag
from processors.partition_fence import EPOCH_HEADER
from processors.provider_lane import CallResult, ProviderLane, utc_now
from processors.transfer_checkpoint import PROCESSOR, TransferCheckpoints, TransferState
from processors.transfer_partition_checkpoints import PartitionCheckpoints
from processors.transfer_share import TransferShare
from runtime import metrics
from runtime.database import make_engine
from runtime.logs import log_context
from runtime.partition_leases import Fenced
from runtime.providers import lane_limits
from runtime.settings import Settings

OUTCOME_TYPES = ("PayoutAccepted", "PayoutSettled", "PayoutFailed", "PayoutRetryScheduled")
POLLED_PROVIDERS = ("mobile_money", "bank_transfer")  # their final outcome is asked for, not pushed
AWAIT_CHAIN_S = 120.0  # a submit not chained by then was refused (or is stuck): decide again
UNKNOWN_RETRY_S = 30.0  # after a connector raised: look the payout up again after this long
PAUSE_CHECK_S = 5.0
UNCHAINED_WARNING_S = 10.0
BUSY_WAIT_S = 0.005  # longest wait for records while calls run: their results are handled this soon
IDLE_WAIT_S = 0.05
SCHEDULE_EVERY_S = 0.01  # a pass over the open payouts at most this often while records or results arrive
IDLE_SCHEDULE_S = 0.2  # and at least this often (due retries, quick retries, polls)
HOUSEKEEPING_S = 0.02  # ledger.commands' position and the producer's delivery reports, at most this often
GIL_SWITCH_S = 0.001  # while it runs: a lane thread with an answer waits at most this long for the loop to yield
QUICK_RETRY_FIRST_S = 0.5  # Stripe's SDK: 0.5 s, doubling, at most 5 s
QUICK_RETRY_MAX_S = 5.0
# A lookup or status check failing with these says nothing about the transfer: the question went unanswered.
UNANSWERED_CODES = frozenset({"timeout", "connection_error", "rate_limited", "provider_error", "provider_unavailable",
                              "authentication_failed"})
logger = logging.getLogger("ledger.transfers")


def payout_context(payout: Payout | None, **fields: object):  # noqa: ANN201 - a context manager
    """Log lines inside carry the payout's ids (and the connector's, called from a lane's thread)."""
    if payout is None:
        return log_context(**fields)
    return log_context(**{"payout_id": payout.payout_id, "payee_id": payout.payee_id,
                          "correlation_id": payout.correlation_id or payout.payout_id, **fields})


@dataclass
class TransferStats:
    submitted: int = 0
    accepted: int = 0
    settled: int = 0
    failed: int = 0
    retries_scheduled: int = 0
    resolved_by_lookup: int = 0
    expired: int = 0
    unknown_outcomes: int = 0
    quick_retries: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)


class TransferProcessor:
    def __init__(self, settings: Settings, bootstrap: str, connectors: dict[str, Connector], *,
                 database_url: str | None = None, codec: EventCodec | None = None,
                 clock: Callable[[], datetime] = utc_now, log: Callable[[str], None] | None = None,
                 share: TransferShare | None = None, message_timeout_s: float | None = None) -> None:
        """share: act only for some partitions, with a share of each provider's limits (`ledger transfers
        --partitioned`, processors/transfer_instances.py); message_timeout_s: the producer's delivery bound."""
        self.settings, self.bootstrap, self.database_url = settings, bootstrap, database_url
        self.share = share
        self.codec = codec or EventCodec()
        self.clock, self.log = clock, log or logger.info
        self.policy = RetryPolicy(tuple(settings.retry_delays_s))
        self.book = PayoutBook()
        self.stats = TransferStats()
        self._results: "queue.Queue[CallResult]" = queue.Queue()  # bounded by the lanes' capacities
        self.lanes: dict[str, ProviderLane] = {}
        for name, connector in connectors.items():
            limits = lane_limits(settings, connector)
            if share is not None:
                limits = limits.shared_by(share.members)
            self.lanes[name] = ProviderLane(
                connector, concurrency=limits.concurrency, rate_per_s=limits.rate_per_s,
                breaker=CircuitBreaker(clock, settings.breaker_failures, settings.breaker_cooldown_s),
                window=limits.window, results=self._results, gate=share.check if share is not None else None)
            logger.info("%s lane: %s", name, limits.describe())
        self._producer = make_producer(bootstrap, **(
            {"message.timeout.ms": int(message_timeout_s * 1000)} if message_timeout_s else {}))
        self._tracker = DeliveryTracker()
        self._unflushed = 0
        self._stop = StopFlag()
        engine = self._engine = None if database_url is None else make_engine(database_url)
        self._checkpoints: TransferCheckpoints | PartitionCheckpoints | None = None
        self._breakers: BreakerSync | None = None
        self._breakers_synced = 0.0
        if engine is not None and share is not None:
            self._checkpoints = PartitionCheckpoints(engine, share, settings.checkpoint_every_events,
                                                     settings.checkpoint_every_s)
            self._breakers = BreakerSync(engine, share.member)
        elif engine is not None:
            self._checkpoints = TransferCheckpoints(engine, settings.checkpoint_every_events,
                                                    settings.checkpoint_every_s)
        self._events: LogReader | None = None
        self._commands: LogReader | None = None  # created once ledger.events is folded to its end
        self._commands_at: dict[int, int] = {}
        self._commands_proofs: dict[int, str] = {}
        self._covered = 0
        self._active: set[str] = set()  # payouts not settled, failed or cancelled
        self._awaiting: dict[str, tuple[int, float]] = {}  # payout -> (attempt whose submit is sent, when)
        self._fresh: set[tuple[str, int]] = set()  # attempts this process recorded: call the provider directly
        # submits sent but not seen chained (by this process or, read back at start, an earlier one): sent
        # again byte for byte, so the sequencer drops the copy as a duplicate instead of dead-lettering a
        # same-id event with another timestamp
        self._sent_submits: dict[tuple[str, int], Event] = {}
        self._cleared: set[tuple[str, int]] = set()  # attempts the provider was asked about and has nothing of
        self._unknown_until: dict[str, float] = {}  # payout -> monotonic time before which it is not asked again
        self._quick_tries: dict[tuple[str, int], int] = {}  # attempt -> quick retries made after no answer
        self._scheduled_at = 0.0
        self._schedule_cost = 0.0  # seconds the last pass took
        self._housekeeping: dict[str, float] = {}
        self._method_lanes: dict[str, ProviderLane | None] = {}
        self._order: list[str] = []  # the open payouts, oldest request first (rebuilt when one is added)
        self._order_stale = True
        self._last_poll: dict[str, float] = {}
        self._retry_decided: set[tuple[str, int]] = set()
        # last attempts that failed retryably: the provider is asked whether it paid before the payout fails for
        # good (attempt -> the failure's reason code and message), and when to ask again (no answer yet)
        self._final_checks: dict[tuple[str, int], tuple[str, str]] = {}
        self._final_check_due: dict[tuple[str, int], float] = {}
        self._warned: set[str] = set()
        self._warned_unchained = 0.0
        self._unchained_checked = 0.0
        self._gauges_at = 0.0
        self._paused = database_url is not None  # until the pause is read: fail closed
        self._pause_known = False
        self._pause_checked = 0.0

    def stop(self) -> None:
        self._stop.set()

    # --- the loop --------------------------------------------------------------------------------

    def run(self, idle_exit_s: float | None = None, handle_signals: bool = True) -> TransferStats:
        """Process until stop() (SIGTERM/SIGINT), or until nothing happened for idle_exit_s seconds."""
        if handle_signals:
            self._stop.install()
        switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(min(switch_interval, GIL_SWITCH_S))
        started = time.monotonic()
        events_topic, commands_topic = self.settings.topic_events, self.settings.topic_commands
        resumed, state = self._resume()
        checkpoint = resumed.checkpoint
        if state is not None:
            self._load(state)
        if self._checkpoints is not None:
            self._checkpoints.cadence.written()  # the first one is due counted from here, not from __init__
        # ledger.events first, to its end; then ledger.commands from the checkpoint (the overlay); then both live
        mine = self.share.partitions if self.share is not None else None
        self._events = LogReader(self.bootstrap, "transfers", {events_topic: resumed.start(
            events_topic, mine if mine is not None else topic_partitions(self.bootstrap, events_topic))},
            proofs=checkpoint.proofs if checkpoint else None, wait_s=0.2,
            only=None if mine is None else {events_topic: mine})
        self._commands_at = resumed.start(
            commands_topic, mine if mine is not None else topic_partitions(self.bootstrap, commands_topic))
        self._commands_proofs = (checkpoint.proofs if checkpoint else {}).get(commands_topic, {})
        self._covered = checkpoint.events if checkpoint else 0
        pending: list[Event] = []  # outcomes found on ledger.commands, not applied yet
        phase = "events"
        last_activity = time.monotonic()
        try:
            while not self._stop.is_set():
                if self.share is not None and self.share.should_yield():
                    break  # the instance's partitions or members changed: a checkpoint, then a new core
                if phase == "commands":
                    records = self._commands.poll()
                    self._fold_commands(records, pending)
                    if not self._commands.caught_up:
                        continue
                    for event in pending:
                        self._apply(event)
                    phase = "live"
                    announce(PROCESSOR, resumed, self._events.records + self._commands.records,
                             time.monotonic() - started, self.log)
                    logger.info("%d payouts open, %d outcomes applied from %s", len(self._active), len(pending),
                                commands_topic)
                    pending.clear()
                    last_activity = time.monotonic()
                    continue
                messages = self._events.poll(self._live_wait() if phase == "live" else None)
                if messages:
                    self._fold_events(messages)
                    last_activity = time.monotonic()
                if phase == "events":
                    if self._events.caught_up:
                        phase = "commands"
                        self._commands = LogReader(
                            self.bootstrap, "transfers", {commands_topic: self._commands_at},
                            proofs={commands_topic: self._commands_proofs}, wait_s=0.2,
                            only=None if mine is None else {commands_topic: mine})
                    else:
                        self._checkpoint_if_due()
                    continue
                if self._commands is not None and self._now_and_then("commands"):
                    self._cadence_folded(len(self._commands.poll(0)))  # only its position matters now
                changed = self._drain_results()
                if self._schedule_due(bool(messages) or changed) and self._schedule():
                    changed = True
                if changed:
                    last_activity = time.monotonic()
                self._serve_producer()
                self._sync_breakers()
                self._warn_if_unchained()
                self._checkpoint_if_due()
                if any(lane.busy for lane in self.lanes.values()):
                    last_activity = time.monotonic()
                elif idle_exit_s is not None and time.monotonic() - last_activity >= idle_exit_s:
                    if self._awaiting:
                        self.log(f"exiting with {len(self._awaiting)} attempts recorded but not chained yet: "
                                 "they are made when `ledger sequencer` has chained them")
                    break
            self._shutdown()
            if phase != "commands":  # (while reading the overlay the state is not whole)
                self._write_checkpoint()
        finally:
            self._shutdown()
            for reader in (self._events, self._commands):
                if reader is not None:
                    reader.close()
            if self._engine is not None:
                self._engine.dispose()  # its pooled connections (a partitioned instance makes a core per change)
            sys.setswitchinterval(switch_interval)
        return self.stats

    def _shutdown(self) -> None:
        for lane in self.lanes.values():
            lane.shutdown()
        self._flush()

    def _sync_breakers(self) -> None:
        """Partitioned: share circuit breakers with the other instances (processors/breaker_sync.py)."""
        if self._breakers is None or time.monotonic() - self._breakers_synced < SYNC_EVERY_S:
            return
        self._breakers_synced = time.monotonic()
        for name in self._breakers.sync({name: lane.breaker for name, lane in self.lanes.items()}):
            self._withdrawn(self.lanes[name], self.lanes[name].cancel_queued())

    def _now_and_then(self, what: str) -> bool:
        """True at most every HOUSEKEEPING_S per `what`: a call into librdkafka gives up the interpreter lock, and
        getting it back waits for the lane threads; reading ledger.commands' position and delivery reports can
        wait that long."""
        now = time.monotonic()
        if now - self._housekeeping.get(what, 0.0) < HOUSEKEEPING_S:
            return False
        self._housekeeping[what] = now
        return True

    def _live_wait(self) -> float:
        """How long the next poll for records may wait: not at all with results waiting, briefly while calls run."""
        if not self._results.empty():
            return 0.0
        return BUSY_WAIT_S if any(lane.busy for lane in self.lanes.values()) else IDLE_WAIT_S

    def _schedule_due(self, changed: bool) -> bool:
        """Whether to pass over the open payouts now: soon after a change (but at most a third of the time, with
        thousands open), and now and then for due times."""
        since = time.monotonic() - self._scheduled_at
        return since >= IDLE_SCHEDULE_S or (changed and since >= max(SCHEDULE_EVERY_S, 2 * self._schedule_cost))

    def _warn_if_unchained(self) -> None:
        """Attempts wait for the sequencer; say so when it seems not to run."""
        now = time.monotonic()
        if not self._awaiting or now - self._unchained_checked < 1.0:
            return
        self._unchained_checked = now
        oldest = min(sent for _, sent in self._awaiting.values())
        if now - oldest >= UNCHAINED_WARNING_S and now - self._warned_unchained >= UNCHAINED_WARNING_S:
            self._warned_unchained = now
            self.log(f"{len(self._awaiting)} attempts recorded {now - oldest:.0f} s ago are not chained yet: "
                     "is `ledger sequencer` running?")

    def _decode(self, message) -> Event:  # noqa: ANN001 - confluent_kafka.Message
        try:
            return self.codec.decode(message.value() or b"")
        except UndecodableEvent as exc:
            raise CorruptLedger(f"{message.topic()}[{message.partition()}]@{message.offset()}: {exc.reason}") from None

    # --- checkpoints -------------------------------------------------------------------------------

    def _resume(self) -> tuple[Resume, TransferState | None]:
        if self._checkpoints is None:
            return Resume(None, "no database to keep checkpoints in", "none"), None
        return self._checkpoints.resume(self.bootstrap, self.log,
                                        topics=(self.settings.topic_events, self.settings.topic_commands))

    def _load(self, state: TransferState) -> None:
        self.book = state.book
        self._sent_submits = {key: self.codec.decode(value) for key, value in state.sent_submits.items()}
        self._active = {pid for pid, payout in self.book.payouts.items() if not payout.status.terminal}
        self._order_stale = True

    def _state(self) -> TransferState:
        book = PayoutBook()
        book.payouts, book.destinations = self.book.payouts, self.book.destinations
        return TransferState(book, {key: self.codec.encode(event) for key, event in self._sent_submits.items()})

    def _cadence_folded(self, count: int) -> None:
        if self._checkpoints is not None and count:
            self._checkpoints.cadence.folded(count)

    def _checkpoint_if_due(self) -> None:
        if self._checkpoints is not None and self._checkpoints.cadence.due():
            self._write_checkpoint()

    def _write_checkpoint(self) -> None:
        """The state with the positions it covers: ledger.events as folded, ledger.commands as read (or, before
        the overlay is read, where the loaded checkpoint had it)."""
        if self._checkpoints is None:
            return
        self._flush()  # the book holds the outcomes sent: they must be in the log before the checkpoint says so
        events_topic, commands_topic = self.settings.topic_events, self.settings.topic_commands
        positions, proofs = self._events.checkpoint_positions([events_topic]), self._events.proofs([events_topic])
        if self._commands is not None:
            positions.update(self._commands.checkpoint_positions([commands_topic]))
            proofs.update(self._commands.proofs([commands_topic]))
        else:
            covered = {p: o for p, o in self._commands_at.items() if o > 0}
            positions[commands_topic] = covered
            proofs[commands_topic] = {p: self._commands_proofs[p] for p in covered}
        records = self._covered + self._events.records + (self._commands.records if self._commands else 0)
        try:
            evicted, size = self._checkpoints.write(self._state(), positions, proofs, records)
        except Fenced:
            raise
        except Exception as exc:  # noqa: BLE001 - the database is away: keep paying, write the next one later
            self._checkpoints.cadence.written()
            logger.warning("checkpoint not written (%s: %s); the next one is tried later", type(exc).__name__, exc)
            return
        logger.debug("checkpoint written: %d payouts open, %d finished ones moved out of memory, %d bytes",
                     len(self.book.payouts), evicted, size)

    # --- folding ---------------------------------------------------------------------------------

    def _fold_events(self, messages: list) -> None:
        events = [self._decode(message) for message in messages]
        if self._checkpoints is not None:
            self._checkpoints.restore_named(self.book, events)  # finished payouts these events name
        for event in events:
            self._on_chained(event)
        self.book.requests.clear()  # the breakdowns: never read here, not kept
        self._cadence_folded(len(events))

    def _fold_commands(self, messages: list, pending: list[Event]) -> None:
        """ledger.commands after the checkpoint (all of it in a full replay): the outcomes and submits an earlier
        run sent that are not chained yet, for payouts still open. Never ask a provider twice; resend a
        submit byte for byte. Everything else is dropped at once (memory follows open payouts)."""
        for message in messages:
            try:
                event = self.codec.decode(message.value() or b"")
            except UndecodableEvent:
                continue  # not ours: the sequencer dead-letters it
            payout = self.book.get(named_payout(event) or "")
            if payout is None or payout.status.terminal:
                continue
            if event.event_type in OUTCOME_TYPES and event.envelope.event_id not in payout.applied:
                pending.append(event)
            elif event.event_type == "PayoutSubmitted" and event.payload["attempt"] >= payout.next_attempt:
                self._sent_submits[(payout.payout_id, event.payload["attempt"])] = event
        self._cadence_folded(len(messages))

    def _apply(self, event: Event) -> None:
        if not self.book.apply(event) or event.event_type not in records.LIFECYCLE_TYPES:
            return
        payout = self.book.payouts[event.payload["payout_id"]]
        if payout.status.terminal:
            self._forget(payout)
        elif payout.payout_id not in self._active:
            self._active.add(payout.payout_id)
            self._order_stale = True

    def _forget(self, payout: Payout) -> None:
        """A finished payout: nothing more is done for it, so nothing about it stays but the payout (until the
        next checkpoint moves it out of memory)."""
        payout_id = payout.payout_id
        self._active.discard(payout_id)
        self._awaiting.pop(payout_id, None)
        self._last_poll.pop(payout_id, None)
        self._unknown_until.pop(payout_id, None)
        for number in range(1, payout.next_attempt + 1):
            key = (payout_id, number)
            self._quick_tries.pop(key, None)
            self._fresh.discard(key)
            self._cleared.discard(key)
            self._retry_decided.discard(key)
            self._sent_submits.pop(key, None)
            self._final_checks.pop(key, None)
            self._final_check_due.pop(key, None)

    def _on_chained(self, event: Event) -> None:
        self._apply(event)
        if event.event_type in ("PayoutSubmitted", "PayoutCancelled"):
            self._awaiting.pop(event.payload["payout_id"], None)
        if event.event_type == "PayoutSubmitted":
            self._sent_submits.pop((event.payload["payout_id"], event.payload["attempt"]), None)

    # --- deciding what to do ---------------------------------------------------------------------

    def _schedule(self) -> bool:
        """One pass over the open payouts, oldest first: hand the lanes the calls that are due, then record the
        next attempts while each lane's window has room. Everything else waits for the next pass."""
        now, mono = self.clock(), time.monotonic()
        self._refresh_pause(mono)
        to_submit: dict[str, list[TransferRequest]] = {}
        outstanding: dict[str, int] = {}  # attempts recorded and not answered, per lane (bounded by its window)
        to_record: list[tuple[Payout, ProviderLane]] = []
        lanes_full: set[str] = set()
        acted = self._final_checks_due(mono)
        active, awaiting, payouts = self._active, self._awaiting, self.book.payouts
        for payout_id in self._oldest_first():
            if payout_id not in active:
                continue  # finished since the order was made
            payout = payouts[payout_id]
            lane = self._method_lanes.get(payout.method, False)
            if lane is False:
                lane = self._method_lanes[payout.method] = self._lane(payout)
            if lane is None:
                continue
            status = payout.status
            if status is PayoutStatus.SUBMITTED or payout_id in awaiting:
                outstanding[lane.name] = outstanding.get(lane.name, 0) + 1
            if payout_id in lane.busy:
                continue
            if status is PayoutStatus.REQUESTED or (status is PayoutStatus.RETRY_WAIT and payout.due_at is not None
                                                    and payout.due_at <= now):
                to_record.append((payout, lane))
            elif status is PayoutStatus.RETRY_WAIT and payout.due_at is None:
                acted |= self._schedule_lost_retry(payout, lane, now)
            elif status is PayoutStatus.SUBMITTED:
                if lane.name not in lanes_full:
                    if self._call(payout, lane, mono, to_submit):
                        acted = True
                    elif not lane.batches and lane.lookup_slots - len(to_submit.get(lane.name, ())) <= 0:
                        lanes_full.add(lane.name)  # every later call waits for a slot: not asked one by one
            elif status is PayoutStatus.AT_PROVIDER and lane.name in POLLED_PROVIDERS:
                if mono - self._last_poll.get(payout_id, 0.0) >= self.settings.pending_poll_s and lane.lookup_slots > 0:
                    self._last_poll[payout_id] = mono
                    with payout_context(payout):
                        lane.resolve(self._request(payout, payout.current.number), "poll")
                    acted = True
        full: set[str] = set()
        for payout, lane in to_record:
            if lane.name in full:
                continue
            if outstanding.get(lane.name, 0) >= lane.window:
                full.add(lane.name)
                continue
            acted |= self._record_attempt(payout, lane, now, mono, outstanding)
        self._update_gauges(mono)
        for name, requests in to_submit.items():
            lane = self.lanes[name]
            batches = [requests] if lane.batches else [[request] for request in requests]
            for batch in batches:
                crash_point("after_submit")
                if len(batch) > 1:  # (one payment: the lane's thread says so as it calls, in the payout's context)
                    for request in batch:
                        with payout_context(self.book.get(request.payout_id), attempt=request.attempt):
                            logger.info("paying %s through %s (attempt %d)", request.amount, name, request.attempt)
                with payout_context(self.book.get(batch[0].payout_id) if len(batch) == 1 else None,
                                    **({"attempt": batch[0].attempt} if len(batch) == 1 else {})):
                    lane.submit(batch)
        self._scheduled_at = time.monotonic()
        self._schedule_cost = self._scheduled_at - mono
        return acted

    def _oldest_first(self) -> list[str]:
        """The open payouts, oldest request first: sorted again only when one was added (finished ones are
        skipped by the caller and dropped here once they are the larger part)."""
        if self._order_stale:
            self._order = sorted(self._active, key=lambda pid: self.book.payouts[pid].requested_at)
            self._order_stale = False
        elif len(self._order) > 2 * len(self._active) + 64:
            self._order = [payout_id for payout_id in self._order if payout_id in self._active]
        return self._order

    def _update_gauges(self, mono: float) -> None:
        if mono - self._gauges_at < 1.0:
            return
        self._gauges_at = mono
        by_status: dict[str, int] = {status.value: 0 for status in PayoutStatus if not status.terminal}
        waiting: dict[str, int] = {name: 0 for name in self.lanes}
        for payout_id in self._active:
            payout = self.book.payouts[payout_id]
            by_status[payout.status.value] += 1
            if payout.status is PayoutStatus.RETRY_WAIT:
                provider = provider_for(payout.method) or ""
                waiting[provider] = waiting.get(provider, 0) + 1
        for status, count in by_status.items():
            metrics.OPEN_PAYOUTS.labels(status).set(count)
        for provider, count in waiting.items():
            metrics.RETRY_QUEUE.labels(provider).set(count)
        for name, lane in self.lanes.items():
            metrics.BREAKER_OPEN.labels(name).set(1 if self._breaker_open(lane) else 0)

    def _lane(self, payout: Payout) -> ProviderLane | None:
        provider = provider_for(payout.method)
        lane = self.lanes.get(provider or "")
        if lane is None and payout.method not in self._warned:
            self._warned.add(payout.method)
            self.log(f"no provider configured for payout method {payout.method!r}: its payouts wait "
                     f"(first: {payout.payout_id})")
        return lane

    def _record_attempt(self, payout: Payout, lane: ProviderLane, now: datetime, mono: float,
                        outstanding: dict[str, int]) -> bool:
        """Send PayoutSubmitted for the next attempt; the call waits until the sequencer has chained it."""
        waiting = self._awaiting.get(payout.payout_id)
        if waiting is not None and mono - waiting[1] < AWAIT_CHAIN_S:
            return False
        if self._paused or self._breaker_open(lane) or outstanding.get(lane.name, 0) >= lane.window:
            return False
        outstanding[lane.name] = outstanding.get(lane.name, 0) + 1
        attempt = payout.next_attempt
        crash_point("before_submit")
        event = self._sent_submits.get((payout.payout_id, attempt)) or records.submitted(
            payout, attempt, lane.name, attempt_key(payout.payout_id, attempt), now)
        self._sent_submits[(payout.payout_id, attempt)] = event
        if logger.isEnabledFor(logging.DEBUG):
            with payout_context(payout, event_id=event.envelope.event_id):
                logger.debug("attempt %d recorded: paid once the sequencer has chained it", attempt)
        self._send(event)
        metrics.PAYOUT_ATTEMPTS.labels(lane.name).inc()
        self._awaiting[payout.payout_id] = (attempt, mono)
        self._fresh.add((payout.payout_id, attempt))
        self.stats.submitted += 1
        return True

    def _call(self, payout: Payout, lane: ProviderLane, mono: float, to_submit: dict[str, list[TransferRequest]]) -> bool:
        attempt = payout.current.number
        if self._unknown_until.get(payout.payout_id, 0.0) > mono or (payout.payout_id, attempt) in self._final_checks:
            return False  # asked again later; or its last attempt failed and only the final check is made
        # An attempt this process recorded is paid directly, and so is one the provider was asked about and
        # has nothing of. One recorded before a crash, and every retry (it gets a new idempotency key),
        # first asks the provider for anything under the payout id.
        key = (payout.payout_id, attempt)
        direct = key in self._cleared or (attempt == 1 and key in self._fresh)
        batch = to_submit.get(lane.name)
        if direct and batch is not None and lane.batches:  # joins the file already being made in this round
            self._cleared.discard(key)
            batch.append(self._request(payout, attempt))
            return True
        slots = lane.free_slots - len(batch or ()) if direct else lane.lookup_slots
        if slots <= 0 or not lane.breaker.allow():
            return False
        request = self._request(payout, attempt)
        if direct:
            self._cleared.discard(key)
            to_submit.setdefault(lane.name, []).append(request)
        else:
            with payout_context(payout, attempt=attempt):
                logger.info("asking %s what it holds for attempt %d before paying", lane.name, attempt)
                lane.resolve(request, "resolve")
        return True

    @staticmethod
    def _breaker_open(lane: ProviderLane) -> bool:
        breaker = lane.breaker
        return breaker.state is BreakerState.OPEN and breaker.opened_at is not None and (
            breaker.clock() - breaker.opened_at < timedelta(seconds=breaker.cooldown_s))

    def _schedule_lost_retry(self, payout: Payout, lane: ProviderLane, now: datetime) -> bool:
        """A retryable failure is chained but its retry is not (a crash between the two): decide it again."""
        attempt = payout.current
        if attempt is None or (payout.payout_id, attempt.number) in self._retry_decided:
            return False
        self._retry_decided.add((payout.payout_id, attempt.number))
        failed_at = attempt.finished_at or now
        self._retry_or_give_up(payout, attempt.number, lane.name, attempt.reason_code, attempt.message, None,
                               failed_at, record_failure=False)
        return True

    def _request(self, payout: Payout, attempt: int) -> TransferRequest:
        return TransferRequest(payout.payout_id, payout.payee_id, payout.amount, payout.method,
                               self.book.destination(payout.payee_id), attempt)

    def _refresh_pause(self, mono: float) -> None:
        if self.database_url is None or mono - self._pause_checked < PAUSE_CHECK_S:
            return
        self._pause_checked = mono
        from projections.payout_controls import read_pause

        try:
            paused = read_pause(self.database_url).paused
        except Exception as exc:  # noqa: BLE001 - the database is down: keep the last known answer
            first = "" if self._pause_known else " (no new attempts until it has been read once)"
            self.log(f"cannot read the payout pause ({type(exc).__name__}); keeping paused={self._paused}{first}")
            return
        if paused:
            if not self._paused or not self._pause_known:
                self.log("payouts PAUSED: no new attempts")
        elif self._paused:
            self.log("payouts resumed" if self._pause_known else "payouts running")
        self._paused, self._pause_known = paused, True

    # --- outcomes --------------------------------------------------------------------------------

    def _drain_results(self) -> bool:
        drained = False
        while True:
            try:
                call = self._results.get_nowait()
            except queue.Empty:
                break
            drained = True
            self.lanes[call.provider].done(call.payout_id)
            with payout_context(self.book.get(call.payout_id), payout_id=call.payout_id, provider=call.provider,
                                attempt=call.attempt):
                self._on_result(call)
        return drained

    def _on_result(self, call: CallResult) -> None:
        lane = self.lanes[call.provider]
        result = call.result  # (the lane's thread has told the breaker)
        if call.fenced:  # not made: this instance no longer holds the payee's partition (its lease)
            raise Fenced(call.partition, call.error)
        if call.withdrawn:
            self._withdrawn(lane, [(call.payout_id, call.attempt, call.mode)])
            return
        if lane.breaker.is_open():
            self._withdrawn(lane, lane.cancel_queued())
        payout = self.book.get(call.payout_id)
        if payout is None or payout.status.terminal:
            return  # settled or failed meanwhile (a webhook, an operator)
        now = self.clock()
        current = payout.current
        if current is None or current.number != call.attempt:
            return  # an answer about an attempt that is no longer the current one
        if call.mode == "final_check":
            self._on_final_check(payout, call, lane, now)
            return
        if call.mode != "poll" and self._quick_retry(call, lane, result):
            return
        unanswered = result is not None and call.mode != "submit" and result.outcome is Outcome.FAILED and (
            result.reason_code in UNANSWERED_CODES)
        if call.error or unanswered:  # the question got no answer: the outcome is unknown, ask again later
            self.stats.unknown_outcomes += 1
            why = call.error or f"{result.reason_code}: {result.message}"
            if call.mode != "poll":
                wait_s = max(UNKNOWN_RETRY_S, (result.retry_after_s or 0) if result else 0)
                self._unknown_until[call.payout_id] = time.monotonic() + wait_s
                self._fresh.discard((call.payout_id, call.attempt))
                self._cleared.discard((call.payout_id, call.attempt))
                logger.warning("%s %s of %s: %s; asking again in %.0f s", call.provider, call.mode, call.payout_id,
                               why, wait_s)
            return  # a poll is simply asked again at the next poll
        if result is None:
            if call.mode == "resolve":  # the provider has nothing under this payout: pay it at the next round
                self._cleared.add((call.payout_id, call.attempt))  # (with others: one bank file, not one each)
            else:
                logger.warning("%s does not know payout %s, which it accepted", call.provider, call.payout_id)
            return
        if call.mode == "resolve":
            self.stats.resolved_by_lookup += 1
        if call.mode == "poll" and result.outcome is Outcome.PENDING:
            self._expire_if_stale(payout, lane.name, now)
            return
        crash_point("before_outcome")
        attempt = call.attempt
        if result.outcome is Outcome.SETTLED:
            self._send(records.settled(payout, attempt, lane.name, result.provider_reference, now))
            logger.info("payout settled: %s through %s (%s)", payout.amount, lane.name, result.provider_reference)
            self.stats.settled += 1
            metrics.PAYOUTS_SETTLED.labels(lane.name, payout.amount.currency.code).inc()
            metrics.PAYOUT_AMOUNT.labels(payout.amount.currency.code, "settled").inc(payout.amount.amount_minor)
        elif result.outcome is Outcome.PENDING:
            if payout.status is PayoutStatus.SUBMITTED:
                self._send(records.accepted(payout, attempt, lane.name, result.provider_reference, now))
                logger.info("accepted by %s (%s): the final outcome comes later", lane.name,
                            result.provider_reference)
                self._last_poll[payout.payout_id] = time.monotonic()
                self.stats.accepted += 1
        elif result.retryable:
            self._retry_or_give_up(payout, attempt, lane.name, result.reason_code, result.message,
                                   result.retry_after_s, now, record_failure=True)
        else:
            self._send(records.failed(payout, attempt, lane.name, result.reason_code, result.message, False, now))
            self._count_failure(payout, lane.name, result.reason_code)

    def _quick_retry(self, call: CallResult, lane: ProviderLane, result) -> bool:  # noqa: ANN001 - TransferResult | None
        """A call that got no answer (QUICK_RETRY_CODES) is made again soon, same attempt and same key, up to
        settings.provider_quick_retries times: sent again where the provider replays a request by its key,
        otherwise after a lookup (which pays under the same key only if the provider has nothing)."""
        if (result is None or result.outcome is not Outcome.FAILED or result.reason_code not in QUICK_RETRY_CODES
                or lane.batches):
            return False
        key = (call.payout_id, call.attempt)
        made = self._quick_tries.get(key, 0)
        if made >= self.settings.provider_quick_retries:
            return False  # the call's failure is recorded: the retry delays apply from here
        self._quick_tries[key] = made + 1
        wait_s = min(QUICK_RETRY_FIRST_S * 2 ** made, QUICK_RETRY_MAX_S)
        self._unknown_until[call.payout_id] = time.monotonic() + wait_s
        again = call.mode == "submit" and getattr(lane.connector, "REPLAYS_BY_KEY", False)
        if again:
            self._cleared.add(key)  # the same request under the same key: the provider acts on it once
        else:
            self._cleared.discard(key)
            self._fresh.discard(key)  # asked first
        self.stats.quick_retries += 1
        logger.warning("%s %s of attempt %d got no answer (%s: %s): quick retry %d of %d in %.1f s (%s)",
                       call.provider, call.mode, call.attempt, result.reason_code, result.message, made + 1,
                       self.settings.provider_quick_retries, wait_s,
                       "sent again under the same key" if again else "a lookup first")
        return True

    def _withdrawn(self, lane: ProviderLane, withdrawn: list[tuple[str, int, str]]) -> None:
        """Calls the lane did not make (the circuit opened after they were handed over) never reached the provider.
        Each is made again as it was once calls go through (a payment directly: nothing exists under its key)."""
        for payout_id, attempt, mode in withdrawn:
            if mode == "final_check":
                self._final_check_due[(payout_id, attempt)] = time.monotonic()
            elif mode == "submit":
                self._cleared.add((payout_id, attempt))
            elif mode == "poll":
                self._last_poll.pop(payout_id, None)
        if withdrawn:
            logger.info("%s circuit open: %d calls withdrawn before reaching it", lane.name, len(withdrawn))

    def _retry_or_give_up(self, payout: Payout, attempt: int, provider: str, reason_code: str, message: str,
                          retry_after_s: float | None, now: datetime, *, record_failure: bool) -> None:
        due = self.policy.next_attempt_at(attempt, now, retry_after_s)
        if due is None:
            # A retryable failure does not say the provider did nothing (a 500 or a reset after the transfer was
            # made: the key then replays the failure). The next attempt would have asked first; the last one
            # asks now, and the payout fails for good only if the provider holds nothing (_on_final_check).
            self._final_checks[(payout.payout_id, attempt)] = (reason_code, message)
            self._final_check_due[(payout.payout_id, attempt)] = time.monotonic()
            with payout_context(payout, attempt=attempt):
                logger.info("attempt %d was the last and failed (%s): asking %s whether it paid before the payout "
                            "fails for good", attempt, reason_code, provider)
            return
        if record_failure:
            self._send(records.failed(payout, attempt, provider, reason_code, message, True, now))
        self._send(records.retry_scheduled(payout, attempt + 1, provider, due, reason_code, message, now))
        logger.info("attempt %d failed (%s: %s): attempt %d scheduled at %s", attempt, reason_code, message,
                    attempt + 1, due.isoformat(), extra={"reason_code": reason_code, "provider": provider})
        self.stats.retries_scheduled += 1
        metrics.PAYOUT_RETRIES.labels(provider, reason_code).inc()

    def _final_checks_due(self, mono: float) -> bool:
        """Hand the lanes the final checks that are due (just decided, or asked again after no answer)."""
        acted = False
        for key, due in list(self._final_check_due.items()):
            payout = self.book.get(key[0])
            if payout is None or payout.status.terminal or key not in self._final_checks:
                self._final_check_due.pop(key, None)
                self._final_checks.pop(key, None)
                continue
            lane = self._method_lanes.get(payout.method) or self._lane(payout)
            if due > mono or lane is None or payout.payout_id in lane.busy or not lane.breaker.allow():
                continue
            del self._final_check_due[key]
            lane.resolve(self._request(payout, key[1]), "final_check")
            acted = True
        return acted

    def _on_final_check(self, payout: Payout, call: CallResult, lane: ProviderLane, now: datetime) -> None:
        """The provider's answer about a last attempt that failed retryably: settled or accepted if it holds the
        payment, failed for good if it holds nothing (or its own final failure), asked again if no answer."""
        key = (call.payout_id, call.attempt)
        if key not in self._final_checks:
            return
        result = call.result
        if call.error or (result is not None and result.outcome is Outcome.FAILED
                          and result.reason_code in UNANSWERED_CODES) or (
                result is not None and result.outcome is Outcome.PENDING and payout.status is not PayoutStatus.SUBMITTED):
            self._final_check_due[key] = time.monotonic() + UNKNOWN_RETRY_S
            return
        reason_code, message = self._final_checks.pop(key)
        crash_point("before_outcome")
        if result is not None and result.outcome is Outcome.SETTLED:
            self._send(records.settled(payout, call.attempt, lane.name, result.provider_reference, now))
            logger.warning("payout settled: %s through %s (%s), found paid at the provider after its last attempt "
                           "failed (%s)", payout.amount, lane.name, result.provider_reference, reason_code)
            self.stats.settled += 1
            self.stats.resolved_by_lookup += 1
            metrics.PAYOUTS_SETTLED.labels(lane.name, payout.amount.currency.code).inc()
            metrics.PAYOUT_AMOUNT.labels(payout.amount.currency.code, "settled").inc(payout.amount.amount_minor)
        elif result is not None and result.outcome is Outcome.PENDING:
            self._send(records.accepted(payout, call.attempt, lane.name, result.provider_reference, now))
            self._last_poll[payout.payout_id] = time.monotonic()
            self.stats.accepted += 1
        else:
            if result is not None:  # the provider's own final failure of this payment
                reason_code, message = result.reason_code, result.message
            self._send(records.failed(payout, call.attempt, lane.name, reason_code,
                                      f"{message} (gave up after {call.attempt} attempts)".strip(), False, now))
            self._count_failure(payout, lane.name, reason_code)

    def _expire_if_stale(self, payout: Payout, provider: str, now: datetime) -> None:
        if provider != "mobile_money" or payout.accepted_at is None:
            return
        if (now - payout.accepted_at).total_seconds() < self.settings.mobile_money_max_pending_s:
            return
        hours = self.settings.mobile_money_max_pending_s / 3600
        self._send(records.failed(payout, payout.current.number, provider, "processing_expired",
                                  f"still processing at the provider after {hours:g} h", False, now))
        self._send(records.expiry_hold(payout, payout.current.number, hours, now))  # decisions §25
        self.stats.expired += 1
        self._count_failure(payout, provider, "processing_expired")

    def _count_failure(self, payout: Payout, provider: str, reason_code: str) -> None:
        logger.info("payout failed for good (%s): %s returns to the balance", reason_code, payout.amount,
                    extra={"reason_code": reason_code, "provider": provider})
        self.stats.failed += 1
        metrics.PAYOUTS_FAILED.labels(provider, reason_code).inc()
        metrics.PAYOUT_AMOUNT.labels(payout.amount.currency.code, "failed").inc(payout.amount.amount_minor)
        self.stats.by_reason[reason_code] = self.stats.by_reason.get(reason_code, 0) + 1

    # --- writing ---------------------------------------------------------------------------------

    def _send(self, event: Event) -> None:
        """Queue the event for ledger.commands; not waited for: delivery reports are served once per round of the
        loop (_serve_producer; a poll per record cost ~0.2 ms of the loop's time each) and at a flush."""
        outcome = event.event_type != "PayoutSubmitted"
        headers = None
        if self.share is not None:
            self.share.check(event.payee_id)
            headers = [(EPOCH_HEADER, self.share.epoch_tag(event.payee_id))]
        self._producer.produce(self.settings.topic_commands, key=event.payee_id.encode(),
                               value=self.codec.encode(event), headers=headers,
                               on_delivery=self._outcome_delivered if outcome else self._delivered)
        self._unflushed += 1
        if outcome:
            self._apply(event)  # an outcome is known now; a submit waits for the sequencer's verdict

    def _delivered(self, error, message) -> None:  # noqa: ANN001 - confluent_kafka's delivery callback
        self._tracker(error, message)

    def _outcome_delivered(self, error, message) -> None:  # noqa: ANN001
        self._tracker(error, message)
        if error is None:
            crash_point("transfers_after_outcome")  # outcomes in ledger.commands, no checkpoint covers them yet

    def _serve_producer(self) -> None:
        """Delivery reports of what was sent; a record the broker refused stops the process (a restart asks the
        provider again rather than guess)."""
        if not self._now_and_then("producer"):
            return
        self._producer.poll(0)
        if self._tracker.errors:
            raise DeliveryFailed(f"{len(self._tracker.errors)} records to {self.settings.topic_commands} refused: "
                                 f"{self._tracker.errors[:3]}")

    def _flush(self) -> None:
        if self._unflushed:
            flush_or_raise(self._producer, self._tracker, self._unflushed)
            self._tracker, self._unflushed = DeliveryTracker(), 0
