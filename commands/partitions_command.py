"""`ledger partitions`: which instance owns which partition, for the processors that scale by partition leases."""

from __future__ import annotations

import click
import sqlalchemy
from rich.table import Table

from commands.output import console, emit_json
from runtime.database import make_engine
from runtime.settings import Settings
from runtime.stack import connections


def lease_rows(database_url: str) -> dict[str, list[dict]]:
    """Per lease group (`sequencer:<topic>`, `transfers:<topic>`, `projector:<topic>`, `notifier:<topic>`): its
    partitions and live members."""
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            leases = connection.execute(sqlalchemy.text(
                "SELECT grp, partition, owner, epoch, "
                "CASE WHEN owner IS NOT NULL AND expires_at > now() "
                "THEN round(extract(epoch FROM expires_at - now())::numeric, 1) END AS expires_in_s "
                "FROM partition_leases ORDER BY grp, partition")).mappings().all()
            members = connection.execute(sqlalchemy.text(
                "SELECT grp, member FROM partition_members WHERE expires_at > now() ORDER BY grp, member")).all()
    finally:
        engine.dispose()
    groups: dict[str, list[dict]] = {}
    for row in leases:
        live = row["expires_in_s"] is not None
        groups.setdefault(row["grp"], []).append({
            "partition": row["partition"], "owner": row["owner"] if live else None, "epoch": row["epoch"],
            "expires_in_s": float(row["expires_in_s"]) if live else None})
    return {group: {"partitions": parts, "members": [m for g, m in members if g == group]}
            for group, parts in groups.items()}


@click.command(short_help="Which instance owns which partition (processors run with --partitioned).")
@click.option("--json", "as_json", is_flag=True, help="Print the leases as JSON.")
def partitions(as_json: bool) -> None:
    """Each lease group's partitions: the instance that owns it, the lease's epoch (it grows at each change of
    owner) and how long the lease runs without renewal. A partition with no owner is being handed over, or
    has no live instance to go to."""
    _, database_url = connections(Settings())
    groups = lease_rows(database_url)
    if as_json:
        emit_json(groups)
        return
    if not groups:
        console.print("no partitioned processor has run against this ledger (`ledger sequencer --partitioned`)")
        return
    for group, found in groups.items():
        table = Table("partition", "owner", "epoch", "lease left",
                      title=f"{group}: {len(found['members'])} live instance(s)")
        for row in found["partitions"]:
            table.add_row(str(row["partition"]), row["owner"] or "[bold red]none[/]", str(row["epoch"]),
                          f"{row['expires_in_s']:.1f} s" if row["owner"] else "-")
        console.print(table)
