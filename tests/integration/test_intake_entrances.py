"""The same limits refuse the same records with the same messages at every way in.

LedgerClient, `ledger publish`, `POST /v1/payments` and the sequencer (a record produced straight to
payments.incoming) each get the same over-long record and the same over-large record.
"""

from __future__ import annotations

import json
import subprocess

import pytest
from fastapi.testclient import TestClient

from api.app import make_api
from ledger.intake import RECORD_READ_MAX_BYTES, IntakeRejected
from processors.ledger_client import LedgerClient
from tests.integration.cli_env import LEDGER, env_for
from tests.integration.sequencing_helpers import dead_letters, payment, refund, run_sequencer, send_raw

INGEST = "in-token-0123456789abcdef"


def compact(record: dict) -> bytes:
    return json.dumps(record, separators=(",", ":")).encode()


OVER_LONG = {**refund("r" * 129, "p" * 200, 100, payee_id="barber-1"), "reason": "why " * 300,
             "currency": "US DOLLARS"}
OVER_LARGE = {**payment("big", "barber-1"), "source": "s" * (RECORD_READ_MAX_BYTES + 10)}
ADJUSTMENT = {"type": "adjustment", "adjustment_id": "a1", "payee_id": "barber-1", "kind": "BONUS",
              "name": "n" * 201, "actor": "a" * 201, "amount_minor": 100, "currency": "USD",
              "occurred_at": payment("x")["occurred_at"]}


@pytest.mark.parametrize("record", [OVER_LONG, OVER_LARGE, ADJUSTMENT], ids=["over-long", "over-large", "adjustment"])
def test_every_entrance_refuses_with_the_same_message(settings, tmp_path, record):
    with LedgerClient(settings.kafka_bootstrap, settings) as client:
        with pytest.raises(IntakeRejected) as refused:
            client.validate(record)
    message, problems = str(refused.value), refused.value.problems
    assert all(len(reason) < 300 for _, reason in problems)  # a limit is named, the value is not repeated whole

    path = tmp_path / "records.jsonl"
    path.write_bytes(compact(record) + b"\n")
    published = subprocess.run([LEDGER, "publish", str(path), "--json"], env=env_for(settings, tmp_path),
                               capture_output=True, text=True, timeout=120)
    assert published.returncode == 1, published.stderr
    assert json.loads(published.stdout)["errors"] == [{"line": 1, "reason": message}]

    api_settings = settings.model_copy(update={"api_tokens": {INGEST: "ingest:shop"}})
    with TestClient(make_api(api_settings, settings.kafka_bootstrap, settings.database_url)) as api:
        answer = api.post("/v1/payments", json={"records": [record]}, headers={"Authorization": f"Bearer {INGEST}"})
    assert answer.status_code == 422
    assert [(p["field"], p["reason"]) for p in answer.json()["problems"]] == problems

    send_raw(settings, [compact(record)], key=record["payee_id"].encode())
    run_sequencer(settings)
    (letter,) = dead_letters(settings)
    assert letter.reason == message


def test_limits_are_named_in_each_message(settings):
    with LedgerClient(settings.kafka_bootstrap, settings) as client:
        with pytest.raises(IntakeRejected) as over_long:
            client.validate(OVER_LONG)
        with pytest.raises(IntakeRejected) as over_large:
            client.validate(OVER_LARGE)
        with pytest.raises(IntakeRejected) as adjustment:
            client.validate(ADJUSTMENT)
    assert dict(over_long.value.problems) == {
        "refund_id": "is 129 characters long, at most 128 allowed",
        "payment_id": "is 200 characters long, at most 128 allowed",
        "reason": "is 1200 characters long, at most 1000 allowed",
        "currency": "unknown currency 'US DOLLARS': is 10 characters long, a currency is a 3-letter ISO 4217 code",
    }
    ((field, reason),) = over_large.value.problems
    assert field == "record" and reason.startswith(f"is {len(compact(OVER_LARGE))} bytes, larger than 1048576: not read")
    assert dict(adjustment.value.problems) == {"name": "is 201 characters long, at most 200 allowed",
                                               "actor": "is 201 characters long, at most 200 allowed"}
