"""Exact money: integer minor units in one ISO 4217 currency, and the ledger's rounding rule."""

# THE ROUNDING RULE. Wherever the ledger has to turn an exact fraction of a minor unit into
# a whole one (a percentage cut, a fee in basis points), it rounds half up, meaning half
# away from zero, to the minor unit: 2.5 -> 3, -2.5 -> -3, 2.4 -> 2, -2.4 -> -2. One rule,
# in one function (round_half_up), so every component that splits money agrees to the
# minor unit; it uses integer arithmetic only, so no Decimal context, float or platform
# can change a result. Everything else is exact, and floats are refused outright.

from __future__ import annotations

import decimal
import re
from collections.abc import Iterable
from dataclasses import dataclass

from ledger.currencies import Currency, UnknownCurrency, currency, table_currencies
from ledger.guards import require

BASIS_POINTS_PER_UNIT = 10_000

# Beyond this many minor-unit digits an amount is a bug or an attack, not money; the cap
# keeps a Decimal such as 1E+999999999 from being expanded into a gigantic integer.
_MAX_MINOR_DIGITS = 1_000
_TABLE = table_currencies()

# Plain decimal notation only: exponents, underscores, blanks, "1." and ".5" are refused
# so a value cannot reach the ledger in a spelling other systems would read differently.
_MAJOR_AMOUNT = re.compile(r"[+-]?[0-9]+(\.[0-9]+)?")


class MixedCurrencyError(ValueError):
    """Two amounts in different currencies met in arithmetic or an ordering comparison."""


class InvalidAmount(ValueError):
    """A value that cannot be an exact amount of money (a float, a bool, too many decimals...)."""


def _require_int(value: object, what: str) -> int:
    # bool is an int subclass: True would silently count as 1.
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float):
            raise InvalidAmount(
                f"{what} must be an int, got float {value!r}: floats are never accepted for money"
            )
        raise InvalidAmount(f"{what} must be an int, got {type(value).__name__} {value!r}")
    return value


def round_half_up(numerator: int, denominator: int) -> int:
    """numerator / denominator rounded half away from zero (THE rounding rule; see the module)."""
    _require_int(numerator, "numerator")
    _require_int(denominator, "denominator")
    if denominator <= 0:
        raise ValueError(f"denominator must be > 0, got {denominator}")
    quotient, remainder = divmod(abs(numerator), denominator)
    if 2 * remainder >= denominator:
        quotient += 1
    return -quotient if numerator < 0 else quotient


def basis_points_of(amount_minor: int, bp: int) -> int:
    """bp basis points (1/10000ths) of amount_minor, rounded with round_half_up."""
    _require_int(amount_minor, "amount_minor")
    _require_int(bp, "basis points")
    return round_half_up(amount_minor * bp, BASIS_POINTS_PER_UNIT)


def _mixed(action: str, left: Money, right: Money) -> MixedCurrencyError:
    return MixedCurrencyError(
        f"cannot {action} {left.currency.code} and {right.currency.code} amounts:"
        " convert one of them explicitly first"
    )


@dataclass(frozen=True, slots=True)
class Money:
    """An exact amount: a whole number of minor units (cents for USD) of one currency."""

    amount_minor: int
    currency: Currency

    def __post_init__(self) -> None:
        held = self.currency
        if type(self.amount_minor) is int and type(held) is Currency and _TABLE.get(held.code) is held:
            return  # the usual case: an int and a currency from the table, decided without a lookup chain
        _require_int(self.amount_minor, "amount_minor")
        if not isinstance(self.currency, Currency):
            raise TypeError(
                f"currency must be a Currency, got {type(self.currency).__name__}"
                f" {self.currency!r} (use Money.of(amount_minor, 'USD'))"
            )
        # A hand-made Currency('USD', 3) would scale every amount wrongly: only the table's
        # currencies may carry money.
        expected = currency(self.currency.code)
        if expected != self.currency:
            raise UnknownCurrency(
                f"{self.currency!r} is not ISO 4217 {expected.code}, whose exponent is"
                f" {expected.exponent}: take currencies from ledger.currencies.currency()"
            )

    def __reduce__(self) -> tuple:
        # pickled as a constructor call (checkpoints hold many): the dataclass default walks fields() each time
        return (Money, (self.amount_minor, self.currency))

    @classmethod
    def of(cls, amount_minor: int, code: str) -> Money:
        """amount_minor minor units of the currency `code` (Money.of(1050, 'USD') is USD 10.50)."""
        return cls(amount_minor, currency(code))

    @classmethod
    def zero(cls, code: str) -> Money:
        """No money in the currency `code`."""
        return cls(0, currency(code))

    @classmethod
    def from_major(cls, value: str | decimal.Decimal | int, code: str) -> Money:
        """Exactly `value` major units ('10000.00' USD is 1000000 minor); refuses extra digits."""
        cur = currency(code)
        if isinstance(value, float):
            raise InvalidAmount("floats are never accepted for money: pass a string or Decimal")
        if isinstance(value, bool):
            raise InvalidAmount(f"bools are never accepted for money, got {value!r}")
        if isinstance(value, int):
            return cls(value * 10**cur.exponent, cur)
        if isinstance(value, str):
            if not _MAJOR_AMOUNT.fullmatch(value):
                raise InvalidAmount(
                    f"{value!r} is not a plain decimal amount such as '1234.56' or '-0.05'"
                )
            # Constructing a Decimal from a string is exact: no context rounding applies.
            value = decimal.Decimal(value)
        if not isinstance(value, decimal.Decimal):
            raise InvalidAmount(
                f"amounts are given as str, Decimal or int, not {type(value).__name__} {value!r}"
            )
        return cls(_decimal_to_minor(value, cur), cur)

    def __add__(self, other: object) -> Money:
        if not isinstance(other, Money):
            return NotImplemented
        if other.currency != self.currency:
            raise _mixed("add", self, other)
        return Money(self.amount_minor + other.amount_minor, self.currency)

    def __sub__(self, other: object) -> Money:
        if not isinstance(other, Money):
            return NotImplemented
        if other.currency != self.currency:
            raise _mixed("subtract", self, other)
        return Money(self.amount_minor - other.amount_minor, self.currency)

    def __neg__(self) -> Money:
        return Money(-self.amount_minor, self.currency)

    def __abs__(self) -> Money:
        return Money(abs(self.amount_minor), self.currency)

    def _amount_to_order(self, other: object) -> int | None:
        if not isinstance(other, Money):
            return None
        if other.currency != self.currency:
            raise _mixed("compare", self, other)
        return other.amount_minor

    def __lt__(self, other: object) -> bool:
        other_minor = self._amount_to_order(other)
        if other_minor is None:
            return NotImplemented
        return self.amount_minor < other_minor

    def __le__(self, other: object) -> bool:
        other_minor = self._amount_to_order(other)
        if other_minor is None:
            return NotImplemented
        return self.amount_minor <= other_minor

    def __gt__(self, other: object) -> bool:
        other_minor = self._amount_to_order(other)
        if other_minor is None:
            return NotImplemented
        return self.amount_minor > other_minor

    def __ge__(self, other: object) -> bool:
        other_minor = self._amount_to_order(other)
        if other_minor is None:
            return NotImplemented
        return self.amount_minor >= other_minor

    def times(self, n: int) -> Money:
        """This amount n times over (n a whole number; scale by a rate with apply_basis_points)."""
        return Money(self.amount_minor * _require_int(n, "multiplier"), self.currency)

    def apply_basis_points(self, bp: int) -> Money:
        """bp/10000 of this amount, rounded half up; bp may be negative or above 10000."""
        return Money(basis_points_of(self.amount_minor, bp), self.currency)

    @property
    def is_negative(self) -> bool:
        return self.amount_minor < 0

    @property
    def is_zero(self) -> bool:
        return self.amount_minor == 0

    def to_major_string(self) -> str:
        """The exact amount in major units: '667.25', '-0.05', '24000' (XOF), '1.250' (BHD)."""
        exponent = self.currency.exponent
        digits = str(abs(self.amount_minor))
        sign = "-" if self.amount_minor < 0 else ""
        if exponent == 0:
            return sign + digits
        digits = digits.rjust(exponent + 1, "0")
        return f"{sign}{digits[:-exponent]}.{digits[-exponent:]}"

    def __str__(self) -> str:
        return f"{self.currency.code} {self.to_major_string()}"


def _decimal_to_minor(value: decimal.Decimal, cur: Currency) -> int:
    if not value.is_finite():
        raise InvalidAmount(f"{value} is not an amount of money")
    sign, digit_tuple, exponent = value.as_tuple()
    require(isinstance(exponent, int), "a finite Decimal has an int exponent")
    # Scale by hand rather than with Decimal arithmetic, whose context precision (28 digits
    # by default) would round large amounts silently.
    digits = "".join(map(str, digit_tuple)).lstrip("0")
    if not digits:
        return 0
    significant = digits.rstrip("0")
    # Trailing zeros are exact ("1.250" USD is 125 cents): only nonzero digits below the
    # minor unit make a value unrepresentable.
    shift = exponent + (len(digits) - len(significant)) + cur.exponent
    if shift < 0:
        raise InvalidAmount(
            f"{value} has too many decimal places for {cur.code}, which has"
            f" {cur.exponent} (its ISO 4217 minor unit)"
        )
    if len(significant) + shift > _MAX_MINOR_DIGITS:
        raise InvalidAmount(f"{value} {cur.code} is too large to be an amount of money")
    minor = int(significant) * 10**shift
    return -minor if sign else minor


def sum_money(items: Iterable[Money], code: str) -> Money:
    """The total of `items`, all in currency `code` (zero of it when there are none)."""
    total = Money.zero(code)
    for item in items:
        if not isinstance(item, Money):
            raise TypeError(f"sum_money adds Money, got {type(item).__name__} {item!r}")
        total = total + item
    return total
