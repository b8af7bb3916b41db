"""The Faust aggregator on the real broker: two periods, two timezones, once each, across a SIGKILL."""

from __future__ import annotations

import signal
import subprocess
import time
from collections import Counter

from confluent_kafka import Consumer, TopicPartition

from processors.kafka_io import read_topic
from processors.ledger_client import LedgerClient
from tests.integration.cli_env import LEDGER, env_for
from tests.integration.sequencing_helpers import chain_breaks, ledger_events, run_sequencer

DEADLINE_S = 90.0


def ledger_cli(env, *args: str) -> None:
    result = subprocess.run([LEDGER, *args], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def start_aggregator(env) -> subprocess.Popen:
    return subprocess.Popen([LEDGER, "aggregator"], env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def caught_up(settings) -> bool:
    """Whether the aggregator's group has committed the end of every ledger.events partition."""
    ends: dict[int, int] = {}
    for record in read_topic(settings.kafka_bootstrap, settings.topic_events):
        ends[record.partition] = record.offset + 1
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap,
                         "group.id": f"ledger-aggregator-{settings.topic_events}"})
    try:
        committed = consumer.committed([TopicPartition(settings.topic_events, p) for p in ends], timeout=10)
    finally:
        consumer.close()
    return all(tp.offset >= ends[tp.partition] for tp in committed)


def poll(check, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def payouts(settings) -> list[tuple]:
    return sorted((e.payee_id, e.payload["period_end"].isoformat(), e.payload["gross"].amount_minor,
                   e.payload["net"].amount_minor)
                  for e, _ in ledger_events(settings) if e.event_type == "PayoutRequested")


def pay(payment_id: str, payee_id: str, minor: int, code: str, occurred: str) -> dict:
    return {"payment_id": payment_id, "payee_id": payee_id, "amount_minor": minor, "currency": code,
            "occurred_at": occurred}


def diagnosis(settings) -> str:
    from ledger.codec import EventCodec
    from processors.dead_letters import read_dead_letters

    codec = EventCodec()
    commands = [codec.decode(r.value) for r in read_topic(settings.kafka_bootstrap, settings.topic_commands)]
    return (f"payouts {payouts(settings)}; commands {[(c.event_type, c.payee_id, c.payload.get('period_id')) for c in commands]}; "
            f"dead letters {[d.reason for d in read_dead_letters(settings.kafka_bootstrap, settings.topic_dlq)]}")


def tick_and_chain(settings, env, at: str, expected: int) -> None:
    """Tick until the due closes are chained (a tick read before the fold caught up decides less)."""
    def chained() -> bool:
        ledger_cli(env, "tick", "--at", at)
        run_sequencer(settings, idle_exit_s=1.0)
        return len(payouts(settings)) >= expected
    try:
        poll(chained, f"{expected} payouts")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {diagnosis(settings)}") from None


def test_two_periods_two_timezones_once_each_across_a_sigkill(settings, tmp_path):
    env = env_for(settings, tmp_path, LEDGER_AGGREGATOR_SESSION_TIMEOUT_S="6")
    for payee, zone in (("ny-1", "America/New_York"), ("tokyo-1", "Asia/Tokyo")):
        ledger_cli(env, "schedule", "set", payee, "--frequency", "DAILY", "--cutoff", "23:59", "--timezone", zone,
                   "--plan", "flat-80", "--method", "manual")
    with LedgerClient(settings.kafka_bootstrap, settings) as client:
        client.record_batch([pay("n1", "ny-1", 10_000, "USD", "2026-11-20T15:00:00-05:00"),
                             pay("t1", "tokyo-1", 50_000, "JPY", "2026-11-20T09:00:00+09:00")])
    run_sequencer(settings)

    worker = start_aggregator(env)
    try:
        poll(lambda: caught_up(settings), "the aggregator to fold the ledger")
        tick_and_chain(settings, env, "2026-11-21T06:00:00Z", expected=2)

        with LedgerClient(settings.kafka_bootstrap, settings) as client:  # period two arrives ...
            client.record_batch([pay(f"n2-{i}", "ny-1", 1_000, "USD", "2026-11-21T10:00:00-05:00") for i in range(20)]
                                + [pay("t2", "tokyo-1", 30_000, "JPY", "2026-11-21T23:00:00+09:00")])
        run_sequencer(settings)
        worker.send_signal(signal.SIGKILL)  # ... and the aggregator dies while folding it
        worker.wait(10)
        worker = start_aggregator(env)
        poll(lambda: caught_up(settings), "the restarted aggregator to catch up")
        tick_and_chain(settings, env, "2026-11-22T06:00:00Z", expected=4)
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)

    assert payouts(settings) == [
        ("ny-1", "2026-11-21T04:59:00+00:00", 10_000, 8_000),
        ("ny-1", "2026-11-22T04:59:00+00:00", 20_000, 16_000),
        ("tokyo-1", "2026-11-20T14:59:00+00:00", 50_000, 40_000),
        ("tokyo-1", "2026-11-21T14:59:00+00:00", 30_000, 24_000),
    ]
    events = ledger_events(settings)
    assert max(Counter(e.payload["payout_id"] for e, _ in events if e.event_type == "PayoutRequested").values()) == 1
    assert chain_breaks(events) == []
