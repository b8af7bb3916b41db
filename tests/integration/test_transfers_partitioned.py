"""Partitioned transfer processors (`ledger transfers --partitioned`) as real processes, killed and paused.

Stripe is the project's Stripe-compatible server over HTTP; a single sequencer chains what the
instances record. Afterwards: every payout settled (or failed) exactly once in the ledger, each
idempotency key created once at the provider and each payout paid at most once, the money paid equal
to the money requested, nothing dead-lettered, and per partition the epochs written on ledger.commands
never go back (a record produced by an instance after it lost the partition would show an older epoch
after a newer one).
"""

from __future__ import annotations

import random
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from processors.kafka_io import read_topic
from processors.partition_fence import EPOCH_HEADER
from processors.transfer_instances import lease_group
from sandbox.stripe import StripeTestServer
from runtime.kafka_admin import ensure_topics
from runtime.settings import TopicSpec
from tests.integration.cli_env import env_for, run_ledger
from tests.integration.partitioned_instances import PartitionedInstances
from tests.integration.sequencing_helpers import dead_letters, ledger_events
from tests.integration.test_sequencer_partitioned import payees_by_partition
from tests.integration.transfer_helpers import book_of, outcome_counts, request_payouts, sequencer_running

LEASE_S = 4.0
TAKEOVER_BOUND_S = LEASE_S + 8.0  # the lease runs out, the next rebalance (LEASE_S / 5), a new core resumes


def transfer_instances(settings, tmp_path: Path, env: dict[str, str]) -> PartitionedInstances:  # noqa: ANN001
    return PartitionedInstances(settings, tmp_path, "transfers", lease_group(settings), **env)


def stripe_payees(stripe_server: StripeTestServer, partitions: int, per_partition: int) -> dict[str, tuple[str, str]]:
    names = [name for found in payees_by_partition(partitions, per_partition).values() for name in found]
    return {name: ("stripe_standard", stripe_server.create_account()) for name in names}


def assert_paid_exactly_once(settings, stripe_server: StripeTestServer, requested: dict, logs: str) -> None:  # noqa: ANN001
    finals = outcome_counts(settings)
    for payout_id in requested:
        outcomes = [kind for (kind, pid), n in finals.items() if pid == payout_id for _ in range(n)]
        assert outcomes == ["PayoutSettled"], (payout_id, outcomes, logs)
    assert set(stripe_server.creations_by_key().values()) == {1}, logs
    per_payout = Counter(t["transfer_group"] for t in stripe_server.transfers())
    assert set(per_payout.values()) == {1} and set(per_payout) == set(requested), logs
    paid = sum(t["amount"] for t in stripe_server.transfers())
    assert paid == sum(e.payload["net"].amount_minor for e in requested.values())
    assert paid == sum(e.payload["amount"].amount_minor for e, _ in ledger_events(settings)
                       if e.event_type == "PayoutSettled")
    assert dead_letters(settings) == [], logs
    epochs: dict[int, list[int]] = {}
    for record in read_topic(settings.kafka_bootstrap, settings.topic_commands):
        header = dict(record.headers or ()).get(EPOCH_HEADER)
        if header is None:
            continue  # a close or request sent by the test itself
        partition, epoch = (int(part) for part in header.decode().split(":"))
        assert partition == record.partition
        epochs.setdefault(partition, []).append(epoch)
    assert epochs, "no record carries an instance's epoch"
    for partition, seen in epochs.items():
        assert seen == sorted(seen), f"partition {partition}: an older epoch was written after a newer one {seen}"


def all_settled(settings, payout_ids) -> bool:  # noqa: ANN001
    book = book_of(settings)
    return all(book.get(pid) is not None and book.get(pid).status.terminal for pid in payout_ids)


@pytest.mark.faults
@pytest.mark.timeout(600)
def test_two_instances_share_the_payouts_and_survive_sigkills(settings, tmp_path):
    rng = random.Random(20261205)
    with StripeTestServer() as stripe_server:
        payees = stripe_payees(stripe_server, settings.partitions_events, 40)
        requested = {e.payload["payout_id"]: e for e in request_payouts(settings, payees)}
        env = dict(LEDGER_STRIPE_API_KEY="sk_test_ledger", LEDGER_STRIPE_API_BASE=stripe_server.url,
                   LEDGER_STRIPE_TIMEOUT_S="2", LEDGER_PROVIDER_CONCURRENCY="2", LEDGER_PROVIDER_RATE_PER_S="10",
                   LEDGER_PARTITION_LEASE_S=str(LEASE_S),
                   LEDGER_FAULT_POINTS="before_submit:0.01,after_submit:0.02,before_outcome:0.02")
        instances = transfer_instances(settings, tmp_path, env)
        kills = Counter()
        try:
            with sequencer_running(settings):
                instances.start("a", LEDGER_FAULT_POINTS="")
                instances.start("b", LEDGER_FAULT_POINTS="")
                # the first kill from outside: the dead instance's partitions move to the other in bounded time
                instances.wait_for(lambda: len(set(instances.owner_pids().values())) == 2, 60,
                                   "both instances hold partitions")
                victim = instances.processes["a"]
                if victim.poll() is None:
                    victim.send_signal(signal.SIGKILL)
                    victim.wait(10)
                    kills["outside"] += 1
                killed_at = time.monotonic()
                survivor = instances.processes["b"].pid
                instances.wait_for(lambda: set(instances.owner_pids().values()) == {survivor}
                                   and len(instances.owner_pids()) == settings.partitions_events,
                                   TAKEOVER_BOUND_S, "the survivor takes every partition over")
                print(f"partitions moved {time.monotonic() - killed_at:.1f} s after the kill")
                # then random kills of either, each restarted at once, while payouts flow
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline and kills["outside, payouts open"] < 10 and not all_settled(
                        settings, requested):
                    for name, process in list(instances.processes.items()):
                        if process.poll() is not None:
                            assert process.returncode == -signal.SIGKILL, instances.logs()
                            kills["self (fault point)"] += 1
                            instances.start(name)
                    time.sleep(rng.uniform(0.5, 2.0))  # the time between two kills, not a wait for work
                    name = rng.choice(sorted(instances.processes))
                    process = instances.processes[name]
                    if process.poll() is None:
                        process.send_signal(signal.SIGKILL)
                        process.wait(10)
                        kills["outside"] += 1
                        if not all_settled(settings, requested):
                            kills["outside, payouts open"] += 1
                        instances.start(name)
                # both finish what is left, without faults
                for name, process in list(instances.processes.items()):
                    if process.poll() is None:
                        process.send_signal(signal.SIGKILL)
                        process.wait(10)
                    instances.start(name, LEDGER_FAULT_POINTS="")
                instances.wait_for(lambda: all_settled(settings, requested), 180, "every payout final after the kills")
        finally:
            instances.close()
        assert kills["outside, payouts open"] >= 6, kills
        assert_paid_exactly_once(settings, stripe_server, requested, instances.logs())
        print(f"kills: {dict(kills)}; payouts {len(requested)}")


@pytest.mark.faults
@pytest.mark.timeout(300)
def test_an_instance_paused_past_its_lease_acts_on_nothing_it_lost(settings, tmp_path):
    """Frozen after the provider answered and before the outcome is recorded; another instance takes the
    partitions over (and asks the provider before paying anything); resumed, the frozen one records nothing."""
    with StripeTestServer() as stripe_server:
        payees = stripe_payees(stripe_server, settings.partitions_events, 4)
        requested = {e.payload["payout_id"]: e for e in request_payouts(settings, payees)}
        env = dict(LEDGER_STRIPE_API_KEY="sk_test_ledger", LEDGER_STRIPE_API_BASE=stripe_server.url,
                   LEDGER_PARTITION_LEASE_S=str(LEASE_S))
        instances = transfer_instances(settings, tmp_path, env)
        try:
            with sequencer_running(settings):
                frozen = instances.start("frozen", LEDGER_FAULT_STOP_AT="before_outcome")
                instances.wait_for(lambda: Path(f"/proc/{frozen.pid}/stat").read_text().split(")")[1].split()[0] == "T",
                                   60, "the instance stopped itself after a provider answered")
                at_provider = len(stripe_server.transfers())
                assert at_provider >= 1
                other = instances.start("other")
                instances.wait_for(lambda: set(instances.owner_pids().values()) == {other.pid}
                                   and len(instances.owner_pids()) == settings.partitions_events, TAKEOVER_BOUND_S + 30,
                                   "the other instance takes every partition over")
                instances.wait_for(lambda: all_settled(settings, requested), 60, "the other instance pays everything")
                settled_before = outcome_counts(settings)
                frozen.send_signal(signal.SIGCONT)
                instances.wait_for(lambda: "stopped without writing anything more" in instances.logs(), 30,
                                   "the resumed instance finds its lease lost")
                # it rejoins and gets its share back; nothing more is paid or recorded
                instances.wait_for(lambda: len(set(instances.owner_pids().values())) == 2, 60,
                                   "the resumed instance rejoins")
                assert outcome_counts(settings) == settled_before
        finally:
            instances.close()
        assert_paid_exactly_once(settings, stripe_server, requested, instances.logs())


def test_partitioned_transfers_refuse_topics_laid_out_differently(settings, tmp_path):
    """ledger.commands with another partition count than ledger.events: a payee's outcomes would not sit at
    its chain's partition number, so the instance refuses to start, naming both counts."""
    other_commands = f"{settings.topic_commands}.one"
    ensure_topics(settings.kafka_bootstrap, [TopicSpec(other_commands, 1, {})])
    env = env_for(settings, tmp_path, LEDGER_TOPIC_COMMANDS=other_commands)
    done = run_ledger(env, "transfers", "--partitioned", "--idle-exit", "1", check=False, timeout_s=120)
    assert done.returncode != 0
    assert (f"partitioned transfers needs the same number of partitions on every topic it reads and writes, found "
            f"{settings.topic_events} {settings.partitions_events}, {other_commands} 1") in done.stderr, done.stderr
