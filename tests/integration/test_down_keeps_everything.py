"""`ledger down` saves what only the embedded broker holds, `ledger up` puts it back: the console script, in
subprocesses, on an embedded stack of the test's own (real Tansu, real PostgreSQL)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy

from ledger.codec import EventCodec
from processors.dead_letters import read_dead_letters
from processors.kafka_io import DeliveryTracker, flush_or_raise, make_producer, read_topic
from runtime.database import make_engine
from runtime.embedded_postgres import stop_postgres
from runtime.processes import pid_is_alive, wait_until
from tests.integration.cli_env import embedded_stack_env, run_ledger, run_ledger_json
from tests.integration.sequencing_helpers import PAST, chain_breaks

INCOMING, COMMANDS, EVENTS, DLQ = "payments.incoming", "ledger.commands", "ledger.events", "ledger.dlq"


run, run_json = run_ledger, run_ledger_json


@pytest.fixture
def embedded_env(tmp_path: Path):
    """Environment for an embedded stack of this test's own, in a data dir of its own."""
    env = embedded_stack_env(tmp_path / "data")
    yield env
    run(env, "down", "--discard", check=False)


def publish(env: dict[str, str], path: Path, payment_ids: list[str]) -> dict:
    path.write_text("".join(json.dumps({
        "payment_id": pid, "payee_id": f"payee-{pid[-1]}", "amount_minor": 1000 + n, "currency": "USD",
        "occurred_at": PAST.isoformat()}) + "\n" for n, pid in enumerate(payment_ids)))
    return run_json(env, "publish", str(path))


def produce_raw(bootstrap: str, key: bytes, value: bytes) -> None:
    producer, tracker = make_producer(bootstrap), DeliveryTracker()
    producer.produce(INCOMING, key=key, value=value, on_delivery=tracker)
    flush_or_raise(producer, tracker, 1)


def count(bootstrap: str, topic: str) -> int:
    return sum(1 for _ in read_topic(bootstrap, topic))


def ledger_events(bootstrap: str) -> list:
    codec = EventCodec()
    return [(codec.decode(record.value), record.value) for record in read_topic(bootstrap, EVENTS)]


def rows(database_url: str, query: str) -> list:
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            return list(connection.execute(sqlalchemy.text(query)).scalars())
    finally:
        engine.dispose()


def test_down_and_up_without_a_projector_lose_nothing(embedded_env, tmp_path):
    env = embedded_env
    up = run_json(env, "up")
    bootstrap = up["kafka_bootstrap"]
    # A malformed record first: offset 0 of payee-a's partition. After the restore, payee-a's waiting payments
    # number from 0 in that partition again, so its dead letter's old source position would name one of them.
    produce_raw(bootstrap, b"payee-a", b"{not json")
    first = [f"p{n}-{payee}" for n in range(1, 3) for payee in "abc"]
    assert publish(env, tmp_path / "first.jsonl", first)["accepted"] == 6
    run(env, "payee", "hold", "payee-b", "--reason", "checking an account")
    chained = run_json(env, "sequencer", "--idle-exit", "2")
    assert (chained["appended"], chained["dead_lettered"]) == (7, 1), chained
    second = [f"p{n}-{payee}" for n in range(3, 5) for payee in "abc"]
    assert publish(env, tmp_path / "second.jsonl", second)["accepted"] == 6  # these wait, unsequenced
    run(env, "payee", "release", "payee-b", "--reason", "checked")

    assert run_json(env, "status")["at_risk"] == {
        "events_not_archived": 7, "inputs_not_sequenced": 7, "dead_letters_not_projected": 1}
    down = run_json(env, "down")
    assert down["stopped"] == ["broker", "postgres"]
    assert down["preserved"] == {"inputs": 7, "dead_letters": 1, "events_archived": 7}

    restarted = run_json(env, "up")
    assert restarted["already_running"] is False
    bootstrap = restarted["kafka_bootstrap"]
    assert [count(bootstrap, t) for t in (EVENTS, INCOMING, COMMANDS, DLQ)] == [7, 6, 1, 1]
    assert rows(restarted["database_url"], "SELECT count(*) FROM preserved_records") == [0]  # restored, then deleted
    (old_dead,) = read_dead_letters(bootstrap, DLQ)
    assert old_dead.source_topic.startswith("before-restore-") and old_dead.source_topic.endswith(":" + INCOMING)
    assert old_dead.value == b"{not json"
    # the defect: the first file was taken as new after a restart; now the ledger remembers it
    again = publish(env, tmp_path / "first.jsonl", first)
    assert (again["accepted"], again["duplicates"]) == (0, 6)
    assert run_json(env, "status")["at_risk"] == {
        "events_not_archived": 0, "inputs_not_sequenced": 7, "dead_letters_not_projected": 1}

    # a second `ledger up` restores nothing again
    assert run_json(env, "up")["already_running"] is True
    assert [count(bootstrap, t) for t in (EVENTS, INCOMING, COMMANDS, DLQ)] == [7, 6, 1, 1]

    resumed = run_json(env, "sequencer", "--idle-exit", "2")
    assert (resumed["appended"], resumed["dead_lettered"]) == (7, 0), resumed
    run(env, "projector", "--idle-exit", "2")
    events = ledger_events(bootstrap)
    payments = Counter(e.payload["payment_id"] for e, _ in events if e.event_type == "PaymentCompleted")
    assert payments == Counter(first + second)  # every payment, exactly once
    assert [e.event_type for e, _ in events if e.payee_id == "payee-b"].count("PayeeHoldSet") == 2
    assert chain_breaks(events) == []
    verify = run_json(env, "verify")
    assert (verify["mismatches"], verify["events"]) == (0, 14), verify
    listed = run_json(env, "dlq", "list")
    assert [(e["source"].split(":")[0].startswith("before-restore-"), e["value_hex"]) for e in listed] == [
        (True, b"{not json".hex())]
    assert run_json(env, "status")["at_risk"] == {
        "events_not_archived": 0, "inputs_not_sequenced": 0, "dead_letters_not_projected": 0}

    # caught up: nothing left to save, and the next restart still has everything
    assert run_json(env, "down")["preserved"] == {"inputs": 0, "dead_letters": 0, "events_archived": 0}
    final = run_json(env, "up")
    assert [count(final["kafka_bootstrap"], t) for t in (EVENTS, INCOMING, COMMANDS, DLQ)] == [14, 0, 0, 0]
    assert run_json(env, "verify")["mismatches"] == 0
    # a projected dead letter stays in its table (not in the new topic), its id out of the new topic's way
    (dead_id,) = rows(final["database_url"], "SELECT dlq_id FROM dead_letters")
    assert dead_id.startswith("before-restore-")


def test_down_refuses_when_the_database_is_unreachable_and_discard_stops_anyway(embedded_env, tmp_path):
    env = embedded_env
    up = run_json(env, "up")
    assert publish(env, tmp_path / "waiting.jsonl", ["p1-a", "p2-b", "p3-c"])["accepted"] == 3
    state = json.loads((Path(env["LEDGER_DATA_DIR"]) / "stack.json").read_text())
    assert stop_postgres(Path(state["postgres_pgdata"]))
    assert wait_until(lambda: not pid_is_alive(state["postgres_pid"]), 20)

    status = run(env, "status", "--json", check=False)
    assert status.returncode == 3
    assert json.loads(status.stdout)["at_risk"] == {
        "events_not_archived": "unknown", "inputs_not_sequenced": 3, "dead_letters_not_projected": "unknown"}

    refused = run(env, "down", check=False)
    assert refused.returncode == 1
    message = refused.stderr.strip()
    assert len(message.splitlines()) == 1 and "Traceback" not in message, message
    assert "ledger down --discard" in message and "3 inputs not yet sequenced" in message, message
    assert pid_is_alive(state["broker_pid"])  # nothing stopped
    assert count(up["kafka_bootstrap"], INCOMING) == 3  # and nothing lost

    discarded = run_json(env, "down", "--discard")
    assert "broker" in discarded["stopped"] and discarded["preserved"] is None and discarded["discarded"] is True
    assert wait_until(lambda: not pid_is_alive(state["broker_pid"]), 10)
