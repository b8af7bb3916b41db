"""What the sequencer must know of the ledger so far, as a pure fold over its events.

Ids already recorded (with a digest of their content), what remains refundable of each payment,
and each payee's chain head. Built by replaying ledger.events; consulted before every append.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Callable, Literal, Mapping

from ledger.events import Event
from ledger.guards import require
from ledger.money import Money
from ledger.payouts import PayoutBook
from ledger.sequencing import PayeeChains

DEDUPE_FIELDS = {"PaymentCompleted": "payment_id", "PaymentRefunded": "refund_id", "EarningsAdjusted": "adjustment_id"}


def dedupe_key(event: Event) -> str:
    """The identity an event is deduplicated on: its business id where it has one, else its event id."""
    name = DEDUPE_FIELDS.get(event.event_type)
    if name is None:
        return f"event:{event.envelope.event_id}"
    return f"{event.event_type}:{event.payload[name]}"


def _plain(value: Any) -> Any:
    if isinstance(value, (str, int)) or value is None:
        return value
    if isinstance(value, Money):
        return [value.amount_minor, value.currency.code]
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value.isoformat() if hasattr(value, "isoformat") else value


def content_digest(event: Event) -> str:
    """What makes two submissions 'the same': type, payee, time of occurrence and payload."""
    # repr of plain values with sorted keys is deterministic and much cheaper than json.dumps
    canonical = repr((event.event_type, event.payee_id, event.envelope.occurred_at.isoformat(), _plain(event.payload)))
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class Verdict:
    status: Literal["accept", "duplicate", "reject"]
    reason: str = ""
    existing_event_id: str | None = None
    waits_for: str | None = None  # a refund of a payment not (yet) recorded: that payment's id


@dataclass
class _Refundable:
    payee_id: str
    amount: Money
    refunded: Money

    @property
    def remaining(self) -> Money:
        return self.amount - self.refunded


class LedgerIndex:
    """Dedupe, refund limits and chain heads for every payee, folded from sequenced events."""

    def __init__(self, encode: Callable[[Event], bytes]) -> None:
        self.chain = PayeeChains(encode)
        self._recorded: dict[str, tuple[str, str]] = {}  # dedupe key -> (event id, content digest)
        self._payments: dict[str, _Refundable] = {}
        self.payouts = PayoutBook()  # lifecycle: a submit after a cancel (or the reverse) is refused
        self._admitted = False

    def __len__(self) -> int:
        return len(self._recorded)

    def verdict(self, event: Event) -> Verdict:
        """Whether an unsequenced event may be appended, is a duplicate, or must be rejected (and why)."""
        key = dedupe_key(event)
        existing = self._recorded.get(key)
        if existing is not None:
            event_id, digest = existing
            if digest == content_digest(event):
                return Verdict("duplicate", f"{key} is already recorded", event_id)
            return Verdict("reject", f"{key} is already recorded with different content (event {event_id})", event_id)
        if event.event_type == "PaymentRefunded":
            return self._refund_verdict(event)
        refusal = self.payouts.refusal(event)
        if refusal is not None:
            return Verdict("reject", refusal)
        return Verdict("accept")

    def _refund_verdict(self, event: Event) -> Verdict:
        payment_id = event.payload["payment_id"]
        amount: Money = event.payload["amount"]
        payment = self._payments.get(payment_id)
        if payment is None:
            return Verdict("reject", f"refund of unknown payment {payment_id!r}", waits_for=payment_id)
        if payment.payee_id != event.payee_id:
            return Verdict("reject", f"payment {payment_id!r} belongs to another payee, not {event.payee_id!r}")
        if amount.currency != payment.amount.currency:
            return Verdict("reject", f"refund is in {amount.currency.code} but payment {payment_id!r} "
                                     f"is in {payment.amount.currency.code}")
        if amount > payment.remaining:
            return Verdict("reject", f"refund of {amount} is larger than the {payment.remaining} "
                                     f"that remains of payment {payment_id!r}")
        return Verdict("accept")

    def knows_payment(self, payment_id: str) -> bool:
        """Whether a payment with this id is recorded (a waiting refund can then be judged)."""
        return payment_id in self._payments

    def append(self, event: Event) -> tuple[Event, bytes]:
        """Sequence an accepted event and fold it in; returns the sequenced event and its stored bytes."""
        require(not self._admitted, "append after admit: this index predicts verdicts, its chains are not heads")
        verdict = self.verdict(event)
        require(verdict.status == "accept", f"append of a non-accepted event: {verdict.reason}")
        sequenced, encoded = self.chain.append(event)
        self._fold(sequenced)
        return sequenced, encoded

    def admit(self, event: Event) -> None:
        """Fold in an accepted event that is sent but not yet sequenced, so later verdicts see it.

        For a submitter predicting the sequencer's verdicts (`ledger publish`); chain heads are not
        advanced, so an index that admitted events must not append afterwards.
        """
        verdict = self.verdict(event)
        require(verdict.status == "accept", f"admit of a non-accepted event: {verdict.reason}")
        self._admitted = True
        self._fold(event)

    def observe(self, event: Event, encoded: bytes) -> None:
        """Fold in an event read back from ledger.events (rebuilding after a start or a crash)."""
        self.chain.observe(event, encoded)
        self._fold(event)

    def _fold(self, event: Event) -> None:
        self._recorded[dedupe_key(event)] = (event.envelope.event_id, content_digest(event))
        self.payouts.apply(event)
        if event.event_type == "PaymentCompleted":
            amount: Money = event.payload["amount"]
            self._payments[event.payload["payment_id"]] = _Refundable(event.payee_id, amount, Money.zero(amount.currency.code))
        elif event.event_type == "PaymentRefunded":
            payment = self._payments.get(event.payload["payment_id"])
            if payment is not None:
                payment.refunded = payment.refunded + event.payload["amount"]
