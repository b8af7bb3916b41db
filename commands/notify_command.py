"""`ledger notifier`, `ledger payee contact` and `ledger notifications list`: payee notices of payout outcomes."""

from __future__ import annotations

from dataclasses import asdict

import click
import sqlalchemy
from rich.table import Table

from commands.output import start_logging, console, emit_json, fail, metrics_port_option, standby_option
from commands.payee_commands import payee
from commands.processor_lock import processor_lock
from processors.notifier import Notifier
from projections.payee_contacts import InvalidContact, delete_contact, get_contact, set_contact
from runtime.database import make_engine
from runtime.metrics import mark_ready, start_metrics_server
from runtime.settings import Settings
from runtime.stack import connections

STATUSES = ("pending", "sent", "given_up", "no_contact")


@click.command(short_help="Run the notifier: email and webhook notices to payees of settled and failed payouts.")
@click.option("--idle-exit", type=click.FloatRange(min=0.1), default=None,
              help="Exit after this many seconds with nothing to do (default: run until SIGTERM/Ctrl-C).")
@click.option("--json", "as_json", is_flag=True, help="Print the final counts as JSON.")
@click.option("--partitioned", is_flag=True,
              help="Share the partitions of ledger.events with every other `ledger notifier --partitioned` of this "
                   "ledger (leases: LEDGER_PARTITION_LEASE_S); each records the notices of the partitions it holds, "
                   "and all of them deliver.")
@metrics_port_option
@standby_option
def notifier(idle_exit: float | None, as_json: bool, partitioned: bool, metrics_port: int | None,
             standby: bool) -> None:
    """Turn every payout settled or failed for good into notices to its payee (see docs/notifications.md).

    Email goes through LEDGER_SMTP_HOST; webhooks are signed with LEDGER_NOTIFY_WEBHOOK_SECRET. Failed
    deliveries are retried after LEDGER_NOTIFY_RETRY_DELAYS_S, then given up. Without --partitioned only
    one runs per ledger (--standby waits to take over).
    """
    settings = Settings()
    start_logging(settings, "notifier", as_json)
    start_metrics_server(metrics_port)
    bootstrap, database_url = connections(settings)
    with processor_lock(database_url, f"notifier:{settings.topic_events}", partitioned=partitioned, standby=standby):
        notifier_loop = Notifier(settings, bootstrap, database_url, partitioned=partitioned)
        mark_ready()  # /ready: its work loop starts now
        stats = notifier_loop.run(idle_exit_s=idle_exit)
    if as_json:
        emit_json(asdict(stats))
    else:
        console.print(f"notifier stopped: {stats.rows} notices recorded ({stats.no_contact} without contact), "
                      f"{stats.sent} sent, {stats.retried} retries, {stats.given_up} given up", highlight=False)


@payee.command("contact", short_help="Show, set or erase where a payee gets payout notices.")
@click.argument("payee_id")
@click.option("--email", default=None, help="Email address for notices.")
@click.option("--webhook-url", default=None, help="http(s) URL that receives signed JSON notices.")
@click.option("--clear", is_flag=True, help="Erase the contact (and the addresses on its past notices).")
@click.option("--actor", default="", help="Who makes the change (kept with the contact).")
@click.option("--json", "as_json", is_flag=True)
def contact(payee_id: str, email: str | None, webhook_url: str | None, clear: bool, actor: str, as_json: bool) -> None:
    """Without options: show PAYEE_ID's contact. --email / --webhook-url set one channel and keep the other."""
    settings = Settings()
    _, database_url = connections(settings)
    if clear and (email is not None or webhook_url is not None):
        fail("--clear: cannot be combined with --email or --webhook-url")
    if clear:
        result = delete_contact(database_url, payee_id, actor=actor)
        if as_json:
            emit_json(result)
        else:
            console.print(f"contact of {payee_id} {'erased' if result['deleted'] else 'was not set'}; "
                          f"{result['addresses_erased']} past notices anonymised, "
                          f"{result['notifications_given_up']} undelivered given up", highlight=False)
        return
    current = get_contact(database_url, payee_id)
    if email is not None or webhook_url is not None:
        try:
            current = set_contact(
                database_url, payee_id, actor=actor,
                email=email if email is not None else (current or {}).get("email"),
                webhook_url=webhook_url if webhook_url is not None else (current or {}).get("webhook_url"))
        except InvalidContact as exc:
            fail(str(exc))
    elif current is None:
        if as_json:
            emit_json({"payee_id": payee_id, "contact": None})
            return
        fail(f"payee {payee_id!r} has no contact: set one with --email or --webhook-url", code=3)
    if as_json:
        emit_json({"payee_id": payee_id, "contact": current})
        return
    console.print(f"{payee_id}: email {current['email'] or '-'}, webhook {current['webhook_url'] or '-'} "
                  f"(updated {current['updated_at']}{' by ' + current['updated_by'] if current['updated_by'] else ''})",
                  highlight=False)


@click.group(short_help="Payee notices: list them with their delivery status.")
def notifications() -> None:
    """Notices of settled and failed payouts sent (or being sent) to payees."""


@notifications.command("list", short_help="List notices, newest first.")
@click.option("--payee", default=None)
@click.option("--status", "statuses", multiple=True, type=click.Choice(STATUSES), help="Repeatable.")
@click.option("--limit", type=click.IntRange(min=1, max=10_000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def list_notifications(payee: str | None, statuses: tuple[str, ...], limit: int, as_json: bool) -> None:
    """The outbox: one row per payout outcome and channel, with attempts and the last error."""
    settings = Settings()
    _, database_url = connections(settings)
    where, params = ["TRUE"], {"limit": limit}
    if payee is not None:
        where.append("payee_id = :payee")
        params["payee"] = payee
    if statuses:
        where.append("status = ANY(:statuses)")
        params["statuses"] = list(statuses)
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            total = connection.execute(sqlalchemy.text(
                f"SELECT count(*) FROM payee_notifications WHERE {' AND '.join(where)}"), params).scalar_one()
            rows = connection.execute(sqlalchemy.text(
                "SELECT id, event_id, payee_id, payout_id, kind, channel, target, status, attempts, next_attempt_at, "
                "last_error, created_at, sent_at, payload->>'amount' AS amount, payload->>'currency' AS currency "
                f"FROM payee_notifications WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT :limit"),
                params).mappings().all()
    finally:
        engine.dispose()
    found = [{key: (value.isoformat() if hasattr(value, "isoformat") else value) for key, value in row.items()}
             for row in rows]
    if as_json:
        emit_json({"notifications": found, "total": total})
        return
    table = Table(title=f"{len(found)} of {total} notices")
    for column in ("id", "payee", "payout", "kind", "amount", "channel", "status", "tries", "next / sent", "error"):
        table.add_column(column, overflow="fold")
    for row in found:
        table.add_row(str(row["id"]), row["payee_id"], row["payout_id"], row["kind"],
                      f"{row['amount']} {row['currency']}", row["channel"], row["status"], str(row["attempts"]),
                      row["sent_at"] or row["next_attempt_at"] or "", row["last_error"])
    console.print(table)
