"""After `ledger down` / `ledger up` restores the embedded broker's topics from the archive (new offsets), every
processor starts correctly from the restored log and `ledger verify` passes; the next starts resume from checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.cli_env import embedded_stack_env, run_ledger, run_ledger_json

PROCESSORS = (("sequencer",), ("transfers",), ("projector",), ("notifier",))


@pytest.fixture
def embedded_env(tmp_path: Path):
    env = embedded_stack_env(tmp_path / "data")
    yield env
    run_ledger(env, "down", "--discard", check=False)


def publish(env: dict[str, str], path: Path, rows: list[tuple[str, str, int, str]]) -> dict:
    path.write_text("".join(json.dumps({"payment_id": pid, "payee_id": payee, "amount_minor": amount,
                                        "currency": "USD", "occurred_at": at}) + "\n" for pid, payee, amount, at in rows))
    return run_ledger_json(env, "publish", str(path))


def start_lines(result) -> list[str]:  # noqa: ANN001 - CompletedProcess
    return [line for line in (result.stdout + result.stderr).splitlines()
            if "resumed from" in line or "full replay" in line]


def run_all(env: dict[str, str]) -> dict[str, list[str]]:
    """Each processor once, until idle; the lines that say where it started."""
    lines = {}
    for (name,) in PROCESSORS:
        result = run_ledger(env, name, "--idle-exit", "1")
        lines[name] = start_lines(result)
    return lines


def test_every_processor_starts_from_a_restored_log_and_then_from_its_checkpoints(embedded_env, tmp_path):
    env = embedded_env
    run_ledger_json(env, "up")
    for payee in ("payee-a", "payee-b"):
        run_ledger(env, "schedule", "set", payee, "--frequency", "DAILY", "--timezone", "UTC", "--plan", "flat-80",
                   "--method", "manual")
    day = "2026-11-20T10:00:00Z"
    assert publish(env, tmp_path / "a.jsonl", [(f"p{n}", f"payee-{'ab'[n % 2]}", 1000 + n, day)
                                               for n in range(20)])["accepted"] == 20
    run_ledger(env, "sequencer", "--idle-exit", "1")
    assert run_ledger_json(env, "run", "--at", "2026-11-21T01:00:00Z")["payouts_requested"] == 2
    run_ledger(env, "sequencer", "--idle-exit", "1")
    run_ledger(env, "transfers", "--idle-exit", "1")  # manual payouts: recorded as submitted, waiting for an operator
    run_ledger(env, "sequencer", "--idle-exit", "1")
    first = run_all(env)
    assert all(lines for lines in first.values()), first
    assert {row["processor"] for row in run_ledger_json(env, "checkpoints")} >= {
        "sequencer", "projector:read-models", "transfers"}

    run_ledger_json(env, "down")
    run_ledger_json(env, "up")  # a new broker: its topics restored from the archive, at other offsets
    assert run_ledger_json(env, "checkpoints") == []  # positions in the old topics mean nothing

    assert publish(env, tmp_path / "b.jsonl", [("p0", "payee-a", 1000, day), ("p20", "payee-a", 5000, day)]) == {
        "accepted": 1, "duplicates": 1, "rejected": 0, "errors": []}
    after_restore = run_all(env)
    for name, lines in after_restore.items():
        assert any("full replay" in line for line in lines), (name, lines)
    verify = run_ledger_json(env, "verify")
    assert verify["mismatches"] == 0 and verify["ledger_balanced"] is True, verify

    assert publish(env, tmp_path / "c.jsonl", [("p21", "payee-b", 700, day)])["accepted"] == 1
    again = run_all(env)
    for name in ("sequencer", "projector", "transfers"):
        assert any("resumed from checkpoint" in line for line in again[name]), (name, again[name])
    assert any("resumed from committed offsets" in line for line in again["notifier"]), again["notifier"]
    verify = run_ledger_json(env, "verify")
    assert verify["mismatches"] == 0 and verify["ledger_balanced"] is True, verify
