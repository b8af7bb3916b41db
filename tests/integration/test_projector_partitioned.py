"""Partitioned projector instances (`ledger projector --partitioned`) as real processes, killed and paused.

Each test runs instances on the test's own topics with a short lease while a sequencer chains payments
for payees spread over every partition, and checks afterwards that the read models equal a fresh fold of
the ledger (projections/verify.py, daily_totals_by_partition included), that the view daily_totals holds
the totals over every payee, and that every write was made by the owner of its partition's lease: a
trigger on projection_positions (written in every batch's transaction, with the rows) records, for each
row written, the writing process (its PGAPPNAME) and the lease's owner at that moment. A write by an
instance that had lost the partition would show another owner; a fenced write rolls back with its row.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Self

import pytest
import sqlalchemy

from ledger.codec import EventCodec
from processors.kafka_io import read_topic
from processors.ledger_client import LedgerClient
from processors.log_end import end_offsets
from projections.projector import NAME
from projections.projector_instances import lease_group
from projections.read_model import DAILY_FIELDS, ReadModel
from projections.verify import verify
from runtime.database import make_engine
from runtime.settings import Settings
from tests.integration.partitioned_instances import PartitionedInstances, member_pid
from tests.integration.cli_env import LEDGER, run_ledger_json
from tests.integration.sequencing_helpers import ledger_events
from tests.integration.test_projector import history
from tests.integration.test_sequencer_partitioned import payees_by_partition, wait_until
from tests.integration.transfer_helpers import TWO_DAYS_AGO, sequencer_running

LEASE_S = 4.0
TAKEOVER_BOUND_S = LEASE_S + 6.0  # the lease runs out, then the next rebalance (every LEASE_S / 5) and a resume


class Instances(PartitionedInstances):
    """`ledger projector --partitioned` processes of one test; each start has its own PGAPPNAME and log."""

    def __init__(self, settings: Settings, tmp_path: Path) -> None:
        super().__init__(settings, tmp_path, "projector", lease_group(settings), LEDGER_PARTITION_LEASE_S=str(LEASE_S))
        self._audit()

    def _audit(self) -> None:
        """Record, for every projection_positions row written, who wrote it and who owned its lease then."""
        group, events = lease_group(self.settings), self.settings.topic_events
        with self.engine.begin() as connection:
            connection.execute(sqlalchemy.text(
                "CREATE TABLE projector_write_audit (app text, topic text, partition int, owner text, epoch int, "
                "at timestamptz NOT NULL DEFAULT clock_timestamp())"))
            connection.execute(sqlalchemy.text(f"""
                CREATE FUNCTION projector_write_audit() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                  INSERT INTO projector_write_audit (app, topic, partition, owner, epoch)
                  SELECT current_setting('application_name'), NEW.topic, NEW.partition, l.owner, l.epoch
                  FROM (SELECT 1) AS one LEFT JOIN partition_leases l ON l.grp = '{group}'
                    AND l.partition = CASE WHEN NEW.topic = '{events}' THEN NEW.partition ELSE 0 END;
                  RETURN NEW;
                END $$"""))
            connection.execute(sqlalchemy.text(
                "CREATE TRIGGER projector_write_audit AFTER INSERT OR UPDATE ON projection_positions "
                "FOR EACH ROW EXECUTE FUNCTION projector_write_audit()"))

    def writes(self) -> list[dict]:
        with self.engine.connect() as connection:
            return [dict(row) for row in connection.execute(sqlalchemy.text(
                "SELECT app, topic, partition, owner, epoch FROM projector_write_audit ORDER BY at")).mappings()]

    def assert_every_write_by_the_owner(self) -> None:
        writes = [row for row in self.writes() if row["app"] in self.pid_of]
        assert writes, "no write by a partitioned instance recorded"
        wrong = [row for row in writes if row["owner"] is None or _pid(row["owner"]) != self.pid_of[row["app"]]]
        assert not wrong, f"written by an instance that did not own the partition's lease: {wrong[:5]}"
        dlq = {row["app"] for row in writes if row["topic"] == self.settings.topic_dlq}
        assert dlq, "nobody projected the dead letters"

_pid = member_pid


@pytest.fixture
def instances(settings, tmp_path):
    running = Instances(settings, tmp_path)
    yield running
    running.close()


def send_payments(settings: Settings, payees: list[str], ids: range, rng: random.Random) -> set[str]:
    """One payment per id, each to a random payee; returns the payment ids."""
    records = [{"payment_id": f"pp-{n}", "payee_id": rng.choice(payees), "amount_minor": 100 + n,
                "currency": rng.choice(["USD", "EUR"]), "occurred_at": TWO_DAYS_AGO.isoformat()} for n in ids]
    with LedgerClient(settings.kafka_bootstrap, settings) as client:
        assert client.record_batch(records).rejected == []
    return {record["payment_id"] for record in records}


class Flow:
    """Payments sent in small batches, one batch every 0.1 s, while the block runs (events flowing)."""

    def __init__(self, settings: Settings, payees: list[str], first: int = 0) -> None:
        self.settings, self.payees, self.next = settings, payees, first
        self.sent: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        rng = random.Random(self.next)
        while not self._stop.wait(0.1):  # the pace of the producer, not a wait for work
            self.sent |= send_payments(self.settings, self.payees, range(self.next, self.next + 20), rng)
            self.next += 20

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(30)
        assert not self._thread.is_alive()


def is_projected(settings: Settings, payment_ids: set[str]) -> bool:
    """Every payment in `payment_ids` is in the read models and every position is at its topic's end."""
    engine = make_engine(settings.database_url)
    try:
        with engine.connect() as connection:
            found = connection.execute(sqlalchemy.text(
                "SELECT count(*) FROM earnings WHERE kind = 'payment' AND business_id = ANY(:ids)"),
                {"ids": sorted(payment_ids)}).scalar_one()
            positions = {(topic, partition): offset for topic, partition, offset in connection.execute(
                sqlalchemy.text("SELECT topic, partition, next_offset FROM projection_positions WHERE projector = :p"),
                {"p": NAME}).all()}
    finally:
        engine.dispose()
    if found != len(payment_ids):
        return False
    return all(positions.get((topic, partition), 0) >= end for topic in (settings.topic_events, settings.topic_dlq)
               for partition, end in end_offsets(settings.kafka_bootstrap, topic).items())


def fresh_daily_totals(settings: Settings) -> dict[tuple, dict[str, int]]:
    """The totals over every payee per UTC day and currency, from a fresh fold of the whole ledger."""
    codec, model = EventCodec(), ReadModel()
    for record in read_topic(settings.kafka_bootstrap, settings.topic_events):
        model.apply(codec.decode(record.value), record.value, partition=record.partition)
    totals: dict[tuple, dict[str, int]] = defaultdict(lambda: dict.fromkeys(DAILY_FIELDS, 0))
    for (day, currency, _), row in model.all_rows()["daily_totals_by_partition"].items():
        for field in DAILY_FIELDS:
            totals[(day, currency)][field] += row[field]
    return dict(totals)


def assert_read_models_equal_a_fresh_fold(settings: Settings) -> None:
    report = verify(settings, settings.kafka_bootstrap, settings.database_url)
    assert report.ok and report.unbalanced == 0, report.differences[:5]
    assert report.tables["daily_totals_by_partition"] > 0
    engine = make_engine(settings.database_url)
    try:
        with engine.connect() as connection:
            stored = {(row["day"], row["currency"]): {field: row[field] for field in DAILY_FIELDS}
                      for row in connection.execute(sqlalchemy.text("SELECT * FROM daily_totals")).mappings()}
    finally:
        engine.dispose()
    assert stored == fresh_daily_totals(settings)


def test_two_instances_share_the_partitions_and_the_read_models_equal_a_fresh_fold(settings, instances, tmp_path):
    history(settings)  # payouts settled, failed and open, a refund, an adjustment, a dead letter
    partitions = settings.partitions_events
    payees = [name for names in payees_by_partition(partitions, 3).values() for name in names]
    rng = random.Random(7)
    with sequencer_running(settings):
        first = instances.start("a")
        wait_until(lambda: instances.owns_all(first), 60, f"one instance owns every partition\n{instances.logs()}")
        sent = send_payments(settings, payees, range(300), rng)
        second = instances.start("b")
        wait_until(lambda: instances.owns_all(first, second), 60,
                   f"the second instance gets its share\n{instances.logs()}")
        group = run_ledger_json(instances.env, "partitions")[lease_group(settings)]
        assert len(group["members"]) == 2 and [row["partition"] for row in group["partitions"]] == list(range(partitions))
        sent |= send_payments(settings, payees, range(300, 600), rng)
        wait_until(lambda: is_projected(settings, sent), 90, f"every payment projected\n{instances.logs()}")
    instances.stop_all()
    assert first.returncode == 0 and second.returncode == 0, instances.logs()
    assert_read_models_equal_a_fresh_fold(settings)
    instances.assert_every_write_by_the_owner()
    engine = make_engine(settings.database_url)
    try:
        with engine.connect() as connection:
            checkpoints = set(connection.execute(sqlalchemy.text(
                "SELECT processor FROM processor_checkpoints WHERE processor LIKE 'projector:%'")).scalars())
            stored_by = set(connection.execute(sqlalchemy.text(
                "SELECT DISTINCT processor FROM processor_entities WHERE processor LIKE 'projector:%'")).scalars())
            dead = connection.execute(sqlalchemy.text("SELECT count(*) FROM dead_letters")).scalar_one()
    finally:
        engine.dispose()
    assert checkpoints == {f"projector:read-models:p{p}" for p in range(partitions)}  # one per partition
    assert stored_by and stored_by <= checkpoints  # finished payouts stored under their partition's name
    assert dead == 1

    # the same ledger, one projector: nothing to replay per partition, nothing written again
    single = subprocess.run([LEDGER, "projector", "--idle-exit", "1", "--json"], capture_output=True, text=True,
                            env={**instances.env, "PGAPPNAME": "single"}, timeout=180, stdin=subprocess.DEVNULL,
                            check=False)
    assert single.returncode == 0, single.stderr
    assert json.loads(single.stdout)["written"] == 0
    assert_read_models_equal_a_fresh_fold(settings)
    # and back: an instance alone resumes every partition from its checkpoint and projects what came since
    with sequencer_running(settings):
        later = send_payments(settings, payees, range(600, 700), rng)
        wait_until(lambda: later <= {event.payload.get("payment_id") for event, _ in ledger_events(settings)}, 60,
                   "the new payments chained")
    alone = instances.start("c", "--idle-exit", "1", "--json")
    assert alone.wait(180) == 0, instances.logs()
    log = instances.log_of("c")
    assert all(f"partition {p} (epoch" in log and "projecting, from its checkpoint" in log for p in range(partitions)), log
    assert is_projected(settings, sent | later)
    assert_read_models_equal_a_fresh_fold(settings)
    instances.assert_every_write_by_the_owner()


@pytest.mark.faults
def test_sigkill_moves_partitions_and_the_tables_equal_a_fresh_fold(settings, instances):
    rng = random.Random(11)
    payees = [name for names in payees_by_partition(settings.partitions_events, 2).values() for name in names]
    with sequencer_running(settings):
        processes = {"a": instances.start("a"), "b": instances.start("b")}
        wait_until(lambda: instances.owns_all(*processes.values()), 60, f"both own partitions\n{instances.logs()}")
        takeovers: list[float] = []
        with Flow(settings, payees) as flow:
            for round_number in range(4):
                victim_name = "a" if round_number % 2 == 0 else "b"
                survivor = processes["b" if victim_name == "a" else "a"]
                time.sleep(rng.uniform(0.3, 1.5))  # the fault itself: a kill at a random moment while events flow
                victim = processes[victim_name]
                victim.send_signal(signal.SIGKILL)
                victim.wait(10)
                killed_at = time.monotonic()
                wait_until(lambda survivor=survivor: instances.owns_all(survivor), TAKEOVER_BOUND_S + 5,
                           f"round {round_number}: the survivor takes every partition\n{instances.logs()}")
                takeovers.append(time.monotonic() - killed_at)
                processes[victim_name] = instances.start(victim_name)
                wait_until(lambda: instances.owns_all(*processes.values()), 60,
                           f"round {round_number}: the restarted instance gets its share\n{instances.logs()}")
        sent = flow.sent
        wait_until(lambda: is_projected(settings, sent), 90, f"every payment projected\n{instances.logs()}")
    instances.stop_all()
    assert max(takeovers) <= TAKEOVER_BOUND_S, takeovers
    assert len(sent) >= 200
    assert_read_models_equal_a_fresh_fold(settings)
    instances.assert_every_write_by_the_owner()


@pytest.mark.faults
def test_a_paused_instance_writes_nothing_for_the_partitions_it_lost(settings, instances):
    """An instance freezes in the middle of a batch (SIGSTOP on a marked event, after it read the batch and
    before it wrote it), stays frozen past its lease, and is resumed after the other instance took its
    partitions over and projected that event: it writes nothing for them, and later gets its share back."""
    rng = random.Random(5)
    by_partition = payees_by_partition(settings.partitions_events, 2)
    payees = [name for names in by_partition.values() for name in names]
    with sequencer_running(settings):
        paused = instances.start("a", LEDGER_FAULT_PAUSE="pp-pause-me")
        other = instances.start("b")
        wait_until(lambda: instances.owns_all(paused, other), 60, f"both own partitions\n{instances.logs()}")
        sent = send_payments(settings, payees, range(200), rng)
        wait_until(lambda: is_projected(settings, sent), 60, f"projected by both\n{instances.logs()}")
        owned_by_paused = sorted(p for p, pid in instances.owner_pids().items() if pid == paused.pid)
        assert owned_by_paused, instances.owners()
        epochs = {p: epoch for p, (_, epoch) in instances.owners().items()}
        marked = by_partition[owned_by_paused[0]][0]
        with LedgerClient(settings.kafka_bootstrap, settings) as client:
            client.record_batch([{"payment_id": "pp-pause-me", "payee_id": marked, "amount_minor": 777,
                                  "currency": "USD", "occurred_at": TWO_DAYS_AGO.isoformat()}])
        sent.add("pp-pause-me")
        wait_until(lambda: Path(f"/proc/{paused.pid}/stat").read_text().split(") ")[1][0] == "T", 30,
                   f"the instance stopped itself on the marked event\n{instances.logs()}")
        sent |= send_payments(settings, payees, range(200, 400), rng)
        wait_until(lambda: instances.owns_all(other), TAKEOVER_BOUND_S + 5,
                   f"the other instance takes over every partition\n{instances.logs()}")
        assert all(instances.owners()[p][1] > epochs[p] for p in owned_by_paused)  # taken over: a new epoch
        wait_until(lambda: is_projected(settings, sent), 60, f"projected by the other\n{instances.logs()}")
        paused.send_signal(signal.SIGCONT)  # it goes on with the marked event's batch, no longer its own to write
        sent |= send_payments(settings, payees, range(400, 600), rng)
        wait_until(lambda: instances.owns_all(paused, other), 60, f"it rejoins\n{instances.logs()}")
        wait_until(lambda: is_projected(settings, sent), 60, f"every payment projected\n{instances.logs()}")
    instances.stop_all()
    assert paused.returncode == 0 and other.returncode == 0, instances.logs()
    resumed_log = instances.log_of("a")
    assert "stopped without writing anything more" in resumed_log, resumed_log[-3000:]
    instances.assert_every_write_by_the_owner()
    assert_read_models_equal_a_fresh_fold(settings)
