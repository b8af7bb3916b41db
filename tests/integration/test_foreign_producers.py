"""Hostile records from a producer that is not the project's own (kcat): nothing stops the sequencer, nothing vanishes.

Every record goes through the raw topic as kcat sends it. The sequencer runs as the `ledger sequencer`
process a user starts; it must never exit, chain every valid payment exactly once (a refund that came
before its payment included), dead-letter every refused record with its reason, and resume past a record
it was killed on, or that killed it.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy

from ledger.intake import RECORD_READ_MAX_BYTES
from runtime.database import make_engine
from runtime.processes import wait_until
from tests.integration.cli_env import LEDGER, env_for
from tests.integration.kcat import Kcat
from tests.integration.sequencing_helpers import chain_breaks, dead_letters, ledger_events, payment, refund


def compact(record: dict) -> bytes:
    return json.dumps(record, separators=(",", ":")).encode()


def keyed(record: dict) -> bytes:
    return record["payee_id"].encode()


def chained_ids(settings) -> Counter:
    ids: Counter = Counter()
    for event, _ in ledger_events(settings):
        if event.event_type == "PaymentRefunded":
            ids[event.payload["refund_id"]] += 1
        elif event.event_type == "PaymentCompleted":
            ids[event.payload["payment_id"]] += 1
    return ids


def waiting_rows(settings) -> int:
    engine = make_engine(settings.database_url)
    try:
        with engine.connect() as connection:
            return connection.execute(sqlalchemy.text("SELECT count(*) FROM sequencer_waiting")).scalar_one()
    finally:
        engine.dispose()


def start_sequencer(env: dict, log: Path) -> subprocess.Popen:
    with log.open("a") as sink:  # a file, not a pipe: a full pipe would block the process
        return subprocess.Popen([LEDGER, "sequencer"], env=env, stdin=subprocess.DEVNULL, stdout=sink, stderr=sink)


def run_sequencer_once(env: dict, log: Path, idle_exit_s: float = 2.0) -> int:
    """`ledger sequencer --idle-exit` until it exits; returns its exit code (-9: it was SIGKILLed)."""
    with log.open("a") as sink:
        return subprocess.run([LEDGER, "sequencer", "--idle-exit", str(idle_exit_s)], env=env, stdin=subprocess.DEVNULL,
                              stdout=sink, stderr=sink, timeout=180).returncode


@pytest.fixture
def kcat(settings, tmp_path) -> Kcat:
    return Kcat(settings.kafka_bootstrap, tmp_path / "kcat")


def test_kcat_runs_on_the_librdkafka_of_confluent_kafka(kcat):
    assert "librdkafka 2." in kcat.version() and "librdkafka 2.0." not in kcat.version()


def test_hostile_records_never_stop_the_sequencer_and_every_valid_payment_is_chained_once(settings, kcat, tmp_path):
    incoming, payee = settings.topic_incoming, "barber-1"
    valid = [payment(f"v{index}", payee, amount_minor=1000 + index) for index in range(5)]
    just_under = payment("big-under", payee)
    just_under["source"] = "s" * (RECORD_READ_MAX_BYTES - 200 - len(compact(just_under)))
    just_under_bytes = compact(just_under)
    far_over = payment("p" * 500, "x" * 300, currency="DOLLARS", source="y" * 5000)
    huge = compact({**payment("huge", payee), "source": "z" * 3_000_000})
    other_key = payment("keyed-wrong", "barber-2")
    bom = b"\xef\xbb\xbf" + compact(payment("with-bom", payee))

    log = tmp_path / "sequencer.log"
    sequencer = start_sequencer(env_for(settings, tmp_path), log)
    try:
        kcat.produce(incoming, compact(valid[0]), key=payee.encode())
        kcat.produce(incoming, just_under_bytes, key=payee.encode())
        kcat.produce(incoming, compact(valid[1]), key=payee.encode())
        kcat.produce(incoming, compact(far_over), key=keyed(far_over))
        kcat.produce(incoming, compact(valid[2]), key=payee.encode())
        kcat.produce(incoming, huge, key=payee.encode())
        kcat.produce(incoming, compact(other_key), key=b"some-other-key")
        kcat.produce(incoming, compact(valid[3]), key=payee.encode())
        kcat.produce(incoming, bom, key=payee.encode())
        # A refund before its payment, on another partition (as another producer's partitioner put it).
        kcat.produce(incoming, compact(refund("late-refund", "late-pay", 300, payee_id="driver-9")), key=b"driver-9",
                     partition=0)
        assert wait_until(lambda: waiting_rows(settings) == 1, 60), "the refund did not wait for its payment"
        kcat.produce(incoming, compact(payment("late-pay", "driver-9")), key=b"driver-9", partition=1)
        kcat.produce(incoming, compact(valid[4]), key=payee.encode())

        expected = {f"v{index}" for index in range(5)} | {"with-bom", "late-pay", "late-refund"}
        assert wait_until(lambda: set(chained_ids(settings)) >= expected and len(dead_letters(settings)) >= 4, 90), (
            f"chained {chained_ids(settings)}, dead letters {[d.reason[:80] for d in dead_letters(settings)]}")
        assert sequencer.poll() is None, f"the sequencer exited: {log.read_text()[-2000:]}"
    finally:
        sequencer.terminate()
        sequencer.wait(30)

    assert chained_ids(settings) == Counter(expected)  # each exactly once, nothing refused chained
    assert chain_breaks(ledger_events(settings)) == []
    assert waiting_rows(settings) == 0
    assert len(dead_letters(settings)) == 4
    under = next(d for d in dead_letters(settings) if d.value == just_under_bytes)  # kept whole, byte for byte
    assert under.whole and under.stage == "validate"
    assert f"source: is {len(just_under['source'])} characters long, at most 256 allowed" in under.reason
    over = next(d for d in dead_letters(settings) if d.key == keyed(far_over))
    for named in ("payee_id: is 300 characters long, at most 128 allowed",
                  "payment_id: is 500 characters long, at most 128 allowed",
                  "currency: unknown currency 'DOLLARS'", "source: is 5000 characters long, at most 256 allowed"):
        assert named in over.reason
    too_large = next(d for d in dead_letters(settings) if not d.whole)
    assert f"record: is {len(huge)} bytes, larger than {RECORD_READ_MAX_BYTES}: not read" in too_large.reason
    assert too_large.original_size == len(huge) and too_large.original_sha256 == hashlib.sha256(huge).hexdigest()
    assert too_large.value == huge[:len(too_large.value)] and 0 < len(too_large.value) < len(huge)
    wrong_key = next(d for d in dead_letters(settings) if d.key == b"some-other-key")
    assert "key: 'some-other-key' is not the record's payee_id 'barber-2'" in wrong_key.reason
    refused = subprocess.run([LEDGER, "dlq", "replay", too_large.id], env=env_for(settings, tmp_path),
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and "cannot be replayed" in refused.stderr


def test_a_sequencer_killed_with_a_large_record_in_flight_resumes_past_it(settings, kcat, tmp_path):
    incoming, payee, log = settings.topic_incoming, "barber-1", tmp_path / "sequencer.log"
    huge = compact({**payment("huge", payee), "source": "z" * 2_000_000})
    for value in (compact(payment("before", payee)), huge, compact(payment("after", payee))):
        kcat.produce(incoming, value, key=payee.encode())

    # Killed after its outputs (the bounded dead letter among them) are stored, before the input position is.
    killed = run_sequencer_once(env_for(settings, tmp_path, LEDGER_FAULT_POINTS="sequencer_before_commit:1"), log)
    assert killed == -9
    assert run_sequencer_once(env_for(settings, tmp_path), log) == 0

    assert chained_ids(settings) == Counter({"before": 1, "after": 1})
    (letter,) = dead_letters(settings)  # once: the restart knew it was already dead-lettered
    assert letter.original_size == len(huge)
    assert "did not stop cleanly" in log.read_text()


def test_a_record_that_kills_the_sequencer_is_dead_lettered_as_poison(settings, kcat, tmp_path):
    incoming, payee, log = settings.topic_incoming, "barber-1", tmp_path / "sequencer.log"
    marker = "poison-7f3a"
    for value in (compact(payment("first", payee)), compact(payment("deadly", payee, source=marker)),
                  compact(payment("last", payee))):
        kcat.produce(incoming, value, key=payee.encode())
    env = env_for(settings, tmp_path, LEDGER_FAULT_POISON=marker)  # SIGKILLs itself on that record, every time

    codes = []
    while not codes or codes[-1] != 0:
        codes.append(run_sequencer_once(env, log))
        assert len(codes) <= 5, f"still dying after {codes}: {log.read_text()[-2000:]}"
    # once in a batch, then twice processing it alone (LEDGER_SEQUENCER_POISON_DEATHS=2), then dead-lettered
    assert codes == [-9, -9, -9, 0]
    assert chained_ids(settings) == Counter({"first": 1, "last": 1})
    (letter,) = dead_letters(settings)
    assert letter.stage == "poison" and "died 2 times while processing this record alone" in letter.reason
    assert marker.encode() in letter.value and letter.whole
    # the last start knew it had died on that record alone: only it was processed alone, "last" went in a batch
    assert log.read_text().count("records were processed one at a time; back to batches") == 1
    assert "1 records were processed one at a time; back to batches" in log.read_text()


def test_a_poison_record_deeper_in_a_batch_than_the_careful_window_is_still_found(settings, kcat, tmp_path):
    """Each death in a batch is followed by a window of 2 records alone: the committed position moves on by a
    window per death until the poison record is processed alone, twice, and dead-lettered."""
    incoming, payee, log = settings.topic_incoming, "barber-1", tmp_path / "sequencer.log"
    marker = "poison-deep-9c1e"
    names = ["first", "second", "third", "deadly", "last"]
    for name in names:
        kcat.produce(incoming, compact(payment(name, payee, **({"source": marker} if name == "deadly" else {}))),
                     key=payee.encode())
    env = env_for(settings, tmp_path, LEDGER_FAULT_POISON=marker, LEDGER_SEQUENCER_CAREFUL_WINDOW="2")
    codes = []
    while not codes or codes[-1] != 0:
        codes.append(run_sequencer_once(env, log))
        assert len(codes) <= 7, f"still dying after {codes}: {log.read_text()[-2000:]}"
    # a batch, a batch after a window of first+second, deadly alone in a window of third+deadly, deadly alone
    assert codes == [-9, -9, -9, -9, 0]
    assert chained_ids(settings) == Counter({"first": 1, "second": 1, "third": 1, "last": 1})
    (letter,) = dead_letters(settings)
    assert letter.stage == "poison" and marker.encode() in letter.value
