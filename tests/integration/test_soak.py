"""`ledger soak` on the test broker: a short soak passes under kills, provider troubles, PostgreSQL restarts and
hostile input through every entrance (the planted defect that makes it fail: test_soak_planted.py, a module of
its own so the two long tests run on different workers)."""

from __future__ import annotations

import json
import random
import subprocess

import pytest

from runtime.processes import free_port
from tests.integration.cli_env import LEDGER, env_for

@pytest.mark.faults
@pytest.mark.timeout(600)
def test_a_short_soak_passes_and_its_verdict_covers_every_fault_and_entrance(settings, tmp_path):
    """A new seed each run (printed on failure with the command that replays it). The database is an embedded
    PostgreSQL of the test's own, so the schedule can restart it; the broker is the suite's."""
    seed = random.randrange(2**31)
    env = {key: value for key, value in env_for(settings, tmp_path / "data").items() if key != "LEDGER_DATABASE_URL"}
    env["LEDGER_EMBEDDED_POSTGRES_PORT"] = str(free_port())
    try:
        ran = subprocess.run([LEDGER, "soak", "--json", "--seed", str(seed), "--payees", "10", "--payments", "300",
                              "--days", "1", "--kill-every", "0.5", "--hostile", "1200"], env=env,
                             capture_output=True, text=True, timeout=540, stdin=subprocess.DEVNULL)
    finally:
        subprocess.run([LEDGER, "down"], env=env, capture_output=True, timeout=120, stdin=subprocess.DEVNULL)
    verdict = json.loads(ran.stdout)["soak"] if ran.stdout.strip() else {}
    assert ran.returncode == 0 and verdict.get("passed"), (seed, verdict.get("failures"), ran.stderr[-3000:])
    assert verdict["kills_total"] >= 30 and verdict["postgres_restarts"] >= 1, verdict
    sent = verdict["hostile_sent_by_entrance"]
    assert all(sent[name] > 0 for name in ("incoming", "incoming_after", "api", "publish", "webhooks")), sent
    assert verdict["hostile_not_refused"] == 0 and verdict["hostile_reasons_unnamed"] == 0, verdict
    entrances = verdict["entrances"]
    assert entrances["api_refused"] == sent["api"] and entrances["publish_refused"] == sent["publish"], entrances
    assert entrances["redelivery_sent"] > 0 and entrances["webhooks_accepted"] == 0, entrances
