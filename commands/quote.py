"""`ledger quote`: the payout breakdown for a gross amount under a plan, without touching the ledger."""

from __future__ import annotations

import click
from rich.table import Table

from commands.output import console, emit_json, fail
from ledger.currencies import UnknownCurrency, currency
from ledger.money import Money
from runtime.plans import plan_book
from runtime.settings import Settings


def _deduction(text: str) -> tuple[str, int]:
    name, separator, amount = text.partition("=")
    if not separator or not name or not amount.lstrip("-").isdigit() or amount.startswith("-"):
        raise click.BadParameter(f"{text!r}: expected NAME=MINOR with MINOR a non-negative integer, e.g. booth_rent=5000")
    return name, int(amount)


@click.command(short_help="Show a payout breakdown for a gross amount (touches nothing).")
@click.option("--plan", "plan_name", required=True, help="Commission plan, e.g. tiered-services or flat-80.")
@click.option("--currency", "code", required=True, help="ISO 4217 code, e.g. USD.")
@click.option("--gross", required=True, type=int, help="Gross earnings of the period in minor units.")
@click.option("--services", default=0, show_default=True, type=click.IntRange(min=0), help="Services in the period.")
@click.option("--deduction", "deductions", multiple=True, help="NAME=MINOR, repeatable (e.g. booth_rent=5000).")
@click.option("--method", default="manual", show_default=True, help="Payout method, for its fee.")
@click.option("--json", "as_json", is_flag=True, help="Print the breakdown as JSON (integer minor units).")
def quote(plan_name: str, code: str, gross: int, services: int, deductions: tuple[str, ...], method: str,
          as_json: bool) -> None:
    """Compute gross -> rate -> payee share -> deductions -> fee -> net, in integer minor units."""
    try:
        currency(code)
    except UnknownCurrency as exc:
        fail(f"--currency: {exc}")
    if gross < 0:
        fail(f"--gross must not be negative, got {gross}")
    book = plan_book(Settings())
    parsed = dict(_deduction(text) for text in deductions)
    result = book.breakdown(plan_name, method, Money.of(gross, code), services,
                            {name: Money.of(amount, code) for name, amount in parsed.items()})
    if as_json:
        emit_json(result.as_minor_units())
        return
    table = Table(title=f"{plan_name}, {method}, {code}")
    table.add_column("line")
    table.add_column("amount", justify="right")
    table.add_row("gross", str(result.gross))
    table.add_row(f"payee share ({result.rate_bp / 100:g}%)", str(result.payee_share))
    for name, amount in result.deductions:
        table.add_row(f"- {name}", str(amount))
    table.add_row(f"- fee ({method})", str(result.fee))
    table.add_row("net", str(result.net))
    table.add_row("platform commission", str(result.commission))
    console.print(table)
