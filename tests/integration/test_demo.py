"""`ledger demo` end to end on the test broker and database: the real processors, the sandboxes, verify."""

from __future__ import annotations

import json
import subprocess

import sqlalchemy

from runtime.database import make_engine
from runtime.single_instance import single_instance
from tests.integration.cli_env import LEDGER, env_for

SMALL = ["--payees", "14", "--payments", "300", "--days", "3"]


def demo(settings, tmp_path, *arguments: str, timeout_s: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([LEDGER, "demo", "--json", *arguments], env=env_for(settings, tmp_path / "data"),
                          capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL)


def test_the_demo_appends_closes_pays_projects_and_verifies_a_balanced_ledger(settings, tmp_path):
    ran = demo(settings, tmp_path, *SMALL, "--seed", "7")
    assert ran.returncode == 0, ran.stderr[-3000:]
    summary = json.loads(ran.stdout)

    assert summary["ledger_balanced"] is True and summary["verify_mismatches"] == 0, summary
    assert summary["verify_events"] > summary["payments_appended"] > 0
    late = summary["late_payments"]
    assert summary["payments_appended"] == 300 + late  # every payment once ...
    assert summary["duplicates"] > 0 and summary["duplicates_dropped"] == summary["duplicates"]  # ... redeliveries dropped
    assert summary["dead_letters"] == summary["malformed_sent"] == 7  # every malformed input kept, with its bytes
    assert summary["rejected_at_intake"] == 0
    assert summary["ticks"] >= 3 * 4

    # payouts: every one requested ended settled or failed; the failures are the ones arranged, and nothing was paid twice
    assert summary["payouts_requested"] == summary["payouts_settled"] + summary["payouts_failed"] > 10
    assert {"no_account", "account_closed", "invalid_account_number", "payee_unreachable"} <= set(
        summary["failure_reasons"])
    assert summary["retries"] >= 1  # the injected 500s and 429s were retried
    assert summary["operator_retries"] == 1  # the closed Stripe account, fixed, then paid
    assert summary["operator_confirmed"] >= 1 and summary["operator_failed"] >= 1
    assert summary["paid_twice"] == 0
    for provider, row in summary["providers"].items():
        assert row["ok"] and row["ledger_settled_minor"], (provider, row)
    for code, row in summary["per_currency"].items():
        assert row["in_flight"] == 0 and row["earned_net"] == row["settled"] + row["unpaid"], (code, row)

    # the read models hold the same story (analysts and operators read these)
    engine = make_engine(settings.database_url)
    try:
        with engine.connect() as connection:
            statuses = dict(connection.execute(sqlalchemy.text(
                "SELECT status, count(*) FROM payouts WHERE payee_id LIKE :p GROUP BY status"),
                {"p": f"demo-{summary['run_id']}-%"}).all())
            dead = connection.execute(sqlalchemy.text("SELECT count(*) FROM dead_letters")).scalar_one()
    finally:
        engine.dispose()
    assert statuses == {"settled": summary["payouts_settled"], "failed": summary["payouts_failed"]}
    assert dead == 7

    # a second run on the same ledger holds the first run's payees (their sandbox accounts are gone)
    again = demo(settings, tmp_path, "--payees", "10", "--payments", "40", "--days", "1")
    assert again.returncode == 0, again.stderr[-3000:]
    second = json.loads(again.stdout)
    assert second["earlier_demo_payees_held"] == 14 - summary["payees_held"]  # not those the operator held already
    assert second["ledger_balanced"] is True and second["verify_mismatches"] == 0, second


def test_the_demo_refuses_to_run_beside_a_running_processor(settings, tmp_path):
    with single_instance(settings.database_url, f"transfers:{settings.topic_events}"):
        ran = demo(settings, tmp_path, *SMALL, timeout_s=60)
    assert ran.returncode == 1
    assert "`ledger transfers` is already running" in ran.stderr
    assert ran.stdout == ""
