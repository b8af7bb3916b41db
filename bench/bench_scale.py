"""(g) Scale-out: the sequencer's append rate with one and with two partitioned instances, in the same run.

For each instance count, on topics of its own with PARTITIONS partitions:
1. start that many `ledger sequencer --partitioned` and wait until the leases are balanced (each
   instance owns its share, every partition is owned);
2. freeze them (SIGSTOP), load the input with `count` payments through `LedgerClient` (untimed),
   and let them go (SIGCONT): the pause is far shorter than a lease, so no partition moves;
3. time from the first to the last event chained (Kafka timestamps of ledger.events).

So the figure is the sequencers' own rate on a backlog, with the cores to themselves: the driver only
follows ledger.events meanwhile. Four partitions split evenly between two instances (three would give
one of them two thirds of the work).
"""

from __future__ import annotations

import os
import signal
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import sqlalchemy
from confluent_kafka.admin import AdminClient

from bench_phases import BenchContext, deadline_s, follow, payments
from bench_processes import BenchFailure, LedgerProcess, cpu_snapshot, cpu_used, ledger_env
from bench_reading import LogTail
from processors.ledger_client import LedgerClient
from processors.sequencer_instances import lease_group
from runtime.database import make_engine
from runtime.kafka_admin import ensure_topics

PARTITIONS = 4
LEASE_S = 15.0
BALANCE_S = 90.0


def scale_out(ctx: BenchContext, log_dir: Path, count: int, payees: int, counts: tuple[int, ...] = (1, 2)) -> dict:
    results: dict[str, dict] = {}
    for instances in counts:
        results[str(instances)] = _one(ctx, log_dir, count, payees, instances)
    one, two = results.get("1"), results.get("2")
    speedup = two["chained_records_per_s"] / one["chained_records_per_s"] if one and two else None
    return {"partitions": PARTITIONS, "records": count, "instances": results, "speedup_2_vs_1": speedup}


def _one(ctx: BenchContext, log_dir: Path, count: int, payees: int, instances: int) -> dict:
    settings = ctx.settings.with_topic_suffix(f"scale{instances}").model_copy(update={
        "partitions_incoming": PARTITIONS, "partitions_events": PARTITIONS, "partitions_commands": PARTITIONS})
    ensure_topics(ctx.bootstrap, settings.topic_specs())
    env = ledger_env(settings, ctx.bootstrap, ctx.database_url, log_dir / "data",
                     LEDGER_PARTITIONS_INCOMING=str(PARTITIONS), LEDGER_PARTITIONS_EVENTS=str(PARTITIONS),
                     LEDGER_PARTITIONS_COMMANDS=str(PARTITIONS), LEDGER_PARTITION_LEASE_S=str(LEASE_S))
    workers = [LedgerProcess(f"scale{instances}-sequencer{n}", ["sequencer", "--partitioned"], env, log_dir)
               for n in range(instances)]
    for worker in workers:
        ctx.workers[worker.name] = worker
    engine = make_engine(ctx.database_url)
    try:
        task = ctx.progress.add_task(f"(g) {instances} partitioned sequencer(s): balancing", total=None)
        wait_balanced(ctx, engine, lease_group(settings), [worker.pid for worker in workers],
                      f"{instances} partitioned sequencers")
        ctx.progress.update(task, total=1, completed=1)
        records = payments(ctx.run_id, f"g{instances}", count, payees, datetime.now(timezone.utc) - timedelta(hours=1))
        tail = LogTail(ctx.bootstrap, settings.topic_events)
        for worker in workers:
            os.kill(worker.pid, signal.SIGSTOP)
        try:
            with LedgerClient(ctx.bootstrap, settings) as client:
                for record in records:
                    client.send(client.validate(record))
                client.flush(timeout_s=deadline_s(count, 100))
        finally:
            before = cpu_snapshot({worker.name: worker for worker in workers})
            for worker in workers:
                os.kill(worker.pid, signal.SIGCONT)
        chaining = ctx.progress.add_task(f"(g) {instances} partitioned sequencer(s): chaining", total=count)
        try:
            chained = follow(ctx, tail, count, deadline_s(count, 50), f"(g) {instances} instances", chaining)
        finally:
            tail.close()
        used = cpu_used(before, cpu_snapshot({worker.name: worker for worker in workers}))
        stamps = sorted(record.timestamp_s for record in chained)
        seconds = stamps[-1] - stamps[0]
        per_instance = {}
        with engine.connect() as connection:
            owners = connection.execute(sqlalchemy.text(
                "SELECT owner, count(*) FROM partition_leases WHERE grp = :g AND owner IS NOT NULL GROUP BY owner"),
                {"g": lease_group(settings)}).all()
        for owner, owned in owners:
            per_instance[owner] = owned
        return {"instances": instances, "records": count, "chained_s": round(seconds, 3),
                "chained_records_per_s": (count - 1) / seconds if seconds > 0 else None,
                "partitions_per_instance": sorted(per_instance.values()),
                "cpu_seconds": used, "cpu_us_per_record": {name: round(value / count * 1e6, 1)
                                                           for name, value in used.items()}}
    finally:
        for worker in workers:
            ctx.workers.pop(worker.name, None)
            worker.stop()
        engine.dispose()
        AdminClient({"bootstrap.servers": ctx.bootstrap}).delete_topics(
            [spec.name for spec in settings.topic_specs()], operation_timeout=30)


def wait_balanced(ctx: BenchContext, engine: sqlalchemy.Engine, group: str, pids: list[int], what: str) -> None:
    """Until every partition is owned, by live leases, and each instance owns its fair share."""
    fair = {PARTITIONS // len(pids) + (1 if n < PARTITIONS % len(pids) else 0) for n in range(len(pids))}
    deadline = time.monotonic() + BALANCE_S
    while time.monotonic() < deadline:
        ctx.check_workers("(g) balancing")
        with engine.connect() as connection:
            rows = connection.execute(sqlalchemy.text(
                "SELECT owner, count(*) FROM partition_leases WHERE grp = :g AND owner IS NOT NULL "
                "AND expires_at > now() GROUP BY owner"), {"g": group}).all()
        owned = {int(owner.split("-")[-2]): number for owner, number in rows}
        if set(owned) == set(pids) and sum(owned.values()) == PARTITIONS and set(owned.values()) <= fair:
            return
        time.sleep(0.2)
    raise BenchFailure(f"(g) the leases of {what} were not balanced in {BALANCE_S:.0f} s")
