"""ISO 4217 currencies the ledger can hold, and their minor-unit exponents."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Currency:
    """An ISO 4217 alphabetic code and how many minor-unit digits it has (USD 2, JPY 0, BHD 3)."""

    code: str
    exponent: int

    def __reduce__(self) -> tuple:
        return (Currency, (self.code, self.exponent))  # a constructor call: cheaper to pickle than fields()


class UnknownCurrency(ValueError):
    """Not an active ISO 4217 currency code with a minor unit: no amount can be held in it."""


# ISO 4217 list one as of its 2025 amendments (XCG replaces ANG, ZWG replaces ZWL, XAD added;
# CUC, HRK, SLL and ZWL are gone). Fund codes that have a minor unit (BOV, CHE, CHW, CLF,
# COU, MXV, USN, UYI, UYW, XAD) stay because payments can be denominated in them. Metals,
# SDRs, bond-market units, XSU, XUA, XTS and XXX are left out: ISO gives them no minor unit,
# so an integer count of minor units cannot represent them. ANG and BGN are kept while their
# replacement by XCG and EUR runs out: dropping them would make the ledger unable to replay
# events recorded in them.
_EXPONENTS: dict[str, int] = {
    "AED": 2, "AFN": 2, "ALL": 2, "AMD": 2, "ANG": 2, "AOA": 2, "ARS": 2, "AUD": 2,
    "AWG": 2, "AZN": 2, "BAM": 2, "BBD": 2, "BDT": 2, "BGN": 2, "BHD": 3, "BIF": 0,
    "BMD": 2, "BND": 2, "BOB": 2, "BOV": 2, "BRL": 2, "BSD": 2, "BTN": 2, "BWP": 2,
    "BYN": 2, "BZD": 2, "CAD": 2, "CDF": 2, "CHE": 2, "CHF": 2, "CHW": 2, "CLF": 4,
    "CLP": 0, "CNY": 2, "COP": 2, "COU": 2, "CRC": 2, "CUP": 2, "CVE": 2, "CZK": 2,
    "DJF": 0, "DKK": 2, "DOP": 2, "DZD": 2, "EGP": 2, "ERN": 2, "ETB": 2, "EUR": 2,
    "FJD": 2, "FKP": 2, "GBP": 2, "GEL": 2, "GHS": 2, "GIP": 2, "GMD": 2, "GNF": 0,
    "GTQ": 2, "GYD": 2, "HKD": 2, "HNL": 2, "HTG": 2, "HUF": 2, "IDR": 2, "ILS": 2,
    "INR": 2, "IQD": 3, "IRR": 2, "ISK": 0, "JMD": 2, "JOD": 3, "JPY": 0, "KES": 2,
    "KGS": 2, "KHR": 2, "KMF": 0, "KPW": 2, "KRW": 0, "KWD": 3, "KYD": 2, "KZT": 2,
    "LAK": 2, "LBP": 2, "LKR": 2, "LRD": 2, "LSL": 2, "LYD": 3, "MAD": 2, "MDL": 2,
    "MGA": 2, "MKD": 2, "MMK": 2, "MNT": 2, "MOP": 2, "MRU": 2, "MUR": 2, "MVR": 2,
    "MWK": 2, "MXN": 2, "MXV": 2, "MYR": 2, "MZN": 2, "NAD": 2, "NGN": 2, "NIO": 2,
    "NOK": 2, "NPR": 2, "NZD": 2, "OMR": 3, "PAB": 2, "PEN": 2, "PGK": 2, "PHP": 2,
    "PKR": 2, "PLN": 2, "PYG": 0, "QAR": 2, "RON": 2, "RSD": 2, "RUB": 2, "RWF": 0,
    "SAR": 2, "SBD": 2, "SCR": 2, "SDG": 2, "SEK": 2, "SGD": 2, "SHP": 2, "SLE": 2,
    "SOS": 2, "SRD": 2, "SSP": 2, "STN": 2, "SVC": 2, "SYP": 2, "SZL": 2, "THB": 2,
    "TJS": 2, "TMT": 2, "TND": 3, "TOP": 2, "TRY": 2, "TTD": 2, "TWD": 2, "TZS": 2,
    "UAH": 2, "UGX": 0, "USD": 2, "USN": 2, "UYI": 0, "UYU": 2, "UYW": 4, "UZS": 2,
    "VED": 2, "VES": 2, "VND": 0, "VUV": 0, "WST": 2, "XAD": 2, "XAF": 0, "XCD": 2,
    "XCG": 2, "XOF": 0, "XPF": 0, "YER": 2, "ZAR": 2, "ZMW": 2, "ZWG": 2,
}

_CURRENCIES: dict[str, Currency] = {
    code: Currency(code, exponent) for code, exponent in _EXPONENTS.items()
}

# Held in ISO but deliberately refused (see above): named so the error can say why.
_NO_MINOR_UNIT = frozenset(
    {"XAG", "XAU", "XBA", "XBB", "XBC", "XBD", "XDR", "XPD", "XPT", "XSU", "XTS", "XUA", "XXX"}
)


def currency(code: str) -> Currency:
    """The Currency for an upper-case ISO 4217 code; raises UnknownCurrency for anything else."""
    # No case folding: a lower-case code in an event or request is a bug upstream, and
    # silently accepting it would let two spellings of one currency into the ledger.
    if not isinstance(code, str):
        raise UnknownCurrency(
            f"unknown currency {code!r}: currency codes are str, not {type(code).__name__}"
            " (pass an upper-case ISO 4217 alphabetic code such as 'USD')"
        )
    found = _CURRENCIES.get(code)
    if found is None:
        raise UnknownCurrency(_why_unknown(code))
    return found


def table_currencies() -> dict[str, Currency]:
    """The table itself, by code (read-only by convention): for hot paths that check a currency's identity."""
    return _CURRENCIES


def is_known_currency(code: object) -> bool:
    """Whether `code` is exactly (case included) a code that currency() accepts."""
    return isinstance(code, str) and code in _CURRENCIES


def all_currencies() -> tuple[Currency, ...]:
    """Every currency the ledger accepts, sorted by code."""
    return tuple(_CURRENCIES[code] for code in sorted(_CURRENCIES))


def _why_unknown(code: str) -> str:
    if code != code.upper():
        hint = f"did you mean {code.upper()!r}?" if code.upper() in _CURRENCIES else "e.g. USD"
        return (
            f"unknown currency {code!r}: currency codes must be upper-case ISO 4217"
            f" alphabetic codes ({hint})"
        )
    if code in _NO_MINOR_UNIT:
        return (
            f"unknown currency {code!r}: ISO 4217 gives it no minor unit, so the ledger"
            " cannot hold amounts in it"
        )
    return (
        f"unknown currency {code!r}: currency codes are upper-case ISO 4217 alphabetic"
        " codes of active currencies (e.g. USD)"
    )
