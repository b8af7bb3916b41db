"""(g) Scale-out of payouts: Stripe payouts settled per minute by one and by two `ledger transfers --partitioned`.

For each instance count, on topics of its own with PARTITIONS partitions and one `ledger sequencer`:
1. start that many `ledger transfers --partitioned` (uncapped Stripe lane: concurrency 64 and 5,000 calls/s
   for the ledger, which each instance divides by the live instances, so two instances have the same
   provider limits as one) and wait until the leases are balanced;
2. request `count` payouts to new Stripe payees (the sandbox answers each call in the latency of (d));
3. count PayoutSettled in ledger.events: the rate over the middle 80 % of settle times, as (d) does.

The instances, the sequencer, the broker, PostgreSQL, the sandbox and the driver share the machine's cores.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from confluent_kafka.admin import AdminClient

from bench_payouts import CEILING_CONCURRENCY, STRIPE_KEY, UNCAPPED_RATE_PER_S, request_stripe_payouts, settle_payouts
from bench_processes import LedgerProcess, cpu_snapshot, cpu_used, ledger_env
from bench_reading import LogTail
from bench_scale import PARTITIONS, wait_balanced
from processors.transfer_instances import lease_group
from runtime.database import make_engine
from runtime.kafka_admin import ensure_topics
from sandbox.stripe import StripeTestServer

LEASE_S = 15.0
STARTUP_S = 120.0


def scale_out_payouts(ctx, log_dir: Path, count: int, latency_s: float,  # noqa: ANN001 - BenchContext
                      counts: tuple[int, ...] = (1, 2)) -> dict:
    results = {str(instances): _one(ctx, log_dir, count, latency_s, instances) for instances in counts}
    one, two = results.get("1"), results.get("2")
    speedup = two["settled_per_min"] / one["settled_per_min"] if one and two and one["settled_per_min"] else None
    return {"partitions": PARTITIONS, "payouts": count, "provider_latency_s": latency_s,
            "provider_concurrency": CEILING_CONCURRENCY, "provider_rate_per_s": UNCAPPED_RATE_PER_S,
            "instances": results, "speedup_2_vs_1": speedup}


def _one(ctx, log_dir: Path, count: int, latency_s: float, instances: int) -> dict:  # noqa: ANN001
    settings = ctx.settings.with_topic_suffix(f"payscale{instances}").model_copy(update={
        "partitions_incoming": PARTITIONS, "partitions_events": PARTITIONS, "partitions_commands": PARTITIONS})
    ensure_topics(ctx.bootstrap, settings.topic_specs())
    sub = replace(ctx, settings=settings, workers={})
    engine = make_engine(ctx.database_url)
    workers: list[LedgerProcess] = []
    try:
        with StripeTestServer(latency_s=latency_s) as server:
            env = ledger_env(settings, ctx.bootstrap, ctx.database_url, log_dir / "data",
                             LEDGER_PARTITIONS_INCOMING=str(PARTITIONS), LEDGER_PARTITIONS_EVENTS=str(PARTITIONS),
                             LEDGER_PARTITIONS_COMMANDS=str(PARTITIONS), LEDGER_PARTITION_LEASE_S=str(LEASE_S),
                             LEDGER_STRIPE_API_KEY=STRIPE_KEY, LEDGER_STRIPE_API_BASE=server.url,
                             LEDGER_PROVIDER_LIMITS=json.dumps({"stripe": {"concurrency": CEILING_CONCURRENCY,
                                                                           "rate_per_s": UNCAPPED_RATE_PER_S}}),
                             LEDGER_PROVIDER_CONCURRENCY=str(CEILING_CONCURRENCY),
                             LEDGER_PROVIDER_RATE_PER_S=f"{UNCAPPED_RATE_PER_S:g}")
            sequencer = LedgerProcess(f"payscale{instances}-sequencer", ["sequencer"], env, log_dir)
            workers.append(sequencer)
            sub.workers[sequencer.name] = sequencer
            sequencer.wait_for_line("reading ", STARTUP_S, "that it reads its input")
            transfers = [LedgerProcess(f"payscale{instances}-transfers{n}", ["transfers", "--partitioned"], env, log_dir)
                         for n in range(instances)]
            for worker in transfers:
                workers.append(worker)
                sub.workers[worker.name] = worker
            task = ctx.progress.add_task(f"(g) {instances} partitioned transfer processor(s): balancing", total=None)
            wait_balanced(sub, engine, lease_group(settings), [worker.pid for worker in transfers],
                          f"{instances} partitioned transfer processors")
            ctx.progress.update(task, total=1, completed=1)
            accounts = {f"bench-{ctx.run_id}-g{instances}-{i}": server.create_account() for i in range(count)}
            tail = LogTail(ctx.bootstrap, settings.topic_events)
            try:
                requested = request_stripe_payouts(sub, accounts, label=f"g{instances}")
                before = cpu_snapshot(sub.workers)
                result = settle_payouts(sub, transfers[0], tail, requested, f"g, {instances} instance(s)")
                used = cpu_used(before, cpu_snapshot(sub.workers))
            finally:
                tail.close()
        return {**result, "instances": instances, "cpu_seconds": used}
    finally:
        for worker in workers:
            worker.stop()
        engine.dispose()
        AdminClient({"bootstrap.servers": ctx.bootstrap}).delete_topics(
            [spec.name for spec in settings.topic_specs()], operation_timeout=30)
