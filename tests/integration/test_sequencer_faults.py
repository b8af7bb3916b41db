"""SIGKILL the sequencer at random points while records flow: nothing doubled, nothing lost."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.integration.cli_env import LEDGER, env_for
from tests.integration.sequencing_helpers import chain_breaks, dead_letters, ledger_events, payment, send_raw

ROUNDS = 8
RECORDS_PER_ROUND = 300


def _env(settings, tmp_path: Path) -> dict[str, str]:
    # small batches: kills land between flush and commit more often. The test's own kills are not the records'
    # fault: two of them landing while the same record is processed alone (after an unclean stop) would
    # dead-letter a good payment as poison (test_foreign_producers.py tests that rule itself)
    return env_for(settings, tmp_path, LEDGER_SEQUENCER_BATCH_MAX="40", LEDGER_SEQUENCER_POISON_DEATHS="10")


@pytest.mark.faults
def test_sigkill_at_random_points_neither_doubles_nor_loses(settings, tmp_path):
    seed = int(os.environ.get("LEDGER_FAULT_SEED", random.randrange(2**31)))
    rng = random.Random(seed)
    env = _env(settings, tmp_path)
    sent_bytes: dict[str, bytes] = {}
    malformed_sent = 0
    kills = 0
    next_id = 0
    for round_number in range(ROUNDS):
        batch: list[bytes] = []
        for _ in range(RECORDS_PER_ROUND):
            roll = rng.random()
            if roll < 0.05 and sent_bytes:
                batch.append(sent_bytes[rng.choice(sorted(sent_bytes))])  # the same record redelivered
            elif roll < 0.08:
                batch.append(json.dumps(payment(f"bad-{next_id}", amount_minor=1.5)).encode())
                malformed_sent += 1
                next_id += 1
            else:
                payment_id = f"p-{next_id}"
                next_id += 1
                sent_bytes[payment_id] = json.dumps(payment(payment_id, payee_id=f"payee-{rng.randrange(5)}",
                                                            amount_minor=rng.randint(1, 99_999))).encode()
                batch.append(sent_bytes[payment_id])
        by_payee: dict[str, list[bytes]] = {}
        for value in batch:  # each record keyed by its payee (the contract): the keys spread them over partitions
            by_payee.setdefault(json.loads(value)["payee_id"], []).append(value)
        for payee_id, values in sorted(by_payee.items()):
            send_raw(settings, values, key=payee_id.encode())

        worker = subprocess.Popen([LEDGER, "sequencer"], env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.2, 2.5))  # the fault itself: kill at a random moment, not a wait for work
        if worker.poll() is None:
            worker.send_signal(signal.SIGKILL)
            kills += 1
        worker.wait(10)

    final = subprocess.run([LEDGER, "sequencer", "--idle-exit", "2", "--json"], env=env, capture_output=True,
                           text=True, timeout=300)
    assert final.returncode == 0, final.stderr

    expected_ids = set(sent_bytes)
    events = ledger_events(settings)
    counts = Counter(event.payload["payment_id"] for event, _ in events)
    assert kills >= ROUNDS // 2, f"seed {seed}: only {kills} kills landed"
    assert set(counts) == expected_ids, f"seed {seed}: lost {sorted(expected_ids - set(counts))[:5]}"
    assert max(counts.values()) == 1, f"seed {seed}: doubled {[k for k, v in counts.items() if v > 1][:5]}"
    assert chain_breaks(events) == [], f"seed {seed}"
    letters = dead_letters(settings)
    sources = Counter(letter.source for letter in letters)
    assert max(sources.values(), default=1) == 1, f"seed {seed}: a reject was dead-lettered twice"
    assert len(letters) == malformed_sent, f"seed {seed}"
