"""`ledger publish` as a user runs it: the console script in a subprocess, against the real broker."""

from __future__ import annotations

import json
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

from ledger.codec import EventCodec
from ledger.intake import parse_record
from ledger.ledger_index import LedgerIndex
from processors.kafka_io import DeliveryTracker, flush_or_raise, make_producer, read_topic
from runtime.settings import Settings
from tests.integration.cli_env import LEDGER, clean_env, env_for

WHEN = (datetime.now(timezone.utc).replace(microsecond=0) - timedelta(hours=3)).isoformat()


def payment(payment_id: str, payee_id: str = "barber-1", amount_minor: object = 1000, currency: str = "USD",
            **extra: object) -> dict:
    return {"type": "payment", "payment_id": payment_id, "payee_id": payee_id, "amount_minor": amount_minor,
            "currency": currency, "occurred_at": WHEN, **extra}


def refund(refund_id: str, payment_id: str, amount_minor: int, payee_id: str = "barber-1") -> dict:
    return {"type": "refund", "refund_id": refund_id, "payment_id": payment_id, "payee_id": payee_id,
            "amount_minor": amount_minor, "currency": "USD", "occurred_at": WHEN}


def stack_env(settings: Settings, data_dir: Path) -> dict[str, str]:
    return env_for(settings, data_dir)


def run(env: dict[str, str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([LEDGER, "publish", *args], env=env, capture_output=True, text=True, timeout=120,
                          input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL)


def write_jsonl(path: Path, lines: list[object]) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def incoming(settings: Settings) -> dict[str, list[str]]:
    """Business ids of what reached payments.incoming, by event type."""
    codec = EventCodec()
    found: dict[str, list[str]] = {}
    for record in read_topic(settings.kafka_bootstrap, settings.topic_incoming):
        event = codec.decode(record.value)
        assert record.key == event.payee_id.encode()
        business_id = event.payload.get("refund_id") or event.payload.get("adjustment_id") or event.payload["payment_id"]
        found.setdefault(event.event_type, []).append(business_id)
    return found


def test_mixed_jsonl_file_counts_every_line_and_sends_only_accepted_records(settings, tmp_path):
    path = write_jsonl(tmp_path / "payments.jsonl", [
        payment("p1"),                                            # 1 accepted
        payment("p2", payee_id="writer-1", amount_minor=2500, currency="EUR"),  # 2 accepted
        "",                                                       # 3 blank: skipped, not counted
        refund("r1", "p1", 400),                                  # 4 accepted: refund of line 1
        payment("p1"),                                            # 5 exact duplicate of line 1
        payment("p2", payee_id="writer-1", amount_minor=9999, currency="EUR"),  # 6 same id, other amount
        payment("p3", amount_minor=10.5),                         # 7 float
        payment("p4", currency="usd"),                            # 8 lower-case currency
        {**payment("p5"), "occurred_at": "2026-01-01T10:00:00"},  # 9 naive timestamp
        {key: value for key, value in payment("p6").items() if key != "payee_id"},  # 10 no payee
        refund("r2", "p1", 700),                                  # 11 more than the 600 that remain of p1
        '{"payment_id": "p7", ',                                  # 12 not JSON
        payment("p8", payee_id="driver-1", amount_minor=15_000, currency="XOF", metadata={"order": "o-8"}),  # 13
    ])
    result = run(stack_env(settings, tmp_path / "data"), str(path), "--json")

    assert result.returncode == 1, result.stderr
    summary = json.loads(result.stdout)
    assert set(summary) == {"accepted", "duplicates", "rejected", "errors"}
    assert (summary["accepted"], summary["duplicates"], summary["rejected"]) == (4, 1, 7)
    errors = {error["line"]: error["reason"] for error in summary["errors"]}
    assert list(errors) == [6, 7, 8, 9, 10, 11, 12]  # in file order
    assert "PaymentCompleted:p2 is already recorded with different content" in errors[6]
    assert errors[7].startswith("amount_minor: must be an integer number of minor units, got a float (10.5)")
    assert errors[8].startswith("currency: unknown currency 'usd'")
    assert errors[9] == "occurred_at: timestamp has no UTC offset: add one, e.g. +00:00 or Z"
    assert errors[10] == "payee_id: is required"
    assert errors[11] == "refund of USD 7.00 is larger than the USD 6.00 that remains of payment 'p1'"
    assert errors[12].startswith("not valid JSON: ")

    sent = incoming(settings)
    assert sorted(sent["PaymentCompleted"]) == ["p1", "p2", "p8"] and sent["PaymentRefunded"] == ["r1"]
    assert set(sent) == {"PaymentCompleted", "PaymentRefunded"}


def test_human_summary_names_the_counts_and_the_lines(settings, tmp_path):
    path = write_jsonl(tmp_path / "payments.ndjson", [payment("p1"), payment("p2", amount_minor="12")])
    result = run(stack_env(settings, tmp_path / "data"), str(path))
    assert result.returncode == 1
    assert "1 accepted, 0 duplicates, 1 rejected" in result.stdout
    assert "line 2: amount_minor: must be an integer number of minor units, got a str ('12')" in " ".join(
        result.stdout.split())


def test_csv_file_of_good_rows_is_accepted_and_exits_0(settings, tmp_path):
    header = "type,payment_id,refund_id,payee_id,amount_minor,currency,occurred_at,services,source,reason,metadata"
    rows = [
        f"payment,c1,,barber-1,1050,USD,{WHEN},2,pos,,",
        f'payment,c2,,writer-1,99,EUR,{WHEN},,,,"{{""order"": ""o-2""}}"',
        f"refund,c1,cr1,barber-1,50,USD,{WHEN},,,customer complaint,",
        f"payment,c3,,courier-1,1500,BHD,{WHEN},1,,,",
    ]
    path = tmp_path / "payments.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    result = run(stack_env(settings, tmp_path / "data"), str(path), "--json")

    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout) == {"accepted": 4, "duplicates": 0, "rejected": 0, "errors": []}
    codec = EventCodec()
    events = {}
    for record in read_topic(settings.kafka_bootstrap, settings.topic_incoming):
        event = codec.decode(record.value)
        events[event.payload.get("refund_id") or event.payload["payment_id"]] = event
    assert sorted(events) == ["c1", "c2", "c3", "cr1"]
    assert events["c1"].payload["services"] == 2 and events["c1"].payload["amount"].amount_minor == 1050
    assert events["c2"].payload["services"] == 1 and dict(events["c2"].payload["metadata"]) == {"order": "o-2"}
    assert events["cr1"].payload["reason"] == "customer complaint"
    assert str(events["c3"].payload["amount"].currency.code) == "BHD"


def test_stdin_needs_format_and_is_read_with_it(settings, tmp_path):
    env = stack_env(settings, tmp_path / "data")
    text = json.dumps(payment("s1")) + "\n"
    refused = run(env, "-", stdin=text)
    assert refused.returncode == 2 and "needs --format" in refused.stderr
    result = run(env, "-", "--format", "jsonl", "--json", stdin=text)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["accepted"] == 1
    assert incoming(settings) == {"PaymentCompleted": ["s1"]}


def test_records_already_in_the_ledger_are_duplicates(settings, tmp_path):
    codec = EventCodec()
    index = LedgerIndex(codec.encode)
    limits, now = settings.intake_limits(), datetime.now(timezone.utc)
    recorded = [payment("old-1"), payment("old-2", payee_id="writer-1", amount_minor=700, currency="EUR",
                                          metadata={"order": "o-1"})]
    producer, tracker = make_producer(settings.kafka_bootstrap), DeliveryTracker()
    for record in recorded:
        event, encoded = index.append(parse_record(record, limits, now))
        producer.produce(settings.topic_events, key=event.payee_id.encode(), value=encoded, on_delivery=tracker)
    flush_or_raise(producer, tracker, len(recorded))

    path = write_jsonl(tmp_path / "again.json", [
        payment("new-1"),                      # 1 accepted
        recorded[1],                           # 2 duplicate of the ledger
        refund("r-old", "old-1", 1000),        # 3 accepted: refunds a payment known only from the ledger
        recorded[0],                           # 4 duplicate of the ledger
        payment("old-1", amount_minor=1001),   # 5 rejected: conflicts with the ledger
    ])
    result = run(stack_env(settings, tmp_path / "data"), str(path), "--json")

    assert result.returncode == 1, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["accepted"], summary["duplicates"], summary["rejected"]) == (2, 2, 1)
    assert [error["line"] for error in summary["errors"]] == [5]
    assert "PaymentCompleted:old-1 is already recorded with different content" in summary["errors"][0]["reason"]
    assert incoming(settings) == {"PaymentCompleted": ["new-1"], "PaymentRefunded": ["r-old"]}


def test_only_duplicates_exit_0(settings, tmp_path):
    path = write_jsonl(tmp_path / "twice.jsonl", [payment("d1"), payment("d1"), payment("d1")])
    result = run(stack_env(settings, tmp_path / "data"), str(path), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"accepted": 1, "duplicates": 2, "rejected": 0, "errors": []}


def test_publish_without_a_stack_says_how_to_get_one(tmp_path):
    env = clean_env(LEDGER_DATA_DIR=str(tmp_path / "empty"))
    path = write_jsonl(tmp_path / "payments.jsonl", [payment("p1")])
    result = run(env, str(path), "--json")
    assert result.returncode == 1
    assert "ledger up" in result.stderr
    assert result.stdout == "" and "Traceback" not in result.stderr


def test_duplicates_are_judged_from_the_sequencers_checkpoint_and_its_tail(settings, tmp_path):
    """After the sequencer checkpointed (its ids and payments in PostgreSQL) and more was chained after the
    checkpoint, publish still knows every id: no reading of the whole history."""
    from tests.integration.sequencing_helpers import run_sequencer

    env = stack_env(settings, tmp_path)
    first = run(env, str(write_jsonl(tmp_path / "a.jsonl", [payment("p1"), payment("p2", amount_minor=500)])), "--json")
    assert json.loads(first.stdout)["accepted"] == 2
    run_sequencer(settings)  # chains them and writes its checkpoint at the clean stop
    second = run(env, str(write_jsonl(tmp_path / "b.jsonl", [payment("p3")])), "--json")
    assert json.loads(second.stdout)["accepted"] == 1
    # chained, then the sequencer dies writing its checkpoint: p3 is only in the tail after the checkpoint
    died = subprocess.run([LEDGER, "sequencer", "--idle-exit", "1.5"], capture_output=True, text=True, timeout=120,
                          env={**env, "LEDGER_FAULT_POINTS": "sequencer_checkpoint_before_commit"})
    assert died.returncode == -9, died.stderr[-2000:]
    third = run(env, str(write_jsonl(tmp_path / "c.jsonl", [
        payment("p1"),                              # duplicate of a checkpointed payment
        payment("p2", amount_minor=501),            # conflicting reuse of a checkpointed id
        payment("p3"),                              # duplicate of a payment chained after the checkpoint
        refund("r1", "p2", 600),                    # larger than what remains of a checkpointed payment
        refund("r2", "p2", 500),                    # exactly what remains
        payment("p4"),
    ])), "--json")
    summary = json.loads(third.stdout)
    assert (summary["accepted"], summary["duplicates"], summary["rejected"]) == (2, 2, 2), summary
    assert [error["line"] for error in summary["errors"]] == [2, 4]
    assert "different content" in summary["errors"][0]["reason"]
    assert "larger than" in summary["errors"][1]["reason"]
