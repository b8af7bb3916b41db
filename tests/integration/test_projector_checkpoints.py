"""The projector resumes from its checkpoint: it reads only the tail, keeps only open payouts in memory,
survives SIGKILL around the checkpoint's commit, and replays everything when the checkpoint does not prove."""

from __future__ import annotations

import json
import signal
import subprocess

import pytest
import sqlalchemy

from ledger import payouts as records
from ledger.codec import EventCodec
from processors.checkpoints import CheckpointStore
from processors.entity_store import EntityStore
from processors.ledger_client import LedgerClient
from processors.payout_run import send_commands
from projections.projector import CHECKPOINT_NAME, STATE_FORMAT
from projections.verify import verify
from runtime.database import make_engine
from tests.integration.cli_env import LEDGER, env_for
from tests.integration.sequencing_helpers import ledger_events
from tests.integration.test_projector import history, rows
from tests.integration.transfer_helpers import TWO_DAYS_AGO, book_of, sequence_until


def run_projector(settings, tmp_path, faults: str = "", **extra: str) -> tuple[dict | None, str]:
    """`ledger projector --idle-exit 1 --json` in a subprocess: (its stats, or None when it was SIGKILLed; its log)."""
    env = env_for(settings, tmp_path, **extra)
    if faults:
        env["LEDGER_FAULT_POINTS"] = faults
    result = subprocess.run([LEDGER, "projector", "--idle-exit", "1", "--json"], env=env, capture_output=True,
                            text=True, timeout=180, stdin=subprocess.DEVNULL)
    if faults and result.returncode == -signal.SIGKILL:
        return None, result.stderr
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout), result.stderr


def start_line(log: str) -> str:
    (line,) = [line for line in log.splitlines() if "resumed from checkpoint" in line or "full replay (" in line]
    return line


def add_payments(settings, payee: str, count: int, first: int = 0) -> None:
    """`count` new payments for `payee`, chained."""
    ids = {f"cp-{payee}-{n}" for n in range(first, first + count)}
    with LedgerClient(settings.kafka_bootstrap, settings) as client:
        client.record_batch([{"payment_id": payment_id, "payee_id": payee, "amount_minor": 700, "currency": "USD",
                              "occurred_at": TWO_DAYS_AGO.isoformat()} for payment_id in sorted(ids)])
    sequence_until(settings, lambda: ids <= {e.payload.get("payment_id") for e, _ in ledger_events(settings)
                                             if e.event_type == "PaymentCompleted"}, "the payments chained")


def assert_verified(settings) -> None:
    report = verify(settings, settings.kafka_bootstrap, settings.database_url)
    assert report.ok and report.unbalanced == 0, report.differences[:5]


def sql(settings, statement: str, **params) -> None:
    engine = make_engine(settings.database_url)
    try:
        with engine.begin() as connection:
            connection.execute(sqlalchemy.text(statement), params)
    finally:
        engine.dispose()


def checkpoint(settings):
    engine = make_engine(settings.database_url)
    try:
        loaded, _, _ = CheckpointStore(engine, CHECKPOINT_NAME, STATE_FORMAT).load()
        return loaded
    finally:
        engine.dispose()


def stored_payouts(settings, payout_ids) -> dict:
    engine = make_engine(settings.database_url)
    try:
        return EntityStore(engine, CHECKPOINT_NAME).get_many("payout", payout_ids)
    finally:
        engine.dispose()


def test_a_restart_reads_only_the_tail_and_keeps_only_open_payouts_in_memory(settings, tmp_path):
    requested = history(settings)
    first, log = run_projector(settings, tmp_path)
    assert "full replay: no checkpoint yet" in log and "full replay (no checkpoint yet)" in start_line(log)
    assert first["resumed"] is False and first["tail"] == first["events"] > 0 and first["checkpoints"] >= 1
    saved = checkpoint(settings)
    assert saved is not None and saved.events == first["events"]
    # finished payouts left memory for the entity store; the open one is in the checkpoint's state
    assert set(saved.state.book.payouts) == {requested["h-open"]}
    assert all(not earnings.paid_out for earnings in saved.state.earnings.values())
    assert set(stored_payouts(settings, requested.values())) == {requested["h-paid"], requested["h-failed"]}

    add_payments(settings, "h-paid", 3)
    second, log = run_projector(settings, tmp_path)
    line = start_line(log)
    assert "resumed from checkpoint of" in line and ": 3 records of tail read in" in line, line
    assert (second["resumed"], second["tail"], second["written"]) == (True, 3, 3)
    assert second["events"] == first["events"] + 3
    assert_verified(settings)

    third, log = run_projector(settings, tmp_path)  # nothing new: nothing read, nothing written
    assert ": 0 records of tail read in" in start_line(log)
    assert (third["tail"], third["written"], third["events"]) == (0, 0, second["events"])
    assert_verified(settings)


@pytest.mark.faults
def test_sigkill_around_the_checkpoint_commit_loses_and_doubles_nothing(settings, tmp_path):
    history(settings)
    every = {"LEDGER_CHECKPOINT_EVERY_EVENTS": "5"}
    # killed while writing its first checkpoint: nothing of that transaction stays, the restart replays all
    killed, _ = run_projector(settings, tmp_path, "projector_checkpoint_before_commit", **every)
    assert killed is None and checkpoint(settings) is None
    _, log = run_projector(settings, tmp_path, **every)
    assert "full replay: no checkpoint yet" in log
    assert_verified(settings)
    good = checkpoint(settings)

    # killed after a checkpoint committed: the restart resumes from that one and reads only what follows
    add_payments(settings, "h-open", 12)
    killed, _ = run_projector(settings, tmp_path, "projector_checkpoint_after_commit", **every)
    assert killed is None
    committed = checkpoint(settings)
    assert committed.events > good.events
    stats, log = run_projector(settings, tmp_path, **every)
    assert stats["resumed"] and f": {good.events + 12 - committed.events} records of tail read" in start_line(log)
    assert stats["events"] == good.events + 12
    assert_verified(settings)

    # killed before a checkpoint committed: the last good one is used, the tail is read again, nothing doubles
    good = checkpoint(settings)
    add_payments(settings, "h-open", 12, first=12)
    killed, _ = run_projector(settings, tmp_path, "projector_checkpoint_before_commit", **every)
    assert killed is None and checkpoint(settings).written_at == good.written_at
    stats, log = run_projector(settings, tmp_path, **every)
    assert stats["resumed"] and ": 12 records of tail read" in start_line(log)
    assert stats["events"] == good.events + 12 and stats["written"] <= 12  # rows and checkpoint: all or nothing
    assert_verified(settings)
    (balance,) = rows(settings, "SELECT unclosed_gross_minor FROM payee_balances WHERE payee_id = 'h-open' "
                                "AND currency = 'USD'")
    assert balance["unclosed_gross_minor"] == 1_000 + 24 * 700  # each payment counted once


def _edit_proof(settings) -> None:
    saved = checkpoint(settings)
    topic, parts = next(iter(saved.proofs.items()))
    partition = sorted(parts)[0]
    sql(settings, "UPDATE processor_checkpoints SET proofs = jsonb_set(proofs, CAST(:path AS text[]), "
                  "CAST(:digest AS jsonb)) WHERE processor = :p",
        path="{" + topic + "," + str(partition) + "}", digest=json.dumps("0" * 64), p=CHECKPOINT_NAME)


def _move_ahead(settings) -> None:
    saved = checkpoint(settings)
    topic, parts = next(iter(saved.positions.items()))
    ahead = {str(partition): offset + 100 for partition, offset in parts.items()}
    sql(settings, "UPDATE processor_checkpoints SET positions = jsonb_set(positions, CAST(:path AS text[]), "
                  "CAST(:ahead AS jsonb)) WHERE processor = :p",
        path="{" + topic + "}", ahead=json.dumps(ahead), p=CHECKPOINT_NAME)


EDITS = {
    "edited proof": (_edit_proof, "is not the record the checkpoint was written after"),
    "edited state": (lambda s: sql(s, "UPDATE processor_checkpoints SET state = state || '\\x00'::bytea"),
                     "does not match its SHA-256"),
    "ahead of the log": (_move_ahead, "the checkpoint is ahead of the log"),
    "older format": (lambda s: sql(s, "UPDATE processor_checkpoints SET format = format - 1"),
                     f"state format is {STATE_FORMAT - 1}"),
}


@pytest.mark.parametrize("edit", list(EDITS))
def test_a_checkpoint_that_does_not_prove_means_a_full_replay(settings, tmp_path, edit):
    history(settings)
    run_projector(settings, tmp_path)
    change, reason = EDITS[edit]
    change(settings)
    add_payments(settings, "h-failed", 2)
    stats, log = run_projector(settings, tmp_path)
    (refusal,) = [line for line in log.splitlines() if "full replay: " in line]
    assert reason in refusal, refusal
    assert "full replay (" in start_line(log) and stats["resumed"] is False
    assert stats["tail"] == stats["events"] and stats["written"] == 2
    assert_verified(settings)
    again, log = run_projector(settings, tmp_path)  # the replay wrote a good checkpoint again
    assert again["resumed"] and again["tail"] == 0
    assert_verified(settings)


def test_a_settled_payout_evicted_then_reversed_updates_its_row_and_balances(settings, tmp_path):
    requested = history(settings)
    run_projector(settings, tmp_path)
    paid_id = requested["h-paid"]
    assert paid_id not in checkpoint(settings).state.book.payouts and stored_payouts(settings, [paid_id])
    paid = book_of(settings).get(paid_id)
    send_commands(settings.kafka_bootstrap, settings.topic_commands, [
        records.failed(paid, 1, "manual", "account_closed", "bounced", False, paid.requested_at)], EventCodec())
    sequence_until(settings, lambda: book_of(settings).get(paid_id).reversed, "the reversal chained")
    # the reversal's batch is written, then the process dies before any newer checkpoint
    killed, _ = run_projector(settings, tmp_path, "projector_after_commit")
    assert killed is None
    stats, log = run_projector(settings, tmp_path)
    assert stats["resumed"] and ": 1 records of tail read" in start_line(log) and stats["written"] == 0
    add_payments(settings, "h-paid", 1)  # its balance row is written again from the fold in memory
    run_projector(settings, tmp_path)
    (payout,) = rows(settings, f"SELECT status, reversed, reason_code, net_minor FROM payouts WHERE payout_id = '{paid_id}'")
    assert (payout["status"], payout["reversed"], payout["reason_code"]) == ("failed", True, "account_closed")
    (balance,) = rows(settings, "SELECT settled_minor, unpaid_minor FROM payee_balances WHERE payee_id = 'h-paid'")
    assert (balance["settled_minor"], balance["unpaid_minor"]) == (0, payout["net_minor"])
    (day,) = rows(settings, "SELECT sum(payouts_failed) AS failed FROM daily_totals")
    assert day["failed"] == 2  # h-failed, then h-paid's reversal: each counted once
    assert_verified(settings)


# The classes a checkpoint pickles, as STATE_FORMAT reads them: a change here needs STATE_FORMAT bumped
# (projections/projector.py), or a checkpoint of the older shape would be unpickled into the new code.
STATE_SHAPE = {
    2: {"PayeeEarnings": "closed_through earned_net held in_flight last_sequence lines method minimum paid_out payee_id "
                         "plan schedule settled unpaid",
        "EarningLine": "currency deduction gross_minor occurred_at payment_id sequence services",
        "Payout": "accepted_at amount applied attempts cancel_reason correlation_id due_at due_event_id last_event_id "
                  "message method next_attempt payee_id payout_id period_id provider_reference reason_code "
                  "requested_at reversed status trigger updated_at",
        "Attempt": "finished_at message number outcome provider provider_reference reason_code retryable submitted_at",
        "_PayeeFacts": "events first_event_at hold_reason last_event_at schedule",
        "ReadModel": "_dirty _partition _prior_status book daily earning_rows earnings events facts heads period_rows "
                     "retain_rows",
        "PayoutBook": "destinations payouts requests"},
}


def test_the_state_format_names_the_shape_of_the_checkpointed_classes():
    import dataclasses

    from ledger.earnings import EarningLine, PayeeEarnings
    from ledger.payouts import Attempt, Payout, PayoutBook
    from projections.read_model import ReadModel, _PayeeFacts

    shape = {cls.__name__: " ".join(sorted(f.name for f in dataclasses.fields(cls)))
             for cls in (PayeeEarnings, EarningLine, Payout, Attempt, _PayeeFacts)}
    shape |= {type(obj).__name__: " ".join(sorted(vars(obj))) for obj in (ReadModel(), PayoutBook())}
    assert shape == STATE_SHAPE.get(STATE_FORMAT), "the checkpointed classes changed: bump STATE_FORMAT"
