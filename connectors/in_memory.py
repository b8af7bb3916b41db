"""An in-memory payout provider: idempotent by payout id, with scripted failures. A first-class twin for tests and demos."""

from __future__ import annotations

from dataclasses import dataclass, field

from connectors.base import Outcome, TransferRequest, TransferResult
from connectors.classification import failed


@dataclass
class InMemoryConnector:
    name: str = "in_memory"
    transfers: dict[str, TransferRequest] = field(default_factory=dict)  # payout id -> first request
    scripted: dict[str, list[str]] = field(default_factory=dict)  # payout id -> failure codes, one per call

    def fail_next(self, payout_id: str, *reason_codes: str) -> None:
        self.scripted.setdefault(payout_id, []).extend(reason_codes)

    def submit(self, request: TransferRequest) -> TransferResult:
        if request.payout_id in self.transfers:  # a repeat of a request that was paid: the same answer
            return TransferResult(Outcome.SETTLED, provider_reference=f"mem_{request.payout_id}")
        codes = self.scripted.get(request.payout_id)
        if codes:
            return failed(codes.pop(0), "scripted failure")
        self.transfers[request.payout_id] = request
        return TransferResult(Outcome.SETTLED, provider_reference=f"mem_{request.payout_id}")

    def lookup(self, request: TransferRequest) -> TransferResult | None:
        if request.payout_id not in self.transfers:
            return None
        return TransferResult(Outcome.SETTLED, provider_reference=f"mem_{request.payout_id}")
