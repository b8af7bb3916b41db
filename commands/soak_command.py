"""`ledger soak`: the demo's workload with two instances of each partitioned processor killed on a seeded
schedule, hostile input through every entrance, then a verdict (demo/soak.py)."""

from __future__ import annotations

import sys

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from commands.demo_command import RichReporter
from commands.output import console, emit_json, fail
from demo.run import DemoRefused
from demo.soak import SoakOptions, run_soak
from runtime.settings import Settings


@click.command(short_help="Run the demo's workload while processors are killed at random; check nothing is lost.")
@click.option("--payees", default=40, show_default=True, type=click.IntRange(10, 5_000), help="Payees.")
@click.option("--payments", default=2_000, show_default=True, type=click.IntRange(10, 500_000),
              help="Payments to append (plus refunds, adjustments, redelivered, late and malformed ones).")
@click.option("--days", default=7, show_default=True, type=click.IntRange(1, 62),
              help="Days of cutoffs the simulated clock moves across.")
@click.option("--seed", default=None, type=int,
              help="Seed of the workload, the hostile records and the fault schedule (default: random, printed).")
@click.option("--kill-every", "kill_every_s", default=1.0, show_default=True, type=click.FloatRange(0.05, 600),
              help="Mean seconds between two SIGKILLs of a random processor instance (each restarted at once).")
@click.option("--hostile", default=2_000, show_default=True, type=click.IntRange(0, 1_000_000),
              help="Hostile inputs through every entrance: the input topic (JSON and Avro), POST /v1/payments, "
                   "`ledger publish` files and the Stripe webhook endpoint.")
@click.option("--instances", default=2, show_default=True, type=click.IntRange(1, 8),
              help="Instances of each partitioned processor (sequencer, projector, transfers, notifier).")
@click.option("--crash-point", "crash_points", multiple=True, metavar="POINT:P",
              help="Arm a crash point with probability P per pass (e.g. sequencer_before_flush:0.3); repeatable.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary and verdict as JSON.")
def soak(payees: int, payments: int, days: int, seed: int | None, kill_every_s: float, hostile: int, instances: int,
         crash_points: tuple[str, ...], as_json: bool) -> None:
    """Run every processor (the partitioned ones as INSTANCES `--partitioned` instances, crash points armed),
    the API and the webhook endpoint; SIGKILL a random one every KILL_EVERY seconds on average (and restart
    the embedded PostgreSQL now and then) while the demo's workload runs and hostile inputs arrive through
    every entrance; then drain and judge: every payment chained once, every payout paid once and none lost,
    the read models equal to a fresh fold, every hostile input refused with its field named and none
    accepted, memory bounded. Exits 1 on a failed verdict, printing the seed that replays it."""
    options = SoakOptions(payees=payees, payments=payments, days=days, seed=seed, instances=instances,
                          kill_every_s=kill_every_s, hostile=hostile, crash_points=crash_points)
    stream = Console(stderr=True) if as_json else console
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TextColumn("{task.fields[detail]}", style="dim"), console=stream) as progress:
        reporter = RichReporter(progress)
        try:
            summary = run_soak(Settings(), options, reporter)
        except DemoRefused as exc:
            fail(str(exc))
        reporter.finish()
    verdict = summary["soak"]
    if as_json:
        emit_json(summary)
    else:
        table = Table(title=f"soak, seed {verdict['seed']}: {'PASSED' if verdict['passed'] else 'FAILED'}",
                      show_header=False)
        table.add_column("what")
        table.add_column("value", justify="right")
        for label, value in (("SIGKILLs from the schedule", verdict["kills_total"]),
                             ("deaths at crash points", sum(verdict["crash_point_deaths"].values())),
                             ("restarts", verdict["restarts"]), ("Stripe troubles injected", verdict["stripe_troubles"]),
                             ("hostile records sent", verdict["hostile_sent"]),
                             ("hostile records refused", verdict.get("hostile_refused", "-")),
                             ("payments appended", summary.get("payments_appended", "-")),
                             ("payouts settled / failed",
                              f"{summary.get('payouts_settled', '-')} / {summary.get('payouts_failed', '-')}"),
                             ("paid twice", summary.get("paid_twice", "-")),
                             ("verify mismatches", summary.get("verify_mismatches", "-")),
                             ("elapsed", f"{summary['elapsed_s']} s")):
            table.add_row(label, f"{value:,}" if isinstance(value, int) else str(value))
        console.print(table)
        console.print(f"kills by processor: {verdict['kills']}", highlight=False)
        for failure in verdict["failures"]:
            console.print(f"[red]FAILED[/]: {failure}", highlight=False)
    if not verdict["passed"]:
        click.echo(f"soak failed with seed {verdict['seed']}; replay: {verdict['replay']} (logs: {verdict['logs']})",
                   err=True)
    sys.exit(0 if verdict["passed"] else 1)
