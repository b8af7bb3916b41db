"""`ledger checkpoints`: what each processor will resume from, and forcing a full replay."""

from __future__ import annotations

from datetime import datetime, timezone

import click
import sqlalchemy
from rich.table import Table

from commands.output import console, emit_json, fail
from runtime.database import make_engine
from runtime.settings import Settings
from runtime.stack import connections


def checkpoint_rows(database_url: str) -> list[dict]:
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(sqlalchemy.text(
                "SELECT processor, format, positions, events, octet_length(state) AS state_bytes, written_at "
                "FROM processor_checkpoints ORDER BY processor")).mappings().all()
    finally:
        engine.dispose()
    now = datetime.now(timezone.utc)
    return [{**row, "age_s": round((now - row["written_at"]).total_seconds(), 1),
             "covered_records": sum(offset for parts in row["positions"].values() for offset in parts.values())}
            for row in rows]


@click.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print the checkpoints as JSON.")
@click.pass_context
def checkpoints(ctx: click.Context, as_json: bool) -> None:
    """Each processor's checkpoint: where it resumes (a start proves it against the log first).

    With no subcommand: list them. `ledger checkpoints clear` makes processors replay the whole log
    at their next start (e.g. after moving the ledger to another Kafka cluster).
    """
    if ctx.invoked_subcommand is not None:
        return
    _, database_url = connections(Settings())
    rows = checkpoint_rows(database_url)
    if as_json:
        emit_json(rows)
        return
    if not rows:
        console.print("no checkpoints yet: each processor replays the whole log at its next start")
        return
    table = Table("processor", "age", "records folded", "state", "covers (records per topic)")
    for row in rows:
        covers = ", ".join(f"{topic} {sum(parts.values()):,}" for topic, parts in sorted(row["positions"].items()))
        table.add_row(row["processor"], f"{row['age_s']:.0f} s", f"{row['events']:,}",
                      f"{row['state_bytes'] / 1024:,.0f} KiB", covers or "-")
    table.columns[0].no_wrap = True
    console.print(table)


@checkpoints.command()
@click.argument("processor", required=False)
@click.option("--all", "everything", is_flag=True, help="Clear every processor's checkpoint.")
@click.option("--json", "as_json", is_flag=True, help="Print what was cleared as JSON.")
def clear(processor: str | None, everything: bool, as_json: bool) -> None:
    """Delete PROCESSOR's checkpoint (or --all): its next start replays the whole log."""
    if bool(processor) == everything:
        fail("name one PROCESSOR (see `ledger checkpoints`) or give --all", 2)
    _, database_url = connections(Settings())
    engine = make_engine(database_url)
    try:
        with engine.begin() as connection:
            cleared = connection.execute(sqlalchemy.text(
                "DELETE FROM processor_checkpoints WHERE :all OR processor = :p RETURNING processor"),
                {"all": everything, "p": processor or ""}).scalars().all()
    finally:
        engine.dispose()
    if processor and not cleared:
        fail(f"no checkpoint named {processor!r} (see `ledger checkpoints`)")
    if as_json:
        emit_json({"cleared": sorted(cleared)})
    else:
        console.print(f"cleared: {', '.join(sorted(cleared)) or 'nothing'}; the next start of each replays the whole log")
