"""`ledger sequencer`: run the sequencer (payments.incoming -> ledger.events / ledger.dlq)."""

from __future__ import annotations

from dataclasses import asdict

import click

from commands.output import metrics_port_option, standby_option, console, emit_json, start_logging
from commands.processor_lock import processor_lock
from processors.sequencer import Sequencer, logger
from processors.sequencer_instances import PartitionedSequencer
from runtime.metrics import mark_ready, start_metrics_server
from runtime.settings import Settings
from runtime.stack import connections


@click.command(short_help="Run the sequencer: incoming -> ledger.events or the DLQ.")
@click.option("--idle-exit", type=click.FloatRange(min=0.1), default=None,
              help="Exit after this many seconds without input (default: run until SIGTERM/Ctrl-C).")
@click.option("--json", "as_json", is_flag=True, help="Print the final counts as JSON.")
@click.option("--partitioned", is_flag=True,
              help="Share the partitions with every other `ledger sequencer --partitioned` of this ledger: each "
                   "instance sequences the partitions it holds a lease on (LEDGER_PARTITION_LEASE_S), and takes "
                   "over those of an instance that stops or dies.")
@metrics_port_option
@standby_option
def sequencer(idle_exit: float | None, as_json: bool, partitioned: bool, metrics_port: int | None,
              standby: bool) -> None:
    """Validate, deduplicate and sequence incoming records into ledger.events; refuse the rest to ledger.dlq.

    Rebuilds its state from ledger.events at start (from its checkpoint when one proves). Without
    --partitioned only one sequencer may run per ledger (--standby waits to take over); with it, any
    number run side by side, each owning some partitions.
    """
    settings = Settings()
    start_logging(settings, "sequencer", as_json)
    start_metrics_server(metrics_port)
    bootstrap, database_url = connections(settings)
    with processor_lock(database_url, f"sequencer:{settings.topic_events}", partitioned=partitioned, standby=standby):
        if partitioned:
            try:
                worker = PartitionedSequencer(settings, bootstrap, database_url)
            except ValueError as exc:  # the topics' partition counts differ
                raise click.ClickException(str(exc)) from None
            mark_ready()  # /ready: its work loop starts now
            stats = worker.run(idle_exit_s=idle_exit)
        else:
            single = Sequencer(settings, bootstrap, database_url=database_url)
            single.rebuild()
            logger.info("reading %s -> %s (rejects -> %s)", settings.topic_incoming, settings.topic_events,
                        settings.topic_dlq)
            mark_ready()  # /ready: its work loop starts now
            stats = single.run(idle_exit_s=idle_exit)
    if as_json:
        emit_json(asdict(stats))
    else:
        console.print(f"sequencer stopped: {stats.appended} appended, {stats.duplicates} duplicates, "
                      f"{stats.dead_lettered} dead-lettered in {stats.batches} batches")
