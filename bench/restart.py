"""Benchmark (not a test): restart time and peak memory of each processor, with one new payment waiting, at two
history sizes (10,000 and 110,000 ledger.events records over 500 payees by default).

    .venv/bin/python bench/restart.py [--json]      # 10k, then grown to 110k in the same stack
    .venv/bin/python bench/restart.py --small       # 1k and 3k events over 50 payees: a quick check

Per size: history is written (payments, payout rounds settled through the Stripe sandbox) while every
processor runs; they are stopped with SIGTERM, started once more each to catch up and stopped again (a clean
stop writes the final checkpoint); then, per repeat, one new payment is sent and each processor is restarted
alone. Restart time runs from the process start until it is caught up and has handled the payment where that
is visible: the sequencer until the payment is in ledger.events (its Kafka timestamp), the projector until its
row is in `earnings`, the transfer processor and the notifier until their start line. Peak RSS is VmHWM read
just before SIGTERM. Exit 0 when every phase finished (whether or not the targets were met), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import sqlalchemy
from confluent_kafka import Consumer, TopicPartition
from rich.console import Console
from rich.table import Table

from bench_processes import BenchFailure, LedgerProcess, ledger_env
from bench_reading import LogTail, raw_read_rate
from bench_stack import BenchPlace, close_place, machine, open_place, remove_run_data
from restart_history import History
from ledger.codec import EventCodec
from processors.log_end import end_offsets
from runtime.database import make_engine
from sandbox.stripe import StripeTestServer

TARGET_GROWTH = 1.5  # restart time at the large size / at the small size, at most
TARGET_RSS_BYTES_PER_EVENT = 50.0  # peak RSS growth per event of history, at most
READY_S = 600.0  # a restart must be caught up within this
POLL_S = 0.025
SIZES = (10_000, 110_000)
SMALL_SIZES = (1_000, 3_000)
errors = Console(stderr=True)


@dataclass(frozen=True)
class Spec:
    command: tuple[str, ...]
    legacy: tuple[str, ...]  # start lines of the processors as they were before checkpoints
    group: str | None = None  # a consumer group whose committed offsets at the end show it is caught up


SPECS = {
    "sequencer": Spec(("sequencer",), ("rebuilt from ",)),
    "projector": Spec(("projector",), ("caught up",)),
    "transfers": Spec(("transfers",), ("rebuilt ",)),
    "notifier": Spec(("notifier",), (), group="ledger-notifier"),
    "aggregator": Spec(("aggregator",), ("rebuilt ",)),
}
DEFAULT_PROCESSORS = ("sequencer", "projector", "transfers", "notifier")
RESUMED = re.compile(r"^resumed from (?P<where>.*): (?P<tail>\d+) records of tail read in (?P<secs>[\d.]+) s")
REPLAYED = re.compile(r"^full replay \((?P<reason>.*)\): (?P<tail>\d+) records read in (?P<secs>[\d.]+) s")
QUIET_WARNINGS = ("LEDGER_SMTP_HOST is not set", "LEDGER_NOTIFY_WEBHOOK_SECRET is not set")  # expected here
WHY = re.compile(r"^full replay: (?P<why>.*)")


@dataclass(frozen=True)
class StartLine:
    at: float  # the log record's own time (epoch seconds)
    message: str
    mode: str  # "checkpoint", "full_replay" or "legacy" (a start line of before checkpoints)
    tail_records: int | None = None
    tail_read_s: float | None = None


def log_lines(process: LedgerProcess, level: str | None = None) -> list[tuple[float, str]]:
    """(time, message) of every JSON log line (LEDGER_LOG_FORMAT=json writes them to stderr), of one level if
    given."""
    lines = []
    for path in (process.err_path, process.out_path):
        if not path.exists():
            continue
        for raw in path.read_text(errors="replace").splitlines():
            if not raw.startswith("{"):
                continue
            try:
                entry = json.loads(raw)
                if level is not None and entry.get("level") != level:
                    continue
                lines.append((_epoch(entry["ts"]), str(entry.get("message", ""))))
            except (ValueError, KeyError, TypeError):
                continue
    return lines


def _epoch(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def start_line(lines: list[tuple[float, str]], spec: Spec) -> StartLine | None:
    """The checkpoint-era start line if logged, else the first legacy one."""
    for at, message in lines:
        for pattern, mode in ((RESUMED, "checkpoint"), (REPLAYED, "full_replay")):
            found = pattern.match(message)
            if found:
                return StartLine(at, message, mode, int(found["tail"]), float(found["secs"]))
    for at, message in lines:
        if any(message.startswith(prefix) for prefix in spec.legacy):
            return StartLine(at, message, "legacy")
    return None


class GroupWatch:
    """Whether a consumer group's committed offsets reached the end of a topic (commits nothing itself)."""

    def __init__(self, bootstrap: str, group: str, topic: str) -> None:
        self.bootstrap, self.topic = bootstrap, topic
        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})

    def at_end(self) -> bool:
        ends = end_offsets(self.bootstrap, self.topic)
        committed = self.consumer.committed([TopicPartition(self.topic, p) for p in ends], timeout=10)
        return all(max(0, part.offset) >= ends[part.partition] for part in committed)

    def close(self) -> None:
        self.consumer.close()


class Restarter:
    """Starts one processor alone and times it until it is caught up (and has handled the waiting payment)."""

    def __init__(self, place: BenchPlace, env: dict[str, str], log_dir: Path) -> None:
        self.place, self.env, self.log_dir = place, env, log_dir
        self.engine = make_engine(place.database_url)
        self.codec = EventCodec()
        self.legacy: set[str] = set()  # processors whose first run logged no checkpoint-era start line

    def learn(self, name: str, first_run: LedgerProcess) -> None:
        """Whether this processor predates checkpoints, from the start line of a run that has seen the log."""
        line = start_line(log_lines(first_run), SPECS[name])
        if line is None or line.mode == "legacy":
            self.legacy.add(name)
        else:
            self.legacy.discard(name)

    def close(self) -> None:
        self.engine.dispose()

    def run(self, name: str, tag: str, waiting: str | None) -> dict[str, object]:
        spec = SPECS[name]
        topic = self.place.settings.topic_events
        tail = LogTail(self.place.bootstrap, topic) if name == "sequencer" and waiting else None
        group = GroupWatch(self.place.bootstrap, spec.group, topic) if spec.group and name in self.legacy else None
        process = LedgerProcess(f"{name}-{tag}", list(spec.command), self.env, self.log_dir)
        seen_at: float | None = None  # when the waiting payment was seen handled
        line: StartLine | None = None
        deadline = time.monotonic() + READY_S
        try:
            while True:
                process.check_alive(f"its restart ({tag})")
                line = start_line(log_lines(process), spec)
                if seen_at is None and waiting and name == "sequencer":
                    seen_at = next((record.timestamp_s for record in tail.drain()
                                    if self.codec.decode(record.value).envelope.event_id == waiting), None)
                elif seen_at is None and waiting and name == "projector":
                    seen_at = self._projected(waiting)
                elif seen_at is None and group is not None and name in self.legacy and group.at_end():
                    seen_at = time.time()
                needs_payment = waiting is not None and name in ("sequencer", "projector")
                if name in self.legacy:  # it logs no checkpoint-era start line: its old one, or its group offsets
                    ready = (line is not None and (seen_at is not None or not needs_payment)) or \
                            (group is not None and seen_at is not None)
                else:
                    ready = line is not None and line.mode != "legacy" and (seen_at is not None or not needs_payment)
                if ready:
                    break
                if time.monotonic() > deadline:
                    raise BenchFailure(f"restart of {name} ({tag}) not caught up within {READY_S:.0f} s "
                                       f"(start line: {line.message if line else 'none'}; payment handled: "
                                       f"{seen_at is not None}); its last lines:\n{process.tail()}")
                time.sleep(POLL_S if name == "projector" or line is None else 0.1)
        finally:
            if tail is not None:
                tail.close()
            if group is not None:
                group.close()
            code = process.stop()
        lines = log_lines(process)
        line = start_line(lines, spec) or line
        why = next((found["why"] for _, message in lines if (found := WHY.match(message))), None)
        ends = [at for at in (line.at if line else None, seen_at) if at is not None]
        return {"restart_s": round(max(ends) - process.started_at, 3),
                "start_line_s": round(line.at - process.started_at, 3) if line else None,
                "payment_handled_s": round(seen_at - process.started_at, 3) if seen_at else None,
                "mode": line.mode if line else "group_offsets", "tail_records": line.tail_records if line else None,
                "tail_read_s": line.tail_read_s if line else None, "start_line": line.message if line else None,
                "full_replay_why": why, "peak_rss_kib": process.peak_kib, "exit_code": code,
                "warnings": [message[:300] for _, message in log_lines(process, "warning")
                             if not message.startswith(QUIET_WARNINGS)][:5]}

    def _projected(self, event_id: str) -> float | None:
        with self.engine.connect() as connection:
            found = connection.execute(sqlalchemy.text("SELECT 1 FROM earnings WHERE event_id = :id"),
                                       {"id": event_id}).first()
        return time.time() if found else None


def size_label(events: int) -> str:
    return f"{events / 1000:g}k" if events >= 1000 else str(events)


def measure(place: BenchPlace, log_dir: Path, sizes: tuple[int, ...], payees: int, events_per_round: int,
            repeats: int, processors: tuple[str, ...], say: Callable[[str], None]) -> dict[str, object]:
    """The whole restart benchmark on this place's (fresh) topics and schema."""
    started = time.monotonic()
    names = ("sequencer",) + tuple(name for name in processors if name != "sequencer")
    (log_dir / "data").mkdir(exist_ok=True)
    workers: dict[str, LedgerProcess] = {}

    def check(during: str) -> None:
        for worker in workers.values():
            worker.check_alive(during)

    run_id = uuid.uuid4().hex[:8]
    rounds_at = [max(1, size // events_per_round) for size in sizes]
    sizes_out: list[dict[str, object]] = []
    runs: dict[str, dict[str, dict[str, object]]] = {name: {} for name in names}
    with StripeTestServer(latency_s=0.0) as stripe_server:
        env = ledger_env(place.settings, place.bootstrap, place.database_url, log_dir / "data",
                         LEDGER_LOG_FORMAT="json", LEDGER_STRIPE_API_KEY="sk_test_bench",
                         LEDGER_STRIPE_API_BASE=stripe_server.url, LEDGER_PROVIDER_RATE_PER_S="1000",
                         LEDGER_PROVIDER_CONCURRENCY="16")
        history = History(place.settings, place.bootstrap, payees, run_id, rounds_at[-1], check, say)
        restarter = Restarter(place, env, log_dir)
        try:
            for size, rounds in zip(sizes, rounds_at):
                label = size_label(size)
                building = time.monotonic()
                for name in names:
                    workers[name] = LedgerProcess(f"{name}-{label}-build", list(SPECS[name].command), env, log_dir)
                if history.events == 0:
                    accounts = {payee: stripe_server.create_account() for payee in history.payees}
                    history.schedules(accounts)
                say(f"{label}: growing the history to {size:,} events")
                grown = history.grow_to(size, rounds)
                for name in list(workers):
                    restarter.learn(name, workers[name])
                    workers.pop(name).stop()
                build_s = time.monotonic() - building
                say(f"{label}: {history.events:,} events; each processor started once more to catch up")
                settle = {name: restarter.run(name, f"{label}-settle", None) for name in names}
                for repeat in range(repeats):
                    waiting = history.send_waiting()
                    for name in names:
                        result = restarter.run(name, f"{label}-r{repeat + 1}", waiting)
                        runs[name].setdefault(label, {"settle": settle[name], "restarts": []})["restarts"].append(result)
                        say(f"{label} restart {repeat + 1}/{repeats}: {name} {result['restart_s']:.2f} s "
                            f"({result['mode']}, tail {result['tail_records']}), "
                            f"VmHWM {(result['peak_rss_kib'] or 0) / 1024:.1f} MiB"
                            + "".join(f"; warning: {warning}" for warning in result["warnings"]))
                history.follow()
                raw = raw_read_rate(place.bootstrap, place.settings.topic_events, 3, timeout_s=600)
                sizes_out.append({"label": label, "target_events": size, **history.summary(), "grown": grown,
                                  "build_s": round(build_s, 1), "raw_read": raw,
                                  "raw_full_read_s": round(raw["records"] / raw["records_per_s"], 3)})
        finally:
            for worker in workers.values():
                worker.stop()
            restarter.close()
            history.close()
    return summarise(sizes_out, runs, payees, repeats, time.monotonic() - started)


def summarise(sizes: list[dict], runs: dict[str, dict[str, dict]], payees: int, repeats: int,
              seconds: float) -> dict[str, object]:
    """Medians per processor and size, growth between the first and the last size, the targets, pass/fail."""
    labels = [size["label"] for size in sizes]
    small, large = sizes[0], sizes[-1]
    processors: dict[str, dict[str, object]] = {}
    for name, by_size in runs.items():
        restart = {label: statistics.median(r["restart_s"] for r in by_size[label]["restarts"]) for label in labels}
        peak_kib = {label: statistics.median(r["peak_rss_kib"] or 0 for r in by_size[label]["restarts"])
                    for label in labels}
        growth = restart[large["label"]] / restart[small["label"]] if restart[small["label"]] else None
        per_event = ((peak_kib[large["label"]] - peak_kib[small["label"]]) * 1024
                     / (large["events"] - small["events"])) if large["events"] > small["events"] else None
        growth_ok = growth is not None and growth <= TARGET_GROWTH
        rss_ok = per_event is not None and per_event <= TARGET_RSS_BYTES_PER_EVENT
        processors[name] = {
            "restart_s": {label: round(value, 3) for label, value in restart.items()},
            "peak_rss_mib": {label: round(value / 1024, 1) for label, value in peak_kib.items()},
            "peak_rss_kib": peak_kib,
            "tail_records": {label: [r["tail_records"] for r in by_size[label]["restarts"]] for label in labels},
            "start_mode": {label: sorted({r["mode"] for r in by_size[label]["restarts"]}) for label in labels},
            "restart_growth": None if growth is None else round(growth, 3),
            "rss_bytes_per_event": None if per_event is None else round(per_event, 1),
            "restart_growth_pass": growth_ok, "rss_pass": rss_ok, "pass": growth_ok and rss_ok,
            "runs": by_size,
        }
    return {"sizes": sizes, "payees": payees, "repeats": repeats, "seconds": round(seconds, 1),
            "targets": {"restart_growth_max": TARGET_GROWTH, "rss_bytes_per_event_max": TARGET_RSS_BYTES_PER_EVENT},
            "processors": processors, "pass": all(p["pass"] for p in processors.values())}


def figures(restart: dict[str, object], raw_per_s: float | None) -> list[dict[str, object]]:
    """run_all.py's figure rows: restart times in plain seconds (their ratio: records the raw reader reads in
    that time, as for latencies), growth and RSS per event against their targets (no ratio)."""
    rows = []
    for name, result in restart["processors"].items():
        for label, seconds in result["restart_s"].items():
            rows.append({"key": f"r_{name}_{label}", "figure": f"restart: {name}, {label} events of history",
                         "value": seconds, "unit": "s",
                         "ratio_to_raw_read": None if raw_per_s is None else round(seconds * raw_per_s, 1)})
        for label, mib in result["peak_rss_mib"].items():
            rows.append({"key": f"r_{name}_{label}_rss", "figure": f"restart peak memory (VmHWM): {name}, {label}",
                         "value": mib, "unit": "MiB", "ratio_to_raw_read": None})
        verdict = "pass" if result["restart_growth_pass"] else "FAIL"
        rows.append({"key": f"r_{name}_growth", "figure": f"restart growth: {name} (target <= x{TARGET_GROWTH:g}: "
                     f"{verdict})", "value": result["restart_growth"], "unit": "x", "ratio_to_raw_read": None})
        verdict = "pass" if result["rss_pass"] else "FAIL"
        rows.append({"key": f"r_{name}_rss_per_event", "figure": f"peak RSS growth: {name} (target <= "
                     f"{TARGET_RSS_BYTES_PER_EVENT:g} B/event: {verdict})", "value": result["rss_bytes_per_event"],
                     "unit": "B/event", "ratio_to_raw_read": None})
    return rows


def print_table(restart: dict[str, object], console: Console) -> None:
    labels = [size["label"] for size in restart["sizes"]]
    table = Table(title=f"restart benchmark ({restart['seconds']:.0f} s; one new payment waiting; "
                        f"median of {restart['repeats']})")
    table.add_column("processor")
    for label in labels:
        table.add_column(f"restart {label}", justify="right")
    for label in labels:
        table.add_column(f"VmHWM {label}", justify="right")
    table.add_column(f"growth (<= x{TARGET_GROWTH:g})", justify="right")
    table.add_column(f"B/event (<= {TARGET_RSS_BYTES_PER_EVENT:g})", justify="right")
    table.add_column("start", justify="left")
    table.add_column("", justify="left")
    for name, result in restart["processors"].items():
        modes = "; ".join(f"{label}: {','.join(result['start_mode'][label])} tail "
                          f"{','.join(str(t) for t in result['tail_records'][label])}" for label in labels)
        growth, per_event = result["restart_growth"], result["rss_bytes_per_event"]
        table.add_row(name, *(f"{result['restart_s'][label]:.2f} s" for label in labels),
                      *(f"{result['peak_rss_mib'][label]:.1f} MiB" for label in labels),
                      "-" if growth is None else f"x{growth:.2f}", "-" if per_event is None else f"{per_event:,.1f}",
                      modes, "pass" if result["pass"] else "FAIL")
    console.print(table)
    console.print("; ".join(f"{size['label']}: {size['events']:,} events ({size['payments']:,} payments, "
                            f"{size['payouts_settled']:,} payouts settled over {size['payout_rounds']} rounds), "
                            f"raw read of all of it {size['raw_full_read_s']:.2f} s" for size in restart["sizes"]),
                  highlight=False)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_options(parser)
    parser.add_argument("--keep", action="store_true", help="keep the run's topics, schema and worker logs")
    parser.add_argument("--json", dest="as_json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()
    check_options(parser, args)
    return args


def add_options(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    parser.add_argument(f"--{prefix}sizes", default=None,
                        help=f"history sizes in ledger.events records, ascending (default {','.join(map(str, SIZES))})")
    parser.add_argument(f"--{prefix}small", action="store_true",
                        help=f"quick check: sizes {','.join(map(str, SMALL_SIZES))}, 50 payees, a payout round per 1,000 events")
    parser.add_argument(f"--{prefix}payees", type=int, default=None, help="payees (default 500; 50 with --small)")
    parser.add_argument(f"--{prefix}events-per-round", type=int, default=None,
                        help="one payout round for every payee per this many events of history (default 10,000)")
    parser.add_argument(f"--{prefix}repeats", type=int, default=3, help="restarts per processor and size (median)")
    parser.add_argument(f"--{prefix}processors", default=",".join(DEFAULT_PROCESSORS),
                        help=f"comma-separated, of {','.join(SPECS)} (the sequencer always runs)")


def check_options(parser: argparse.ArgumentParser, args: argparse.Namespace, prefix: str = "") -> None:
    """Fill the defaults that depend on --small; error out on nonsense."""
    attr = prefix.replace("-", "_")
    get = lambda name: getattr(args, f"{attr}{name}")  # noqa: E731
    small = get("small")
    sizes = tuple(int(part) for part in get("sizes").split(",")) if get("sizes") else (SMALL_SIZES if small else SIZES)
    setattr(args, f"{attr}sizes", sizes)
    setattr(args, f"{attr}payees", get("payees") or (50 if small else 500))
    setattr(args, f"{attr}events_per_round", get("events_per_round") or (1_000 if small else 10_000))
    processors = tuple(part.strip() for part in get("processors").split(",") if part.strip())
    setattr(args, f"{attr}processors", processors)
    if len(sizes) < 2 or list(sizes) != sorted(set(sizes)) or sizes[0] < 4 * get("payees"):
        parser.error(f"--{prefix}sizes: at least two, ascending, the first >= 4 x payees")
    if get("repeats") < 1 or get("events_per_round") < 1 or any(name not in SPECS for name in processors):
        parser.error(f"--{prefix}repeats >= 1, --{prefix}events-per-round >= 1, --{prefix}processors of {', '.join(SPECS)}")


def _terminate(*_: object) -> None:
    raise KeyboardInterrupt  # SIGTERM: leave through the finally blocks that stop the workers


def main() -> int:
    args = parse_args()
    signal.signal(signal.SIGTERM, _terminate)
    log_dir = Path(tempfile.mkdtemp(prefix="ledger-restart-bench-"))
    say = (lambda line: errors.print(f"  {line}", highlight=False))
    place, ok = None, False
    try:
        place = open_place(say)
        about = machine(place)
        restart = measure(place, log_dir, args.sizes, args.payees, args.events_per_round, args.repeats,
                          args.processors, say)
        about["load_avg_1_5_15_at_end"] = os.getloadavg()
        if args.as_json:
            print(json.dumps({"machine": about, "restart": restart}, indent=2, default=str))
        else:
            print_table(restart, Console(width=None if sys.stdout.isatty() else 160))
        ok = True
        return 0
    except BenchFailure as exc:
        errors.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        return 1
    except Exception as exc:  # a broker, database or client error: one line, the workers still stopped
        errors.print(f"[bold red]error:[/] {type(exc).__name__}: {exc}", highlight=False, soft_wrap=True)
        return 1
    except KeyboardInterrupt:
        errors.print("[bold red]error:[/] interrupted; workers stopped", highlight=False)
        return 130
    finally:
        if place is not None:
            if not args.keep:
                remove_run_data(place, say)
            close_place(place, say)
        if ok and not args.keep:
            shutil.rmtree(log_dir, ignore_errors=True)
        else:
            errors.print(f"worker logs kept in {log_dir}", highlight=False)


if __name__ == "__main__":
    sys.exit(main())
