"""The sequencer resumes from a proven checkpoint, reads only the tail, and replays in full when it cannot prove it."""

from __future__ import annotations

import json
import random
import subprocess
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy

from processors.ledger_client import LedgerClient
from processors.sequencer import Sequencer
from runtime.database import make_engine
from tests.integration.cli_env import LEDGER, env_for
from tests.integration.sequencing_helpers import chain_breaks, dead_letters, ledger_events, payment, send_raw


def _run(settings, idle_exit_s: float = 1.5) -> tuple[Sequencer, list[str]]:
    lines: list[str] = []
    worker = Sequencer(settings, settings.kafka_bootstrap, log=lines.append)
    worker.run(idle_exit_s=idle_exit_s, handle_signals=False)
    return worker, lines


def _send(settings, records: list[dict]) -> None:
    with LedgerClient(settings.kafka_bootstrap, settings) as client:
        client.record_batch(records)


def _sql(settings, statement: str) -> None:
    engine = make_engine(settings.database_url)
    try:
        with engine.begin() as connection:
            connection.execute(sqlalchemy.text(statement))
    finally:
        engine.dispose()


def test_a_restart_reads_only_the_tail_and_dedupe_stays_exact(settings):
    _send(settings, [payment(f"p{n}", payee_id=f"payee-{n % 4}") for n in range(30)])
    first, lines = _run(settings)
    assert first.stats.appended == 30 and any(line.startswith("full replay (no checkpoint yet)") for line in lines)

    # the clean stop wrote a checkpoint: the next start reads no tail, yet knows every id and every chain head
    _send(settings, [payment("p3", payee_id="payee-3"), payment("p3", payee_id="payee-3", amount_minor=7),
                     payment("p30", payee_id="payee-2")])
    second, lines = _run(settings)
    assert second.stats.rebuilt_events == 0
    assert any(line.startswith("resumed from checkpoint") and "0 records of tail" in line for line in lines)
    assert (second.stats.appended, second.stats.duplicates, second.stats.dead_lettered) == (1, 1, 1)
    assert "already recorded with different content" in dead_letters(settings)[0].reason
    events = ledger_events(settings)
    assert chain_breaks(events) == [] and len(events) == 31


def test_a_checkpoint_that_does_not_prove_leads_to_a_full_replay_and_a_right_state(settings):
    _send(settings, [payment(f"p{n}", payee_id=f"payee-{n % 3}") for n in range(12)])
    _run(settings)
    def edit(column: str, change) -> str:  # noqa: ANN001 - a function of the column's JSON value
        engine = make_engine(settings.database_url)
        try:
            with engine.begin() as connection:
                value = connection.execute(sqlalchemy.text(
                    f"SELECT {column} FROM processor_checkpoints WHERE processor = 'sequencer'")).scalar_one()
                connection.execute(sqlalchemy.text(
                    f"UPDATE processor_checkpoints SET {column} = CAST(:v AS jsonb) WHERE processor = 'sequencer'"),
                    {"v": json.dumps(change(value))})
        finally:
            engine.dispose()
        return ""

    def first_partition(value: dict, change) -> dict:  # noqa: ANN001
        topic = settings.topic_events
        partition = sorted(value[topic])[0]
        return {**value, topic: {**value[topic], partition: change(value[topic][partition])}}

    breakages = {
        "edited": (lambda: edit("proofs", lambda v: first_partition(v, lambda _: "0" * 64)),
                   "is not the record the checkpoint was written after"),
        "ahead": (lambda: edit("positions", lambda v: first_partition(v, lambda offset: offset + 50)),
                  "ahead of the log"),
        "older format": (lambda: _sql(settings, "UPDATE processor_checkpoints SET format = format - 1 "
                                                "WHERE processor = 'sequencer'"), "written by another version"),
        "torn state": (lambda: _sql(settings, "UPDATE processor_checkpoints SET state = substring(state from 1 for 10)"
                                              " WHERE processor = 'sequencer'"), "does not match its SHA-256"),
    }
    expected = 12
    for number, (name, (breakage, reason)) in enumerate(breakages.items()):
        breakage()
        # a duplicate, a conflicting reuse and a new payment: the replayed state must judge each rightly
        _send(settings, [payment("p1", payee_id="payee-1"), payment("p2", payee_id="payee-2", amount_minor=1),
                         payment(f"new-{number}", payee_id="payee-0")])
        worker, lines = _run(settings)
        replay = [line for line in lines if line.startswith("full replay")]
        assert len(replay) == 2 and reason in replay[0], (name, lines)  # the one reason line, then the start line
        assert worker.stats.rebuilt_events >= expected, name
        assert (worker.stats.appended, worker.stats.duplicates) == (1, 1), name
        expected += 1
    events = ledger_events(settings)
    assert len(events) == expected and chain_breaks(events) == []
    assert Counter(letter.stage for letter in dead_letters(settings)) == {"ledger": len(breakages)}


@pytest.mark.faults
def test_sigkill_while_writing_a_checkpoint_and_right_after_neither_doubles_nor_loses(settings, tmp_path: Path):
    rng = random.Random(15)
    env = env_for(settings, tmp_path, LEDGER_SEQUENCER_BATCH_MAX="40", LEDGER_CHECKPOINT_EVERY_EVENTS="60",
                  LEDGER_FAULT_POINTS="sequencer_checkpoint_before_commit:0.4,sequencer_checkpoint_after_commit:0.4")
    sent: dict[str, bytes] = {}
    kills = 0
    for round_number in range(5):
        values = []
        for n in range(150):
            if rng.random() < 0.1 and sent:
                values.append(sent[rng.choice(sorted(sent))])  # redelivered
            else:
                payment_id = f"r{round_number}-{n}"
                sent[payment_id] = json.dumps(payment(payment_id, payee_id=f"payee-{n % 5}")).encode()
                values.append(sent[payment_id])
        for payee in range(5):
            send_raw(settings, [v for v in values if json.loads(v)["payee_id"] == f"payee-{payee}"],
                     key=f"payee-{payee}".encode())
        run = subprocess.run([LEDGER, "sequencer", "--idle-exit", "1.5"], env=env, capture_output=True, text=True,
                             timeout=300)
        kills += run.returncode == -9
        assert run.returncode in (0, -9), run.stderr[-2000:]
    final = subprocess.run([LEDGER, "sequencer", "--idle-exit", "1.5"], env=env_for(settings, tmp_path),
                           capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr[-2000:]
    assert "resumed from checkpoint" in final.stderr + final.stdout
    assert kills >= 2, f"only {kills} kills landed"
    events = ledger_events(settings)
    counts = Counter(event.payload["payment_id"] for event, _ in events)
    assert set(counts) == set(sent) and max(counts.values()) == 1
    assert chain_breaks(events) == []
    assert dead_letters(settings) == []


def test_ledger_checkpoints_lists_and_clears(settings, tmp_path: Path):
    _send(settings, [payment("c1"), payment("c2")])
    _run(settings)
    env = env_for(settings, tmp_path)
    listed = subprocess.run([LEDGER, "checkpoints", "--json"], env=env, capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    (row,) = json.loads(listed.stdout)
    assert row["processor"] == "sequencer" and row["events"] == 2 and row["covered_records"] == 2
    shown = subprocess.run([LEDGER, "checkpoints"], env=env, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and "sequencer" in shown.stdout
    unnamed = subprocess.run([LEDGER, "checkpoints", "clear"], env=env, capture_output=True, text=True, timeout=60)
    assert unnamed.returncode == 2 and "--all" in unnamed.stderr
    unknown = subprocess.run([LEDGER, "checkpoints", "clear", "nope"], env=env, capture_output=True, text=True,
                             timeout=60)
    assert unknown.returncode == 1 and "no checkpoint named 'nope'" in unknown.stderr
    cleared = subprocess.run([LEDGER, "checkpoints", "clear", "sequencer", "--json"], env=env, capture_output=True,
                             text=True, timeout=60)
    assert json.loads(cleared.stdout) == {"cleared": ["sequencer"]}
    _send(settings, [payment("c1"), payment("c3")])
    worker, lines = _run(settings)
    assert any(line.startswith("full replay: no checkpoint yet") for line in lines)
    assert (worker.stats.appended, worker.stats.duplicates) == (1, 1)
