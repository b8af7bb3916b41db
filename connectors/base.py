"""The connector protocol every payout provider implements, and the values it exchanges.

A connector never raises for a provider's answer: every outcome (paid, pending, refused, down) comes
back as a TransferResult, classified as retryable or not. The payout id is the idempotency key of
every call, so submitting the same payout twice pays it once (ARCHITECTURE.md invariant 3).
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
