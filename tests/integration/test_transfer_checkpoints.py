"""The transfer processor's checkpoint on the real broker, PostgreSQL and the Stripe-compatible server: a restart
reads only the tail, finished payouts leave memory and late events about them change nothing, SIGKILLs at the
checkpoint's crash points and after an outcome pay nobody twice, and a checkpoint that does not prove means a
full replay that stays correct."""

from __future__ import annotations

import json
import re
import signal
import subprocess
from collections import Counter

import pytest
import sqlalchemy

from ledger import payouts as records
from ledger.codec import EventCodec
from processors.checkpoints import CheckpointStore
from processors.entity_store import EntityStore
from processors.log_end import end_offsets
from processors.payout_run import send_commands
from processors.provider_lane import utc_now
from processors.transfer_checkpoint import KIND, PROCESSOR, STATE_FORMAT
from runtime.database import make_engine
from sandbox.stripe import StripeTestServer
from tests.integration.cli_env import LEDGER, env_for
from tests.integration.sequencing_helpers import dead_letters, run_sequencer
from tests.integration.transfer_helpers import (all_final, book_of, outcome_counts, processor_running,
                                                request_payouts, sequencer_running, types_of, wait_until)


def stripe_settings(settings, server, **changes):
    return settings.model_copy(update={"stripe_api_key": "sk_test_ledger", "stripe_api_base": server.url,
                                       "stripe_timeout_s": 5.0, "retry_delays_s": [1, 1, 1], **changes})


def pay(settings, server, prefix: str, count: int, bad: int = 0) -> dict[str, object]:
    """`count` payouts requested and chained (the last `bad` to closed accounts), by payout id."""
    payees = {f"{prefix}{i}": ("stripe_standard", server.create_account()) for i in range(count - bad)}
    payees.update({f"{prefix}x{i}": ("stripe_standard", f"acct_gone_{prefix}{i}") for i in range(bad)})
    return {e.payload["payout_id"]: e for e in request_payouts(settings, payees)}


def started(lines: list[str]) -> str | None:
    return next((line for line in lines if line.startswith(("resumed from", "full replay ("))), None)


def tail_of(line: str) -> int:
    return int(re.search(r": (\d+) records", line).group(1))


def lookups(server) -> int:
    return sum(1 for method, path, *_ in server.requests_log() if method == "GET" and path.startswith("/v1/transfers"))


def checkpoint_positions(settings) -> dict:
    checkpoint, reason, _ = CheckpointStore(make_engine(settings.database_url), PROCESSOR, STATE_FORMAT).load()
    assert checkpoint is not None, reason
    return checkpoint.positions


def unread(settings, positions: dict) -> int:
    """Records on ledger.events and ledger.commands after the checkpoint's positions."""
    return sum(end - positions.get(topic, {}).get(partition, 0)
               for topic in (settings.topic_events, settings.topic_commands)
               for partition, end in end_offsets(settings.kafka_bootstrap, topic).items())


def assert_paid_once(settings, server, requested: dict) -> None:
    """Each payout settled or failed exactly once (a settled one may fail later: that is its second outcome),
    one provider creation per key, and one transfer for each settled payout, none for the others."""
    finals = outcome_counts(settings)
    settled = {pid for (kind, pid) in finals if kind == "PayoutSettled"}
    for payout_id in requested:
        counts = (finals[("PayoutSettled", payout_id)], finals[("PayoutFailed", payout_id)])
        assert counts in ((1, 0), (0, 1), (1, 1)), (payout_id, types_of(settings, payout_id))
    assert set(server.creations_by_key().values()) == {1}
    per_payout = Counter(t["transfer_group"] for t in server.transfers())
    assert set(per_payout.values()) == {1} and set(per_payout) == settled & set(requested)
    assert dead_letters(settings) == []


def test_a_restart_reads_only_the_tail_and_late_events_about_finished_payouts_change_nothing(settings):
    with StripeTestServer() as server:
        settings = stripe_settings(settings, server)
        first = pay(settings, server, "a", 4, bad=1)
        lines: list[str] = []
        with sequencer_running(settings), processor_running(settings, database_url=settings.database_url,
                                                            log_lines=lines):
            wait_until(lambda: all_final(settings, set(first)), 60, "the first payouts final")
        assert started(lines).startswith("full replay (no checkpoint yet)")
        # the clean stop wrote a checkpoint, and the finished payouts left memory for processor_entities
        finished = EntityStore(make_engine(settings.database_url), PROCESSOR).get_many(KIND, first)
        assert {pid: payout.status.value for pid, (payout, _) in finished.items()} == {
            pid: book_of(settings).get(pid).status.value for pid in first}

        # a paid payout fails days later (as a webhook reports it), and new payouts are requested
        late_id = next(pid for pid in first if book_of(settings).get(pid).status.value == "settled")
        late = records.failed(book_of(settings).get(late_id), 1, "stripe", "account_closed", "bounced", False,
                              utc_now())
        send_commands(settings.kafka_bootstrap, settings.topic_commands, [late], EventCodec())
        run_sequencer(settings, idle_exit_s=1.0)
        second = pay(settings, server, "b", 3)
        expected_tail = unread(settings, checkpoint_positions(settings))
        creations = dict(server.creations_by_key())

        lines.clear()
        with sequencer_running(settings), processor_running(settings, database_url=settings.database_url,
                                                            log_lines=lines) as worker:
            wait_until(lambda: started(lines) is not None, 30, "the processor started")
            assert started(lines).startswith("resumed from checkpoint") and tail_of(started(lines)) == expected_tail
            assert not set(first) & set(worker.book.payouts) - {late_id}  # finished payouts are not in memory
            wait_until(lambda: all_final(settings, set(second)), 60, "the new payouts final")
        # the new period pays the three new payees, and again the two whose money came back (new payout ids)
        assert len(second) == 5 and not set(second) & set(first)
        assert worker.stats.submitted == 5
        assert {key: n for key, n in server.creations_by_key().items() if key not in creations} == {
            pid: 1 for pid in second if not second[pid].payee_id.startswith("ax")}
        assert_paid_once(settings, server, {**first, **second})
        (restored, _) = EntityStore(make_engine(settings.database_url), PROCESSOR).get_many(KIND, [late_id])[late_id]
        assert (restored.status.value, restored.reversed) == ("failed", True)
        assert types_of(settings, late_id)[-2:] == [("PayoutSettled", 1), ("PayoutFailed", 1)]


def test_an_outcome_not_chained_at_a_crash_or_at_a_checkpoint_is_never_asked_for_again(settings, tmp_path):
    with StripeTestServer() as server:
        settings = stripe_settings(settings, server)
        (payout_id,) = pay(settings, server, "o", 1)
        server.inject(path_prefix="/v1/transfers", method="POST", kind="slow", delay_s=2.0)
        env = env_for(settings, tmp_path, LEDGER_STRIPE_API_KEY="sk_test_ledger", LEDGER_STRIPE_API_BASE=server.url,
                      LEDGER_STRIPE_TIMEOUT_S="5", LEDGER_CHECKPOINT_EVERY_S="0.2",
                      LEDGER_FAULT_POINTS="transfers_after_outcome:1")
        worker = subprocess.Popen([LEDGER, "transfers"], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True)
        try:
            with sequencer_running(settings):
                wait_until(lambda: ("PayoutSubmitted", 1) in types_of(settings, payout_id), 30, "the attempt chained")
            # the sequencer is stopped: the outcome the processor sends now stays unchained in ledger.commands
            assert worker.wait(timeout=30) == -signal.SIGKILL, worker.stderr.read()
        finally:
            if worker.poll() is None:
                worker.kill()
        assert server.creations_by_key() == {payout_id: 1}
        assert types_of(settings, payout_id)[-1] == ("PayoutSubmitted", 1)
        positions = checkpoint_positions(settings)  # written while the provider answered, before the outcome
        assert unread(settings, positions) >= 1
        asked = lookups(server)

        for _ in range(2):  # after the crash (outcome after the checkpoint), then after a clean stop (before it)
            lines: list[str] = []
            with processor_running(settings, database_url=settings.database_url, log_lines=lines) as restarted:
                wait_until(lambda: started(lines) is not None, 30, "the processor started")
                assert started(lines).startswith("resumed from checkpoint")
                payout = restarted.book.get(payout_id)
                assert payout is None or payout.status.value == "settled"
            assert restarted.stats.submitted == 0 and lookups(server) == asked
            assert types_of(settings, payout_id)[-1] == ("PayoutSubmitted", 1)  # still not chained

        with sequencer_running(settings), processor_running(settings, database_url=settings.database_url):
            wait_until(lambda: all_final(settings, {payout_id}), 30, "the outcome chained")
        assert lookups(server) == asked and server.creations_by_key() == {payout_id: 1}
        assert types_of(settings, payout_id) == [
            ("PayoutRequested", None), ("PayoutSubmitted", 1), ("PayoutSettled", 1)]
        assert dead_letters(settings) == []


@pytest.mark.faults
@pytest.mark.timeout(600)
@pytest.mark.parametrize("point", ["transfers_checkpoint_before_commit", "transfers_checkpoint_after_commit",
                                   "transfers_after_outcome"])
def test_sigkill_at_a_checkpoint_or_after_an_outcome_pays_every_payout_exactly_once(settings, tmp_path, point):
    with StripeTestServer(latency_s=0.05) as server:
        requested = pay(settings, server, "k", 16, bad=2)
        env = env_for(settings, tmp_path, LEDGER_STRIPE_API_KEY="sk_test_ledger", LEDGER_STRIPE_API_BASE=server.url,
                      LEDGER_STRIPE_TIMEOUT_S="3", LEDGER_RETRY_DELAYS_S="[1, 1, 2]", LEDGER_PROVIDER_CONCURRENCY="2",
                      LEDGER_CHECKPOINT_EVERY_S="0.3")
        kills = 0
        with sequencer_running(settings):
            for _ in range(12):
                worker = subprocess.Popen([LEDGER, "transfers"], env={**env, "LEDGER_FAULT_POINTS": f"{point}:1"},
                                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                          text=True)
                try:
                    returncode = worker.wait(timeout=20)
                except subprocess.TimeoutExpired:  # nothing left that reaches the point (every outcome is sent)
                    worker.send_signal(signal.SIGTERM)
                    assert worker.wait(timeout=30) == 0, worker.stderr.read()  # (20 s: its handlers are set)
                    break
                assert returncode == -signal.SIGKILL, worker.stderr.read()
                kills += 1
                if all_final(settings, set(requested)):
                    break
            if not all_final(settings, set(requested)):  # one processor without the fault finishes the rest
                finisher = subprocess.Popen([LEDGER, "transfers"], env=env, stdin=subprocess.DEVNULL,
                                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                try:
                    wait_until(lambda: all_final(settings, set(requested)), 120, "every payout final after the kills")
                finally:
                    finisher.send_signal(signal.SIGTERM)
                    assert finisher.wait(timeout=30) in (0, -signal.SIGTERM), finisher.stderr.read()
        assert kills >= 2
        assert_paid_once(settings, server, requested)
        failed = {pid for (kind, pid) in outcome_counts(settings) if kind == "PayoutFailed"}
        assert {requested[pid].payee_id for pid in failed} == {"kx0", "kx1"}


@pytest.mark.parametrize("edit", ["hand-edited", "ahead of the log", "older format"])
def test_a_checkpoint_that_does_not_prove_means_a_full_replay_that_pays_nobody_twice(settings, edit):
    mine = " WHERE processor = :processor"
    change = {"hand-edited": ("UPDATE processor_checkpoints SET state = state || '\\x00'::bytea" + mine, "SHA-256"),
              "ahead of the log": ("UPDATE processor_checkpoints SET positions = CAST(:positions AS jsonb)" + mine,
                                   "ahead of the log"),
              "older format": ("UPDATE processor_checkpoints SET format = format - 1" + mine, "state format")}[edit]
    with StripeTestServer() as server:
        settings = stripe_settings(settings, server)
        first = pay(settings, server, "f", 3)
        with sequencer_running(settings), processor_running(settings, database_url=settings.database_url):
            wait_until(lambda: all_final(settings, set(first)), 60, "the first payouts final")
        second = pay(settings, server, "g", 2)
        positions = checkpoint_positions(settings)
        partition = min(positions[settings.topic_events])
        positions[settings.topic_events][partition] += 100_000
        ahead = json.dumps({topic: {str(p): o for p, o in parts.items()} for topic, parts in positions.items()})
        with make_engine(settings.database_url).begin() as connection:
            edited = connection.execute(sqlalchemy.text(change[0]), {"positions": ahead, "processor": PROCESSOR})
            assert edited.rowcount == 1

        lines: list[str] = []
        with sequencer_running(settings), processor_running(settings, database_url=settings.database_url,
                                                            log_lines=lines) as worker:
            wait_until(lambda: started(lines) is not None, 30, "the processor started")
            (refusal,) = [line for line in lines if line.startswith("full replay: ")]
            assert change[1] in refusal
            assert started(lines).startswith("full replay (")
            wait_until(lambda: all_final(settings, set(second)), 60, "the new payouts final")
        assert worker.stats.submitted == 2
        assert_paid_once(settings, server, {**first, **second})
        # the full replay wrote a checkpoint of its own at the stop: the next start uses it
        lines.clear()
        with processor_running(settings, database_url=settings.database_url, log_lines=lines):
            wait_until(lambda: started(lines) is not None, 30, "the processor started")
        assert started(lines).startswith("resumed from checkpoint")
