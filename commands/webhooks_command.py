"""`ledger webhooks serve`: the Stripe webhook endpoint, recording payout outcomes in the ledger."""

from __future__ import annotations

import os

import click

from commands.output import console, fail, metrics_port_option, start_logging
from runtime.metrics import mark_ready, start_metrics_server
from runtime.settings import Settings
from runtime.stack import connections

SECRET_VARIABLE = "LEDGER_STRIPE_WEBHOOK_SECRET"


@click.group(short_help="Stripe webhooks: serve the endpoint that records payout outcomes.")
def webhooks() -> None:
    """Stripe webhook deliveries (payout.paid, payout.failed, transfer.reversed) as ledger events."""


@webhooks.command("serve", short_help="Serve POST /webhooks/stripe until Ctrl-C / SIGTERM.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8081, show_default=True, type=click.IntRange(1, 65535), help="Port to listen on.")
@metrics_port_option
def serve(host: str, port: int, metrics_port: int | None) -> None:
    """Verify each delivery's Stripe-Signature with the signing secret in LEDGER_STRIPE_WEBHOOK_SECRET and
    append the payout outcomes to ledger.commands (the sequencer chains them into ledger.events)."""
    secret = os.environ.get(SECRET_VARIABLE, "").strip()
    if not secret:
        fail(f"{SECRET_VARIABLE} is not set: export the endpoint's Stripe signing secret (whsec_...)")
    # Imported here so other commands do not pay for FastAPI and uvicorn at start-up.
    import uvicorn

    from processors.webhook_app import kafka_append, make_app

    settings = Settings()
    start_logging(settings, "webhooks")
    start_metrics_server(metrics_port)
    bootstrap = settings.kafka_bootstrap or connections(settings)[0]  # no database needed here
    app = make_app(secret, kafka_append(settings, bootstrap))
    console.print(f"stripe webhooks: POST http://{host}:{port}/webhooks/stripe -> {settings.topic_commands}",
                  highlight=False)
    mark_ready()  # /ready on --metrics-port: the endpoint starts serving now (its own /ready is on --port)
    # log_config=None: uvicorn's lines go to the root handler start_logging installed (text or json)
    uvicorn.run(app, host=host, port=port, log_level="info", log_config=None, server_header=False)
