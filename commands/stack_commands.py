"""`ledger up`, `ledger down`, `ledger status`: the embedded broker and PostgreSQL."""

from __future__ import annotations

import sys

import click
from rich.table import Table

from commands.output import console, emit_json
from runtime import stack
from runtime.settings import Settings

EXIT_NOT_RUNNING = 3  # like LSB `status`: 0 running, 3 not running


@click.command(short_help="Start the embedded broker and PostgreSQL (topics, migrations).")
@click.option("--json", "as_json", is_flag=True, help="Print the connection settings as JSON.")
def up(as_json: bool) -> None:
    """Start the embedded broker and PostgreSQL, create topics, migrate; return with both running."""
    settings = Settings()
    report = (lambda _: None) if as_json else (lambda line: console.print(f"  {line}", highlight=False))
    state, already = stack.up(settings, report)
    if as_json:
        emit_json({"already_running": already, "kafka_bootstrap": state.kafka_bootstrap,
                   "database_url": state.database_url, "data_dir": str(settings.data_dir.resolve())})
        return
    if already:
        console.print(f"[yellow]already running[/] (data dir {settings.data_dir.resolve()}): nothing started")
    else:
        console.print("[green]ledger stack is up[/]")
    console.print("Connection settings (export them to use this stack from other tools):")
    console.print(f"  export LEDGER_KAFKA_BOOTSTRAP={state.kafka_bootstrap}", highlight=False, soft_wrap=True)
    console.print(f"  export LEDGER_DATABASE_URL={state.database_url}", highlight=False, soft_wrap=True)
    console.print("Stop it with `ledger down`.")


@click.command(short_help="Stop the embedded broker and PostgreSQL.")
@click.option("--json", "as_json", is_flag=True, help="Print what was stopped as JSON.")
def down(as_json: bool) -> None:
    """Stop the embedded broker and PostgreSQL started by `ledger up` (database files are kept)."""
    settings = Settings()
    stopped = stack.down(settings, (lambda _: None) if as_json else (lambda line: console.print(f"  {line}")))
    if as_json:
        emit_json({"stopped": stopped})
    elif not stopped:
        console.print("nothing was running")


@click.command(short_help="Show what runs: broker, database, addresses, pids.")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def status(as_json: bool) -> None:
    """Say what runs: broker and database, addresses, pids. Exit 0 when both run, 3 otherwise."""
    report = stack.status(Settings())
    if as_json:
        emit_json(report)
    else:
        table = Table(title=f"ledger stack ({report['data_dir']})")
        for column in ("service", "running", "mode", "address", "pid"):
            table.add_column(column)
        broker, postgres = report["broker"], report["postgres"]
        table.add_row("broker", _yes_no(broker["running"]), _mode(broker["embedded"]),
                      str(broker["bootstrap"] or "-"), str(broker["pid"] or "-"))
        table.add_row("postgres", _yes_no(postgres["running"]), _mode(postgres["embedded"]),
                      str(postgres["url"] or "-"), str(postgres["pid"] or "-"))
        console.print(table)
        if postgres["revision"]:
            console.print(f"database migrated to revision {postgres['revision']}")
    if not report["running"]:
        sys.exit(EXIT_NOT_RUNNING)


def _yes_no(value: bool) -> str:
    return "[green]yes[/]" if value else "[red]no[/]"


def _mode(embedded: bool) -> str:
    return "embedded" if embedded else "external"
