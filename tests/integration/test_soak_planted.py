"""`ledger soak` can fail: a planted defect makes it fail with the seed that replays it."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from tests.integration.cli_env import LEDGER, env_for

SHORT = ["--days", "1", "--kill-every", "2"]


def soak(settings, tmp_path, *arguments: str, timeout_s: float = 420, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([LEDGER, "soak", "--json", *SHORT, *arguments], env=env_for(settings, tmp_path / "data", **env),
                          capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL)


@pytest.mark.faults
@pytest.mark.timeout(480)
def test_a_planted_defect_fails_the_soak_and_prints_the_seed_that_replays_it(settings, tmp_path):
    """The sequencer commits its input offsets before it makes a batch's outputs: a kill in between (the crash
    point `sequencer_planted_window`, armed at 50 % per batch) loses that batch's records."""
    ran = soak(settings, tmp_path, "--seed", "424242", "--hostile", "0", "--payees", "10", "--payments", "100",
               "--crash-point", "sequencer_planted_window:0.5", LEDGER_PLANTED_BUG="commit_before_flush")
    verdict = json.loads(ran.stdout)["soak"]
    assert ran.returncode == 1 and not verdict["passed"] and verdict["failures"], verdict
    # lost inputs are noticed as soon as the sequencer has committed past them (demo/loss_watch.py), or at the
    # end as payments never chained
    assert any(word in " ".join(verdict["failures"]) for word in ("payments lost", "never chained")), verdict
    replay = re.search(r"soak failed with seed 424242; replay: (ledger soak --seed 424242 [^(]+)", ran.stderr)
    assert replay, ran.stderr[-2000:]
    assert "--crash-point sequencer_planted_window:0.5" in replay.group(1)
