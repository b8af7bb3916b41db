"""`ledger schemas`: the event contract as this build knows it (names, versions, fingerprints)."""

from __future__ import annotations

import click
from rich.table import Table

from commands.output import console, emit_json
from ledger.codec import EventCodec, encoded_schemas


@click.command(short_help="List event schemas with versions and fingerprints.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def schemas(as_json: bool) -> None:
    """List the event schemas with their versions and CRC-64-AVRO fingerprints."""
    rows = [
        {"event_type": known.name, "version": known.version, "fingerprint": known.fingerprint.hex(),
         "fields": [field["name"] for field in known.definition["fields"]]}
        for known in encoded_schemas(EventCodec())
    ]
    if as_json:
        emit_json(rows)
        return
    table = Table(title="ledger event schemas (schemas/avro)")
    for column in ("event type", "version", "fingerprint", "fields"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["event_type"], str(row["version"]), row["fingerprint"], ", ".join(row["fields"][1:]))
    console.print(table)
