"""What the sequencer must know of the ledger so far, as a pure fold over its events.

Ids already recorded (with a digest of their content), what remains refundable of each payment,
each payee's chain head and every payout's lifecycle. Folded from ledger.events; consulted before
every append. What grows with the history (ids, payments, finished payouts) can live in a backing
store instead of memory (IndexBacking; the sequencer's is PostgreSQL).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Callable, Collection, Iterable, Literal, Protocol

from ledger.events import Event
from ledger.guards import require
from ledger.money import Money
from ledger.payouts import Payout, PayoutBook, named_payout
from ledger.sequencing import ChainHead, PayeeChains

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
    if type(value) is MappingProxyType or type(value) is dict or isinstance(value, Mapping):
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


@dataclass(frozen=True)
class PaymentFacts:
    """What the index keeps of one payment: its payee, amount and what was refunded of it."""

    payment_id: str
    payee_id: str
    amount: Money
    refunded: Money


class IndexBacking(Protocol):
    """Where an index whose memory must not grow with the history keeps what it folded (many keys per call)."""

    def recorded(self, keys: Collection[str]) -> Mapping[str, tuple[str, str]]: ...  # key -> (event id, digest)

    def payments(self, payment_ids: Collection[str]) -> Mapping[str, PaymentFacts]: ...

    def payouts(self, payout_ids: Collection[str]) -> Mapping[str, Payout]: ...


@dataclass(frozen=True)
class IndexChanges:
    """What was folded since the last take_changes(), for the backing to store (then memory forgets it)."""

    recorded: dict[str, tuple[str, str]]
    payments: list[PaymentFacts]
    finished_payouts: list[Payout]


@dataclass(frozen=True)
class IndexState:
    """The part of an index that stays in memory: chain heads (per payee) and open payouts."""

    heads: dict[str, ChainHead]
    open_payouts: dict[str, Payout]
    events: int


class LedgerIndex:
    """Dedupe, refund limits and chain heads for every payee, folded from sequenced events.

    Without a backing everything stays in memory (an auditor's or a submitter's one-off fold). With
    one, memory holds the chain heads, open payouts and what was folded since the last
    take_changes(); everything else is asked of the backing, ideally for a whole batch at once
    (prefetch), and the backing stores what take_changes() hands over.
    """

    def __init__(self, encode: Callable[[Event], bytes], backing: IndexBacking | None = None,
                 state: IndexState | None = None) -> None:
        self.chain = PayeeChains(encode)
        self.backing = backing
        self._recorded: dict[str, tuple[str, str]] = {}  # dedupe key -> (event id, content digest)
        self._payments: dict[str, _Refundable] = {}
        self.payouts = PayoutBook()  # lifecycle: a submit after a cancel (or the reverse) is refused
        self._asked: set[str] = set()  # keys asked of the backing since the last take_changes()
        self._new_recorded: set[str] = set()
        self._new_payments: set[str] = set()
        self._admitted = False
        self.events = 0
        if state is not None:
            self.chain.heads.update({payee: ChainHead(head.sequence, head.hash) for payee, head in state.heads.items()})
            self.payouts.payouts.update(state.open_payouts)
            self.events = state.events

    def __len__(self) -> int:
        return self.events

    # --- looking things up -----------------------------------------------------------------------

    def prefetch(self, events: Iterable[Event]) -> None:
        """Ask the backing, in one call per kind, for everything these events' verdicts and folds need."""
        if self.backing is None:
            return
        keys, payments, payouts = set(), set(), set()
        for event in events:
            keys.add(dedupe_key(event))
            if event.event_type == "PaymentRefunded":
                payments.add(event.payload["payment_id"])
            payout_id = named_payout(event)
            if payout_id is not None:
                payouts.add(payout_id)
        self._fetch_recorded(keys)
        self._fetch_payments(payments)
        self._fetch_payouts(payouts)

    def _fetch_recorded(self, keys: set[str]) -> None:
        wanted = {key for key in keys if key not in self._recorded and f"r:{key}" not in self._asked}
        if wanted and self.backing is not None:
            self._recorded.update(self.backing.recorded(wanted))
            self._asked.update(f"r:{key}" for key in wanted)

    def _fetch_payments(self, payment_ids: set[str]) -> None:
        wanted = {pid for pid in payment_ids if pid not in self._payments and f"p:{pid}" not in self._asked}
        if wanted and self.backing is not None:
            for pid, facts in self.backing.payments(wanted).items():
                self._payments[pid] = _Refundable(facts.payee_id, facts.amount, facts.refunded)
            self._asked.update(f"p:{pid}" for pid in wanted)

    def _fetch_payouts(self, payout_ids: set[str]) -> None:
        wanted = {pid for pid in payout_ids if pid not in self.payouts.payouts and f"o:{pid}" not in self._asked}
        if wanted and self.backing is not None:
            for payout in self.backing.payouts(wanted).values():
                self.payouts.restore(payout, None)
            self._asked.update(f"o:{pid}" for pid in wanted)

    def is_recorded(self, key: str) -> bool:
        """Whether this dedupe key is recorded (here, in the backing, or as noted by recorded_elsewhere)."""
        return self._recorded_as(key) is not None

    def recorded_elsewhere(self, found: Mapping[str, tuple[str, str]]) -> None:
        """Keys (-> event id, content digest) that another part of the ledger holds: verdicts judge against them.
        Not folded here: take_changes() never hands them to the backing."""
        self._recorded.update(found)

    def _recorded_as(self, key: str) -> tuple[str, str] | None:
        self._fetch_recorded({key})
        return self._recorded.get(key)

    def _payment(self, payment_id: str) -> _Refundable | None:
        self._fetch_payments({payment_id})
        return self._payments.get(payment_id)

    def _with_payout(self, event: Event) -> None:
        payout_id = named_payout(event)
        if payout_id is not None:
            self._fetch_payouts({payout_id})

    # --- verdicts --------------------------------------------------------------------------------

    def verdict(self, event: Event) -> Verdict:
        """Whether an unsequenced event may be appended, is a duplicate, or must be rejected (and why)."""
        key = dedupe_key(event)
        existing = self._recorded_as(key)
        if existing is not None:
            event_id, digest = existing
            if digest == content_digest(event):
                return Verdict("duplicate", f"{key} is already recorded", event_id)
            return Verdict("reject", f"{key} is already recorded with different content (event {event_id})", event_id)
        if event.event_type == "PaymentRefunded":
            return self._refund_verdict(event)
        self._with_payout(event)
        refusal = self.payouts.refusal(event)
        if refusal is not None:
            return Verdict("reject", refusal)
        return Verdict("accept")

    def _refund_verdict(self, event: Event) -> Verdict:
        payment_id = event.payload["payment_id"]
        amount: Money = event.payload["amount"]
        payment = self._payment(payment_id)
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
        return self._payment(payment_id) is not None

    def knows_payments(self, payment_ids: Collection[str]) -> set[str]:
        """Those of these payment ids that are recorded (one backing call)."""
        self._fetch_payments(set(payment_ids))
        return {pid for pid in payment_ids if pid in self._payments}

    # --- folding ---------------------------------------------------------------------------------

    def append(self, event: Event, verdict: Verdict | None = None, digest: str | None = None) -> tuple[Event, bytes]:
        """Sequence an accepted event and fold it in; returns the sequenced event and its stored bytes.
        `verdict`: this index's verdict on the event, given when the caller just asked for it; `digest`: its
        content_digest, when the caller computed it already."""
        require(not self._admitted, "append after admit: this index predicts verdicts, its chains are not heads")
        verdict = verdict or self.verdict(event)
        require(verdict.status == "accept", f"append of a non-accepted event: {verdict.reason}")
        sequenced, encoded = self.chain.append(event)
        self._fold(sequenced, digest)
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

    def _fold(self, event: Event, digest: str | None = None) -> None:
        key = dedupe_key(event)
        self._recorded[key] = (event.envelope.event_id, digest or content_digest(event))
        self._new_recorded.add(key)
        self.events += 1
        self._with_payout(event)
        self.payouts.apply(event)
        self.payouts.requests.clear()  # the breakdowns are the read models' business, not the index's
        if event.event_type == "PaymentCompleted":
            amount: Money = event.payload["amount"]
            payment_id = event.payload["payment_id"]
            self._payments[payment_id] = _Refundable(event.payee_id, amount, Money.zero(amount.currency.code))
            self._new_payments.add(payment_id)
        elif event.event_type == "PaymentRefunded":
            payment = self._payment(event.payload["payment_id"])
            if payment is not None:
                payment.refunded = payment.refunded + event.payload["amount"]
                self._new_payments.add(event.payload["payment_id"])

    # --- handing over to the backing ---------------------------------------------------------------

    def take_changes(self) -> IndexChanges:
        """What was folded since the last call; memory then keeps only chain heads and open payouts."""
        require(self.backing is not None, "take_changes needs a backing to hand the changes to")
        changes = IndexChanges(
            {key: self._recorded[key] for key in self._new_recorded},
            [PaymentFacts(pid, self._payments[pid].payee_id, self._payments[pid].amount, self._payments[pid].refunded)
             for pid in self._new_payments],
            [self.payouts.evict(pid)[0] for pid, payout in list(self.payouts.payouts.items()) if payout.status.terminal])
        self._recorded.clear()
        self._payments.clear()
        self._asked.clear()
        self._new_recorded.clear()
        self._new_payments.clear()
        return changes

    def state(self) -> IndexState:
        """What stays in memory (call right after take_changes(), for a checkpoint)."""
        return IndexState({payee: ChainHead(head.sequence, head.hash) for payee, head in self.chain.heads.items()},
                          dict(self.payouts.payouts), self.events)
