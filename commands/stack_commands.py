"""`ledger up`, `ledger down`, `ledger status`: the embedded broker and PostgreSQL."""

from __future__ import annotations

import sys

import click
from rich.table import Table

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from commands.output import console, emit_json, errors, fail
from runtime import stack
from runtime.settings import Settings

EXIT_NOT_RUNNING = 3  # like LSB `status`: 0 running, 3 not running
PHASES = {"input": "inputs not yet sequenced", "dead_letter": "dead letters not yet projected",
          "events": "events not yet archived"}


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


@click.command(short_help="Save what only the embedded broker holds, then stop it and PostgreSQL.")
@click.option("--discard", is_flag=True, help="Stop without saving: throw away inputs not yet sequenced, dead "
              "letters not yet projected and events not yet archived.")
@click.option("--json", "as_json", is_flag=True, help='{"stopped": [...], "preserved": {"inputs": N, ...}}')
def down(discard: bool, as_json: bool) -> None:
    """Stop the embedded broker and PostgreSQL started by `ledger up` (database files are kept).

    The embedded broker keeps its topics in memory, so first the records that exist only there are
    saved to PostgreSQL (`ledger up` puts them back). If that fails, nothing is stopped (exit 1)."""
    settings = Settings()
    report = (lambda _: None) if as_json else (lambda line: console.print(f"  {line}", highlight=False))
    with Progress(TextColumn("saving {task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=errors, disable=as_json, transient=True) as bar:
        tasks: dict[str, TaskID] = {}

        def progress(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = bar.add_task(PHASES.get(phase, phase), total=max(total, done))
            bar.update(tasks[phase], completed=done, total=max(total, done))

        try:
            result = stack.down(settings, report, discard=discard, progress=progress)
        except stack.WouldLoseRecords as exc:
            bar.stop()
            fail(str(exc))
    preserved = result.preserved.as_dict() if result.preserved else None
    if as_json:
        emit_json({"stopped": result.stopped, "preserved": preserved, "discarded": discard})
    elif not result.stopped and not result.not_stopped:
        console.print("nothing was running")
    if result.not_stopped:
        fail(f"could not stop {' and '.join(result.not_stopped)} (see its log in {settings.data_dir.resolve()}); "
             "run `ledger down` again")


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
        if report["at_risk"] is not None:
            risk = report["at_risk"]
            console.print(f"at risk if the embedded broker crashed now: {risk['events_not_archived']} events not "
                          f"archived, {risk['inputs_not_sequenced']} inputs not sequenced, "
                          f"{risk['dead_letters_not_projected']} dead letters not projected"
                          + (" (run `ledger projector` and `ledger sequencer` to shrink it)"
                             if any(v != 0 for v in risk.values()) else ""), highlight=False)
    if not report["running"]:
        sys.exit(EXIT_NOT_RUNNING)


def _yes_no(value: bool) -> str:
    return "[green]yes[/]" if value else "[red]no[/]"


def _mode(embedded: bool) -> str:
    return "embedded" if embedded else "external"
