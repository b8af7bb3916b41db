"""`ledger smoke`: a round trip through the real stack that proves the foundation works.

Appends hash-chained payment events for a few payees in several currencies to ledger.events,
reads them back from the broker, decodes them, verifies every chain, archives them in PostgreSQL
and reports. The full main job (`ledger demo`) replaces this once the processors exist.
"""

from __future__ import annotations

import random
import sys
import time
import uuid
from collections import defaultdict
from datetime import datetime, timedelta, timezone

import click
from rich.progress import Progress
from rich.table import Table

from commands.output import console, emit_json
from ledger.codec import EventCodec, UndecodableEvent
from ledger.events import Event, new_envelope
from ledger.hashchain import ChainLink, verify_chain
from ledger.money import Money, sum_money
from ledger.sequencing import Sequencer
from processors.kafka_io import DeliveryTracker, flush_or_raise, make_producer, read_topic
from projections.archive import archive_events, archived_count
from runtime.database import make_engine
from runtime.settings import Settings
from runtime.stack import connections

PAYEES = (("barber", "USD"), ("writer", "EUR"), ("driver", "XOF"), ("courier", "BHD"))


def _payment(run_id: str, payee_id: str, code: str, index: int, rng: random.Random, now: datetime) -> Event:
    occurred = now - timedelta(minutes=rng.randint(1, 600))
    return Event(
        new_envelope("PaymentCompleted", payee_id=payee_id, occurred_at=occurred, recorded_at=now,
                     correlation_id=run_id),
        {"payment_id": f"{payee_id}-p{index}", "amount": Money.of(rng.randint(500, 50_000), code),
         "services": rng.randint(1, 3), "source": "ledger-smoke", "metadata": {"run": run_id}},
    )


@click.command(short_help="Round-trip chained events through broker and database.")
@click.option("--payments", default=200, show_default=True, type=click.IntRange(1, 100_000),
              help="Payments to append.")
@click.option("--seed", default=None, type=int, help="Random seed (default: random).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def smoke(payments: int, seed: int | None, as_json: bool) -> None:
    """Round-trip hash-chained events through the broker and PostgreSQL, and verify them."""
    settings = Settings()
    bootstrap, database_url = connections(settings)
    seed = seed if seed is not None else random.randrange(2**31)
    rng = random.Random(seed)
    run_id = uuid.UUID(int=rng.getrandbits(128)).hex[:12]
    now = datetime.now(timezone.utc)
    payee_ids = [f"smoke-{run_id}-{name}" for name, _ in PAYEES]
    codec = EventCodec()
    sequencer = Sequencer(codec.encode)
    started = time.monotonic()

    producer = make_producer(bootstrap)
    tracker = DeliveryTracker()
    with Progress(console=console, disable=as_json, transient=True) as progress:
        task = progress.add_task("appending", total=payments)
        for index in range(payments):
            payee_index = rng.randrange(len(PAYEES))
            event, encoded = sequencer.append(
                _payment(run_id, payee_ids[payee_index], PAYEES[payee_index][1], index, rng, now))
            producer.produce(settings.topic_events, key=event.payee_id.encode(), value=encoded, on_delivery=tracker)
            producer.poll(0)
            progress.advance(task)
    flush_or_raise(producer, tracker, payments)

    ours, undecodable, links = [], 0, []
    for record in read_topic(bootstrap, settings.topic_events):
        try:
            event = codec.decode(record.value or b"")
        except UndecodableEvent:
            undecodable += 1  # other writers' bytes; this run's are all decodable
            continue
        if event.payee_id in payee_ids:
            ours.append((event, record.value))
            links.append(ChainLink(event.payee_id, event.envelope.sequence, event.envelope.previous_hash, record.value))
    heads, breaks = verify_chain(links)

    engine = make_engine(database_url)
    try:
        with engine.begin() as connection:
            archive_events(connection, settings.topic_events, ours)
            archived = archived_count(connection, payee_ids)
    finally:
        engine.dispose()

    totals: dict[str, list[Money]] = defaultdict(list)
    for event, _ in ours:
        totals[event.payee_id].append(event.payload["amount"])
    ok = len(ours) == payments and not breaks and archived == payments
    summary = {
        "run_id": run_id, "seed": seed, "events_appended": payments, "events_read_back": len(ours),
        "chain_breaks": len(breaks), "archived": archived, "payees": len(heads),
        "other_undecodable_records": undecodable, "elapsed_s": round(time.monotonic() - started, 3), "ok": ok,
    }
    if as_json:
        emit_json(summary)
    else:
        table = Table(title=f"smoke run {run_id} (seed {seed})")
        for column in ("payee", "events", "earned (gross)", "chain head"):
            table.add_column(column)
        for payee_id, (_, code) in zip(payee_ids, PAYEES):
            amounts = totals.get(payee_id, [])
            table.add_row(payee_id, str(len(amounts)), str(sum_money(amounts, code)), heads.get(payee_id, "-")[:16])
        console.print(table)
        verdict = "[green]OK[/]" if ok else "[red]FAILED[/]"
        console.print(f"{verdict}: {payments} appended, {len(ours)} read back, {len(breaks)} chain breaks, "
                      f"{archived} archived in {summary['elapsed_s']} s")
    if not ok:
        sys.exit(1)
