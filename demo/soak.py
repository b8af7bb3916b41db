"""`ledger soak`: the demo's whole workload while a seeded fault schedule kills processors, then a verdict.

The workload is the demo's (demo/run.py): payees over every provider, payments, refunds, adjustments,
redelivered and late ones, the clock ticked across cutoffs, an operator who retries, confirms, fails,
holds, pauses and cancels (demo/soak_operator.py), providers that fail. On top of it:
- every partitioned processor runs as two `--partitioned` instances (demo/chaos.py), beside the aggregator,
  alerts, the API and the webhook endpoint, every process with crash points armed (LEDGER_FAULT_POINTS:
  inside checkpoint writes, between a provider's answer and the outcome, between a batch's outputs and its
  commit), and restarted whenever it dies;
- a fault schedule drawn from the seed SIGKILLs a random one every `kill_every_s` on average (restarting it
  at once), restarts the embedded PostgreSQL now and then, and makes the providers fail, stall, or answer
  500 after acting;
- hostile input from the seed goes through every entrance (demo/soak_entrances.py): the input topic as
  JSON and Avro, POST /v1/payments, `ledger publish` files, and the webhook endpoint; after the last
  payouts, settled Stripe payouts are reversed and their webhooks redelivered out of order.
Then the faults stop, every payout is finished, the ledger goes quiet, and the verdict is taken: the
demo's (every payment chained exactly once, the ledger balanced per payee and currency, providers paid
what the ledger settled and nothing twice, the read models equal to a fresh fold) plus every hostile input
refused with a reason naming its field and none accepted, the redelivered webhooks' payouts as expected,
no process above the memory bound, and the fault schedule run. Lost payments fail the run as soon as they
are proven lost (demo/loss_watch.py). A failed verdict names the seed: the same seed replays the same
workload, hostile input and fault schedule.
"""

from __future__ import annotations

import hashlib
import random
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

from demo.chaos import ChaosProcessors, ChaosThread, fault_schedule
from demo.hostile import STATEFUL_KINDS
from demo.soak_entrances import Servers, SoakEntrances
from demo.data import make_inputs, make_payees
from demo.drain import wait_quiet
from demo.loss_watch import LossWatch
from demo.soak_operator import SoakOperator
from demo.processes import EVENT_MAKERS
from demo.run import (QUIET_WAIT_S, Counts, DemoOptions, Reporter, _append, _append_late, _hold_earlier_payees,
                      _peak_memory, _refuse_unsafe, _settle, _simulate_days, _summary)
from demo.sandboxes import Sandboxes
from demo.tail import LedgerTail
from processors.dead_letters import read_dead_letters
from processors.kafka_io import DeliveryTracker, flush_or_raise, make_producer
from processors.ledger_client import LedgerClient
from processors.operations import Operations
from projections.verify import verify
from runtime import stack
from runtime.settings import Settings

# crash points armed in every processor (per pass through the point): rare enough that work still flows
FAULT_POINTS = ",".join(f"{point}:{probability}" for point, probability in (
    ("sequencer_checkpoint_before_commit", 0.02), ("sequencer_checkpoint_after_commit", 0.02),
    ("sequencer_before_flush", 0.003), ("sequencer_before_commit", 0.003),
    ("transfers_checkpoint_before_commit", 0.02), ("transfers_checkpoint_after_commit", 0.02),
    ("before_submit", 0.005), ("after_submit", 0.005), ("before_outcome", 0.005),
    ("projector_before_commit", 0.003), ("projector_checkpoint_before_commit", 0.02),
    ("projector_checkpoint_after_commit", 0.02)))
MEMORY_BOUND_KIB = 400 * 1024  # per process (VmHWM)


@dataclass(frozen=True)
class SoakOptions:
    payees: int = 40
    payments: int = 2_000
    days: int = 7
    seed: int | None = None
    instances: int = 2
    kill_every_s: float = 1.0
    kills: int = 10_000  # the schedule's length: it stops earlier when the workload is done
    hostile: int = 2_000
    crash_points: tuple[str, ...] = ()  # more "point:probability" pairs (they replace the default's for a point)


def run_soak(settings: Settings, options: SoakOptions, reporter: Reporter | None = None) -> dict[str, Any]:
    reporter = reporter or Reporter()
    seed = options.seed if options.seed is not None else random.randrange(2**31)
    rng = random.Random(seed)
    run_id = uuid.uuid4().hex[:8]  # not from the seed: a replay on the same ledger must not reuse its payees
    counts = Counts()
    demo = DemoOptions(payees=options.payees, payments=options.payments, days=options.days, seed=seed)

    reporter.phase("starting the embedded stack")
    stack.up(settings)
    bootstrap, database_url = stack.connections(settings)
    _refuse_unsafe(settings, database_url)
    _hold_earlier_payees(settings, bootstrap)
    now = datetime.now(timezone.utc).replace(microsecond=0)
    start = (now - timedelta(days=options.days)).replace(minute=0, second=0)
    payees = make_payees(run_id, options.payees, rng)
    schedule = fault_schedule(seed, options.kills, options.kill_every_s)
    with Sandboxes(settings.data_dir.resolve()) as sandboxes:
        payees = sandboxes.set_up(payees)
        inputs = make_inputs(run_id, payees, options.payments, start, now - timedelta(minutes=2), rng)
        by_id = {payee.payee_id: payee for payee in payees}
        env = {"LEDGER_KAFKA_BOOTSTRAP": bootstrap, "LEDGER_DATABASE_URL": database_url,
               "LEDGER_DATA_DIR": str(settings.data_dir.resolve()), "LEDGER_PARTITION_LEASE_S": "6",
               # the schedule's kills are not the records' fault: the most deaths before a record counts as poison
               "LEDGER_SEQUENCER_POISON_DEATHS": "10"}
        reporter.phase(f"starting {options.instances} instances of each partitioned processor")
        tail = LedgerTail(bootstrap, settings.topic_events, set(by_id))
        log_dir = settings.data_dir.resolve() / "soak" / f"logs-{seed}"
        points = fault_points(options.crash_points)
        servers = Servers.make()
        env.update(servers.env)
        hostile = SoakEntrances(seed, options.hostile, now, inputs.records, servers, env, log_dir)
        restart = (lambda: stack.restart_postgres(settings)) if stack.embedded_postgres_in_use(settings) else None
        processors = ChaosProcessors(log_dir, env, sandboxes.transfer_env(), options.instances, points,
                                     servers.arguments, restart)
        chaos = ChaosThread(processors, schedule, sandboxes)
        replay = (f"ledger soak --seed {seed} --payees {options.payees} --payments {options.payments} "
                  f"--days {options.days} --kill-every {options.kill_every_s:g} --hostile {options.hostile}"
                  + "".join(f" --crash-point {item}" for item in options.crash_points))
        verdict: dict[str, Any] = {"seed": seed, "replay": replay, "logs": str(log_dir)}
        try:
            with processors, LedgerClient(bootstrap, settings) as client:
                operator = SoakOperator(client, Operations(settings, bootstrap, database_url), sandboxes, by_id,
                                        database_url=database_url, rng=random.Random(seed ^ 0x0DE7))
                watch = LossWatch(settings, bootstrap, tail)
                chaos.start()
                try:
                    _send_hostile(settings, bootstrap, hostile.incoming, reporter)
                    _phase(reporter, f"sending {len(hostile.api):,} hostile records to POST /v1/payments",
                           hostile.send_api)
                    _append(settings, bootstrap, client, inputs, tail, processors, reporter, counts, watch)
                    _send_hostile(settings, bootstrap, hostile.incoming_after, reporter)  # name chained payments
                    _phase(reporter, f"publishing {len(hostile.publish):,} hostile lines with `ledger publish`",
                           hostile.send_publish)
                    sandboxes.inject_trouble()
                    _simulate_days(settings, bootstrap, tail, operator, processors, start, now, reporter, counts)
                    _phase(reporter, f"sending {hostile.webhooks_count:,} hostile webhook deliveries",
                           lambda: hostile.send_webhooks(sandboxes.stripe.transfers()))
                    _append_late(client, inputs, tail, processors, operator, reporter, watch)
                finally:
                    chaos.stop()
                    operator.resume()  # a pause left in force would stop the next run (and this one's payouts)
                verdict.update(operator_pauses=operator.pauses, operator_cancels_sent=operator.cancels_sent)
                processors.check()
                _settle(tail, operator, processors, reporter)
                reporter.phase("waiting for the projections")
                peaks = _peak_memory(processors.pids())
                processors.stop(EVENT_MAKERS)
                settled_stripe = [payout.payout_id for payout in tail.payouts()
                                  if payout.method == "stripe_standard" and payout.status.value == "settled"]
                _phase(reporter, "reversing Stripe payouts and redelivering their webhooks out of order",
                       lambda: hostile.redeliver(sandboxes.stripe, settled_stripe))
                wait_quiet(settings, bootstrap, database_url, QUIET_WAIT_S * 2, alive=processors.check)
                tail.poll()
                peaks.update(_peak_memory(processors.pids()))
            reporter.phase("verifying the read models against the ledger")
            report = verify(settings, bootstrap, database_url)
            letters = list(read_dead_letters(bootstrap, settings.topic_dlq))
            entrance_failures = hostile.check(bootstrap, settings)
            dead = [entry for entry in letters if entry.value in set(inputs.malformed)]
            summary = _summary(run_id, seed, demo, inputs, tail, operator, sandboxes, report, dead, counts, peaks)
            expected = {r["payment_id"] for r in inputs.records + inputs.late if r.get("type", "payment") == "payment"}
            verdict["payments_missing"] = sorted(expected - tail.payment_ids)[:20]
            verdict["payments_unexpected"] = sorted(tail.payment_ids - expected)[:20]
            verdict["payouts_open"] = sorted(payout.payout_id for payout in tail.payouts()
                                             if not payout.status.terminal)[:20]
        except Exception as stalled:  # noqa: BLE001 - the workload could not finish (a stall, a broken chain): failed
            return {"elapsed_s": round(time.monotonic() - counts.started, 1), "soak": {
                **verdict, **_entrances(hostile), **_faults(processors, chaos), "passed": False,
                "failures": [f"the workload could not finish: {type(stalled).__name__}: {stalled}"]}}
        finally:
            tail.close()
    refused = _hostile_verdict(hostile.incoming + hostile.incoming_after, letters, STATEFUL_KINDS)
    failures = _failures(summary, verdict, refused, peaks, chaos, processors.crashes) + entrance_failures
    return {**summary, "soak": {**verdict, **_entrances(hostile), **_faults(processors, chaos), **refused,
                                "passed": not failures, "failures": failures}}


def _entrances(hostile: SoakEntrances) -> dict[str, Any]:
    by_entrance = hostile.sent_by_entrance
    return {"hostile_sent": sum(by_entrance.values()), "hostile_sent_by_entrance": by_entrance,
            "entrances": {key: value for key, value in hostile.results.items() if not key.endswith("_examples")
                          or value}}


def _phase(reporter: Reporter, name: str, work: Callable[[], None]) -> None:
    reporter.phase(name)
    work()


def _faults(processors: ChaosProcessors, chaos: ChaosThread) -> dict[str, Any]:
    return {"kills": dict(processors.kills), "kills_total": sum(processors.kills.values()),
            "crash_point_deaths": dict(processors.deaths), "restarts": processors.restarts,
            "postgres_restarts": processors.database_restarts,
            "postgres_restarts_possible": processors.restart_database is not None,
            "exits_during_postgres_restarts": processors.outage_exits,
            "faults_applied": chaos.applied, "stripe_troubles": chaos.troubles}


def fault_points(extra: tuple[str, ...]) -> str:
    """The default crash points with `extra` ("point:probability") added or replacing a point's probability."""
    points = dict(item.split(":") for item in FAULT_POINTS.split(","))
    for item in extra:
        point, _, probability = item.partition(":")
        float(probability)  # a bad number is refused here, not in every processor
        points[point] = probability
    return ",".join(f"{point}:{probability}" for point, probability in points.items())


def _send_hostile(settings: Settings, bootstrap: str, hostile: list, reporter: Reporter) -> None:
    """Straight onto payments.incoming, as a broken or hostile producer would, with the key it chose."""
    reporter.phase(f"sending {len(hostile):,} hostile records to {settings.topic_incoming}", len(hostile))
    producer, tracker = make_producer(bootstrap, **{"message.max.bytes": 2_000_000}), DeliveryTracker()
    for record in hostile:
        producer.produce(settings.topic_incoming, key=record.key, value=record.value, on_delivery=tracker)
        producer.poll(0)
    flush_or_raise(producer, tracker, len(hostile))
    reporter.advance(len(hostile))


def _hostile_verdict(hostile: list, letters: list, stateful: frozenset | set) -> dict[str, Any]:
    """Each hostile record must be in the dead-letter topic, byte for byte, refused for the field it breaks."""
    by_value: dict[bytes | str, list] = {}
    for entry in letters:  # a record too large to keep whole is kept as a prefix, with the original's SHA-256
        by_value.setdefault(entry.value if entry.whole else entry.original_sha256 or "", []).append(entry)
    missing, unnamed = [], []
    for record in hostile:
        entries = by_value.get(record.value, []) or by_value.get(hashlib.sha256(record.value).hexdigest(), [])
        if not entries:
            missing.append(record.kind)
            continue
        if record.field and record.kind not in stateful and not any(record.field in entry.reason for entry in entries):
            unnamed.append(f"{record.kind}: {entries[0].reason[:120]}")
    return {"hostile_refused": len(hostile) - len(missing), "hostile_not_refused": len(missing),
            "hostile_not_refused_kinds": sorted(set(missing))[:20], "hostile_reason_without_field": unnamed[:20],
            "hostile_reasons_unnamed": len(unnamed)}


def _failures(summary: dict, verdict: dict, refused: dict, peaks: dict[str, int], chaos: ChaosThread,
              crashes: list[str]) -> list[str]:
    failures = []
    if not summary["ledger_balanced"]:
        failures.append("the ledger is not balanced (a payment lost or doubled, a payout paid twice or missing, or "
                        "the providers disagree with the ledger): see per_currency, providers and paid_twice")
    for key, what in (("payments_missing", "payments never chained"), ("payments_unexpected", "unexpected payments"),
                      ("payouts_open", "payouts not finished")):
        if verdict.get(key):
            failures.append(f"{what}: {verdict[key]}")
    in_flight = {code: row["in_flight"] for code, row in summary["per_currency"].items() if row["in_flight"]}
    if in_flight:
        failures.append(f"money still in flight (minor units): {in_flight}")
    mismatched = [name for name, row in summary["providers"].items() if not row["ok"]]
    if mismatched:
        failures.append(f"providers disagree with the ledger: {mismatched}")
    if summary["verify_mismatches"] or summary["chain_breaks"]:
        failures.append(f"verify: {summary['verify_mismatches']} mismatches, {summary['chain_breaks']} chain breaks")
    if summary["paid_twice"]:
        failures.append(f"{summary['paid_twice']} payouts paid twice at a provider")
    if refused["hostile_not_refused"]:
        failures.append(f"{refused['hostile_not_refused']} hostile records not in the dead-letter topic "
                        f"(kinds {refused['hostile_not_refused_kinds']})")
    if refused["hostile_reasons_unnamed"]:
        failures.append(f"{refused['hostile_reasons_unnamed']} hostile records refused without naming their field")
    over = {name: kib for name, kib in peaks.items() if kib > MEMORY_BOUND_KIB}
    if over:
        failures.append(f"above the memory bound of {MEMORY_BOUND_KIB // 1024} MiB: {over}")
    if crashes:
        failures.append(f"{len(crashes)} processor exits that were not a SIGKILL: {crashes[:3]}")
    if chaos.error is not None:
        failures.append(f"the fault schedule stopped: {type(chaos.error).__name__}: {chaos.error}")
    return failures
