"""One provider's lane in the transfer processor: its connector, circuit breaker, bounded concurrency
(a thread pool) and call rate (a token bucket). Provider calls run here, off the processor's loop, so a
slow provider delays only its own payouts.

Pipelined: the processor hands a lane up to `capacity` calls (its concurrency plus a queue of as many
again), and a pool thread that finishes a call takes the next queued one at once, without waiting for
the processor's loop. A thread is held only for the call itself (and its turn in the token bucket);
what comes before (recording the attempt, waiting for it to be chained) and after (recording the
outcome) happens in the processor's loop while the next calls run.

The circuit breaker hears every answer (but a poll's) in the lane's thread, as soon as it comes, so a
queued call never starts after the failure that opened the circuit: it is reported `withdrawn`
instead, and so are the queued calls the processor takes back when it sees the circuit open
(`cancel_queued`). A withdrawn call never reached the provider.

Calls run in the pool inside a copy of the submitting context (contextvars do not cross into pool
threads by themselves), so a connector's log lines carry the payout's ids (runtime/logs.py)."""

from __future__ import annotations

import contextvars
import logging
import queue
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Callable

from connectors.base import Connector, Outcome, TransferRequest, TransferResult
from connectors.circuit_breaker import CircuitBreaker
from runtime import metrics
from runtime.partition_leases import Fenced

logger = logging.getLogger("ledger.transfers")
QUEUED_PER_SLOT = 1  # calls queued behind each running one: a freed thread never waits for the processor's loop


class TokenBucket:
    """At most `rate_per_s` starts per second on average, bursts up to `burst`; thread-safe."""

    def __init__(self, rate_per_s: float, burst: int | None = None, monotonic: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.rate, self.capacity = rate_per_s, float(burst or max(1, int(rate_per_s)))
        self._tokens, self._monotonic, self._sleep = self.capacity, monotonic, sleep
        self._last = monotonic()
        self._lock = threading.Lock()

    def acquire(self, tokens: int = 1) -> None:
        """Take `tokens` (one per provider request; never more than the burst at once)."""
        need = min(float(tokens), self.capacity)
        while True:
            with self._lock:
                now = self._monotonic()
                self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
                self._last = now
                if self._tokens >= need - 1e-9:  # tolerance: float refills land a hair below a whole token
                    self._tokens = max(0.0, self._tokens - need)
                    return
                wait = (need - self._tokens) / self.rate
            self._sleep(wait)  # pacing a provider, not waiting for asynchronous work


@dataclass(frozen=True)
class CallResult:
    provider: str
    payout_id: str
    attempt: int
    mode: str  # submit | resolve | poll
    result: TransferResult | None  # None: the provider never saw it (resolve/poll), or the call raised
    error: str = ""
    withdrawn: bool = False  # not made: the circuit opened after it was handed over
    fenced: bool = False  # not made: the instance no longer holds the payee's partition (error says why)
    partition: int = -1  # (of a fenced call)


class ProviderLane:
    def __init__(self, connector: Connector, *, concurrency: int, rate_per_s: float, breaker: CircuitBreaker,
                 window: int, results: "queue.Queue[CallResult]",
                 gate: Callable[[str], None] | None = None) -> None:
        """gate(payee_id): called in the lane's thread just before each call to the provider; raising
        runtime.partition_leases.Fenced withdraws the call (reported `fenced`: it never reached the provider)."""
        self.connector, self.breaker, self.window, self.gate = connector, breaker, window, gate
        self.name = connector.name
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix=f"provider-{self.name}")
        self._bucket = TokenBucket(rate_per_s)
        self._results = results
        self.concurrency, self.rate_per_s = concurrency, rate_per_s
        self.capacity = concurrency * (1 + QUEUED_PER_SLOT)  # calls running plus calls queued behind them
        self.busy: set[str] = set()  # payout ids with a call handed over (touched by the processor loop only)
        self._submitting: set[str] = set()  # of those, the ones being paid (not looked up)
        self._handed: dict[str, tuple[Future, int, str]] = {}  # payout -> (its call, attempt, mode)
        self.batches = hasattr(connector, "submit_batch")
        self._cost = getattr(connector, "requests_per_call", None)

    @property
    def free_slots(self) -> int:
        """How many more payments may be handed over now: for a batching provider, one batch at a time."""
        if self.batches:
            return 0 if self._submitting else 1
        return self.capacity - len(self.busy)

    @property
    def lookup_slots(self) -> int:
        return self.capacity - len(self.busy)

    def submit(self, requests: list[TransferRequest]) -> None:
        """Pay these out (several at once only for a batching provider: one bank file)."""
        future = self._pool.submit(contextvars.copy_context().run, self._run, requests, "submit")
        for request in requests:
            self.busy.add(request.payout_id)
            self._submitting.add(request.payout_id)
            self._handed[request.payout_id] = (future, request.attempt, "submit")

    def resolve(self, request: TransferRequest, mode: str) -> None:
        """Ask the provider what it knows (after a restart: `resolve`; a transfer still processing: `poll`)."""
        future = self._pool.submit(contextvars.copy_context().run, self._run, [request], mode)
        self.busy.add(request.payout_id)
        self._handed[request.payout_id] = (future, request.attempt, mode)

    def done(self, payout_id: str) -> None:
        self.busy.discard(payout_id)
        self._submitting.discard(payout_id)
        self._handed.pop(payout_id, None)

    def cancel_queued(self) -> list[tuple[str, int, str]]:
        """Withdraw the calls that have not started (the circuit opened): (payout, attempt, mode) of each.
        A withdrawn call never reached the provider and never reports a result."""
        withdrawn = [(payout_id, attempt, mode) for payout_id, (future, attempt, mode) in list(self._handed.items())
                     if future.cancel()]
        for payout_id, _, _ in withdrawn:
            self.done(payout_id)
        return withdrawn

    def _run(self, requests: list[TransferRequest], mode: str) -> None:
        try:
            if mode != "poll" and self.breaker.is_open():  # it opened after this call was handed over
                for request in requests:
                    self._results.put(CallResult(self.name, request.payout_id, request.attempt, mode, None,
                                                 withdrawn=True))
                return
            self._bucket.acquire(self._cost(requests[0], mode) if self._cost and len(requests) == 1 else 1)
            if self.gate is not None and self._fenced(requests, mode):
                return
            if mode == "submit" and len(requests) == 1:  # here, not in the processor's loop: a log write there
                request = requests[0]  # (a system call, the interpreter lock given up) stalls every payout
                logger.info("paying %s through %s (attempt %d)", request.amount, self.name, request.attempt)
            started = time.monotonic()
            if mode == "submit":
                if len(requests) > 1:
                    results = list(self.connector.submit_batch(requests))  # type: ignore[attr-defined]
                else:
                    results = [self.connector.submit(requests[0])]
            else:
                results = [self.connector.lookup(requests[0])]
            metrics.PROVIDER_LATENCY.labels(self.name, mode).observe(time.monotonic() - started)
        except Exception as exc:  # a connector bug: the outcome is unknown, so it is looked up later
            logger.exception("%s %s raised: the outcome is unknown and is looked up later", self.name, mode)
            for request in requests:
                if mode != "poll":
                    self.breaker.record_failure(True)
                self._results.put(CallResult(self.name, request.payout_id, request.attempt, mode, None,
                                             f"{type(exc).__name__}: {exc}"))
            return
        for request, result in zip(requests, results):
            if mode != "poll":  # the breaker hears every answer (a half-open trial must always end)
                if result is not None and result.outcome is Outcome.FAILED:
                    self.breaker.record_failure(result.retryable)
                else:
                    self.breaker.record_success()
            self._results.put(CallResult(self.name, request.payout_id, request.attempt, mode, result))

    def _fenced(self, requests: list[TransferRequest], mode: str) -> bool:
        """Check the gate for every payee of the call (after the token bucket: right before the call)."""
        try:
            for request in requests:
                self.gate(request.payee_id)  # type: ignore[misc]
        except Fenced as fenced:
            for request in requests:
                self._results.put(CallResult(self.name, request.payout_id, request.attempt, mode, None, str(fenced),
                                             fenced=True, partition=fenced.partition))
            return True
        return False

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def settled_or_pending(result: TransferResult) -> bool:
    return result.outcome in (Outcome.SETTLED, Outcome.PENDING)


def utc_now() -> datetime:
    from datetime import timezone
    return datetime.now(timezone.utc)
