"""`ledger smoke`: a round trip through the real append path that proves the stack works.

Records payments and refunds for four payees in USD, EUR, XOF and BHD with LedgerClient, adds
redelivered duplicates and malformed records, lets the sequencer append them (in this process, or
the running `ledger sequencer`), reads ledger.events back, verifies every chain, checks the dead
letters, archives the events in PostgreSQL and reports. `ledger demo` replaces it later.
"""

from __future__ import annotations

import json
import random
import sys
import time
import uuid
from collections import defaultdict
from datetime import datetime, timedelta, timezone

import click
from rich.table import Table

from commands.output import console, emit_json
from ledger.codec import EventCodec
from ledger.hashchain import ChainLink, verify_chain
from ledger.money import Money, sum_money
from processors.dead_letters import read_dead_letters
from processors.kafka_io import DeliveryTracker, flush_or_raise, make_producer, read_topic
from processors.ledger_client import LedgerClient
from processors.sequencer import Sequencer
from projections.archive import archive_events, archived_count
from runtime.database import make_engine
from runtime.processes import wait_until
from runtime.settings import Settings
from runtime.single_instance import AlreadyRunning, single_instance
from runtime.stack import connections

PAYEES = (("barber", "USD"), ("writer", "EUR"), ("driver", "XOF"), ("courier", "BHD"))
RUNNING_SEQUENCER_DEADLINE_S = 60.0


def _records(run_id: str, payments: int, rng: random.Random) -> list[dict]:
    occurred = datetime.now(timezone.utc) - timedelta(minutes=10)
    records: list[dict] = []
    for index in range(payments):
        name, code = PAYEES[rng.randrange(len(PAYEES))]
        records.append({"type": "payment", "payment_id": f"{run_id}-p{index}", "payee_id": f"smoke-{run_id}-{name}",
                        "amount_minor": rng.randint(500, 50_000), "currency": code, "services": rng.randint(1, 3),
                        "occurred_at": (occurred - timedelta(minutes=rng.randint(0, 600))).isoformat(),
                        "source": "ledger-smoke", "metadata": {"run": run_id}})
    for index, paid in enumerate(rng.sample(records, max(1, payments // 20))):
        records.append({"type": "refund", "refund_id": f"{run_id}-r{index}", "payment_id": paid["payment_id"],
                        "payee_id": paid["payee_id"], "amount_minor": paid["amount_minor"] // 2,
                        "currency": paid["currency"], "occurred_at": paid["occurred_at"]})
    return records


def _malformed(run_id: str) -> list[bytes]:
    return [f'{{"payment_id": "{run_id}-broken'.encode(), json.dumps({"payment_id": f"{run_id}-float", "payee_id": f"smoke-{run_id}-barber",
                                                 "amount_minor": 10.5, "currency": "USD",
                                                 "occurred_at": "2026-01-01T00:00:00Z"}).encode()]


def _sequence(settings: Settings, bootstrap: str, database_url: str, expected: int, payee_ids: set[str],
              codec: EventCodec, malformed: list[bytes]) -> str:
    """Run the sequencer here until idle, or wait for the running one to handle all our records."""
    try:
        with single_instance(database_url, f"sequencer:{settings.topic_events}"):
            Sequencer(settings, bootstrap, database_url=database_url, codec=codec).run(idle_exit_s=1.0, handle_signals=False)
            return "this process"
    except AlreadyRunning:
        def handled() -> bool:
            appended = sum(1 for record in read_topic(bootstrap, settings.topic_events)
                           if record.key and record.key.decode() in payee_ids)
            refused = sum(1 for entry in read_dead_letters(bootstrap, settings.topic_dlq) if entry.value in malformed)
            return appended >= expected and refused >= len(malformed)
        if not wait_until(handled, RUNNING_SEQUENCER_DEADLINE_S, interval_s=0.5):
            raise TimeoutError(f"the running sequencer did not handle all {expected} records within "
                               f"{RUNNING_SEQUENCER_DEADLINE_S:.0f} s")
        return "the running `ledger sequencer`"


@click.command(short_help="Round-trip payments through the append path and verify them.")
@click.option("--payments", default=200, show_default=True, type=click.IntRange(1, 100_000),
              help="Payments to record (5% are also partly refunded).")
@click.option("--seed", default=None, type=int, help="Random seed (default: random).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def smoke(payments: int, seed: int | None, as_json: bool) -> None:
    """Record payments and refunds, sequence them, verify the chains and archive them."""
    settings = Settings()
    bootstrap, database_url = connections(settings)
    seed = seed if seed is not None else random.randrange(2**31)
    rng = random.Random(seed)
    run_id = uuid.UUID(int=rng.getrandbits(128)).hex[:12]
    payee_ids = {f"smoke-{run_id}-{name}" for name, _ in PAYEES}
    codec = EventCodec()
    started = time.monotonic()

    records = _records(run_id, payments, rng)
    redelivered = rng.sample(records, max(1, len(records) // 10))
    with LedgerClient(bootstrap, settings, codec=codec) as client:
        sent = client.record_batch(records + redelivered)
    producer, tracker = make_producer(bootstrap), DeliveryTracker()
    malformed = _malformed(run_id)
    for value in malformed:
        producer.produce(settings.topic_incoming, key=f"smoke-{run_id}-barber".encode(), value=value,
                         on_delivery=tracker)
    flush_or_raise(producer, tracker, len(malformed))
    sequenced_by = _sequence(settings, bootstrap, database_url, len(records), payee_ids, codec, malformed)

    ours, links = [], []
    for record in read_topic(bootstrap, settings.topic_events):
        if record.key and record.key.decode() in payee_ids:
            event = codec.decode(record.value or b"")
            ours.append((event, record.value))
            links.append(ChainLink(event.payee_id, event.envelope.sequence, event.envelope.previous_hash, record.value))
    heads, breaks = verify_chain(links)
    refused = [entry for entry in read_dead_letters(bootstrap, settings.topic_dlq) if entry.value in malformed]

    engine = make_engine(database_url)
    try:
        with engine.begin() as connection:
            archive_events(connection, settings.topic_events, ours)
            archived = archived_count(connection, sorted(payee_ids))
    finally:
        engine.dispose()

    net: dict[str, list[Money]] = defaultdict(list)
    for event, _ in ours:
        amount = event.payload["amount"]
        net[event.payee_id].append(-amount if event.event_type == "PaymentRefunded" else amount)
    ok = (len(ours) == len(records) and not breaks and archived == len(records)
          and len(refused) == len(malformed) and len(sent.sent) == len(records) + len(redelivered))
    summary = {
        "run_id": run_id, "seed": seed, "records_sent": len(sent.sent), "redelivered_duplicates": len(redelivered),
        "malformed_sent": len(malformed), "events_appended": len(ours), "dead_lettered": len(refused),
        "chain_breaks": len(breaks), "archived": archived, "payees": len(heads), "sequenced_by": sequenced_by,
        "elapsed_s": round(time.monotonic() - started, 3), "ok": ok,
    }
    if as_json:
        emit_json(summary)
    else:
        table = Table(title=f"smoke run {run_id} (seed {seed})")
        for column in ("payee", "events", "earned net of refunds", "chain head"):
            table.add_column(column)
        for name, code in PAYEES:
            payee_id = f"smoke-{run_id}-{name}"
            amounts = net.get(payee_id, [])
            table.add_row(payee_id, str(len(amounts)), str(sum_money(amounts, code)), heads.get(payee_id, "-")[:16])
        console.print(table)
        verdict = "[green]OK[/]" if ok else "[red]FAILED[/]"
        console.print(f"{verdict}: {len(sent.sent)} sent ({len(redelivered)} redelivered), {len(ours)} appended "
                      f"exactly once by {sequenced_by}, {len(refused)} malformed dead-lettered, "
                      f"{len(breaks)} chain breaks, {archived} archived in {summary['elapsed_s']} s")
    if not ok:
        sys.exit(1)
