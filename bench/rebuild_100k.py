"""Benchmark (not a test): `ledger projections rebuild` speed on 100,000+ ledger events.

    .venv/bin/ledger up && .venv/bin/python bench/rebuild_100k.py --payments 100000

Uses fresh topics (suffix bench-<random>) and a PostgreSQL schema of its own, so the real ledger and
read models are never touched. Builds the ledger through the real append path (LedgerClient ->
sequencer), closes a payout period for every payee (PayoutRequested events), then projects it all
from the beginning, as a rebuild does, and prints events/s beside the raw broker read rate.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from datetime import datetime, timedelta, timezone

import sqlalchemy

from ledger.codec import EventCodec
from processors.kafka_io import read_topic
from processors.ledger_client import LedgerClient
from processors.payee_actions import schedule_event
from processors.payout_run import fold_ledger, plan_run, send_commands
from processors.sequencer import Sequencer
from projections.projector import Projector
from runtime.database import make_engine, run_migrations, with_search_path
from runtime.kafka_admin import ensure_topics
from runtime.plans import plan_book
from runtime.settings import Settings
from runtime.stack import connections


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--payments", type=int, default=100_000)
    parser.add_argument("--payees", type=int, default=1_000)
    args = parser.parse_args()
    base = Settings()
    bootstrap, database_url = connections(base)
    suffix = f"bench-{uuid.uuid4().hex[:8]}"
    settings = base.with_topic_suffix(suffix)
    ensure_topics(bootstrap, settings.topic_specs())
    schema = suffix.replace("-", "_")
    engine = make_engine(database_url)
    with engine.begin() as connection:
        connection.execute(sqlalchemy.text(f'CREATE SCHEMA "{schema}"'))
    engine.dispose()
    bench_db = with_search_path(database_url, schema)
    run_migrations(bench_db)

    occurred = datetime.now(timezone.utc) - timedelta(days=2)
    records = [{"payment_id": f"p{i}", "payee_id": f"payee-{i % args.payees}", "amount_minor": 1_000 + i % 9_000,
                "currency": ("USD", "EUR", "XOF")[i % 3], "occurred_at": (occurred + timedelta(seconds=i)).isoformat()}
               for i in range(args.payments)]
    book, now = plan_book(settings), datetime.now(timezone.utc)
    send_commands(bootstrap, settings.topic_commands, [schedule_event(
        f"payee-{payee}", frequency="DAILY", cutoff_time="23:59", timezone="UTC", plan="flat-80", method="manual",
        book=book, now=now) for payee in range(args.payees)], EventCodec())
    with LedgerClient(bootstrap, settings) as client:
        client.record_batch(records)
    Sequencer(settings, bootstrap, database_url=bench_db, log=lambda _: None).run(idle_exit_s=1.0, handle_signals=False)
    codec = EventCodec()
    plan = plan_run(fold_ledger(bootstrap, settings.topic_events, codec).values(), datetime.now(timezone.utc),
                    plan_book(settings), settings.payout_policy())
    send_commands(bootstrap, settings.topic_commands, plan.closes, codec)
    Sequencer(settings, bootstrap, database_url=bench_db, log=lambda _: None).run(idle_exit_s=1.0, handle_signals=False)

    started = time.monotonic()
    events = sum(1 for _ in read_topic(bootstrap, settings.topic_events, timeout_s=600))
    raw_read_s = time.monotonic() - started

    projector = Projector(settings, bootstrap, bench_db, batch_events=5_000, log=lambda _: None)
    started = time.monotonic()
    stats = projector.run(idle_exit_s=0.5, handle_signals=False)
    rebuild_s = time.monotonic() - started - 0.5  # the idle wait is not work
    result = {"events": events, "projected": stats.events, "written": stats.written, "payouts": len(plan.payouts),
              "raw_read_events_per_s": round(events / raw_read_s), "rebuild_s": round(rebuild_s, 2),
              "rebuild_events_per_s": round(stats.events / rebuild_s),
              "ratio_to_raw_read": round(stats.events / rebuild_s / (events / raw_read_s), 4),
              "schema": schema, "topics_suffix": suffix}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
