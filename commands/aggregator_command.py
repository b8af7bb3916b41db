"""`ledger aggregator` (the Faust worker) and `ledger tick` (move its clock)."""

from __future__ import annotations

from datetime import datetime, timezone

import click

from commands.output import console, emit_json, fail, metrics_port_option, start_logging
from processors.clock import send_tick
from runtime.metrics import mark_ready, start_metrics_server
from runtime.settings import Settings
from runtime.stack import connections


@click.command(short_help="Run the earnings aggregator (Faust): fold, and close periods at ticks.")
@metrics_port_option
def aggregator(metrics_port: int | None) -> None:
    """Fold ledger.events per payee (Faust table) and, at each tick on ledger.clock, request the closes due."""
    from processors.aggregator import run_worker

    settings = Settings()
    start_logging(settings, "aggregator")
    start_metrics_server(metrics_port)
    bootstrap, database_url = connections(settings)
    mark_ready()  # /ready: the Faust worker starts now
    run_worker(settings, bootstrap, database_url)


@click.command(short_help="Tick the aggregator's clock: close what is due as of now or --at.")
@click.option("--at", "at_text", default=None, help="ISO 8601 instant with offset; default now.")
@click.option("--json", "as_json", is_flag=True)
def tick(at_text: str | None, as_json: bool) -> None:
    """Send one tick to every partition of ledger.clock, so every aggregator worker decides its payees."""
    settings = Settings()
    bootstrap, _ = connections(settings)
    at = datetime.now(timezone.utc) if at_text is None else datetime.fromisoformat(at_text)
    if at.tzinfo is None:
        fail(f"--at: {at_text!r} has no UTC offset; add one, e.g. +00:00 or Z")
    partitions = send_tick(bootstrap, settings.topic_clock, at)
    if as_json:
        emit_json({"at": at.isoformat(), "partitions": partitions})
    else:
        console.print(f"tick {at.isoformat()} sent to {partitions} partitions of {settings.topic_clock}")
