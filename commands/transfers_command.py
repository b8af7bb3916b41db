"""`ledger transfers`: run the transfer processor (PayoutRequested -> provider -> settled / failed / retry)."""

from __future__ import annotations

from dataclasses import asdict

import click

from commands.output import metrics_port_option, standby_option, console, emit_json, start_logging
from processors.transfer_processor import TransferProcessor, logger
from runtime.providers import build_connectors
from runtime.metrics import start_metrics_server
from runtime.settings import Settings
from runtime.single_instance import single_instance
from runtime.stack import connections


@click.command(short_help="Run the transfer processor: pay requested payouts through their providers.")
@click.option("--idle-exit", type=click.FloatRange(min=0.1), default=None,
              help="Exit after this many seconds with nothing to do (default: run until SIGTERM/Ctrl-C).")
@click.option("--json", "as_json", is_flag=True, help="Print the final counts as JSON.")
@metrics_port_option
@standby_option
def transfers(idle_exit: float | None, as_json: bool, metrics_port: int | None, standby: bool) -> None:
    """Pay every requested payout once through its provider and record the outcome in the ledger.

    Providers: Stripe (LEDGER_STRIPE_API_KEY), bank transfer files (LEDGER_BANK_DEBTOR_IBAN), mobile
    money (LEDGER_MOBILE_MONEY_URL), and manual (always). Payouts of a provider that is not configured
    wait. Starts from its last checkpoint (open payouts, with their positions on ledger.events and
    ledger.commands) and reads only the log after it; without a usable one, the whole log. Only one may
    run per ledger.
    """
    settings = Settings()
    start_logging(settings, "transfers", as_json)
    start_metrics_server(metrics_port)
    bootstrap, database_url = connections(settings)
    connectors = build_connectors(settings)
    with single_instance(database_url, f"transfers:{settings.topic_events}", standby=standby):
        worker = TransferProcessor(settings, bootstrap, connectors, database_url=database_url)
        logger.info("providers: %s; retries after %s s", ", ".join(sorted(connectors)), settings.retry_delays_s)
        stats = worker.run(idle_exit_s=idle_exit)
    if as_json:
        emit_json(asdict(stats))
    else:
        console.print(f"transfers stopped: {stats.submitted} attempts, {stats.settled} settled, "
                      f"{stats.accepted} accepted (pending), {stats.failed} failed, "
                      f"{stats.retries_scheduled} retries scheduled")
