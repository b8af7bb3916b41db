"""Commission plans, payout-method fees and the payout breakdown: what a payee is owed for a period.

Every line item rounds once, half up (away from zero) to the currency's minor unit:
payee_share = gross x rate; fee = gross x fee rate + fixed fee; net = payee_share - deductions - fee.
The platform's commission is gross - payee_share, so gross is always fully accounted for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Mapping

from ledger.money import BASIS_POINTS_PER_UNIT, Money, round_half_up


class InvalidPlan(ValueError):
    """A plan, fee or deduction in the configuration is malformed; the message names it."""


class UnknownPlan(LookupError):
    """No plan or payout method of that name."""


def major_to_minor(major: str, currency_code: str) -> Money:
    """A major-unit amount ("0.25") in a currency, rounded half up once to its minor unit (XOF: 0)."""
    try:
        value = Decimal(major)
    except (InvalidOperation, TypeError):
        raise InvalidPlan(f"{major!r} is not a decimal amount") from None
    if not value.is_finite():
        raise InvalidPlan(f"{major!r} is not a finite amount")
    exponent = Money.zero(currency_code).currency.exponent
    sign, digits, decimal_exponent = value.as_tuple()
    numerator = int("".join(map(str, digits)) or "0") * (-1 if sign else 1)
    scale = exponent + int(decimal_exponent)
    if scale >= 0:
        return Money.of(numerator * 10**scale, currency_code)
    return Money.of(round_half_up(numerator, 10**-scale), currency_code)


@dataclass(frozen=True)
class ServiceTier:
    """More than `more_than_services` services in a period earns `rate_bp`."""

    more_than_services: int
    rate_bp: int


@dataclass(frozen=True)
class CommissionPlan:
    name: str
    base_rate_bp: int
    tiers: tuple[ServiceTier, ...] = ()
    bonus_above_gross_major: str | None = None  # gross above this (major units of the currency) earns the bonus
    bonus_bp: int = 0
    deductions_major: Mapping[str, str] = field(default_factory=dict)  # recurring, per period

    def rate_bp(self, gross: Money, services: int) -> int:
        rate = self.base_rate_bp
        for tier in sorted(self.tiers, key=lambda t: t.more_than_services):
            if services > tier.more_than_services:
                rate = tier.rate_bp
        if self.bonus_above_gross_major is not None and gross > major_to_minor(self.bonus_above_gross_major,
                                                                                gross.currency.code):
            rate += self.bonus_bp
        return rate

    def recurring_deductions(self, currency_code: str) -> dict[str, Money]:
        return {name: major_to_minor(amount, currency_code) for name, amount in self.deductions_major.items()}


@dataclass(frozen=True)
class FeeRule:
    """A payout method's fee: a share of gross in basis points plus a fixed part in major units."""

    method: str
    percent_bp: int
    fixed_major: str = "0"

    def fee(self, gross: Money) -> Money:
        share = round_half_up(gross.amount_minor * self.percent_bp, BASIS_POINTS_PER_UNIT)
        return Money.of(share, gross.currency.code) + major_to_minor(self.fixed_major, gross.currency.code)


@dataclass(frozen=True)
class Breakdown:
    """What a payee is owed for a period, line by line, in one currency."""

    gross: Money
    services: int
    rate_bp: int
    payee_share: Money
    deductions: tuple[tuple[str, Money], ...]
    fee: Money
    net: Money

    @property
    def commission(self) -> Money:
        return self.gross - self.payee_share

    @property
    def deductions_total(self) -> Money:
        total = Money.zero(self.gross.currency.code)
        for _, amount in self.deductions:
            total = total + amount
        return total

    def as_minor_units(self) -> dict[str, int]:
        return {"gross": self.gross.amount_minor, "rate_bp": self.rate_bp,
                "payee_share": self.payee_share.amount_minor, "deductions": self.deductions_total.amount_minor,
                "fee": self.fee.amount_minor, "net": self.net.amount_minor}


@dataclass(frozen=True)
class PlanBook:
    """Every commission plan and payout-method fee the ledger knows."""

    plans: Mapping[str, CommissionPlan]
    fees: Mapping[str, FeeRule]

    def plan(self, name: str) -> CommissionPlan:
        if name not in self.plans:
            raise UnknownPlan(f"unknown commission plan {name!r}; known: {', '.join(sorted(self.plans))}")
        return self.plans[name]

    def fee_rule(self, method: str) -> FeeRule:
        if method not in self.fees:
            raise UnknownPlan(f"unknown payout method {method!r}; known: {', '.join(sorted(self.fees))}")
        return self.fees[method]

    def breakdown(self, plan_name: str, method: str, gross: Money, services: int,
                  deductions: Mapping[str, Money] | None = None, *, recurring: bool = True) -> Breakdown:
        """The period's breakdown; a fee is charged only when there is gross to pay out of.

        `recurring` adds the plan's per-period deductions (a period with no activity has none);
        an explicit deduction of the same name adds to the recurring one.
        """
        plan = self.plan(plan_name)
        rate = plan.rate_bp(gross, services)
        share = gross.apply_basis_points(rate)
        combined = dict(plan.recurring_deductions(gross.currency.code)) if recurring else {}
        for name, amount in (deductions or {}).items():
            combined[name] = combined[name] + amount if name in combined else amount
        lines = tuple(sorted(combined.items()))
        for name, amount in lines:
            if amount.currency != gross.currency:
                raise InvalidPlan(f"deduction {name} is in {amount.currency.code}, the payout in {gross.currency.code}")
        before_fee = share - sum((amount for _, amount in lines), Money.zero(gross.currency.code))
        fee = self.fee_rule(method).fee(gross) if gross.amount_minor > 0 else Money.zero(gross.currency.code)
        return Breakdown(gross, services, rate, share, lines, fee, before_fee - fee)


BUILTIN_CONFIG: dict[str, Any] = {
    "plans": {
        "tiered-services": {
            "base_rate_bp": 7000,
            "tiers": [{"more_than_services": 50, "rate_bp": 7200}, {"more_than_services": 100, "rate_bp": 7500}],
            "bonus_above_gross_major": "10000.00", "bonus_bp": 200,
        },
        "flat-80": {"base_rate_bp": 8000},
    },
    "fees": {
        "stripe_standard": {"percent_bp": 25, "fixed_major": "0.25"},
        "stripe_instant": {"percent_bp": 125, "fixed_major": "0.25"},
        "bank_transfer": {"percent_bp": 0, "fixed_major": "0.50"},
        "mobile_money": {"percent_bp": 0, "fixed_major": "0"},
        "manual": {"percent_bp": 0, "fixed_major": "0"},
    },
}


def _int(value: Any, where: str, low: int = 0, high: int = 100 * BASIS_POINTS_PER_UNIT) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidPlan(f"{where} must be an integer from {low} to {high}, got {value!r}")
    return value


def _major(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise InvalidPlan(f"{where} must be a decimal string like \"0.25\" (never a float), got {value!r}")
    major_to_minor(value, "BHD")  # parses, and checks the finest exponent in use
    return value


def load_plan_book(config: Mapping[str, Any]) -> PlanBook:
    """Build plans and fees from a config mapping (built-ins merged with a user's file)."""
    plans: dict[str, CommissionPlan] = {}
    for name, spec in dict(config.get("plans", {})).items():
        where = f"plans.{name}"
        unknown = set(spec) - {"base_rate_bp", "tiers", "bonus_above_gross_major", "bonus_bp", "deductions"}
        if unknown:
            raise InvalidPlan(f"{where} has unknown keys {sorted(unknown)}")
        tiers = tuple(ServiceTier(_int(t.get("more_than_services"), f"{where}.tiers.more_than_services", 0, 10**6),
                                  _int(t.get("rate_bp"), f"{where}.tiers.rate_bp")) for t in spec.get("tiers", []))
        bonus_above = spec.get("bonus_above_gross_major")
        plans[name] = CommissionPlan(
            name, _int(spec.get("base_rate_bp"), f"{where}.base_rate_bp"), tiers,
            _major(bonus_above, f"{where}.bonus_above_gross_major") if bonus_above is not None else None,
            _int(spec.get("bonus_bp", 0), f"{where}.bonus_bp"),
            {key: _major(value, f"{where}.deductions.{key}") for key, value in dict(spec.get("deductions", {})).items()},
        )
    fees = {method: FeeRule(method, _int(spec.get("percent_bp", 0), f"fees.{method}.percent_bp"),
                            _major(spec.get("fixed_major", "0"), f"fees.{method}.fixed_major"))
            for method, spec in dict(config.get("fees", {})).items()}
    return PlanBook(plans, fees)


def merge_config(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """A user's config replaces whole plans and fee rules by name, and adds new ones."""
    return {section: {**dict(base.get(section, {})), **dict(override.get(section, {}))} for section in ("plans", "fees")}
