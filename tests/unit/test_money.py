"""Behaviour of ledger.money and ledger.currencies: exact amounts, one rounding rule, no floats."""

from __future__ import annotations

import dataclasses
import decimal
import re
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.currencies import (
    Currency,
    UnknownCurrency,
    all_currencies,
    currency,
    is_known_currency,
)
from ledger.money import (
    BASIS_POINTS_PER_UNIT,
    InvalidAmount,
    MixedCurrencyError,
    Money,
    basis_points_of,
    round_half_up,
    sum_money,
)

# Well past 64 bits, so nothing can lean on fixed-width integers.
BIG = st.integers(min_value=-(10**40), max_value=10**40)
BASIS_POINTS = st.integers(min_value=-(10**6), max_value=10**6)
CURRENCIES = st.sampled_from(all_currencies())
CODES = CURRENCIES.map(lambda cur: cur.code)


def both_codes(first: str, second: str) -> str:
    """A pattern that matches a message naming both codes, in either order."""
    return rf"(?s)(?=.*\b{first}\b)(?=.*\b{second}\b)"


# --- the examples the ledger's rules are written against ---------------------------------


def test_seventy_two_percent_of_a_thousand_dollars() -> None:
    assert Money.of(100000, "USD").apply_basis_points(7200) == Money.of(72000, "USD")


def test_a_quarter_percent_of_a_thousand_dollars_is_250_cents() -> None:
    assert Money.of(100000, "USD").apply_basis_points(25).amount_minor == 250


def test_half_a_minor_unit_rounds_away_from_zero() -> None:
    assert Money.of(1, "USD").apply_basis_points(5000) == Money.of(1, "USD")
    assert Money.of(-1, "USD").apply_basis_points(5000) == Money.of(-1, "USD")


def test_from_major_quarter_dollar() -> None:
    assert Money.from_major("0.25", "USD").amount_minor == 25


def test_eighty_percent_of_xof_30000() -> None:
    assert Money.of(30000, "XOF").apply_basis_points(8000) == Money.of(24000, "XOF")


def test_bhd_has_three_decimals() -> None:
    assert Money.from_major("1.250", "BHD").amount_minor == 1250


def test_ten_thousand_dollars_from_major() -> None:
    assert Money.from_major("10000.00", "USD") == Money.of(1000000, "USD")


@pytest.mark.parametrize(
    ("amount_minor", "code", "major"),
    [
        (66725, "USD", "667.25"),
        (-5, "USD", "-0.05"),
        (0, "USD", "0.00"),
        (24000, "XOF", "24000"),
        (-24000, "XOF", "-24000"),
        (1250, "BHD", "1.250"),
        (1, "CLF", "0.0001"),
        (123456789, "JPY", "123456789"),
    ],
)
def test_to_major_string(amount_minor: int, code: str, major: str) -> None:
    assert Money.of(amount_minor, code).to_major_string() == major


def test_str_is_code_then_major_amount() -> None:
    assert str(Money.of(66725, "USD")) == "USD 667.25"
    assert str(Money.of(-1250, "BHD")) == "BHD -1.250"


# --- arithmetic laws ---------------------------------------------------------------------


@given(BIG, BIG, CODES)
def test_addition_is_commutative_and_exact(a: int, b: int, code: str) -> None:
    left, right = Money.of(a, code), Money.of(b, code)
    assert left + right == right + left == Money.of(a + b, code)


@given(BIG, BIG, BIG, CODES)
def test_addition_is_associative(a: int, b: int, c: int, code: str) -> None:
    x, y, z = Money.of(a, code), Money.of(b, code), Money.of(c, code)
    assert (x + y) + z == x + (y + z)


@given(BIG, BIG, CODES)
def test_subtraction_undoes_addition(a: int, b: int, code: str) -> None:
    x, y = Money.of(a, code), Money.of(b, code)
    assert (x + y) - y == x
    assert x - y == x + (-y)
    assert (x - x).is_zero
    assert -(-x) == x


@given(BIG, CODES)
def test_abs_and_sign_properties(a: int, code: str) -> None:
    m = Money.of(a, code)
    assert abs(m).amount_minor == abs(a)
    assert m.is_negative == (a < 0)
    assert m.is_zero == (a == 0)
    assert not abs(m).is_negative


@given(BIG, BIG, CODES)
def test_ordering_follows_amounts(a: int, b: int, code: str) -> None:
    x, y = Money.of(a, code), Money.of(b, code)
    assert (x < y) == (a < b)
    assert (x <= y) == (a <= b)
    assert (x > y) == (a > b)
    assert (x >= y) == (a >= b)
    assert (x == y) == (a == b)


@given(BIG, st.integers(min_value=-1000, max_value=1000), CODES)
def test_times_is_integer_multiplication(a: int, n: int, code: str) -> None:
    assert Money.of(a, code).times(n) == Money.of(a * n, code)


@given(BIG, st.integers(min_value=0, max_value=20), CODES)
def test_times_equals_repeated_addition(a: int, n: int, code: str) -> None:
    m = Money.of(a, code)
    assert m.times(n) == sum_money([m] * n, code)


def test_equal_amounts_hash_alike_and_work_as_keys() -> None:
    assert len({Money.of(5, "USD"), Money.of(5, "USD"), Money.of(5, "EUR")}) == 2
    assert {Money.of(5, "USD"): "x"}[Money.from_major("0.05", "USD")] == "x"


def test_money_is_immutable() -> None:
    m = Money.of(5, "USD")
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.amount_minor = 6  # type: ignore[misc]


# --- mixed currencies ----------------------------------------------------------------------


MIXED_OPERATIONS = {
    "add": lambda x, y: x + y,
    "sub": lambda x, y: x - y,
    "lt": lambda x, y: x < y,
    "le": lambda x, y: x <= y,
    "gt": lambda x, y: x > y,
    "ge": lambda x, y: x >= y,
}


@pytest.mark.parametrize("name", sorted(MIXED_OPERATIONS))
def test_mixed_currencies_refuse_arithmetic_and_ordering(name: str) -> None:
    operation = MIXED_OPERATIONS[name]
    with pytest.raises(MixedCurrencyError, match=both_codes("USD", "EUR")):
        operation(Money.of(100, "USD"), Money.of(100, "EUR"))
    with pytest.raises(MixedCurrencyError, match=both_codes("XOF", "JPY")):
        operation(Money.of(100, "XOF"), Money.of(100, "JPY"))


def test_equality_across_currencies_is_false_not_an_error() -> None:
    assert Money.of(100, "USD") != Money.of(100, "EUR")
    assert not Money.of(100, "USD") == Money.of(100, "EUR")
    assert Money.zero("USD") != Money.zero("EUR")


@pytest.mark.parametrize("other", [1, 0, Decimal("1"), "1", None])
def test_arithmetic_and_ordering_with_non_money_is_a_type_error(other: object) -> None:
    m = Money.of(1, "USD")
    with pytest.raises(TypeError):
        m + other  # type: ignore[operator]
    with pytest.raises(TypeError):
        m - other  # type: ignore[operator]
    with pytest.raises(TypeError):
        other + m  # type: ignore[operator]
    with pytest.raises(TypeError):
        m < other  # type: ignore[operator]
    assert m != other


def test_sum_money() -> None:
    assert sum_money([], "JPY") == Money.zero("JPY")
    items = [Money.of(5, "USD"), Money.of(-2, "USD"), Money.of(10**30, "USD")]
    assert sum_money(items, "USD") == Money.of(10**30 + 3, "USD")
    assert sum_money(iter(items), "USD") == Money.of(10**30 + 3, "USD")


def test_sum_money_refuses_other_currencies_and_non_money() -> None:
    with pytest.raises(MixedCurrencyError, match=both_codes("USD", "EUR")):
        sum_money([Money.of(1, "USD"), Money.of(1, "EUR")], "USD")
    with pytest.raises(MixedCurrencyError, match=both_codes("USD", "EUR")):
        sum_money([Money.of(1, "EUR")], "USD")
    with pytest.raises(TypeError):
        sum_money([Money.of(1, "USD"), 1], "USD")  # type: ignore[list-item]


# --- floats, bools and other non-integers are refused everywhere ---------------------------


REFUSED_NUMBERS = [1.0, 0.5, float("nan"), True, False, Decimal("1"), "1", None]


@pytest.mark.parametrize("bad", REFUSED_NUMBERS, ids=repr)
def test_constructors_refuse_non_integers(bad: object) -> None:
    with pytest.raises(InvalidAmount):
        Money.of(bad, "USD")  # type: ignore[arg-type]
    with pytest.raises(InvalidAmount):
        Money(bad, currency("USD"))  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", REFUSED_NUMBERS, ids=repr)
def test_times_and_basis_points_refuse_non_integers(bad: object) -> None:
    m = Money.of(100000, "USD")
    with pytest.raises(InvalidAmount):
        m.times(bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidAmount):
        m.apply_basis_points(bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidAmount):
        basis_points_of(bad, 100)  # type: ignore[arg-type]
    with pytest.raises(InvalidAmount):
        basis_points_of(100, bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidAmount):
        round_half_up(bad, 2)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [0.25, 10000.0, float("inf"), 0.0])
def test_from_major_refuses_floats_with_a_reason(bad: float) -> None:
    with pytest.raises(InvalidAmount, match="floats are never accepted for money"):
        Money.from_major(bad, "USD")  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [True, False, None, [1], b"1"], ids=repr)
def test_from_major_refuses_bools_and_other_types(bad: object) -> None:
    with pytest.raises(InvalidAmount):
        Money.from_major(bad, "USD")  # type: ignore[arg-type]


def test_money_requires_a_table_currency() -> None:
    with pytest.raises(TypeError):
        Money(1, "USD")  # type: ignore[arg-type]
    with pytest.raises(UnknownCurrency, match="USD"):
        Money(1, Currency("USD", 3))
    with pytest.raises(UnknownCurrency, match="ZZZ"):
        Money(1, Currency("ZZZ", 2))


# --- parsing major amounts -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "code"),
    [("0.125", "USD"), ("1.5", "JPY"), ("0.0001", "BHD"), (Decimal("0.001"), "EUR"),
     (Decimal("1E-999999999"), "USD")],
)
def test_from_major_refuses_more_decimals_than_the_currency_has(value: object, code: str) -> None:
    with pytest.raises(InvalidAmount, match=rf"too many decimal places for {code}"):
        Money.from_major(value, code)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "text", ["", "1e3", "1E3", " 1", "1 ", "1.", ".5", "1_000", "1,00", "--1", "NaN",
             "Infinity", "0x10", "١٢"],
)
def test_from_major_refuses_anything_but_plain_decimal_notation(text: str) -> None:
    with pytest.raises(InvalidAmount, match=re.escape(repr(text))):
        Money.from_major(text, "USD")


@pytest.mark.parametrize("value", [Decimal("NaN"), Decimal("sNaN"), Decimal("-Infinity")])
def test_from_major_refuses_non_finite_decimals(value: Decimal) -> None:
    with pytest.raises(InvalidAmount):
        Money.from_major(value, "USD")


def test_from_major_refuses_absurd_magnitudes_without_expanding_them() -> None:
    with pytest.raises(InvalidAmount, match="too large"):
        Money.from_major(Decimal("1E+999999999"), "USD")


@pytest.mark.parametrize(
    ("value", "code", "amount_minor"),
    [
        ("1.250", "USD", 125),
        ("+7.10", "USD", 710),
        ("-0.05", "USD", -5),
        ("-0", "USD", 0),
        ("007", "JPY", 7),
        (5, "BHD", 5000),
        (-3, "JPY", -3),
        (Decimal("1E+3"), "USD", 100000),
        (Decimal("1.20E+1"), "JPY", 12),
        # 31 significant digits: past Decimal's default 28-digit context, so must stay exact.
        (Decimal("12345678901234567890123456789.12"), "USD", 1234567890123456789012345678912),
        ("12345678901234567890123456789.12", "USD", 1234567890123456789012345678912),
    ],
)
def test_from_major_is_exact(value: object, code: str, amount_minor: int) -> None:
    assert Money.from_major(value, code).amount_minor == amount_minor  # type: ignore[arg-type]


@given(CURRENCIES, BIG)
def test_major_string_round_trips_for_every_currency(cur: Currency, amount_minor: int) -> None:
    m = Money(amount_minor, cur)
    text = m.to_major_string()
    assert Money.from_major(text, cur.code) == m
    assert Money.from_major(Decimal(text), cur.code) == m
    fraction = text.partition(".")[2]
    assert len(fraction) == cur.exponent
    assert int(text.replace(".", "")) == amount_minor


@given(CURRENCIES, st.integers(min_value=0, max_value=10**30), st.data())
def test_major_text_round_trips_through_minor_units(
    cur: Currency, whole: int, data: st.DataObject
) -> None:
    fraction = data.draw(st.text("0123456789", max_size=cur.exponent))
    negative = data.draw(st.booleans())
    text = ("-" if negative else "") + str(whole) + (f".{fraction}" if fraction else "")
    m = Money.from_major(text, cur.code)
    assert Decimal(m.to_major_string()) == Decimal(text)
    assert m.amount_minor == (-1 if negative else 1) * int(
        str(whole) + fraction.ljust(cur.exponent, "0")
    )


# --- THE rounding rule --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("numerator", "denominator", "expected"),
    [(5, 2, 3), (-5, 2, -3), (24, 10, 2), (-24, 10, -2), (25, 10, 3), (-25, 10, -3),
     (26, 10, 3), (-26, 10, -3), (0, 7, 0), (7, 1, 7), (1, 3, 0), (2, 3, 1), (-2, 3, -1)],
)
def test_round_half_up_examples(numerator: int, denominator: int, expected: int) -> None:
    assert round_half_up(numerator, denominator) == expected


@pytest.mark.parametrize("denominator", [0, -1, -10000])
def test_round_half_up_requires_a_positive_denominator(denominator: int) -> None:
    with pytest.raises(ValueError, match="denominator"):
        round_half_up(5, denominator)


@given(BIG, st.integers(min_value=1, max_value=10**20))
def test_round_half_up_matches_decimal_round_half_up(numerator: int, denominator: int) -> None:
    # |quotient| < 10**41 and, with denominator <= 10**20, the quotient is either exactly
    # on a half or at least 1/(2 * 10**20) away from one: 100 digits of precision leave
    # more than 50 fraction digits, so the Decimal division cannot cross a half.
    with decimal.localcontext(prec=100):
        quotient = Decimal(numerator) / Decimal(denominator)
        expected = int(quotient.quantize(Decimal(1), rounding=ROUND_HALF_UP))
    assert round_half_up(numerator, denominator) == expected


@given(BIG, st.integers(min_value=1, max_value=10**20))
def test_round_half_up_is_symmetric_around_zero(numerator: int, denominator: int) -> None:
    assert round_half_up(-numerator, denominator) == -round_half_up(numerator, denominator)


@given(BIG, BASIS_POINTS)
def test_basis_points_within_half_a_minor_unit_of_exact(amount_minor: int, bp: int) -> None:
    exact = Fraction(amount_minor * bp, BASIS_POINTS_PER_UNIT)
    result = basis_points_of(amount_minor, bp)
    assert abs(exact - result) <= Fraction(1, 2)
    if abs(exact - result) == Fraction(1, 2):
        assert abs(result) > abs(exact)


@given(BIG, BASIS_POINTS, CODES)
def test_apply_basis_points_uses_basis_points_of(amount_minor: int, bp: int, code: str) -> None:
    applied = Money.of(amount_minor, code).apply_basis_points(bp)
    assert applied == Money.of(basis_points_of(amount_minor, bp), code)


@given(BIG, CODES)
def test_basis_point_identities(amount_minor: int, code: str) -> None:
    m = Money.of(amount_minor, code)
    assert BASIS_POINTS_PER_UNIT == 10_000
    assert m.apply_basis_points(10_000) == m
    assert m.apply_basis_points(20_000) == m.times(2)
    assert m.apply_basis_points(0) == Money.zero(code)
    assert m.apply_basis_points(-10_000) == -m


# --- currencies ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "exponent"),
    [("USD", 2), ("EUR", 2), ("GBP", 2), ("XOF", 0), ("XAF", 0), ("JPY", 0), ("KRW", 0),
     ("BHD", 3), ("KWD", 3), ("OMR", 3), ("JOD", 3), ("TND", 3), ("LYD", 3), ("IQD", 3),
     ("CLF", 4), ("UYW", 4), ("CLP", 0), ("ISK", 0), ("VND", 0), ("UGX", 0), ("RWF", 0),
     ("PYG", 0), ("GNF", 0), ("KMF", 0), ("DJF", 0), ("BIF", 0), ("VUV", 0), ("XPF", 0),
     ("UYI", 0)],
)
def test_exponents(code: str, exponent: int) -> None:
    assert currency(code) == Currency(code, exponent)


@pytest.mark.parametrize(
    "code",
    ["XAU", "XAG", "XPT", "XPD", "XTS", "XXX", "XDR", "XBA", "XBB", "XBC", "XBD", "XSU", "XUA"],
)
def test_units_without_a_minor_unit_are_not_currencies(code: str) -> None:
    assert not is_known_currency(code)
    with pytest.raises(UnknownCurrency, match=code):
        currency(code)


def test_withdrawn_codes_are_gone() -> None:
    for code in ("HRK", "ZWL", "SLL", "CUC", "VEF", "LTL", "EEK", "DEM"):
        assert not is_known_currency(code), code


def test_table_is_well_formed() -> None:
    currencies = all_currencies()
    codes = [cur.code for cur in currencies]
    assert codes == sorted(set(codes))
    assert len(codes) > 150
    for cur in currencies:
        assert re.fullmatch("[A-Z]{3}", cur.code), cur
        assert cur.exponent in (0, 2, 3, 4), cur
        assert currency(cur.code) is cur
        assert is_known_currency(cur.code)


@pytest.mark.parametrize("code", ["usd", "Usd", "eur", "jPY"])
def test_lower_case_codes_are_refused_and_told_to_be_upper_case(code: str) -> None:
    assert not is_known_currency(code)
    with pytest.raises(UnknownCurrency, match=re.escape(repr(code)) + ".*upper-case"):
        currency(code)
    with pytest.raises(UnknownCurrency, match=re.escape(repr(code))):
        Money.of(1, code)
    with pytest.raises(UnknownCurrency, match=re.escape(repr(code))):
        Money.from_major("1", code)


@pytest.mark.parametrize("code", ["ABC", "", "US", "USDD", "U$D", " USD", "USD "])
def test_unknown_codes_are_refused_by_name(code: str) -> None:
    assert not is_known_currency(code)
    with pytest.raises(UnknownCurrency, match=re.escape(repr(code))):
        currency(code)
    with pytest.raises(UnknownCurrency, match=re.escape(repr(code))):
        Money.zero(code)


@pytest.mark.parametrize(("code", "type_name"), [(840, "int"), (None, "NoneType"),
                                                 (b"USD", "bytes")])
def test_non_string_codes_are_refused_naming_the_type(code: object, type_name: str) -> None:
    assert not is_known_currency(code)
    with pytest.raises(UnknownCurrency, match=type_name):
        currency(code)  # type: ignore[arg-type]


@given(st.text(max_size=5))
def test_any_other_text_is_unknown(code: str) -> None:
    if is_known_currency(code):
        assert currency(code).code == code
    else:
        with pytest.raises(UnknownCurrency, match=re.escape(repr(code))):
            currency(code)


def test_lookups_share_one_instance() -> None:
    assert currency("USD") is currency("USD")
    assert Money.of(1, "USD").currency is Money.from_major("0.01", "USD").currency
