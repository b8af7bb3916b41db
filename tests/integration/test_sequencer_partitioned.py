"""Partitioned sequencer instances (`ledger sequencer --partitioned`) as real processes, killed and paused.

Each test runs two instances on the test's own topics with a short lease, sends payments for payees
spread over every partition, and checks the ledger afterwards: every payment chained exactly once,
every payee's chain intact, no input dead-lettered twice, and per partition the epochs written on the
events never go back (a write by an instance after it lost the partition would show an older epoch
after a newer one).
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import pytest

from ledger.codec import EventCodec
from ledger.intake import parse_record
from processors import ledger_replay
from processors.kafka_io import make_producer, read_topic
from processors.partition_fence import EPOCH_HEADER
from processors.partitioning import partition_for
from processors.sequencer_instances import lease_group
from processors.sequencer_outputs import REROUTED_HEADER
from tests.integration.cli_env import LEDGER
from tests.integration.partitioned_instances import PartitionedInstances
from tests.integration.sequencing_helpers import chain_breaks, dead_letters, ledger_events, payment, send_raw

LEASE_S = 4.0
TAKEOVER_BOUND_S = LEASE_S + 6.0  # the lease runs out, then the next rebalance (every LEASE_S / 5) and a rebuild


def wait_until(predicate: Callable[[], object], timeout_s: float, what: str) -> object:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)  # polling interval of a bounded wait, not a wait for work
    raise AssertionError(f"not within {timeout_s} s: {what}")


def payees_by_partition(partitions: int, per_partition: int) -> dict[int, list[str]]:
    found: dict[int, list[str]] = {p: [] for p in range(partitions)}
    index = 0
    while min(len(names) for names in found.values()) < per_partition:
        name = f"payee-{index}"
        placed = found[partition_for(name.encode(), partitions)]
        if len(placed) < per_partition:
            placed.append(name)
        index += 1
    return found


class Instances(PartitionedInstances):
    """`ledger sequencer --partitioned` processes of one test, their logs kept for a failure's message."""

    def __init__(self, settings, tmp_path: Path) -> None:  # noqa: ANN001 - Settings
        # poison deaths: the tests' own kills are not the records' fault (see test_sequencer_faults.py)
        super().__init__(settings, tmp_path, "sequencer", lease_group(settings), LEDGER_PARTITION_LEASE_S=str(LEASE_S),
                         LEDGER_SEQUENCER_BATCH_MAX="50", LEDGER_SEQUENCER_POISON_DEATHS="10")


@pytest.fixture
def instances(settings, tmp_path):
    running = Instances(settings, tmp_path)
    yield running
    running.close()


def send_payments(settings, payees: list[str], ids: range, rng: random.Random) -> dict[str, str]:  # noqa: ANN001
    """Send one payment per id, each to a random payee, keyed by payee; returns id -> payee."""
    sent: dict[str, str] = {}
    by_payee: dict[str, list[bytes]] = {}
    for number in ids:
        payee = rng.choice(payees)
        sent[f"p-{number}"] = payee
        by_payee.setdefault(payee, []).append(json.dumps(payment(f"p-{number}", payee_id=payee,
                                                                 amount_minor=100 + number)).encode())
    for payee, values in sorted(by_payee.items()):
        send_raw(settings, values, key=payee.encode())
    return sent


def chained_count(settings) -> int:  # noqa: ANN001
    return sum(1 for _ in read_topic(settings.kafka_bootstrap, settings.topic_events))


def assert_ledger_exact(settings, expected: dict[str, str], logs: str) -> None:  # noqa: ANN001
    events = ledger_events(settings)
    counts = Counter(event.payload["payment_id"] for event, _ in events)
    assert set(counts) == set(expected), f"lost {sorted(set(expected) - set(counts))[:5]}\n{logs}"
    assert max(counts.values()) == 1, f"doubled {[k for k, v in counts.items() if v > 1][:5]}\n{logs}"
    assert all(event.payee_id == expected[event.payload["payment_id"]] for event, _ in events)
    assert chain_breaks(events) == [], logs
    sources = Counter(letter.source for letter in dead_letters(settings))
    assert max(sources.values(), default=1) == 1, "an input was dead-lettered twice"
    epochs: dict[int, list[int]] = {}
    for record in read_topic(settings.kafka_bootstrap, settings.topic_events):
        header = dict(record.headers).get(EPOCH_HEADER)
        assert header is not None, "a partitioned instance wrote an event without its epoch"
        partition, epoch = (int(part) for part in header.decode().split(":"))
        assert partition == record.partition
        epochs.setdefault(record.partition, []).append(epoch)
    for partition, seen in epochs.items():
        assert seen == sorted(seen), f"partition {partition}: an older epoch was written after a newer one {seen}"


def test_two_instances_share_the_partitions_and_chain_each_payment_once(settings, instances):
    rng = random.Random(7)
    partitions = settings.partitions_events
    payees = [name for names in payees_by_partition(partitions, 3).values() for name in names]
    first = instances.start("a")
    wait_until(lambda: len(instances.owners()) == partitions, 60, f"one instance owns every partition\n{instances.logs()}")
    assert set(instances.owner_pids().values()) == {first.pid}
    expected = send_payments(settings, payees, range(0, 300), rng)
    second = instances.start("b")
    wait_until(lambda: set(instances.owner_pids().values()) == {first.pid, second.pid}
               and len(instances.owners()) == partitions, 60, f"the second instance gets its share\n{instances.logs()}")
    listed = subprocess.run([LEDGER, "partitions", "--json"], env=instances.env, capture_output=True, text=True,
                            timeout=60)
    assert listed.returncode == 0, listed.stderr
    group = json.loads(listed.stdout)[lease_group(settings)]
    assert len(group["members"]) == 2
    assert [row["partition"] for row in group["partitions"]] == list(range(partitions))
    assert {int(row["owner"].split("-")[-2]) for row in group["partitions"]} == {first.pid, second.pid}
    assert all(row["epoch"] >= 1 and 0 < row["expires_in_s"] <= LEASE_S for row in group["partitions"])
    shown = subprocess.run([LEDGER, "partitions"], env=instances.env, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and "2 live instance(s)" in " ".join(shown.stdout.split())
    expected |= send_payments(settings, payees, range(300, 600), rng)
    wait_until(lambda: chained_count(settings) >= len(expected), 60, f"every payment chained\n{instances.logs()}")
    instances.stop_all()
    assert first.returncode == 0 and second.returncode == 0, instances.logs()
    assert_ledger_exact(settings, expected, instances.logs())
    assert not instances.owner_pids()  # both released their leases when they stopped


def test_publish_predicts_verdicts_from_the_partition_checkpoints(settings, instances, monkeypatch):
    payees = [name for names in payees_by_partition(settings.partitions_events, 2).values() for name in names]
    first = instances.start("a")
    expected = send_payments(settings, payees, range(0, 120), random.Random(3))
    wait_until(lambda: chained_count(settings) >= len(expected), 60, f"every payment chained\n{instances.logs()}")
    instances.stop_all()  # a clean stop writes each partition's checkpoint
    assert first.returncode == 0, instances.logs()
    expected |= send_payments(settings, payees, range(120, 130), random.Random(4))  # not chained: no sequencer
    monkeypatch.setattr(ledger_replay, "load_index", lambda *_, **__: pytest.fail("folded the whole log"))
    index = ledger_replay.open_index(settings.kafka_bootstrap, settings.topic_events, settings.database_url,
                                     EventCodec(), dlq_topic=settings.topic_dlq)
    assert index.events == 120
    limits, now = settings.intake_limits(), datetime.now(timezone.utc)
    chained = parse_record(payment("p-5", payee_id=expected["p-5"], amount_minor=105), limits, now)
    assert index.verdict(chained).status == "duplicate"
    assert index.verdict(parse_record(payment("p-125", payee_id=expected["p-125"], amount_minor=225), limits,
                                      now)).status == "accept"
    assert index.chain.heads  # the merged heads of every partition


def test_one_payment_id_under_two_payees_is_refused_as_a_conflict(settings, instances):
    payees = payees_by_partition(settings.partitions_events, 1)
    one, other, third, fourth = payees[0][0], payees[1][0], payees[2][0], payees[1][0]
    instances.start("a")
    wait_until(lambda: len(instances.owners()) == settings.partitions_events, 60, instances.logs())
    send_raw(settings, [json.dumps(payment("shared-1", payee_id=one)).encode()], key=one.encode())
    wait_until(lambda: chained_count(settings) == 1, 30, f"the first payment chained\n{instances.logs()}")
    send_raw(settings, [json.dumps(payment("shared-1", payee_id=other)).encode()], key=other.encode())
    # the same id under two payees of two partitions at the same moment: exactly one of them wins
    send_raw(settings, [json.dumps(payment("shared-2", payee_id=third)).encode()], key=third.encode())
    send_raw(settings, [json.dumps(payment("shared-2", payee_id=fourth, amount_minor=5)).encode()],
             key=fourth.encode())
    wait_until(lambda: len(dead_letters(settings)) == 2, 30, f"two conflicts dead-lettered\n{instances.logs()}")
    events = ledger_events(settings)
    chained = Counter(event.payload["payment_id"] for event, _ in events)
    assert chained == {"shared-1": 1, "shared-2": 1}
    assert [event.payee_id for event, _ in events if event.payload["payment_id"] == "shared-1"] == [one]
    letters = dead_letters(settings)
    assert all(letter.stage == "ledger" for letter in letters)
    assert all("already recorded with different content" in letter.reason for letter in letters), letters
    refused = [json.loads(letter.value)["payee_id"] for letter in letters
               if json.loads(letter.value)["payment_id"] == "shared-1"]
    assert refused == [other]


@pytest.mark.faults
def test_sigkill_moves_partitions_and_nothing_is_doubled_or_lost(settings, instances):
    rng = random.Random(11)
    payees = [name for names in payees_by_partition(settings.partitions_events, 2).values() for name in names]
    processes = {"a": instances.start("a"), "b": instances.start("b")}
    wait_until(lambda: len(set(instances.owner_pids().values())) == 2, 60, f"both own partitions\n{instances.logs()}")
    expected: dict[str, str] = {}
    takeovers: list[float] = []
    for round_number in range(4):
        victim_name = "a" if round_number % 2 == 0 else "b"
        survivor = processes["b" if victim_name == "a" else "a"]
        expected |= send_payments(settings, payees, range(round_number * 250, (round_number + 1) * 250), rng)
        time.sleep(rng.uniform(0.1, 1.0))  # the fault itself: a kill at a random moment while records flow
        victim = processes[victim_name]
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        killed_at = time.monotonic()
        wait_until(lambda: set(instances.owner_pids().values()) == {survivor.pid}
                   and len(instances.owners()) == settings.partitions_events, TAKEOVER_BOUND_S + 5,
                   f"round {round_number}: the survivor takes every partition\n{instances.logs()}")
        takeovers.append(time.monotonic() - killed_at)
        processes[victim_name] = instances.start(victim_name)
        wait_until(lambda: len(set(instances.owner_pids().values())) == 2, 60,
                   f"round {round_number}: the restarted instance gets its share\n{instances.logs()}")
    wait_until(lambda: chained_count(settings) >= len(expected), 90, f"every payment chained\n{instances.logs()}")
    instances.stop_all()
    assert max(takeovers) <= TAKEOVER_BOUND_S, takeovers
    assert_ledger_exact(settings, expected, instances.logs())


@pytest.mark.faults
def test_a_paused_instance_acts_on_nothing_it_no_longer_owns(settings, instances):
    """An instance freezes in the middle of a batch (it stops itself with SIGSTOP on a marked record, after
    it read and claimed the batch and before it produced the marked payment), stays frozen past its lease,
    and is resumed after the other instance took its partitions over and chained that payment."""
    rng = random.Random(5)
    by_partition = payees_by_partition(settings.partitions_events, 2)
    payees = [name for names in by_partition.values() for name in names]
    paused = instances.start("a", LEDGER_FAULT_PAUSE="pause-me")
    other = instances.start("b")
    wait_until(lambda: len(set(instances.owner_pids().values())) == 2, 60, f"both own partitions\n{instances.logs()}")
    expected = send_payments(settings, payees, range(0, 200), rng)
    wait_until(lambda: chained_count(settings) >= len(expected), 60, f"chained by both\n{instances.logs()}")
    owned_by_paused = sorted(p for p, pid in instances.owner_pids().items() if pid == paused.pid)
    assert owned_by_paused, instances.owners()
    marked_payee = by_partition[owned_by_paused[0]][0]
    send_raw(settings, [json.dumps(payment("p-pause-me", payee_id=marked_payee)).encode()], key=marked_payee.encode())
    expected["p-pause-me"] = marked_payee
    wait_until(lambda: open(f"/proc/{paused.pid}/stat").read().split(") ")[1][0] == "T", 30,
               f"the instance stopped itself on the marked record\n{instances.logs()}")
    expected |= send_payments(settings, payees, range(200, 400), rng)
    wait_until(lambda: set(instances.owner_pids().values()) == {other.pid}
               and len(instances.owners()) == settings.partitions_events, TAKEOVER_BOUND_S + 5,
               f"the other instance takes over every partition\n{instances.logs()}")
    wait_until(lambda: chained_count(settings) >= len(expected), 60, f"chained by the other\n{instances.logs()}")
    paused.send_signal(signal.SIGCONT)  # it goes on with the marked record, whose partition is no longer its own
    expected |= send_payments(settings, payees, range(400, 600), rng)
    # it finds its leases gone and rejoins: the fair share gives it partitions back, with new epochs
    wait_until(lambda: len(set(instances.owner_pids().values())) == 2, 60, f"it rejoins\n{instances.logs()}")
    wait_until(lambda: chained_count(settings) >= len(expected), 60, f"every payment chained\n{instances.logs()}")
    instances.stop_all()
    assert_ledger_exact(settings, expected, instances.logs())
    resumed_log = next(path for path in sorted(instances.tmp_path.glob("a-*.log"))).read_text()
    assert "stopped without writing anything more" in resumed_log, resumed_log[-3000:]


def test_a_record_a_foreign_partitioner_misplaced_is_chained_in_its_payees_partition(settings, instances):
    payee = payees_by_partition(settings.partitions_events, 1)[0][0]  # its key belongs to partition 0
    producer = make_producer(settings.kafka_bootstrap, **{"message.max.bytes": 2_000_000})
    producer.produce(settings.topic_incoming, json.dumps(payment("misplaced-1", payee_id=payee)).encode(),
                     payee.encode(), partition=1)
    # too large to be valid, at the input topic's limit: dead-lettered where it is, never sent on (a reroute
    # with one more header would not fit the topic, and would fail partition 1 at every start)
    huge = json.dumps(payment("misplaced-huge", payee_id=payee)).encode()
    huge = huge[:-1] + b" " * (1_048_000 - len(huge)) + b"}"  # valid JSON, valid fields, far too many bytes
    producer.produce(settings.topic_incoming, huge, payee.encode(), partition=1)
    assert producer.flush(30) == 0
    instances.start("a")
    wait_until(lambda: chained_count(settings) == 1 and len(dead_letters(settings)) == 1, 60,
               f"the payment chained, the huge record dead-lettered\n{instances.logs()}")
    [letter] = dead_letters(settings)
    assert (letter.source_partition, letter.source_offset, letter.stage) == (1, 1, "validate")
    assert "at most 65536 allowed" in letter.reason, letter.reason
    [event] = list(read_topic(settings.kafka_bootstrap, settings.topic_events))
    assert event.partition == 0 and event.key == payee.encode()
    copies = [record for record in read_topic(settings.kafka_bootstrap, settings.topic_incoming)]
    assert [(record.partition, dict(record.headers).get(REROUTED_HEADER)) for record in copies] == [
        (0, f"{settings.topic_incoming}:1:0".encode()), (1, None), (1, None)]
