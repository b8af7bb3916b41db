"""Commission plans, fees and the payout breakdown: worked examples exact, conservation always."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

import pytest
from hypothesis import given, settings as hypothesis_settings
from hypothesis import strategies as st

from ledger.commission import (
    BUILTIN_CONFIG, InvalidPlan, UnknownPlan, load_plan_book, major_to_minor, merge_config,
)
from ledger.money import Money

BOOK = load_plan_book(BUILTIN_CONFIG)


def test_tiered_services_example_comes_out_exactly():
    result = BOOK.breakdown("tiered-services", "stripe_standard", Money.of(100_000, "USD"), 60,
                            {"booth_rent": Money.of(5_000, "USD")})
    assert result.as_minor_units() == {"gross": 100_000, "rate_bp": 7200, "payee_share": 72_000,
                                       "deductions": 5_000, "fee": 275, "net": 66_725}


def test_flat_80_example_comes_out_exactly():
    result = BOOK.breakdown("flat-80", "mobile_money", Money.of(30_000, "XOF"), 1)
    assert result.net == Money.of(24_000, "XOF") and result.fee == Money.of(0, "XOF")


@pytest.mark.parametrize(("services", "gross_minor", "rate_bp"), [
    (0, 100, 7000), (50, 100, 7000), (51, 100, 7200), (100, 100, 7200), (101, 100, 7500),
    (10, 1_000_000, 7000),        # exactly 10,000.00 is not *more than* 10,000.00
    (10, 1_000_001, 7200),        # +2 points above 10,000.00
    (101, 1_000_001, 7700),
])
def test_tiered_services_rate(services, gross_minor, rate_bp):
    assert BOOK.plan("tiered-services").rate_bp(Money.of(gross_minor, "USD"), services) == rate_bp


def test_bonus_threshold_is_in_the_currencys_own_major_unit():
    # 10,000 XOF is not the same money as 10,000.00 USD, but the plan says "10,000 in the major unit".
    assert BOOK.plan("tiered-services").rate_bp(Money.of(10_001, "XOF"), 0) == 7200
    assert BOOK.plan("tiered-services").rate_bp(Money.of(10_000, "XOF"), 0) == 7000


@pytest.mark.parametrize(("method", "gross_minor", "fee_minor"), [
    ("stripe_standard", 100_000, 275),   # 0.25% = 250 + 0.25
    ("stripe_standard", 1, 25),          # 0.0025 rounds to 0, + 25
    ("stripe_standard", 200, 26),        # 0.5 rounds half up to 1
    ("stripe_instant", 100_000, 1_275),  # 1.25% = 1250 + 25
    ("bank_transfer", 100_000, 50),
    ("mobile_money", 100_000, 0),
    ("manual", 100_000, 0),
])
def test_method_fees_in_usd(method, gross_minor, fee_minor):
    assert BOOK.fee_rule(method).fee(Money.of(gross_minor, "USD")) == Money.of(fee_minor, "USD")


def test_fixed_fee_parts_round_half_up_in_zero_and_three_decimal_currencies():
    assert major_to_minor("0.25", "XOF") == Money.of(0, "XOF")
    assert major_to_minor("0.50", "XOF") == Money.of(1, "XOF")  # half rounds up
    assert major_to_minor("0.25", "BHD") == Money.of(250, "BHD")
    assert major_to_minor("-0.5", "JPY") == Money.of(-1, "JPY")  # away from zero


def test_no_fee_when_there_is_nothing_to_pay():
    result = BOOK.breakdown("flat-80", "stripe_standard", Money.of(0, "USD"), 0)
    assert result.fee == Money.of(0, "USD") and result.net == Money.of(0, "USD")


def test_deductions_larger_than_the_share_leave_a_negative_net_for_the_caller_to_carry():
    result = BOOK.breakdown("flat-80", "manual", Money.of(1_000, "EUR"), 1, {"booth_rent": Money.of(5_000, "EUR")})
    assert result.net == Money.of(-4_200, "EUR")


def test_a_deduction_in_another_currency_is_refused():
    with pytest.raises(InvalidPlan, match="deduction rent is in EUR, the payout in USD"):
        BOOK.breakdown("flat-80", "manual", Money.of(1_000, "USD"), 1, {"rent": Money.of(5, "EUR")})


@hypothesis_settings(max_examples=200)
@given(plan=st.sampled_from(["tiered-services", "flat-80"]),
       method=st.sampled_from(["stripe_standard", "stripe_instant", "bank_transfer", "mobile_money", "manual"]),
       code=st.sampled_from(["USD", "XOF", "BHD", "JPY"]),
       gross=st.integers(0, 10**12), services=st.integers(0, 500),
       deductions=st.dictionaries(st.sampled_from(["booth_rent", "supply_fee"]), st.integers(0, 10**9)))
def test_totals_conserve_and_each_line_rounds_once(plan, method, code, gross, services, deductions):
    result = BOOK.breakdown(plan, method, Money.of(gross, code), services,
                            {name: Money.of(amount, code) for name, amount in deductions.items()})
    assert result.payee_share + result.commission == result.gross
    assert result.net == result.payee_share - result.deductions_total - result.fee
    exact_share = Decimal(gross) * result.rate_bp / 10_000
    assert result.payee_share.amount_minor == int(exact_share.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def test_a_plans_file_replaces_and_adds_plans():
    book = load_plan_book(merge_config(BUILTIN_CONFIG, {
        "plans": {"flat-85": {"base_rate_bp": 8500, "deductions": {"booth_rent": "50.00"}}},
        "fees": {"manual": {"percent_bp": 0, "fixed_major": "1.00"}},
    }))
    result = book.breakdown("flat-85", "manual", Money.of(10_000, "USD"), 1)
    assert result.as_minor_units() == {"gross": 10_000, "rate_bp": 8500, "payee_share": 8_500,
                                       "deductions": 5_000, "fee": 100, "net": 3_400}
    assert book.plan("flat-80").base_rate_bp == 8000  # built-ins stay


@pytest.mark.parametrize(("config", "message"), [
    ({"plans": {"x": {"base_rate_bp": 0.8}}}, r"plans\.x\.base_rate_bp must be an integer"),
    ({"plans": {"x": {"base_rate_bp": 8000, "bonus_bp": -1}}}, r"plans\.x\.bonus_bp must be an integer"),
    ({"plans": {"x": {"base_rate_bp": 8000, "deductions": {"rent": 50.0}}}}, r"never a float"),
    ({"plans": {"x": {"base_rate_bp": 8000, "rates": 1}}}, r"plans\.x has unknown keys \['rates'\]"),
    ({"fees": {"wire": {"percent_bp": 10, "fixed_major": "abc"}}}, r"'abc' is not a decimal amount"),
])
def test_malformed_config_names_the_setting(config, message):
    with pytest.raises(InvalidPlan, match=message):
        load_plan_book(config)


def test_unknown_plan_and_method_list_the_known_ones():
    with pytest.raises(UnknownPlan, match="known: flat-80, tiered-services"):
        BOOK.plan("gold")
    with pytest.raises(UnknownPlan, match="unknown payout method 'paypal'"):
        BOOK.fee_rule("paypal")
