"""`ledger projector` (keep the read models current) and `ledger projections rebuild` (from the beginning)."""

from __future__ import annotations

import time
from dataclasses import asdict

import click
import sqlalchemy
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from commands.output import metrics_port_option, standby_option, console, emit_json, errors, start_logging
from commands.processor_lock import processor_lock
from processors.kafka_io import read_topic
from projections.projector import NAME, PROJECTED, Projector, clear_checkpoints
from projections.projector_instances import PartitionedProjector
from runtime.database import make_engine
from runtime.metrics import mark_ready, start_metrics_server
from runtime.settings import Settings
from runtime.single_instance import single_instance
from runtime.stack import connections


@click.command(short_help="Run the projector: ledger.events -> PostgreSQL read models.")
@click.option("--idle-exit", type=click.FloatRange(min=0.1), default=None,
              help="Exit once caught up and idle this many seconds (default: run until SIGTERM/Ctrl-C).")
@click.option("--json", "as_json", is_flag=True)
@click.option("--partitioned", is_flag=True,
              help="Share the partitions of ledger.events with every other `ledger projector --partitioned` of "
                   "this ledger: each instance projects the partitions it holds a lease on "
                   "(LEDGER_PARTITION_LEASE_S) and takes over those of an instance that stops or dies; the owner "
                   "of partition 0 also projects the dead letters.")
@metrics_port_option
@standby_option
def projector(idle_exit: float | None, as_json: bool, partitioned: bool, metrics_port: int | None,
              standby: bool) -> None:
    """Keep payees, balances, earnings, periods, payouts, attempts, dead letters and daily totals current.

    Rows, the event archive, each payee's last applied event and the consumer positions are written in
    one transaction per batch, so a crash neither doubles nor skips anything. Without --partitioned one
    projector runs per ledger (--standby waits to take over); with it, any number run side by side, each
    owning some partitions. Both write the same rows: a ledger switches between them without a rebuild.
    """
    settings = Settings()
    start_logging(settings, "projector", as_json)
    start_metrics_server(metrics_port)
    bootstrap, database_url = connections(settings)
    with processor_lock(database_url, f"projector:{settings.topic_events}", partitioned=partitioned, standby=standby):
        worker = (PartitionedProjector(settings, bootstrap, database_url) if partitioned
                  else Projector(settings, bootstrap, database_url))
        mark_ready()  # /ready: its work loop starts now
        stats = worker.run(idle_exit_s=idle_exit)
    if as_json:
        emit_json(asdict(stats))
    else:
        console.print(f"projector stopped: {stats.events} events in the read models, {stats.tail} read in this run, "
                      f"{stats.written} written, {stats.dead_letters} dead letters, {stats.batches} batches, "
                      f"{stats.checkpoints} checkpoints")


@click.group(short_help="Read models: rebuild them from the ledger.")
def projections() -> None:
    """The PostgreSQL read models (docs/analytics.md describes every table)."""


@projections.command("rebuild", short_help="Empty the read models and project the whole ledger again.")
@click.option("--json", "as_json", is_flag=True)
def rebuild(as_json: bool) -> None:
    """Truncate every read model (not the append-only event archive), drop the projector's checkpoints (the
    single projector's and each partition's) and project ledger.events from its first event, with progress;
    prints the rate in events/s. Not while any projector runs, partitioned ones included."""
    settings = Settings()
    bootstrap, database_url = connections(settings)
    with single_instance(database_url, f"projector:{settings.topic_events}"):
        engine = make_engine(database_url)
        try:
            with engine.begin() as connection:
                connection.execute(sqlalchemy.text(
                    f"TRUNCATE {', '.join(PROJECTED)}, projection_positions"))  # names are ours, not input
                clear_checkpoints(connection)
        finally:
            engine.dispose()
        total = sum(1 for _ in read_topic(bootstrap, settings.topic_events, timeout_s=600))
        started = time.monotonic()
        with Progress(TextColumn("projecting"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=errors, disable=as_json, transient=True) as bar:
            task = bar.add_task("events", total=total)
            worker = Projector(settings, bootstrap, database_url, batch_events=5000, log=lambda line: None,
                               progress=lambda n: bar.advance(task, n))
            stats = worker.run(idle_exit_s=0.5, handle_signals=False)
        elapsed = time.monotonic() - started
    rate = stats.events / elapsed if elapsed > 0 else 0.0
    if as_json:
        emit_json({**asdict(stats), "seconds": round(elapsed, 3), "events_per_s": round(rate, 1), "projector": NAME})
    else:
        console.print(f"rebuilt the read models from {stats.events} events ({stats.dead_letters} dead letters) "
                      f"in {elapsed:.2f} s: {rate:,.0f} events/s", highlight=False)


@click.command(short_help="Prove the read models, archive and hash chains equal the ledger. Exit 1 if not.")
@click.option("--json", "as_json", is_flag=True, help='{"events": N, "mismatches": M, "differences": [...], ...}')
def verify(as_json: bool) -> None:
    """Replay ledger.events, fold it afresh, and compare with every read model and the event archive;
    check every payee's hash chain and earned_net = settled + in_flight + unpaid per payee and currency.
    Run it when the projector has caught up (rows it has not written yet show as missing)."""
    import sys

    from projections.verify import verify as run_verify

    settings = Settings()
    bootstrap, database_url = connections(settings)
    started = time.monotonic()
    with Progress(TextColumn("verifying"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=errors, disable=as_json, transient=True) as bar:
        task = bar.add_task("events", total=None)
        report = run_verify(settings, bootstrap, database_url, progress=lambda n: bar.advance(task, n))
    if as_json:
        emit_json({**report.as_dict(), "seconds": round(time.monotonic() - started, 3)})
    else:
        for difference in report.differences:
            errors.print(" ".join(f"{k}={v}" for k, v in difference.items()), highlight=False, soft_wrap=True)
        verdict = "[green]OK[/]" if report.ok else f"[red]{report.mismatches} mismatches[/]"
        console.print(f"verify {verdict}: {report.events} events, {report.payees} payees, "
                      f"{report.chain_breaks} chain breaks, {report.unbalanced} unbalanced; rows compared: "
                      + ", ".join(f"{t} {n}" for t, n in sorted(report.tables.items())), highlight=False)
    if not report.ok:
        sys.exit(1)
