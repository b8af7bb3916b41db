"""Manual payouts: a person pays (cash, a cheque, a transfer by hand) and confirms or fails it with
`ledger payouts confirm|fail`. Submitting only marks the payout as waiting for that person."""

from __future__ import annotations

from connectors.base import Outcome, TransferRequest, TransferResult


class ManualConnector:
    name = "manual"

    def submit(self, request: TransferRequest) -> TransferResult:
        return TransferResult(Outcome.PENDING, provider_reference=f"manual:{request.payout_id}")

    def lookup(self, request: TransferRequest) -> TransferResult | None:
        # Nothing outside the ledger knows a manual payout: the operator's confirmation is a ledger event.
        return TransferResult(Outcome.PENDING, provider_reference=f"manual:{request.payout_id}")
