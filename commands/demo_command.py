"""`ledger demo`: the whole product on the embedded stack in about a minute, then a summary (demo/run.py)."""

from __future__ import annotations

import sys

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from commands.output import console, emit_json, fail
from demo.run import DemoOptions, DemoRefused, Reporter, run_demo
from ledger.money import Money
from runtime.settings import Settings


class RichReporter(Reporter):
    """One progress line per phase; the current one shows a bar when its size is known."""

    def __init__(self, progress: Progress) -> None:
        self.progress, self.task = progress, None

    def phase(self, name: str, total: int | None = None) -> None:
        if self.task is not None:
            task = self.progress.tasks[self.task]
            self.progress.update(self.task, completed=task.total or 1, total=task.total or 1)
        self.task = self.progress.add_task(name, total=total, detail="")

    def advance(self, done: int) -> None:
        if self.task is not None and done:
            self.progress.advance(self.task, done)

    def note(self, text: str) -> None:
        if self.task is not None:
            self.progress.update(self.task, detail=text)

    def finish(self) -> None:
        self.phase("done", 1)
        self.progress.advance(self.task, 1)


@click.command(short_help="Run the whole product on the embedded stack against sandbox providers.")
@click.option("--payees", default=40, show_default=True, type=click.IntRange(10, 5_000),
              help="Payees (barbers, writers, drivers... in USD, EUR, GBP, XOF and BHD).")
@click.option("--payments", default=2_000, show_default=True, type=click.IntRange(10, 200_000),
              help="Payments to append (plus 4% refunds, 1% adjustments, 5% redelivered, late and malformed ones).")
@click.option("--days", default=7, show_default=True, type=click.IntRange(1, 62),
              help="Days the simulated clock moves across (payments occur in them; periods close at cutoffs).")
@click.option("--seed", default=None, type=int, help="Random seed of the data (default: random, printed).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON (progress goes to stderr).")
def demo(payees: int, payments: int, days: int, seed: int | None, as_json: bool) -> None:
    """Start (or reuse) the embedded stack and every processor; append payments; tick the clock across
    DAYS of cutoffs; pay through the Stripe, bank and mobile money sandboxes (with injected failures
    and retries) and a manual operator; wait for the projections; verify them against the ledger."""
    settings = Settings()
    options = DemoOptions(payees=payees, payments=payments, days=days, seed=seed)
    stream = Console(stderr=True) if as_json else console
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TextColumn("{task.fields[detail]}", style="dim"), console=stream,
                  transient=False) as progress:
        reporter = RichReporter(progress)
        try:
            summary = run_demo(settings, options, reporter)
        except DemoRefused as exc:
            fail(str(exc))
        reporter.finish()
    if as_json:
        emit_json(summary)
    else:
        _print(summary)
    ok = summary["ledger_balanced"] and summary["verify_mismatches"] == 0
    sys.exit(0 if ok else 1)


def _print(summary: dict) -> None:
    console.print(f"[bold]demo run {summary['run_id']}[/]: {summary['payees']} payees, {summary['days']} days, "
                  f"seed {summary['seed']}, {summary['elapsed_s']} s", highlight=False)
    inputs = Table(show_header=False)
    inputs.add_column("what")
    inputs.add_column("count", justify="right")
    for label, key in (("payments appended", "payments_appended"), ("refunds appended", "refunds_appended"),
                       ("bonuses and deductions", "adjustments_appended"), ("late payments (carried)", "late_payments"),
                       ("redelivered duplicates (dropped)", "duplicates_dropped"),
                       ("malformed inputs -> dead letters", "dead_letters"), ("clock ticks", "ticks"),
                       ("periods closed", "periods_closed"), ("  of which carried (below minimum or held)",
                                                              "balances_carried"),
                       ("payouts requested", "payouts_requested"), ("payouts settled", "payouts_settled"),
                       ("payouts failed (money returned to balance)", "payouts_failed"),
                       ("provider faults injected", "provider_faults_injected"),
                       ("automatic retries", "retries"), ("operator retries", "operator_retries"),
                       ("manual payouts confirmed by the operator", "operator_confirmed"),
                       ("payees put on hold by the operator", "payees_held"),
                       ("paid twice", "paid_twice"), ("events verified", "verify_events"),
                       ("verify mismatches", "verify_mismatches")):
        inputs.add_row(label, f"{summary[key]:,}")
    console.print(inputs)

    money = Table(title="balances per currency (every payee: earned = settled + in flight + unpaid)")
    for column in ("currency", "earned net", "settled", "in flight", "unpaid (carried)"):
        money.add_column(column, justify="right" if column != "currency" else "left")
    for code, row in summary["per_currency"].items():
        money.add_row(code, *(Money.of(row[name], code).to_major_string()
                              for name in ("earned_net", "settled", "in_flight", "unpaid")))
    console.print(money)

    providers = Table(title="providers: what the ledger settled vs what the sandbox paid (minor units)")
    for column in ("provider", "ledger settled", "provider paid", "match"):
        providers.add_column(column)
    for name, row in summary["providers"].items():
        providers.add_row(name, _per_code(row["ledger_settled_minor"]), _per_code(row["provider_paid_minor"]),
                          "[green]yes[/]" if row["ok"] else "[red]NO[/]")
    console.print(providers)
    if summary["failure_reasons"]:
        console.print(f"failure reasons: {', '.join(summary['failure_reasons'])}")
    verdict = "[green]balanced[/]" if summary["ledger_balanced"] and summary["verify_mismatches"] == 0 else \
        "[red]NOT balanced[/]"
    console.print(f"ledger {verdict}; verify mismatches: {summary['verify_mismatches']}. "
                  "Explore it: `ledger payouts list`, `ledger report payouts`, `ledger api` then /ui.")


def _per_code(amounts: dict[str, int]) -> str:
    return ", ".join(f"{code} {minor:,}" for code, minor in sorted(amounts.items())) or "-"
