"""`ledger api`: serve the operations HTTP API; `ledger api-token`: make a bearer token."""

from __future__ import annotations

import json

import click

from commands.output import console, emit_json, fail
from runtime.settings import Settings
from runtime.stack import connections


@click.command(short_help="Serve the operations HTTP API (OpenAPI at /docs) until Ctrl-C / SIGTERM.")
@click.option("--host", default=None, help="Address to listen on (default: LEDGER_API_HOST, 127.0.0.1).")
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="Port (default: LEDGER_API_PORT, 8080).")
def api(host: str | None, port: int | None) -> None:
    """Payouts, schedules, payout runs, the emergency stop, alerts, monitoring and payment ingestion over
    HTTP, with the operator page at /ui. Tokens and roles come from LEDGER_API_TOKENS
    (`ledger api-token` makes one); /health, /ready and /metrics need none."""
    import uvicorn

    from api.app import make_api
    from api.auth import InvalidTokenConfig
    from commands.output import start_logging

    settings = Settings()
    if not settings.api_tokens:
        fail("LEDGER_API_TOKENS is empty: nobody could call the API. Make a token with `ledger api-token "
             "--role operator` and export it, e.g. LEDGER_API_TOKENS='{\"<token>\": \"operator:alice\"}'")
    bootstrap, database_url = connections(settings)
    try:
        app = make_api(settings, bootstrap, database_url)
    except InvalidTokenConfig as exc:
        fail(str(exc))
    host, port = host or settings.api_host, port or settings.api_port
    start_logging(settings, "api")
    console.print(f"ledger api on http://{host}:{port} (docs /docs, operator page /ui, "
                  f"{len(app.state.ledger.tokens)} tokens)", highlight=False)
    uvicorn.run(app, host=host, port=port, log_config=None, access_log=False, server_header=False)


@click.command("api-token", short_help="Make a random bearer token for LEDGER_API_TOKENS.")
@click.option("--role", type=click.Choice(["read-only", "operator", "ingest"]), required=True)
@click.option("--name", default="", help="Who holds it (shown as the actor of their actions).")
@click.option("--json", "as_json", is_flag=True)
def api_token(role: str, name: str, as_json: bool) -> None:
    """Print a new token and the LEDGER_API_TOKENS entry for it (the ledger stores no tokens itself)."""
    from api.auth import new_token

    token = new_token()
    entry = {token: f"{role}:{name}" if name else role}
    if as_json:
        emit_json({"token": token, "role": role, "name": name, "entry": entry})
    else:
        console.print(f"token: {token}\nLEDGER_API_TOKENS='{json.dumps(entry)}'", highlight=False)
