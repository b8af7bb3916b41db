"""Benchmark (not a test): sequencer throughput and rebuild time on the running stack.

    .venv/bin/ledger up && .venv/bin/python bench/sequencer_throughput.py --records 50000

Uses fresh topics of its own (suffix bench-<random>), so it never touches the real ledger topics.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from datetime import datetime, timedelta, timezone

from processors.kafka_io import read_topic
from processors.ledger_client import LedgerClient
from processors.sequencer import Sequencer
from runtime.kafka_admin import ensure_topics
from runtime.settings import Settings
from runtime.stack import connections


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--payees", type=int, default=500)
    args = parser.parse_args()
    base = Settings()
    bootstrap, database_url = connections(base)
    suffix = f"bench-{uuid.uuid4().hex[:8]}"
    settings = base.with_topic_suffix(suffix)
    ensure_topics(bootstrap, settings.topic_specs())

    raw_started = time.monotonic()
    occurred = (datetime.now(timezone.utc) - timedelta(hours=1)).isoformat()
    records = [{"payment_id": f"p{i}", "payee_id": f"payee-{i % args.payees}", "amount_minor": 100 + i % 9000,
                "currency": ("USD", "EUR", "XOF")[i % 3], "occurred_at": occurred} for i in range(args.records)]
    with LedgerClient(bootstrap, settings) as client:
        sent = client.record_batch(records)
    append_s = time.monotonic() - raw_started

    raw_started = time.monotonic()
    raw_count = sum(1 for _ in read_topic(bootstrap, settings.topic_incoming, timeout_s=600))
    raw_read_s = time.monotonic() - raw_started

    worker = Sequencer(settings, bootstrap, database_url=database_url)
    started = time.monotonic()
    worker.run(idle_exit_s=1.0, handle_signals=False)
    sequencing_s = time.monotonic() - started - 1.0  # the idle wait is not work

    again = Sequencer(settings, bootstrap, database_url=database_url)
    again.rebuild()
    result = {
        "records": args.records, "sent": len(sent.sent), "appended": worker.stats.appended,
        "raw_read_msgs_per_s": round(raw_count / raw_read_s),
        "client_append_records_per_s": round(args.records / append_s),
        "sequencer_records_per_s": round(worker.stats.appended / sequencing_s),
        "sequencer_vs_raw_read": round((worker.stats.appended / sequencing_s) / (raw_count / raw_read_s), 4),
        "rebuild_events": again.stats.rebuilt_events, "rebuild_s": round(again.stats.rebuild_s, 2),
        "rebuild_events_per_s": round(again.stats.rebuilt_events / again.stats.rebuild_s),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
