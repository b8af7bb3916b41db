"""Benchmark (not a test): every throughput figure of the ledger in ONE run, each also as a ratio to the raw
broker read rate measured in the same run, so figures stay comparable on noisy machines.

    .venv/bin/python bench/run_all.py [--payments N] [--payouts N] [--json]

(a) raw read rate of a plain consumer; (b) append throughput, LedgerClient -> `ledger sequencer` ->
ledger.events; (c) end to end, append -> projected row in `earnings` (`ledger projector` and `ledger
aggregator` running): payments/s, and p50/p99 latency at a paced load; (d) payouts settled per minute
through `ledger transfers` against the Stripe sandbox answering in 50 ms, at settings that do not cap it and at
the settings in force, and beside a Celery worker on Redis paying the same payouts at concurrency 4 and 16
(bench/bench_payouts.py, bench/celery_peer.py; --skip-peer leaves the comparison out); (e) `ledger projections
rebuild` events/s; (f) peak memory (VmHWM) of every process; then the restart benchmark (bench/restart.py:
restart time and peak memory of each processor at two history sizes, their growth against the targets) on
topics and a schema of its own (`--only throughput|restart` runs one part). Fresh topics and a fresh PostgreSQL
schema of its own, on the embedded stack (started or reused) unless LEDGER_KAFKA_BOOTSTRAP and
LEDGER_DATABASE_URL are set. Exit 0 when every phase finished, 1 (with the reason) otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bench_payouts import payouts as pay_payouts
from bench_payouts import stripe_limits_in_force
from bench_phases import BenchContext, append_throughput, end_to_end, rebuild
from bench_processes import BenchFailure, LedgerProcess, cpu_snapshot, cpu_used, ledger_env, vmhwm_kib
from bench_reading import raw_read_rate
from bench_scale import scale_out
from bench_scale_payouts import scale_out_payouts
from bench_stack import close_place, machine, open_place, remove_run_data
import restart as restart_bench

DEFAULT_PEER_REDIS = "redis://127.0.0.1:6379/12"  # as bench/celery_peer.py (not imported here: celery is optional)
STARTUP_S = 120.0  # a worker must be up (rebuilt, caught up) within this
PROVIDER_LATENCY_S = 0.05
errors = Console(stderr=True)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--payments", type=int, default=20_000,
                        help="payments appended in (b); (c) sends half of this in a burst and a quarter paced")
    parser.add_argument("--payouts", type=int, default=1_200,
                        help="Stripe payouts paid in each round of (d): transfers uncapped, at the settings in force, "
                             "and, per concurrency (4, 16), transfers and the Celery peer")
    parser.add_argument("--skip-peer", action="store_true",
                        help="(d) without the Celery comparison (and without the transfer rounds at 4 and 16)")
    parser.add_argument("--peer-redis", default=DEFAULT_PEER_REDIS,
                        help="Redis of the Celery peer: a database of the benchmark's own (its keys are removed)")
    parser.add_argument("--payees", type=int, default=500, help="payees the payments of (b) and (c) spread over")
    parser.add_argument("--paced-share", type=float, default=0.5,
                        help="the paced load of (c), as a share of the burst's end-to-end rate")
    parser.add_argument("--raw-read-repeats", type=int, default=5)
    parser.add_argument("--skip-scale", action="store_true",
                        help="without (g), the append rate of one and of two partitioned sequencer instances, and the "
                             "payouts rate of one and of two partitioned transfer processors")
    parser.add_argument("--keep", action="store_true", help="keep the run's topics, schema and worker logs")
    parser.add_argument("--json", dest="as_json", action="store_true", help="print the result as JSON")
    parser.add_argument("--only", choices=("all", "throughput", "restart"), default="all",
                        help="throughput: figures a-g only; restart: the restart benchmark only (bench/restart.py)")
    restart_bench.add_options(parser, prefix="restart-")
    args = parser.parse_args()
    restart_bench.check_options(parser, args, prefix="restart-")
    if args.payments < 100 or args.payouts < 2 or args.payees < 1 or not 0 < args.paced_share <= 1:
        parser.error("--payments must be >= 100, --payouts >= 2, --payees >= 1, --paced-share in (0, 1]")
    return args


def _terminate(*_: object) -> None:
    raise KeyboardInterrupt  # SIGTERM: leave through the finally blocks that stop the workers


def run(args: argparse.Namespace, place, log_dir: Path, progress: Progress) -> dict:  # noqa: ANN001 - BenchPlace
    ctx = BenchContext(place.settings, place.bootstrap, place.database_url, progress, run_id=uuid.uuid4().hex[:8])
    (log_dir / "data").mkdir(exist_ok=True)  # LEDGER_DATA_DIR of the workers (the aggregator's Faust files)
    env = ledger_env(place.settings, place.bootstrap, place.database_url, log_dir / "data")
    peaks: dict[str, dict] = {}

    def start(name: str, command: list[str], ready: str, what: str, extra_env: dict | None = None) -> LedgerProcess:
        task = progress.add_task(f"starting `ledger {' '.join(command)}`", total=None)
        worker = LedgerProcess(name, command, {**env, **(extra_env or {})}, log_dir)
        ctx.workers[name] = worker
        worker.wait_for_line(ready, STARTUP_S, what)
        progress.update(task, total=1, completed=1)
        return worker

    def stop(name: str) -> None:
        worker = ctx.workers.pop(name)
        stopping = time.monotonic()
        code = worker.stop()
        peaks[name] = {"vmhwm_kib": worker.peak_kib, "maxrss_at_exit_kib": worker.maxrss_kib, "exit_code": code,
                       "stop_s": round(time.monotonic() - stopping, 2)}

    if not args.skip_peer:  # fail in seconds, not after the phases before (d)
        try:
            import celery_peer
        except ImportError as exc:
            raise BenchFailure(f"the Celery peer of (d) needs the bench extra (`make install`, or pip install -e "
                               f"'.[bench]'), or run with --skip-peer: {exc}") from None
        celery_peer.preflight(args.peer_redis)
    cpu: dict[str, dict[str, float]] = {}  # CPU seconds per process in each phase (bench_processes.cpu_used)

    def measured(phase: str, work):  # noqa: ANN001, ANN202 - a phase's callable and its result
        before = cpu_snapshot(ctx.workers)
        result = work()
        cpu[phase] = cpu_used(before, cpu_snapshot(ctx.workers))
        return result

    try:
        start("sequencer", ["sequencer"], "reading ", "that it reads its input")
        appended = measured("append", lambda: append_throughput(ctx, args.payments, args.payees))
        start("projector", ["projector"], "caught up", "that it caught up")
        start("aggregator", ["aggregator"], "rebuilt ", "its rebuild")
        burst = measured("end_to_end_burst", lambda: end_to_end(ctx, "c", args.payments // 2, args.payees, None))
        paced = measured("end_to_end_paced", lambda: end_to_end(
            ctx, "p", args.payments // 4, args.payees, burst["payments_per_s"] * args.paced_share))
        stop("aggregator")

        payouts = pay_payouts(ctx, env, log_dir, stop, args.payouts, PROVIDER_LATENCY_S,
                              None if args.skip_peer else args.peer_redis)
        stop("projector")
        stop("sequencer")

        task = progress.add_task("(a) raw read of ledger.events", total=None)
        raw = raw_read_rate(place.bootstrap, place.settings.topic_events, args.raw_read_repeats, timeout_s=300)
        progress.update(task, total=1, completed=1)
        before = cpu_snapshot(ctx.workers)
        rebuilt, process = rebuild(ctx, env, log_dir, raw["records"])
        cpu["rebuild"] = {**cpu_used(before, cpu_snapshot(ctx.workers)), "rebuild": process.cpu_s}
        cpu["rebuild"]["other"] = round(cpu["rebuild"]["other"] - (process.cpu_s or 0), 2)
        peaks["rebuild"] = {"vmhwm_kib": process.peak_kib, "maxrss_at_exit_kib": process.maxrss_kib, "exit_code": 0}
        scale = None if args.skip_scale else scale_out(ctx, log_dir, args.payments, args.payees)
        scale_payouts = None if args.skip_scale else scale_out_payouts(ctx, log_dir, args.payouts, PROVIDER_LATENCY_S)
    finally:
        for name in list(ctx.workers):
            stop(name)
    peaks["driver"] = {"vmhwm_kib": vmhwm_kib(os.getpid()), "maxrss_at_exit_kib": None, "exit_code": None}
    records = {"append": appended["records"], "end_to_end_burst": burst["payments"],
               "end_to_end_paced": paced["payments"], "rebuild": rebuilt["events"]}
    per_record = {phase: {name: round(seconds / records[phase] * 1e6, 1) for name, seconds in used.items()
                          if seconds is not None} for phase, used in cpu.items()}
    return {"append": appended, "end_to_end_burst": burst, "end_to_end_paced": paced, "payouts": payouts,
            "raw_read": raw, "rebuild": rebuilt, "peak_memory": peaks, "cpu_seconds": cpu, "scale_out": scale,
            "scale_out_payouts": scale_payouts, "cpu_us_per_record": per_record}


def run_restart(args: argparse.Namespace, place, log_dir: Path, report, own_place: bool) -> dict:  # noqa: ANN001
    """The restart benchmark (bench/restart.py) on fresh topics and a fresh schema: after the throughput
    phases it opens its own on the same stack (and removes them unless --keep)."""
    restart_dir = log_dir / "restart"
    restart_dir.mkdir(exist_ok=True)
    where = open_place(report) if own_place else place
    try:
        return restart_bench.measure(where, restart_dir, args.restart_sizes, args.restart_payees,
                                     args.restart_events_per_round, args.restart_repeats, args.restart_processors,
                                     report)
    finally:
        if own_place:
            if not args.keep:
                remove_run_data(where, report)
            close_place(where, report)


def figures(details: dict, settings) -> list[dict]:  # noqa: ANN001 - Settings
    """Every figure with its unit and its ratio to (a) (rates: rate / raw rate; latency: how many records the
    raw reader reads in that time; memory: none)."""
    raw = details["raw_read"]["records_per_s"]
    rows = [("a", "raw broker read: plain consumer on ledger.events", raw, "records/s", 1.0)]

    def rate(key: str, label: str, per_s: float, unit: str = "records/s", shown: float | None = None) -> None:
        rows.append((key, label, per_s if shown is None else shown, unit, per_s / raw))

    append, burst, paced = details["append"], details["end_to_end_burst"], details["end_to_end_paced"]
    rate("b", "append: LedgerClient -> sequencer -> ledger.events", append["chained_records_per_s"])
    rate("b_client", "  of which LedgerClient alone (validate, encode, acks=all)", append["client_records_per_s"])
    rate("c", "end to end: append -> row in earnings (burst)", burst["payments_per_s"], "payments/s")
    for key, label in (("latency_p50_s", "p50"), ("latency_p99_s", "p99")):
        rows.append((f"c_{label}", f"end to end latency {label} at {paced['offered_per_s']:,.0f} payments/s (paced)",
                     paced[key], "s", paced[key] * raw))
    paid = details["payouts"]
    per_min = paid["settled_per_min"]
    rate("d", f"payouts settled, Stripe sandbox {PROVIDER_LATENCY_S * 1000:.0f} ms, transfers "
              f"c={paid['provider_concurrency']} ({paid['provider_rate_per_s']:,.0f}/s)",
         per_min / 60, "payouts/min", per_min)
    default = paid["default_settings"]
    rate("d_default", f"  transfers at settings in force: c={default['provider_concurrency']}, "
                      f"{default['provider_rate_per_s']:g}/s cap (max {default['settled_per_min_cap']:,}/min)",
         default["settled_per_min"] / 60, "payouts/min", default["settled_per_min"])
    for key, peer in (paid["peer"] or {}).items():
        concurrency = peer["concurrency"]
        bound = peer["latency_bound_per_min"]
        rate(f"d_{key}", f"  transfers, c={concurrency}, uncapped (latency bound {bound:,.0f}/min)",
             peer["transfers_per_min"] / 60, "payouts/min", peer["transfers_per_min"])
        rate(f"d_{key}_celery", f"  Celery + Redis, {peer['celery_pool']} pool, c={concurrency}, same payouts",
             peer["celery_per_min"] / 60, "payouts/min", peer["celery_per_min"])
        rows.append((f"d_{key}_ratio", f"  transfers / Celery at c={concurrency}", peer["ratio"], "x", None))
    rate("e", "projections rebuild", details["rebuild"]["events_per_s"], "events/s")
    scale = details.get("scale_out")
    if scale:
        for count, run in scale["instances"].items():
            rate(f"g{count}", f"append, {count} partitioned sequencer(s), {scale['partitions']} partitions "
                              f"(split {':'.join(map(str, run['partitions_per_instance']))})",
                 run["chained_records_per_s"])
        if scale["speedup_2_vs_1"] is not None:
            rows.append(("g_speedup", "  two instances / one", round(scale["speedup_2_vs_1"], 3), "x", None))
    scale_paid = details.get("scale_out_payouts")
    if scale_paid:
        for count, run in scale_paid["instances"].items():
            rate(f"g_payouts{count}", f"payouts settled, {count} partitioned transfer processor(s), c="
                                      f"{scale_paid['provider_concurrency']} for the ledger, {scale_paid['partitions']} "
                                      "partitions", run["settled_per_min"] / 60, "payouts/min", run["settled_per_min"])
        if scale_paid["speedup_2_vs_1"] is not None:
            rows.append(("g_payouts_speedup", "  two instances / one", round(scale_paid["speedup_2_vs_1"], 3), "x",
                         None))
    for name, peak in details["peak_memory"].items():
        kib = peak["vmhwm_kib"] or peak["maxrss_at_exit_kib"]
        rows.append((f"f_{name}", f"peak memory (VmHWM): {name}", round(kib / 1024, 1) if kib else None, "MiB", None))
    return [{"key": key, "figure": label, "value": value, "unit": unit,
             "ratio_to_raw_read": None if ratio is None else round(ratio, 6)} for key, label, value, unit, ratio in rows]


def payout_counts(paid: dict) -> str:
    """Settled/failed of every round of (d), for the line under the table."""
    rounds = [("uncapped", paid), ("in force", paid["default_settings"])]
    for key, peer in (paid["peer"] or {}).items():
        rounds += [(f"transfers {key}", peer["transfers"]), (f"Celery {key}", peer["celery"])]
    return ", ".join(f"{name} {r['settled']}/{r['failed']}" for name, r in rounds) + " settled/failed"


def print_table(result: dict) -> None:
    console = Console(width=None if sys.stdout.isatty() else 130)
    table = Table(title=f"ledger benchmark ({result['seconds']:.0f} s, {result['machine']['cpus']} CPUs, "
                        f"load {result['machine']['load_avg_1_5_15'][0]:.2f} at start)")
    for column, justify in (("", "left"), ("figure", "left"), ("value", "right"), ("unit", "left"),
                            ("ratio to (a)", "right")):
        table.add_column(column, justify=justify)
    for row in result["figures"]:
        value, ratio = row["value"], row["ratio_to_raw_read"]
        shown = "-" if value is None else (f"{value:,.3f}" if row["unit"] == "s" else f"{value:,.2f}" if
                                           row["key"].startswith("d_") and row["unit"] == "x" else
                                           f"{value:,.1f}" if value < 100 else f"{value:,.0f}")
        if ratio is None:
            ratio_text = "n/a"
        elif row["unit"] == "s":
            ratio_text = f"{ratio:,.0f} reads"
        else:
            ratio_text = f"{ratio:.4g}"
        table.add_row(row["key"], row["figure"], shown, row["unit"], ratio_text)
    console.print(table)
    if "restart" in result:
        restart_bench.print_table(result["restart"], console)
    d = result["details"]
    if not d:
        return
    burst, paced = d["end_to_end_burst"], d["end_to_end_paced"]
    console.print(f"(b) {d['append']['records']:,} payments; (c) burst {burst['payments']:,}, paced "
                  f"{paced['payments']:,} (burst p50/p99 {burst['latency_p50_s']:.2f}/{burst['latency_p99_s']:.2f} s, "
                  f"queueing included; most rows appearing at once, paced: {paced['largest_poll_rows']:,}); "
                  f"(d) {payout_counts(d['payouts'])}; (e) "
                  f"{d['rebuild']['events']:,} events. Latency resolution: {paced['poll_interval_s'] * 1000:.0f} ms "
                  "polls. Latency ratio = records the raw reader reads in that time.", highlight=False)
    if d.get("cpu_us_per_record"):
        cpu = Table(title="CPU µs per record, by process and phase (other: the rest of the machine's busy time)")
        phases = list(d["cpu_us_per_record"])
        names = sorted({name for used in d["cpu_us_per_record"].values() for name in used},
                       key=lambda name: (name in ("other", "machine"), name))
        cpu.add_column("process")
        for phase in phases:
            cpu.add_column(phase, justify="right")
        for name in names:
            cpu.add_row(name, *(f"{d['cpu_us_per_record'][phase].get(name, 0):,.1f}"
                                if name in d["cpu_us_per_record"][phase] else "-" for phase in phases))
        console.print(cpu)


def main() -> int:
    args = parse_args()
    signal.signal(signal.SIGTERM, _terminate)
    log_dir = Path(tempfile.mkdtemp(prefix="ledger-bench-"))
    report = (lambda line: errors.print(f"  {line}", highlight=False))
    started = time.monotonic()
    place, ok = None, False
    try:
        place = open_place(report)
        about = machine(place)
        details: dict = {}
        if args.only != "restart":
            with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                          console=errors, transient=False) as progress:
                details = run(args, place, log_dir, progress)
        restart = None if args.only == "throughput" else run_restart(args, place, log_dir, report, bool(details))
        about["load_avg_1_5_15_at_end"] = os.getloadavg()
        rows = figures(details, place.settings) if details else []
        stripe_in_force = stripe_limits_in_force(place.settings)
        if restart is not None:
            raw_per_s = (details["raw_read"]["records_per_s"] if details
                         else restart["sizes"][-1]["raw_read"]["records_per_s"])
            restart["ratio_yardstick"] = ("a" if details else
                                          f"raw read of the restart history at {restart['sizes'][-1]['label']}")
            rows += restart_bench.figures(restart, raw_per_s)
        result = {"seconds": round(time.monotonic() - started, 1), "machine": about,
                  "settings": {"provider_concurrency": stripe_in_force[0],  # the Stripe lane at the limits in force
                               "provider_rate_per_s": stripe_in_force[1],
                               "provider_latency_s": PROVIDER_LATENCY_S,
                               "settled_per_min_cap": round(stripe_in_force[1] * 60),
                               "sequencer_batch_max": place.settings.sequencer_batch_max,
                               "partitions_events": place.settings.partitions_events,
                               "topics_suffix": place.settings.topic_events.rsplit(".", 1)[-1],
                               "schema": place.schema},
                  "figures": rows, "details": details}
        if restart is not None:
            result["restart"] = restart
        if args.as_json:
            print(json.dumps(result, indent=2, default=str))
        else:
            print_table(result)
        ok = True
        return 0
    except BenchFailure as exc:
        errors.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        return 1
    except Exception as exc:  # a broker, database or client error: one line, the workers still stopped below
        errors.print(f"[bold red]error:[/] {type(exc).__name__}: {exc}", highlight=False, soft_wrap=True)
        return 1
    except KeyboardInterrupt:
        errors.print("[bold red]error:[/] interrupted; workers stopped", highlight=False)
        return 130
    finally:
        if place is not None:
            if not args.keep:
                remove_run_data(place, report)
            close_place(place, report)
        if ok and not args.keep:
            shutil.rmtree(log_dir, ignore_errors=True)
        else:
            errors.print(f"worker logs kept in {log_dir}", highlight=False)


if __name__ == "__main__":
    sys.exit(main())
