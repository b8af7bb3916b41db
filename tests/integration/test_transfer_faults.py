"""Kill the transfer processor (SIGKILL) at random points over hundreds of payouts: nobody is paid twice,
no payout is lost, and the ledger's money matches the provider's.

Kills come from outside at random times, and from inside at the narrow points a random kill seldom
hits (LEDGER_FAULT_POINTS): before recording an attempt, after recording it but before the call, and
after the provider answered but before the outcome is recorded. Connections reset before or after Stripe
executed a transfer are retried within seconds under the same key (quick retries), kills included. The processor runs as the real
`ledger transfers` command; Stripe is the project's Stripe-compatible server over HTTP.
"""

from __future__ import annotations

import random
import signal
import subprocess
import time
from collections import Counter

import pytest

from tests.integration.cli_env import LEDGER, env_for
from tests.integration.sequencing_helpers import dead_letters, ledger_events
from tests.integration.transfer_helpers import book_of, outcome_counts, request_payouts, sequencer_running
from sandbox.stripe import StripeTestServer

PAYOUTS = 150
MAX_KILLS = 30  # then one processor finishes what the kills left open (the kills land while payouts flow)
BAD_ACCOUNTS = 10  # fail permanently (no_account)


def start_processor(env) -> subprocess.Popen:
    return subprocess.Popen([LEDGER, "transfers"], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.faults
@pytest.mark.timeout(900)
def test_sigkills_at_random_points_pay_every_payout_exactly_once(settings, tmp_path):
    rng = random.Random(20261122)
    with StripeTestServer() as stripe_server:
        payees = {f"d{i:03d}": ("stripe_standard", stripe_server.create_account()) for i in range(PAYOUTS - BAD_ACCOUNTS)}
        payees.update({f"z{i:03d}": ("stripe_standard", f"acct_gone{i}") for i in range(BAD_ACCOUNTS)})
        requested = {e.payload["payout_id"]: e for e in request_payouts(settings, payees)}
        assert len(requested) == PAYOUTS
        base_env = env_for(settings, tmp_path, LEDGER_STRIPE_API_KEY="sk_test_ledger",
                           LEDGER_STRIPE_API_BASE=stripe_server.url, LEDGER_STRIPE_TIMEOUT_S="2",
                           LEDGER_RETRY_DELAYS_S="[1, 1, 2]", LEDGER_PROVIDER_CONCURRENCY="4")
        faulty_env = {**base_env, "LEDGER_FAULT_POINTS": "before_submit:0.02,after_submit:0.04,before_outcome:0.05"}
        kills = Counter()
        with sequencer_running(settings):
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline and sum(kills.values()) < MAX_KILLS:
                if rng.random() < 0.3:  # provider trouble now and then: 500s (stored), 429s, connections reset
                    stripe_server.inject(path_prefix="/v1/transfers", kind=rng.choice([
                        "server_error", "rate_limit", "accepted_then_500", "reset", "accepted_then_reset"]),
                        times=rng.randint(1, 3), retry_after_s=1)
                worker = start_processor(faulty_env)
                try:
                    worker.wait(timeout=rng.uniform(0.4, 2.0))
                    kills["self (fault point)" if worker.returncode == -signal.SIGKILL else f"exit {worker.returncode}"] += 1
                    assert worker.returncode == -signal.SIGKILL, worker.stderr.read()
                except subprocess.TimeoutExpired:
                    worker.send_signal(signal.SIGKILL)
                    worker.wait(timeout=30)
                    kills["outside"] += 1
                if all(p.status.terminal for p in book_of(settings).payouts.values()):
                    break
            # then let one processor finish whatever the kills left open
            stripe_server.clear_faults()
            worker = start_processor(base_env)
            try:
                finish = time.monotonic() + 240
                while not all(p.status.terminal for p in book_of(settings).payouts.values()):
                    assert time.monotonic() < finish, "payouts still open 240 s after the last kill"
                    assert worker.poll() is None, worker.stderr.read()
                    time.sleep(0.5)  # polling the ledger with a bounded deadline
            finally:
                worker.send_signal(signal.SIGTERM)
                worker.wait(timeout=30)
        assert sum(kills.values()) >= MAX_KILLS, kills

        book = book_of(settings)
        finals = outcome_counts(settings)
        # every payout settled or failed exactly once
        for payout_id in requested:
            outcomes = [kind for (kind, pid), n in finals.items() if pid == payout_id for _ in range(n)]
            assert len(outcomes) == 1, (payout_id, outcomes, book.get(payout_id))
        failed = {pid for (kind, pid) in finals if kind == "PayoutFailed"}
        assert {requested[pid].payee_id for pid in failed} == {p for p in payees if p.startswith("z")}
        # the provider created each idempotency key's transfer once, and each payout at most once
        assert set(stripe_server.creations_by_key().values()) == {1}
        per_payout = Counter(t["transfer_group"] for t in stripe_server.transfers())
        assert set(per_payout.values()) == {1} and set(per_payout) == set(requested) - failed
        # the sum paid equals the sum requested minus the failed
        paid = sum(t["amount"] for t in stripe_server.transfers())
        asked = sum(e.payload["net"].amount_minor for e in requested.values())
        lost = sum(requested[pid].payload["net"].amount_minor for pid in failed)
        assert paid == asked - lost
        # nothing was refused: a submit sent again after a kill is the same bytes, dropped as a duplicate
        assert dead_letters(settings) == []
        settled_in_ledger = sum(e.payload["amount"].amount_minor for e, _ in ledger_events(settings)
                                if e.event_type == "PayoutSettled")
        assert settled_in_ledger == paid
        print(f"kills: {dict(kills)}; payouts {len(requested)}, failed {len(failed)}, paid {paid}")
