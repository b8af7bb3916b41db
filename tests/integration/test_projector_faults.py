"""SIGKILL the projector at random points while events flow: the tables end equal to the ledger (verify)
and to a fresh rebuild, with nothing doubled or skipped."""

from __future__ import annotations

import random
import signal
import subprocess
import threading
import time
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy

from ledger.codec import EventCodec
from processors.ledger_client import LedgerClient
from processors.payout_run import fold_ledger, plan_run, send_commands
from projections.read_model import KEYS
from projections.verify import verify
from runtime.database import make_engine
from runtime.plans import plan_book
from tests.integration.cli_env import LEDGER, env_for
from tests.integration.transfer_helpers import sequencer_running

PAYEES = 40
BATCHES = 24
PER_BATCH = 100
MIN_KILLS = 15


def dump(settings) -> dict[str, list]:
    engine = make_engine(settings.database_url)
    try:
        with engine.connect() as connection:
            columns = {table: "*" for table in KEYS}
            columns["projection_heads"] = "payee_id, last_sequence, last_event_id, last_hash"  # not when written
            return {table: sorted(tuple(str(v) for v in row) for row in connection.execute(
                sqlalchemy.text(f"SELECT {columns[table]} FROM {table}")).all()) for table in KEYS} | {"event_archive": sorted(
                    (row[0], bytes(row[1])) for row in connection.execute(
                        sqlalchemy.text("SELECT event_id, encoded FROM event_archive")).all())}
    finally:
        engine.dispose()


def flow(settings, stop: threading.Event, sent: Counter) -> None:
    """Payments (and a refund now and then) for PAYEES payees, then a payout run half way."""
    rng = random.Random(7)
    start = datetime.now(timezone.utc) - timedelta(days=3)
    with LedgerClient(settings.kafka_bootstrap, settings) as client:
        for payee in range(PAYEES):
            client.set_schedule(f"k{payee:02d}", frequency="DAILY", cutoff_time="23:59", timezone="UTC",
                                plan="flat-80", method="manual", wait=False)
        client.flush()
        for batch in range(BATCHES):
            if stop.is_set():
                return
            records = []
            for i in range(PER_BATCH):
                n = batch * PER_BATCH + i
                records.append({"payment_id": f"k-{n}", "payee_id": f"k{n % PAYEES:02d}",
                                "amount_minor": rng.randint(500, 9_000), "currency": rng.choice(["USD", "EUR"]),
                                "occurred_at": (start + timedelta(minutes=n)).isoformat()})
            client.record_batch(records)
            sent["payments"] += len(records)
            if batch == BATCHES // 2:
                codec = EventCodec()
                plan = plan_run(fold_ledger(settings.kafka_bootstrap, settings.topic_events, codec).values(),
                                datetime.now(timezone.utc), plan_book(settings), settings.payout_policy())
                send_commands(settings.kafka_bootstrap, settings.topic_commands, plan.closes, codec)
                sent["closes"] += len(plan.closes)
            time.sleep(0.25)  # pacing the producer so kills land while events flow


@pytest.mark.faults
def test_sigkilled_projector_ends_equal_to_the_ledger_and_to_a_fresh_rebuild(settings, tmp_path):
    rng = random.Random(20261122)
    env = env_for(settings, tmp_path)
    faulty = {**env, "LEDGER_FAULT_POINTS": "projector_before_commit:0.05,projector_after_commit:0.05"}
    stop, sent, kills = threading.Event(), Counter(), Counter()
    with sequencer_running(settings):
        producer = threading.Thread(target=flow, args=(settings, stop, sent), daemon=True)
        producer.start()
        try:
            while producer.is_alive() or sum(kills.values()) < MIN_KILLS:
                worker = subprocess.Popen([LEDGER, "projector"], env=faulty, stdin=subprocess.DEVNULL,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                try:
                    worker.wait(timeout=rng.uniform(0.5, 2.5))
                    assert worker.returncode == -signal.SIGKILL, worker.stderr.read()
                    kills["self (fault point)"] += 1
                except subprocess.TimeoutExpired:
                    worker.send_signal(signal.SIGKILL)
                    worker.wait(timeout=30)
                    kills["outside"] += 1
        finally:
            stop.set()
            producer.join(timeout=120)
        final = subprocess.run([LEDGER, "projector", "--idle-exit", "3", "--json"], env=env, capture_output=True,
                               text=True, timeout=300)
        assert final.returncode == 0, final.stderr
    assert sent["payments"] == BATCHES * PER_BATCH and sent["closes"] > 0
    assert sum(kills.values()) >= MIN_KILLS, kills
    # the sequencer is stopped; one more pass picks up whatever it appended after the last projector read
    again = subprocess.run([LEDGER, "projector", "--idle-exit", "1"], env=env, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stderr
    report = verify(settings, settings.kafka_bootstrap, settings.database_url)
    assert report.ok, (kills, report.differences[:5])
    assert report.tables["earnings"] == BATCHES * PER_BATCH
    before = dump(settings)
    rebuilt = subprocess.run([LEDGER, "projections", "rebuild", "--json"], env=env, capture_output=True, text=True,
                             timeout=300)
    assert rebuilt.returncode == 0, rebuilt.stderr
    after = dump(settings)
    for table in before:
        assert before[table] == after[table], table
    print(f"kills: {dict(kills)}; events {report.events}")
