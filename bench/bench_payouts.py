"""Phase (d) of bench/run_all.py: Stripe payouts settled per minute, through the Stripe sandbox answering in 50 ms.

Every round pays `count` new payees (one `stripe_standard` payout each, one Stripe transfer each):
- `ledger transfers` at settings that do not cap it (concurrency 64, 5,000 calls/s): the headline figure;
- `ledger transfers` at the limits in force (the environment's, else Stripe's defaults for a test key: 16 calls
  in flight, 25 requests/s, so at most 1,500/min);
- the peer comparison: at concurrency 4 and 16, `ledger transfers` (rate uncapped) and then a Celery worker on
  Redis (bench/celery_peer.py: prefork pool at 4, thread pool at 16) paying the same number of payouts through
  the same sandbox. Each pair runs back to back, so the two sides see the same machine.

Rates are over the middle 80 % of completion times (and first to last). A round that does not finish by its
deadline, or whose worker died, raises BenchFailure.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

from bench_phases import BenchContext, deadline_s, follow
from bench_processes import BenchFailure, LedgerProcess
from bench_reading import LogTail, TailRecord
from connectors.stripe_connector import StripeConnector
from ledger.codec import EventCodec
from processors.ledger_client import LedgerClient
from processors.payout_run import fold_ledger, plan_run, send_commands
from runtime.plans import plan_book
from runtime.providers import lane_limits
from runtime.settings import Settings
from sandbox.stripe import StripeTestServer

FOLLOW_EVERY_S = 0.2
CEILING_CONCURRENCY = 64
UNCAPPED_RATE_PER_S = 5_000.0  # calls started per second: far above what 64 calls of 50 ms can start (1,280/s)
PEER_ROUNDS = (("c4", "prefork", 4), ("c16", "threads", 16))  # key, Celery pool, concurrency of both sides
STRIPE_KEY = "sk_test_bench"


def stripe_limits_in_force(settings: Settings, api_base: str | None = None) -> tuple[int, float]:
    """The Stripe lane's concurrency and rate that `ledger transfers` uses with the benchmark's key (a test key) and
    these settings: LEDGER_PROVIDER_LIMITS, then LEDGER_PROVIDER_CONCURRENCY / _RATE_PER_S, then Stripe's default."""
    limits = lane_limits(settings, StripeConnector(STRIPE_KEY, api_base))
    return limits.concurrency, limits.rate_per_s


def latency_bound_per_min(concurrency: int, latency_s: float) -> float:
    """What `concurrency` calls in flight can pay at most when each takes latency_s: concurrency / latency_s x 60."""
    return concurrency / latency_s * 60


def request_stripe_payouts(ctx: BenchContext, accounts: dict[str, str], minor: int = 5_000, label: str = "") -> int:
    """(d) set-up, as tests/integration/transfer_helpers.request_payouts does but with the sequencer process:
    stripe_standard payees, a payment each two days ago, and the due closes chained. Returns payouts requested."""
    name = f"(d) payouts{' ' + label if label else ''}"
    two_days_ago = (datetime.now(timezone.utc) - timedelta(days=2)).replace(microsecond=0)
    tail = LogTail(ctx.bootstrap, ctx.settings.topic_events)
    try:
        with LedgerClient(ctx.bootstrap, ctx.settings) as client:
            for payee_id, account in accounts.items():
                client.set_schedule(payee_id, frequency="DAILY", cutoff_time="23:59", timezone="UTC", plan="flat-80",
                                    method="stripe_standard", destination=account, wait=False)
            client.record_batch([{"payment_id": f"{ctx.run_id}-d-{payee_id}", "payee_id": payee_id,
                                  "amount_minor": minor, "currency": "USD", "occurred_at": two_days_ago.isoformat()}
                                 for payee_id in accounts])
        task = ctx.progress.add_task(f"{name}: schedules and payments chained", total=2 * len(accounts))
        follow(ctx, tail, 2 * len(accounts), deadline_s(len(accounts), 10), f"{name} set-up: schedules and payments",
               task)
        codec = EventCodec()
        earnings = fold_ledger(ctx.bootstrap, ctx.settings.topic_events, codec)
        plan = plan_run([earnings[payee] for payee in accounts], datetime.now(timezone.utc),
                        plan_book(ctx.settings), ctx.settings.payout_policy())
        send_commands(ctx.bootstrap, ctx.settings.topic_commands, plan.closes, codec)
        task = ctx.progress.add_task(f"{name}: requests chained", total=len(plan.closes))
        follow(ctx, tail, len(plan.closes), deadline_s(len(plan.closes), 10), f"{name} set-up: payout requests", task)
    finally:
        tail.close()
    return len(plan.payouts)


def settle_payouts(ctx: BenchContext, transfers: LedgerProcess, tail: LogTail, payouts: int,
                   label: str = "") -> dict[str, float]:
    """(d) count PayoutSettled (and final PayoutFailed) chained in ledger.events until every payout ended."""
    name = f"(d) payouts{' ' + label if label else ''}"
    codec = EventCodec()
    outcomes: dict[str, int] = {"PayoutSettled": 0, "PayoutFailed": 0}

    def final(record: TailRecord) -> bool:
        event = codec.decode(record.value)
        if event.event_type == "PayoutSettled" or (event.event_type == "PayoutFailed" and not event.payload["retryable"]):
            outcomes[event.event_type] += 1
            return event.event_type == "PayoutSettled"
        return False

    task = ctx.progress.add_task(f"{name}: settled", total=payouts)
    settled: list[TailRecord] = []
    deadline = time.monotonic() + deadline_s(payouts, 2)
    while sum(outcomes.values()) < payouts:
        settled.extend(record for record in tail.drain() if final(record))
        ctx.progress.update(task, completed=sum(outcomes.values()))
        ctx.check_workers(name)
        if time.monotonic() > deadline:
            raise BenchFailure(f"{name}: {outcomes} of {payouts} after {deadline_s(payouts, 2):.0f} s")
        if sum(outcomes.values()) < payouts:
            time.sleep(FOLLOW_EVERY_S)
    times = sorted(record.timestamp_s for record in settled)
    return {"payouts": payouts, "settled": outcomes["PayoutSettled"], "failed": outcomes["PayoutFailed"],
            "first_settled_after_start_s": round(times[0] - transfers.started_at, 3) if times else None,
            "settled_per_min": per_minute(times, 0.1, 0.9), "settled_per_min_first_to_last": per_minute(times, 0, 1),
            "settled_per_min_from_process_start": len(times) / (times[-1] - transfers.started_at) * 60 if times else 0.0}


def per_minute(times: list[float], low: float, high: float) -> float:
    """Events per minute between the low and high fractions of sorted event times: the middle 80 % leaves out
    the rate limiter's initial burst (its bucket starts full) and the last stragglers."""
    first, last = round(low * (len(times) - 1)), round(high * (len(times) - 1))
    if last <= first or times[last] <= times[first]:
        return 0.0
    return (last - first) / (times[last] - times[first]) * 60


def transfers_round(ctx: BenchContext, env: dict[str, str], log_dir: Path, server: StripeTestServer,
                    stop: Callable[[str], None], name: str, count: int,
                    limits: tuple[int, float] | None) -> dict[str, float]:
    """`count` new payees paid by one `ledger transfers` process (named `name`): at the Stripe lane's (concurrency,
    rate_per_s) given, or with None at the limits in force (the benchmark's environment and Stripe's defaults)."""
    began = time.monotonic()
    extra = {"LEDGER_STRIPE_API_KEY": STRIPE_KEY, "LEDGER_STRIPE_API_BASE": server.url}
    if limits is None:
        concurrency, rate_per_s = stripe_limits_in_force(ctx.settings, server.url)
    else:
        concurrency, rate_per_s = limits
        extra.update({  # the per-provider limits come first: a LEDGER_PROVIDER_LIMITS of the environment is replaced
            "LEDGER_PROVIDER_LIMITS": json.dumps({"stripe": {"concurrency": concurrency, "rate_per_s": rate_per_s}}),
            "LEDGER_PROVIDER_CONCURRENCY": str(concurrency), "LEDGER_PROVIDER_RATE_PER_S": f"{rate_per_s:g}"})
    accounts = {f"bench-{name}-{i}": server.create_account() for i in range(count)}
    requested = request_stripe_payouts(ctx, accounts, label=name)
    tail = LogTail(ctx.bootstrap, ctx.settings.topic_events)
    try:
        transfers = LedgerProcess(name, ["transfers"], {**env, **extra}, log_dir)
        ctx.workers[name] = transfers
        result = settle_payouts(ctx, transfers, tail, requested, name)
    finally:
        tail.close()
        if name in ctx.workers:
            stop(name)  # before the Stripe server goes, also on failure
    return {**result, "provider_concurrency": concurrency, "provider_rate_per_s": rate_per_s,
            "settled_per_min_cap": round(rate_per_s * 60),
            "latency_bound_per_min": latency_bound_per_min(concurrency, server.latency_s),
            "round_s": round(time.monotonic() - began, 1)}  # set-up (payees, requests chained) included


def celery_round(ctx: BenchContext, server: StripeTestServer, log_dir: Path, redis_url: str, name: str, count: int,
                 pool: str, concurrency: int) -> dict[str, float]:
    """`count` payouts through a Celery worker (bench/celery_peer.py), timed by the rows its tasks inserted."""
    import celery_peer  # needs the bench extra; preflight() said so already when it is missing

    began = time.monotonic()
    run = celery_peer.pay_through_celery(ctx, server, log_dir, redis_url, name, count, pool, concurrency,
                                         deadline_s(count, 2))
    times = run.settled_at
    return {"payouts": count, "settled": len(times), "failed": run.failed, "failures": run.failures, "pool": pool, "concurrency": concurrency,
            "worker_start_s": round(run.worker_start_s, 3), "enqueue_s": round(run.enqueue_s, 3),
            "first_settled_after_enqueue_s": round(times[0] - run.enqueued_from, 3) if times else None,
            "settled_per_min": per_minute(times, 0.1, 0.9), "settled_per_min_first_to_last": per_minute(times, 0, 1),
            "settled_per_min_from_enqueue": len(times) / (times[-1] - run.enqueued_from) * 60 if times else 0.0,
            "worker_exit_code": run.exit_code,
            "latency_bound_per_min": latency_bound_per_min(concurrency, server.latency_s),
            "round_s": round(time.monotonic() - began, 1)}


def _ratio(numerator: float, denominator: float) -> float | None:
    return round(numerator / denominator, 3) if denominator else None


def compare(transfers: dict, celery: dict, pool: str, concurrency: int, latency_s: float) -> dict:
    bound = latency_bound_per_min(concurrency, latency_s)
    return {"concurrency": concurrency, "celery_pool": pool,
            "transfers_per_min": transfers["settled_per_min"], "celery_per_min": celery["settled_per_min"],
            "ratio": _ratio(transfers["settled_per_min"], celery["settled_per_min"]),
            "transfers_per_min_first_to_last": transfers["settled_per_min_first_to_last"],
            "celery_per_min_first_to_last": celery["settled_per_min_first_to_last"],
            "ratio_first_to_last": _ratio(transfers["settled_per_min_first_to_last"],
                                          celery["settled_per_min_first_to_last"]),
            "latency_bound_per_min": bound, "transfers_share_of_bound": _ratio(transfers["settled_per_min"], bound),
            "celery_share_of_bound": _ratio(celery["settled_per_min"], bound),
            "transfers": transfers, "celery": celery}


def payouts(ctx: BenchContext, env: dict[str, str], log_dir: Path, stop: Callable[[str], None], count: int,
            latency_s: float, peer_redis: str | None) -> dict:
    """The whole of (d): details.payouts. The ceiling round's keys at the top (as before this comparison existed),
    `default_settings`, and `peer` (None when peer_redis is None: the comparison is skipped)."""
    began = time.monotonic()
    with StripeTestServer(latency_s=latency_s) as server:
        ceiling = transfers_round(ctx, env, log_dir, server, stop, "transfers", count,
                                  (CEILING_CONCURRENCY, UNCAPPED_RATE_PER_S))
        default = transfers_round(ctx, env, log_dir, server, stop, "transfers_default", count, None)
        peer = None
        if peer_redis is not None:
            peer = {}
            for key, pool, concurrency in PEER_ROUNDS:
                transfers = transfers_round(ctx, env, log_dir, server, stop, f"transfers_{key}", count,
                                            (concurrency, UNCAPPED_RATE_PER_S))
                celery = celery_round(ctx, server, log_dir, peer_redis, f"celery_{key}", count, pool, concurrency)
                peer[key] = compare(transfers, celery, pool, concurrency, latency_s)
    return {**ceiling, "provider_latency_s": latency_s, "default_settings": default, "peer": peer,
            "phase_s": round(time.monotonic() - began, 1)}
