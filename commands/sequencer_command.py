"""`ledger sequencer`: run the sequencer (payments.incoming -> ledger.events / ledger.dlq)."""

from __future__ import annotations

from dataclasses import asdict

import click

from commands.output import metrics_port_option, standby_option, console, emit_json, start_logging
from processors.sequencer import Sequencer, logger
from runtime.metrics import start_metrics_server
from runtime.settings import Settings
from runtime.single_instance import single_instance
from runtime.stack import connections


@click.command(short_help="Run the sequencer: incoming -> ledger.events or the DLQ.")
@click.option("--idle-exit", type=click.FloatRange(min=0.1), default=None,
              help="Exit after this many seconds without input (default: run until SIGTERM/Ctrl-C).")
@click.option("--json", "as_json", is_flag=True, help="Print the final counts as JSON.")
@metrics_port_option
@standby_option
def sequencer(idle_exit: float | None, as_json: bool, metrics_port: int | None, standby: bool) -> None:
    """Validate, deduplicate and sequence incoming records into ledger.events; refuse the rest to ledger.dlq.

    Rebuilds its state from ledger.events at start. Only one sequencer may run per ledger.
    """
    settings = Settings()
    start_logging(settings, "sequencer", as_json)
    start_metrics_server(metrics_port)
    bootstrap, database_url = connections(settings)
    with single_instance(database_url, f"sequencer:{settings.topic_events}", standby=standby):
        worker = Sequencer(settings, bootstrap, database_url=database_url)
        worker.rebuild()
        logger.info("reading %s -> %s (rejects -> %s)", settings.topic_incoming, settings.topic_events,
                    settings.topic_dlq)
        stats = worker.run(idle_exit_s=idle_exit)
    if as_json:
        emit_json(asdict(stats))
    else:
        console.print(f"sequencer stopped: {stats.appended} appended, {stats.duplicates} duplicates, "
                      f"{stats.dead_lettered} dead-lettered in {stats.batches} batches")
