"""The connector protocol every payout provider implements, and the values it exchanges.

A connector never raises for a provider's answer: every outcome (paid, pending, refused, down) comes
back as a TransferResult, classified as retryable or not. The payout id is the idempotency key of
every call, so submitting the same payout twice pays it once.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from ledger.money import Money


class Outcome(str, Enum):
    SETTLED = "settled"  # the money left the platform
    PENDING = "pending"  # accepted; the final outcome comes later (webhook, status file, polling)
    FAILED = "failed"


@dataclass(frozen=True)
class TransferRequest:
    payout_id: str
    payee_id: str
    amount: Money
    method: str
    destination: str
    attempt: int

    @property
    def idempotency_key(self) -> str:
        return attempt_key(self.payout_id, self.attempt)


def attempt_key(payout_id: str, attempt: int) -> str:
    """The provider idempotency key of an attempt: the payout id, suffixed from the second attempt on.

    Providers store a failed answer under its key (Stripe replays even a 500 for 24 h), so a retry
    under the same key would only replay the failure. A retry therefore gets its own key, and the
    processor first asks the provider for anything under the payout id (docs/decisions.md §23).
    """
    return payout_id if attempt <= 1 else f"{payout_id}:{attempt}"


@dataclass(frozen=True)
class TransferResult:
    outcome: Outcome
    provider_reference: str = ""
    reason_code: str = ""
    message: str = ""
    retryable: bool = False
    retry_after_s: float | None = None


class Connector(Protocol):
    name: str

    def submit(self, request: TransferRequest) -> TransferResult:
        """Pay out, idempotently by payout id."""
        ...

    def lookup(self, request: TransferRequest) -> TransferResult | None:
        """What the provider knows of this payout (resuming after a crash); None if it never saw it."""
        ...


# Which provider pays each payout method (PayeeScheduleSet.payout_method).
METHOD_PROVIDERS = {
    "stripe_standard": "stripe",
    "stripe_instant": "stripe",
    "bank_transfer": "bank_transfer",
    "mobile_money": "mobile_money",
    "manual": "manual",
}


def provider_for(method: str) -> str | None:
    return METHOD_PROVIDERS.get(method)
