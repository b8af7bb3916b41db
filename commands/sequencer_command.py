"""`ledger sequencer`: run the sequencer (payments.incoming -> ledger.events / ledger.dlq)."""

from __future__ import annotations

from dataclasses import asdict

import click

from commands.output import metrics_port_option, console, emit_json, errors
from processors.sequencer import Sequencer
from runtime.metrics import start_metrics_server
from runtime.settings import Settings
from runtime.single_instance import single_instance
from runtime.stack import connections


@click.command(short_help="Run the sequencer: incoming -> ledger.events or the DLQ.")
@click.option("--idle-exit", type=click.FloatRange(min=0.1), default=None,
              help="Exit after this many seconds without input (default: run until SIGTERM/Ctrl-C).")
@click.option("--json", "as_json", is_flag=True, help="Print the final counts as JSON.")
@metrics_port_option
def sequencer(idle_exit: float | None, as_json: bool, metrics_port: int | None) -> None:
    """Validate, deduplicate and sequence incoming records into ledger.events; refuse the rest to ledger.dlq.

    Rebuilds its state from ledger.events at start. Only one sequencer may run per ledger.
    """
    start_metrics_server(metrics_port)
    settings = Settings()
    bootstrap, database_url = connections(settings)
    log = (lambda line: errors.print(f"sequencer: {line}", highlight=False)) if as_json else (
        lambda line: console.print(f"sequencer: {line}", highlight=False))
    with single_instance(database_url, f"sequencer:{settings.topic_events}"):
        worker = Sequencer(settings, bootstrap, log=log)
        worker.rebuild()
        log(f"reading {settings.topic_incoming} -> {settings.topic_events} (rejects -> {settings.topic_dlq})")
        stats = worker.run(idle_exit_s=idle_exit)
    if as_json:
        emit_json(asdict(stats))
    else:
        console.print(f"sequencer stopped: {stats.appended} appended, {stats.duplicates} duplicates, "
                      f"{stats.dead_lettered} dead-lettered in {stats.batches} batches")
