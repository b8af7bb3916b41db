"""The aggregator's checkpoint on the real broker and PostgreSQL: resume from it, survive SIGKILLs at its
commit, and never trust one that does not prove (edited, ahead of the log, another state format)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from collections import defaultdict
from pathlib import Path

import sqlalchemy

from ledger.codec import EventCodec
from processors.earnings_state import STATE_FORMAT
from processors.kafka_io import read_topic
from processors.ledger_client import LedgerClient
from runtime.database import make_engine
from tests.integration.cli_env import LEDGER, env_for, run_ledger_json
from tests.integration.sequencing_helpers import (
    chain_breaks,
    ledger_events,
    run_sequencer,
)
from tests.integration.test_aggregator import (
    DEADLINE_S,
    caught_up,
    ledger_cli,
    pay,
    payouts,
    poll,
    tick_and_chain,
)

AT_FIRST, AT_SECOND = "2026-11-21T06:00:00Z", "2026-11-22T06:00:00Z"
EXPECTED = [
    ("ny-1", "2026-11-21T04:59:00+00:00", 10_000, 8_000),
    ("ny-1", "2026-11-22T04:59:00+00:00", 20_000, 16_000),
    ("tokyo-1", "2026-11-20T14:59:00+00:00", 50_000, 40_000),
    ("tokyo-1", "2026-11-21T14:59:00+00:00", 30_000, 24_000),
]


class Worker:
    """`ledger aggregator` with its output in a file (the start line is read from there)."""

    def __init__(self, env: dict, log: Path) -> None:
        self.log = log
        self.offset = log.stat().st_size if log.exists() else 0  # only this run's lines
        with log.open("ab") as out:
            self.process = subprocess.Popen([LEDGER, "aggregator"], env=env, stdin=subprocess.DEVNULL,
                                            stdout=out, stderr=subprocess.STDOUT)

    def output(self) -> str:
        with self.log.open("rb") as source:
            source.seek(self.offset)
            return source.read().decode(errors="replace")

    def line(self, pattern: str) -> str:
        found: list[str] = []

        def seen() -> bool:
            assert self.process.poll() is None, f"the aggregator exited {self.process.returncode}:\n{self.output()}"
            found.extend(re.findall(pattern, self.output()))
            return bool(found)
        poll(seen, f"a line matching {pattern!r}")
        return found[0]

    def exited(self) -> int:
        deadline = time.monotonic() + DEADLINE_S
        while self.process.poll() is None:
            assert time.monotonic() < deadline, "the aggregator did not die at its crash point"
            time.sleep(0.2)
        return self.process.returncode

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)


def checkpoint_row(settings) -> dict | None:
    engine = make_engine(settings.database_url)
    try:
        with engine.connect() as connection:
            row = connection.execute(sqlalchemy.text(
                "SELECT format, positions, events, written_at FROM processor_checkpoints WHERE processor = 'aggregator'")
            ).mappings().first()
        return dict(row) if row else None
    finally:
        engine.dispose()


def log_end(settings) -> dict[str, int]:
    ends: dict[str, int] = {}
    for record in read_topic(settings.kafka_bootstrap, settings.topic_events):
        ends[str(record.partition)] = record.offset + 1
    return ends


def checkpointed_to_end(settings, since=None) -> bool:
    """A checkpoint of this code's format covers the whole log (and was written after `since`)."""
    row = checkpoint_row(settings)
    return (row is not None and row["format"] == STATE_FORMAT and (since is None or row["written_at"] > since)
            and row["positions"].get(settings.topic_events) == log_end(settings))


def edit(settings, sql: str) -> None:
    engine = make_engine(settings.database_url)
    try:
        with engine.begin() as connection:
            if sql == "ahead":  # one partition 50 records past the end of the log, proof unchanged
                positions = connection.execute(sqlalchemy.text(
                    "SELECT positions FROM processor_checkpoints WHERE processor = 'aggregator'")).scalar_one()
                parts = positions[settings.topic_events]
                first = min(parts)
                parts[first] += 50
                sql = f"UPDATE processor_checkpoints SET positions = '{json.dumps(positions)}'::jsonb"
            connection.execute(sqlalchemy.text(sql))
    finally:
        engine.dispose()


def period_one(settings, env) -> None:
    for payee, zone in (("ny-1", "America/New_York"), ("tokyo-1", "Asia/Tokyo")):
        ledger_cli(env, "schedule", "set", payee, "--frequency", "DAILY", "--cutoff", "23:59", "--timezone", zone,
                   "--plan", "flat-80", "--method", "manual")
    with LedgerClient(settings.kafka_bootstrap, settings) as client:
        client.record_batch([pay("n1", "ny-1", 10_000, "USD", "2026-11-20T15:00:00-05:00"),
                             pay("t1", "tokyo-1", 50_000, "JPY", "2026-11-20T09:00:00+09:00")])
    run_sequencer(settings)


def period_two(settings) -> None:
    with LedgerClient(settings.kafka_bootstrap, settings) as client:
        client.record_batch([pay(f"n2-{i}", "ny-1", 1_000, "USD", "2026-11-21T10:00:00-05:00") for i in range(20)]
                            + [pay("t2", "tokyo-1", 30_000, "JPY", "2026-11-21T23:00:00+09:00")])
    run_sequencer(settings)


def assert_closed_once_each(settings) -> None:
    """The right payouts, each payout id once in the ledger, and every close sent with one content only."""
    assert payouts(settings) == EXPECTED
    events = ledger_events(settings)
    requested = [e.payload["payout_id"] for e, _ in events if e.event_type == "PayoutRequested"]
    assert len(requested) == len(set(requested)) == 4
    assert chain_breaks(events) == []
    codec = EventCodec()
    sent: dict[str, set[bytes]] = defaultdict(set)
    for record in read_topic(settings.kafka_bootstrap, settings.topic_commands):
        event = codec.decode(record.value)
        if event.event_type in ("PayoutRequested", "BalanceCarried"):
            content = {k: str(v) for k, v in event.payload.items()}
            sent[event.envelope.event_id].add(json.dumps(content, sort_keys=True).encode())
    assert sent and all(len(contents) == 1 for contents in sent.values()), sent


def fast_env(settings, tmp_path, **extra: str) -> dict:
    return env_for(settings, tmp_path, LEDGER_AGGREGATOR_SESSION_TIMEOUT_S="6", LEDGER_CHECKPOINT_EVERY_S="0.5",
                   **extra)


def test_a_restart_resumes_from_the_checkpoint_and_reads_only_the_tail(settings, tmp_path):
    env = fast_env(settings, tmp_path)
    log = tmp_path / "aggregator.log"
    period_one(settings, env)
    worker = Worker(env, log)
    try:
        assert worker.line(r"full replay \(no checkpoint yet\): (\d+) records read") == "4"
        poll(lambda: caught_up(settings) and checkpointed_to_end(settings), "a checkpoint at the end of the log")
        tick_and_chain(settings, env, AT_FIRST, expected=2)
        period_two(settings)
        poll(lambda: caught_up(settings) and checkpointed_to_end(settings), "a checkpoint covering period two")
        worker.process.send_signal(signal.SIGTERM)
        worker.process.wait(30)

        # `ledger run` reads the same checkpoint (read-only) and sees what is due
        dry = run_ledger_json(env, "run", "--at", AT_SECOND, "--dry-run")
        assert [(c["payee_id"], c["net"]) for c in dry["closes"]] == [("ny-1", 16_000), ("tokyo-1", 24_000)]

        with LedgerClient(settings.kafka_bootstrap, settings) as client:  # one new payment waiting
            client.record_batch([pay("late-1", "ny-1", 500, "USD", "2026-11-22T10:00:00-05:00")])
        run_sequencer(settings)
        worker = Worker(env, log)
        tail = worker.line(r"resumed from checkpoint of \S+ at \S+.*?: (\d+) records of tail read")
        assert tail == "1", worker.output()
        tick_and_chain(settings, env, AT_SECOND, expected=4)
    finally:
        worker.kill()
    assert payouts(settings) == EXPECTED


def test_sigkill_at_the_checkpoint_commit_loses_nothing_and_decides_nothing_twice(settings, tmp_path):
    log = tmp_path / "aggregator.log"
    period_one(settings, fast_env(settings, tmp_path))

    before = Worker(fast_env(settings, tmp_path, LEDGER_FAULT_POINTS="aggregator_checkpoint_before_commit:1"), log)
    assert before.exited() == -signal.SIGKILL
    assert checkpoint_row(settings) is None  # killed inside the transaction: nothing was written

    after = Worker(fast_env(settings, tmp_path, LEDGER_FAULT_POINTS="aggregator_checkpoint_after_commit:1"), log)
    assert after.exited() == -signal.SIGKILL
    assert checkpoint_row(settings) is not None

    env = fast_env(settings, tmp_path)
    worker = Worker(env, log)
    try:
        worker.line(r"resumed from checkpoint of ")
        poll(lambda: caught_up(settings), "the aggregator to catch up")
        tick_and_chain(settings, env, AT_FIRST, expected=2)
        period_two(settings)
        worker.kill()  # dies with period two folded but perhaps not checkpointed
        with LedgerClient(settings.kafka_bootstrap, settings) as client:  # not due yet: something new to fold
            client.record_batch([pay("x-1", "ny-1", 500, "USD", "2026-11-23T10:00:00-05:00")])
        run_sequencer(settings)
        killer = Worker(fast_env(settings, tmp_path, LEDGER_FAULT_POINTS="aggregator_checkpoint_after_commit:1"), log)
        assert killer.exited() == -signal.SIGKILL
        worker = Worker(env, log)
        worker.line(r"resumed from checkpoint of ")
        poll(lambda: caught_up(settings), "the restarted aggregator to catch up")
        tick_and_chain(settings, env, AT_SECOND, expected=4)
        ledger_cli(env, "tick", "--at", AT_SECOND)  # a repeated tick decides nothing new
        run_sequencer(settings, idle_exit_s=1.0)
    finally:
        worker.kill()
    assert_closed_once_each(settings)


def test_a_checkpoint_that_does_not_prove_means_a_full_replay_and_the_right_closes(settings, tmp_path):
    env = fast_env(settings, tmp_path)
    log = tmp_path / "aggregator.log"
    period_one(settings, env)
    worker = Worker(env, log)
    try:
        poll(lambda: caught_up(settings) and checkpointed_to_end(settings), "a first checkpoint")
        tick_and_chain(settings, env, AT_FIRST, expected=2)
        period_two(settings)
        poll(lambda: caught_up(settings) and checkpointed_to_end(settings), "a checkpoint covering period two")
        worker.kill()
        breakages = [
            ("UPDATE processor_checkpoints SET state = state || '\\x00'::bytea WHERE processor = 'aggregator'",
             r"full replay: the checkpoint's state does not match its SHA-256"),
            ("UPDATE processor_checkpoints SET format = format - 1 WHERE processor = 'aggregator'",
             r"full replay: the checkpoint's state format is \d+, this code reads format \d+"),
            ("ahead", r"full replay: the checkpoint is ahead of the log"),
        ]
        since = None
        for sql, says in breakages:
            poll(lambda since=since: checkpointed_to_end(settings, since), "a good checkpoint to break")
            worker.kill()
            since = checkpoint_row(settings)["written_at"]
            edit(settings, sql)
            worker = Worker(env, log)
            worker.line(says)
            replayed = int(worker.line(r"full replay \([^\n]*\): (\d+) records read"))
            assert replayed == sum(log_end(settings).values())
        poll(lambda: caught_up(settings), "the aggregator to catch up")
        tick_and_chain(settings, env, AT_SECOND, expected=4)
    finally:
        worker.kill()
    assert_closed_once_each(settings)
