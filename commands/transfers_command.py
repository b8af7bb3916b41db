"""`ledger transfers`: run the transfer processor (PayoutRequested -> provider -> settled / failed / retry)."""

from __future__ import annotations

from dataclasses import asdict

import click

from commands.output import metrics_port_option, standby_option, console, emit_json, start_logging
from commands.processor_lock import processor_lock
from processors.transfer_instances import PartitionedTransfers
from processors.transfer_processor import TransferProcessor, logger
from runtime.providers import build_connectors
from runtime.metrics import mark_ready, start_metrics_server
from runtime.settings import Settings
from runtime.stack import connections


@click.command(short_help="Run the transfer processor: pay requested payouts through their providers.")
@click.option("--idle-exit", type=click.FloatRange(min=0.1), default=None,
              help="Exit after this many seconds with nothing to do (default: run until SIGTERM/Ctrl-C).")
@click.option("--json", "as_json", is_flag=True, help="Print the final counts as JSON.")
@click.option("--partitioned", is_flag=True,
              help="Share the partitions with every other `ledger transfers --partitioned` of this ledger: each "
                   "instance pays the payouts of the partitions it holds a lease on (LEDGER_PARTITION_LEASE_S), "
                   "with its share of each provider's limits, and takes over those of an instance that stops or dies.")
@metrics_port_option
@standby_option
def transfers(idle_exit: float | None, as_json: bool, partitioned: bool, metrics_port: int | None,
              standby: bool) -> None:
    """Pay every requested payout once through its provider and record the outcome in the ledger.

    Providers: Stripe (LEDGER_STRIPE_API_KEY), bank transfer files (LEDGER_BANK_DEBTOR_IBAN), mobile
    money (LEDGER_MOBILE_MONEY_URL), and manual (always). Payouts of a provider that is not configured
    wait. Starts from its last checkpoint (open payouts, with their positions on ledger.events and
    ledger.commands) and reads only the log after it; without a usable one, the whole log. Without
    --partitioned only one may run per ledger (--standby waits to take over); with it, any number run side
    by side, each paying the payouts of some partitions.
    """
    settings = Settings()
    start_logging(settings, "transfers", as_json)
    start_metrics_server(metrics_port)
    bootstrap, database_url = connections(settings)
    connectors = build_connectors(settings)
    logger.info("providers: %s; retries after %s s", ", ".join(sorted(connectors)), settings.retry_delays_s)
    with processor_lock(database_url, f"transfers:{settings.topic_events}", partitioned=partitioned, standby=standby):
        if partitioned:
            try:
                instances = PartitionedTransfers(settings, bootstrap, database_url,
                                                 lambda: build_connectors(settings))
            except ValueError as exc:  # the topics' partition counts differ
                raise click.ClickException(str(exc)) from None
            mark_ready()  # /ready: its work loop starts now
            stats = instances.run(idle_exit_s=idle_exit)
        else:
            worker = TransferProcessor(settings, bootstrap, connectors, database_url=database_url)
            mark_ready()  # /ready: its work loop starts now
            stats = worker.run(idle_exit_s=idle_exit)
    if as_json:
        emit_json(asdict(stats))
    else:
        console.print(f"transfers stopped: {stats.submitted} attempts, {stats.settled} settled, "
                      f"{stats.accepted} accepted (pending), {stats.failed} failed, "
                      f"{stats.retries_scheduled} retries scheduled")
