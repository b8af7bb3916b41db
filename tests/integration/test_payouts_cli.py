"""`ledger payouts list|show|confirm|fail|retry|cancel` on the real stack: manual payouts from request to outcome."""

from __future__ import annotations

import json
import subprocess

from ledger.codec import EventCodec
from processors.payout_run import fold_ledger
from tests.integration.cli_env import LEDGER, env_for
from tests.integration.transfer_helpers import book_of, processor_running, request_payouts, sequencer_running, wait_until


def cli(env, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([LEDGER, *args], env=env, capture_output=True, text=True, timeout=120)
    assert (result.returncode == 0) == ok, (result.returncode, result.stdout, result.stderr)
    return result


def test_operators_list_show_confirm_fail_retry_and_cancel_manual_payouts(settings, tmp_path):
    env = env_for(settings, tmp_path)
    requested = {e.payee_id: e.payload["payout_id"] for e in request_payouts(
        settings, {name: ("manual", "") for name in ("m-paid", "m-failed", "m-cancel")})}
    with sequencer_running(settings):
        # cancel one before any attempt: its money is the payee's again, and no provider ever sees it
        out = json.loads(cli(env, "payouts", "cancel", requested["m-cancel"], "--reason", "duplicate",
                             "--json").stdout)
        assert out["verdict"] == "chained"
        again = cli(env, "payouts", "cancel", requested["m-cancel"], "--reason", "again", ok=False)
        assert "is cancelled" in again.stderr and again.returncode == 1

        with processor_running(settings):
            wait_until(lambda: {p.status.value for pid, p in book_of(settings).payouts.items()
                            if pid != requested["m-cancel"]} == {"at_provider"}, 30, "manual payouts at the operator")

        listed = json.loads(cli(env, "payouts", "list", "--status", "at_provider", "--json").stdout)
        assert {row["payee_id"] for row in listed["payouts"]} == {"m-paid", "m-failed"}
        refused = cli(env, "payouts", "cancel", requested["m-paid"], "--reason", "too late", ok=False)
        assert "only a requested payout" in refused.stderr

        cli(env, "payouts", "confirm", requested["m-paid"], "--reference", "cash receipt 17")
        cli(env, "payouts", "fail", requested["m-failed"], "--reason-code", "invalid_account_number",
            "--message", "IBAN belongs to someone else")
        shown = json.loads(cli(env, "payouts", "show", requested["m-failed"], "--json").stdout)
        assert (shown["status"], shown["reason_code"]) == ("failed", "invalid_account_number")
        assert [step["outcome"] for step in shown["timeline"]] == ["failed"]
        paid = json.loads(cli(env, "payouts", "show", requested["m-paid"], "--json").stdout)
        assert (paid["status"], paid["provider_reference"]) == ("settled", "cash receipt 17")

        # retrying a failed payout requests a new payout of the returned money, once however often it is asked
        first = json.loads(cli(env, "payouts", "retry", requested["m-failed"], "--json").stdout)
        second = json.loads(cli(env, "payouts", "retry", requested["m-failed"], "--json").stdout)
        assert first["verdict"] == second["verdict"] == "chained"
        assert first["payout_id"] == second["payout_id"] != requested["m-failed"]
    book = book_of(settings)
    assert book.get(first["payout_id"]).status.value == "requested"
    assert book.get(first["payout_id"]).amount == book.get(requested["m-failed"]).amount
    earnings = fold_ledger(settings.kafka_bootstrap, settings.topic_events, EventCodec())
    assert earnings["m-cancel"].balance("USD").unpaid == book.get(requested["m-cancel"]).amount
    assert earnings["m-paid"].balance("USD").settled == book.get(requested["m-paid"]).amount
    missing = cli(env, "payouts", "show", "no-such-payout", ok=False)
    assert "not in the ledger" in missing.stderr
