"""`ledger dlq list` and `ledger dlq replay ID`: look at refused inputs, and re-submit one after a fix."""

from __future__ import annotations

import click
from rich.table import Table

from commands.output import console, emit_json, fail
from ledger.intake import OUTPUT_MESSAGE_MAX_BYTES
from processors.dead_letters import REPLAYED_FROM, find_dead_letter, read_dead_letters
from processors.kafka_io import DeliveryTracker, flush_or_raise, make_producer
from runtime.settings import Settings
from runtime.stack import connections

PREVIEW_BYTES = 60


def _preview(value: bytes) -> str:
    text = value[:PREVIEW_BYTES].decode("utf-8", errors="replace")
    printable = "".join(ch if ch.isprintable() else "·" for ch in text)
    return printable + ("…" if len(value) > PREVIEW_BYTES else "")


@click.group(short_help="Dead letters: list refused inputs, replay one after a fix.")
def dlq() -> None:
    """Inputs the ledger refused, each with its original bytes and the reason."""


@dlq.command("list", short_help="List dead letters with their reasons.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Show only the newest N.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON (values as UTF-8 text where possible, else hex).")
def list_dead_letters(limit: int | None, as_json: bool) -> None:
    """List dead letters: id, where they came from, why they were refused."""
    settings = Settings()
    bootstrap, _ = connections(settings)
    entries = sorted(read_dead_letters(bootstrap, settings.topic_dlq), key=lambda e: e.rejected_at)
    if limit is not None:
        entries = entries[-limit:]
    if as_json:
        emit_json([{
            "id": e.id, "source": f"{e.source_topic}:{e.source_partition}:{e.source_offset}", "stage": e.stage,
            "reason": e.reason, "rejected_at": e.rejected_at, "replayed_from": e.replayed_from,
            "key": e.key.decode(errors="replace") if e.key else None, "value_bytes": len(e.value),
            "value_hex": e.value.hex(), "whole": e.whole, "original_bytes": e.original_size or len(e.value),
            "original_sha256": e.original_sha256,
        } for e in entries])
        return
    table = Table(title=f"dead letters in {settings.topic_dlq} ({len(entries)})")
    for column in ("id", "source", "stage", "reason", "value"):
        table.add_column(column, overflow="fold")
    for e in entries:
        table.add_row(e.id, f"{e.source_partition}:{e.source_offset}", e.stage, e.reason, _preview(e.value))
    console.print(table)


@dlq.command("replay", short_help="Re-submit a dead letter's original bytes to the intake topic.")
@click.argument("entry_id")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def replay(entry_id: str, as_json: bool) -> None:
    """Re-submit dead letter ENTRY_ID (e.g. 0:17) unchanged to payments.incoming, after fixing its cause.

    The sequencer judges it afresh: appended if it is now acceptable, a duplicate if it is already
    in the ledger, or dead-lettered again with the new reason.
    """
    settings = Settings()
    bootstrap, _ = connections(settings)
    entry = find_dead_letter(bootstrap, settings.topic_dlq, entry_id)
    if not entry.whole:
        fail(f"dead letter {entry.id} keeps only the first {len(entry.value)} of its {entry.original_size} bytes "
             f"(SHA-256 {entry.original_sha256}): it cannot be replayed; ask its producer to send it again")
    # back where it came from: a command to ledger.commands, anything else to the intake topic
    target = settings.topic_commands if entry.source_topic == settings.topic_commands else settings.topic_incoming
    producer = make_producer(bootstrap, **{"message.max.bytes": OUTPUT_MESSAGE_MAX_BYTES + 65_536})
    tracker = DeliveryTracker()
    producer.produce(target, key=entry.key, value=entry.value, on_delivery=tracker,
                     headers=[(REPLAYED_FROM, f"{settings.topic_dlq}:{entry.id}".encode())])
    flush_or_raise(producer, tracker, 1)
    if as_json:
        emit_json({"replayed": entry.id, "to": target, "bytes": len(entry.value)})
    else:
        console.print(f"replayed dead letter {entry.id} ({len(entry.value)} bytes) to {target}; "
                      "the sequencer will judge it afresh")
