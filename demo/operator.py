"""The payout operator of the demo: confirms manual payouts, holds payees whose accounts are gone, and
fixes a closed Stripe account then retries its failed payout — the actions an operator takes with
`ledger payouts confirm|fail|retry` and `ledger payee hold`, made through the same code."""

from __future__ import annotations

from datetime import datetime, timezone

import sqlalchemy.exc

from demo.data import DemoPayee
from demo.sandboxes import Sandboxes
from demo.tail import LedgerTail
from ledger import payouts as records
from ledger.payouts import PayoutStatus
from processors.ledger_client import LedgerClient
from processors.operations import Operations, OperationRefused

ACTOR = "demo-operator"
RETRY_TRIES = 5
HOLD_TROUBLES = ("bank_rejects", "wallet_closed", "typo_iban", "operator_fails")


class DemoOperator:
    def __init__(self, client: LedgerClient, operations: Operations, sandboxes: Sandboxes,
                 payees: dict[str, DemoPayee]) -> None:
        self.client, self.operations, self.sandboxes, self.payees = client, operations, sandboxes, payees
        self.done: set[str] = set()  # payout ids (or "hold:<payee>", "fix:<payee>") already acted on
        self.confirmed = self.failed_by_hand = self.holds = self.retries = 0
        self.fixed_accounts: dict[str, str] = {}  # payee -> its new Stripe account
        self.refusals: dict[str, str] = {}  # payout -> why the ledger refused its retry (after RETRY_TRIES)
        self._tries: dict[str, int] = {}

    def act(self, tail: LedgerTail) -> int:
        """One round over the ledger as the tail sees it; returns how many actions were sent."""
        now = datetime.now(timezone.utc)
        actions = 0
        for payout in tail.payouts():
            payee = self.payees.get(payout.payee_id)
            if payee is None or payout.payout_id in self.done:
                continue
            if payout.method == "manual" and payout.status is PayoutStatus.AT_PROVIDER and payout.current:
                if payee.trouble == "operator_fails":
                    event = records.failed(payout, payout.current.number, payout.current.provider, "payee_unreachable",
                                           "the payee did not answer two calls", False, now)
                    self.failed_by_hand += 1
                else:
                    event = records.settled(payout, payout.current.number, payout.current.provider,
                                            f"cash-desk-{payout.payout_id[:8]}", now)
                    self.confirmed += 1
                self.client.send(event, self.client.settings.topic_commands)
                self.done.add(payout.payout_id)
                actions += 1
            elif payout.status is PayoutStatus.FAILED:
                actions += self._after_failure(tail, payee, payout.payout_id)
        if actions:
            self.client.flush()
        return actions

    def _after_failure(self, tail: LedgerTail, payee: DemoPayee, payout_id: str) -> int:
        if payee.trouble in HOLD_TROUBLES and f"hold:{payee.payee_id}" not in self.done:
            self.client.set_hold(payee.payee_id, held=True, actor=ACTOR, wait=False,
                                 reason=f"payout {payout_id} failed: check the payee's account before paying again")
            self.done.update({f"hold:{payee.payee_id}", payout_id})
            self.holds += 1
            return 1
        if payee.trouble != "closed_account":
            self.done.add(payout_id)
            return 0
        if payee.payee_id not in self.fixed_accounts:  # the payee gives a working account
            account = self.sandboxes.new_stripe_account()
            self.fixed_accounts[payee.payee_id] = account
            self.client.set_schedule(payee.payee_id, frequency=payee.frequency, cutoff_time="23:59",
                                     timezone=payee.timezone, plan=payee.plan, method=payee.method,
                                     day_of_week=payee.day_of_week, destination=account, actor=ACTOR, wait=False)
            return 1
        if tail.book.destinations.get(payee.payee_id, ("", ""))[1] != self.fixed_accounts[payee.payee_id]:
            return 0  # the new account is not in the ledger yet: retry once it is
        try:
            self.operations.retry(payout_id, ACTOR, wait_s=0)
        except OperationRefused as exc:  # e.g. a close of this payee still waits for the sequencer
            self._tries[payout_id] = self._tries.get(payout_id, 0) + 1
            if self._tries[payout_id] >= RETRY_TRIES:  # e.g. a scheduled close already paid the money again
                self.refusals[payout_id] = str(exc)
                self.done.add(payout_id)
            return 0
        except sqlalchemy.exc.OperationalError:  # the database is restarting (the soak's fault): try again later
            return 0
        self.done.add(payout_id)
        self.retries += 1
        return 1
