"""The providers the demo pays through: the Stripe sandbox, the mobile money sandbox and the sandbox
bank, set up for the demo's payees with the failures it shows (see data.TROUBLES), and what they paid.

Nothing real is called: the transfer processor the demo starts is pointed at these by its environment.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

from demo.data import DemoPayee
from connectors.sepa_status import payout_id_of
from ledger.money import Money
from sandbox.bank import SandboxBank
from sandbox.mobile_money import MobileMoneyTestServer
from sandbox.stripe import StripeTestServer

STRIPE_KEY = "sk_test_ledger_demo"
DEBTOR_IBAN, DEBTOR_BIC = "DE89370400440532013000", "COBADEFFXXX"
STRIPE_LATENCY_S = 0.05  # every Stripe answer takes 50 ms, like a real API call


class Sandboxes:
    def __init__(self, data_dir: Path) -> None:
        self.bank_dir = data_dir / "demo" / "bank"
        self.stripe = StripeTestServer(latency_s=STRIPE_LATENCY_S)
        self.mobile = MobileMoneyTestServer(complete_after_polls=1)  # PENDING once, then final
        self.bank = SandboxBank(self.bank_dir / "outbox", self.bank_dir / "status")
        self._stack = ExitStack()
        self.faults_injected = 0

    def __enter__(self) -> "Sandboxes":
        for server in (self.stripe, self.mobile, self.bank):
            self._stack.enter_context(server)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def set_up(self, payees: list[DemoPayee]) -> list[DemoPayee]:
        """Accounts for Stripe payees, closed wallets and accounts for the troubled ones; returns the payees
        with their destinations."""
        ready = []
        for payee in payees:
            if payee.method == "stripe_standard":
                destination = f"acct_closed{payee.payee_id[-3:]}" if payee.trouble == "closed_account" else \
                    self.stripe.create_account()
                payee = replace(payee, destination=destination)
            elif payee.trouble == "wallet_closed":
                self.mobile.fail_msisdn(payee.destination, "ACCOUNT_CLOSED", at="completion")
            elif payee.trouble == "bank_rejects":
                self.bank.closed_ibans.add(payee.destination)
            ready.append(payee)
        return ready

    def inject_trouble(self) -> None:
        """Provider outages the transfer processor must ride out: Stripe 500s (stored under the key, as
        Stripe does), 429s, a transfer created but answered 500, and a mobile money 503 on cash-in."""
        for kind, times in (("server_error", 2), ("rate_limit", 2), ("accepted_then_500", 1)):
            self.stripe.inject(path_prefix="/v1/transfers", method="POST", kind=kind, times=times, retry_after_s=1)
            self.faults_injected += times
        self.mobile.inject(kind="server_error", times=1, status=503)
        self.faults_injected += 1

    def new_stripe_account(self) -> str:
        return self.stripe.create_account()

    def transfer_env(self) -> dict[str, str]:
        """The transfer processor's settings for these sandboxes (short retry delays: minutes become seconds)."""
        return {
            "LEDGER_STRIPE_API_KEY": STRIPE_KEY, "LEDGER_STRIPE_API_BASE": self.stripe.url,
            "LEDGER_STRIPE_TIMEOUT_S": "5",
            "LEDGER_MOBILE_MONEY_URL": self.mobile.url, "LEDGER_MOBILE_MONEY_CLIENT_ID": self.mobile.client_id,
            "LEDGER_MOBILE_MONEY_CLIENT_SECRET": self.mobile.client_secret, "LEDGER_MOBILE_MONEY_TIMEOUT_S": "5",
            "LEDGER_BANK_DEBTOR_IBAN": DEBTOR_IBAN, "LEDGER_BANK_DEBTOR_BIC": DEBTOR_BIC,
            "LEDGER_BANK_OUTBOX_DIR": str(self.bank.outbox_dir), "LEDGER_BANK_STATUS_DIR": str(self.bank.status_dir),
            "LEDGER_RETRY_DELAYS_S": "[1, 2, 3]", "LEDGER_PENDING_POLL_S": "0.5", "LEDGER_BREAKER_COOLDOWN_S": "2",
        }

    def paid_minor(self, payout_ids: set[str]) -> dict[str, dict[str, int]]:
        """What each provider really paid for these payouts, per currency, in minor units: the other side of
        the ledger. Payouts of earlier demo runs paid by these sandboxes are left out. A Stripe transfer
        reversed in full paid nothing (the ledger records it as a failed payout, "transfer_reversed"); one
        reversed in part still counts whole, as in the ledger, which records only full reversals."""
        paid: dict[str, dict[str, int]] = {"stripe": {}, "mobile_money": {}, "bank_transfer": {}}

        def add(provider: str, payout_id: str, code: str, minor: int) -> None:
            if payout_id in payout_ids:
                paid[provider][code] = paid[provider].get(code, 0) + minor

        for transfer in self.stripe.transfers():
            if not transfer["reversed"]:  # (not a 0 either: the ledger has no row for a currency it never paid)
                add("stripe", transfer["transfer_group"], transfer["currency"].upper(), transfer["amount"])
        for transaction in self.mobile.transactions():
            if transaction["status"] == "SUCCESS":  # the partner id is the attempt's key: <payout>[:<attempt>]
                unit, value = transaction["amount"]["unit"], str(Decimal(transaction["amount"]["value"]))
                add("mobile_money", transaction["partnerTransactionId"].split(":")[0], unit,
                    Money.from_major(value, unit).amount_minor)
        for end_to_end_id, (code, minor) in dict(self.bank.accepted).items():
            add("bank_transfer", payout_id_of(end_to_end_id[:32]), code, minor)
        return paid

    def paid_twice(self) -> int:
        """Idempotency keys or partner ids the providers executed more than once (must be 0)."""
        return sum(count - 1 for server in (self.stripe, self.mobile)
                   for count in server.creations_by_key().values() if count > 1)
