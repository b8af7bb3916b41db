"""Every payout's lifecycle, as a pure fold over ledger events: requested, submitted, at the provider,
waiting for a retry, and settled, failed or cancelled.

The same rules serve three readers: the sequencer refuses a transition they do not allow (a submit
after a cancel, a cancel of a payout the provider already holds), the transfer processor decides what
to do next from the state, and the operator commands show it. Because the sequencer chains events in
one order per payee, a cancel and a submit that race are decided once: whichever is chained first wins
and the other is dead-lettered, so a cancelled payout can never reach a provider.

    REQUESTED --submit(1)--> SUBMITTED --accepted--> AT_PROVIDER --settled--> SETTLED --failed--> FAILED (reversed)
        |                       |  \\--settled-----------------------^            ^
        |                       |   \\--failed (final)-----------------------------|
        |                       \\--failed (retryable)--> RETRY_WAIT --submit(n+1)--> SUBMITTED ...
        \\--cancel--> CANCELLED <--cancel-- RETRY_WAIT

Outcomes (accepted, settled, failed) are always recorded: they are facts from a provider, and the
money must follow them even when they arrive late or out of order.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any

from ledger.events import Event, new_envelope
from ledger.money import Money

OUTCOME_NAMESPACE = uuid.UUID("7d1e5b0a-2c4f-4e8b-9a63-0f5d8c2b1e47")

LIFECYCLE_TYPES = frozenset({
    "PayoutRequested", "PayoutSubmitted", "PayoutAccepted", "PayoutSettled", "PayoutFailed",
    "PayoutRetryScheduled", "PayoutCancelled",
})
# Events whose acceptance the sequencer checks against the lifecycle (they lead to, or stop, a provider call).
GATED_TYPES = frozenset({"PayoutSubmitted", "PayoutRetryScheduled", "PayoutCancelled"})


class PayoutStatus(str, Enum):
    REQUESTED = "requested"        # decided; no attempt yet
    SUBMITTED = "submitted"        # an attempt is recorded; the provider call is made or being made
    AT_PROVIDER = "at_provider"    # the provider accepted it; the final outcome comes later
    RETRY_WAIT = "retry_wait"      # an attempt failed retryably; the next one is due at due_at
    SETTLED = "settled"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (PayoutStatus.SETTLED, PayoutStatus.FAILED, PayoutStatus.CANCELLED)


@dataclass
class Attempt:
    number: int
    provider: str
    submitted_at: datetime
    outcome: str = ""  # "", accepted, settled, failed
    provider_reference: str = ""
    reason_code: str = ""
    message: str = ""
    retryable: bool = False
    finished_at: datetime | None = None


@dataclass
class Payout:
    payout_id: str
    payee_id: str
    amount: Money
    method: str
    period_id: str
    trigger: str
    requested_at: datetime
    status: PayoutStatus = PayoutStatus.REQUESTED
    attempts: list[Attempt] = field(default_factory=list)
    next_attempt: int = 1
    due_at: datetime | None = None
    provider_reference: str = ""
    reason_code: str = ""
    message: str = ""
    reversed: bool = False  # settled, then failed (a paid payout that bounced)
    accepted_at: datetime | None = None
    updated_at: datetime | None = None
    cancel_reason: str = ""
    correlation_id: str = ""  # the PayoutRequested's: every event of this payout carries it
    due_event_id: str = ""  # the event that made the next attempt due (the request, or its retry schedule)
    last_event_id: str = ""  # the last lifecycle event folded in
    applied: set[str] = field(default_factory=set, repr=False)  # ids of the events folded in (each once)

    @property
    def current(self) -> Attempt | None:
        return self.attempts[-1] if self.attempts else None

    def attempt(self, number: int) -> Attempt | None:
        for attempt in self.attempts:
            if attempt.number == number:
                return attempt
        return None


def named_payout(event: Event) -> str | None:
    """The payout a lifecycle event is about (None for other events)."""
    return event.payload["payout_id"] if event.event_type in LIFECYCLE_TYPES else None


class PayoutBook:
    """Payouts by id, and each payee's payout destination, folded from ledger events.

    A holder whose memory must not grow with the history evicts finished payouts (`evict`) to its own
    store, and restores (`restore`) every payout that an event names before applying that event:
    the book cannot tell an evicted payout from one never requested.
    """

    def __init__(self) -> None:
        self.payouts: dict[str, Payout] = {}
        self.destinations: dict[str, tuple[str, str]] = {}  # payee -> (method, destination)
        self.requests: dict[str, Any] = {}  # payout id -> its PayoutRequested payload (the breakdown)

    def evict(self, payout_id: str) -> tuple[Payout, Any]:
        """Take a payout (and its request) out of memory; the caller keeps it elsewhere."""
        return self.payouts.pop(payout_id), self.requests.pop(payout_id, None)

    def restore(self, payout: Payout, request: Any) -> None:
        """Put back a payout taken out by evict() (a no-op when it is in memory already)."""
        if payout.payout_id not in self.payouts:
            self.payouts[payout.payout_id] = payout
            if request is not None:
                self.requests[payout.payout_id] = request

    def get(self, payout_id: str) -> Payout | None:
        return self.payouts.get(payout_id)

    def destination(self, payee_id: str) -> str:
        return self.destinations.get(payee_id, ("", ""))[1]

    # --- the sequencer's check -----------------------------------------------------------------

    def refusal(self, event: Event) -> str | None:
        """Why this lifecycle event may not be chained now, or None when it may.

        Every event about a payout needs the payout requested, for the same payee: an outcome of a payout the
        ledger never requested (a forged or foreign provider webhook that names one) is refused. Outcomes of a
        requested payout are facts from its provider and are chained in any state; the events that lead to a
        provider call, or stop one (GATED_TYPES), must fit the payout's lifecycle."""
        if event.event_type not in LIFECYCLE_TYPES or event.event_type == "PayoutRequested":
            return None
        payout_id = event.payload["payout_id"]
        payout = self.payouts.get(payout_id)
        if payout is None:
            return f"payout {payout_id!r} was never requested"
        if payout.payee_id != event.payee_id:
            return f"payout {payout_id!r} belongs to payee {payout.payee_id!r}, not {event.payee_id!r}"
        if event.event_type not in GATED_TYPES:
            return None
        status = payout.status
        if event.event_type == "PayoutSubmitted":
            attempt = event.payload["attempt"]
            if status not in (PayoutStatus.REQUESTED, PayoutStatus.RETRY_WAIT):
                return f"payout {payout_id!r} is {status.value}: attempt {attempt} cannot be submitted"
            if attempt != payout.next_attempt:
                return f"payout {payout_id!r} expects attempt {payout.next_attempt}, not {attempt}"
            return None
        if event.event_type == "PayoutCancelled":
            if status not in (PayoutStatus.REQUESTED, PayoutStatus.RETRY_WAIT):
                why = {PayoutStatus.SUBMITTED: "an attempt is at the provider",
                       PayoutStatus.AT_PROVIDER: "the provider holds it"}.get(status, f"it is {status.value}")
                return f"payout {payout_id!r} cannot be cancelled: {why}"
            return None
        if status.terminal:  # PayoutRetryScheduled
            return f"payout {payout_id!r} is {status.value}: no retry can be scheduled"
        return None

    # --- the fold ------------------------------------------------------------------------------

    def apply(self, event: Event) -> bool:
        """Fold in one event (once per event id); False when it changed nothing."""
        kind = event.event_type
        if kind == "PayeeScheduleSet":
            self.destinations[event.payee_id] = (event.payload["payout_method"], event.payload.get("destination", ""))
            return True
        if kind not in LIFECYCLE_TYPES:
            return False
        existing = self.payouts.get(event.payload["payout_id"])
        if kind == "PayoutRequested":
            if existing is not None:
                return False
        elif existing is None or event.envelope.event_id in existing.applied:
            return False
        if kind in GATED_TYPES and self.refusal(event) is not None:
            return False  # what the sequencer would refuse (predicting it from ledger.commands)
        getattr(self, f"_on_{kind}")(event.payload, event.envelope)
        payout = self.payouts[event.payload["payout_id"]]
        payout.applied.add(event.envelope.event_id)
        payout.updated_at = event.envelope.occurred_at
        payout.last_event_id = event.envelope.event_id
        return True

    def _on_PayoutRequested(self, p: Any, envelope: Any) -> None:
        if p["payout_id"] in self.payouts:
            return
        self.requests[p["payout_id"]] = p
        self.payouts[p["payout_id"]] = Payout(
            p["payout_id"], envelope.payee_id, p["net"], p["payout_method"], p["period_id"], p["trigger"],
            envelope.occurred_at, correlation_id=envelope.correlation_id, due_event_id=envelope.event_id)

    def _on_PayoutSubmitted(self, p: Any, envelope: Any) -> None:
        payout = self.payouts[p["payout_id"]]
        payout.attempts.append(Attempt(p["attempt"], p["provider"], envelope.occurred_at))
        payout.status, payout.due_at, payout.next_attempt = PayoutStatus.SUBMITTED, None, p["attempt"] + 1

    def _on_PayoutAccepted(self, p: Any, envelope: Any) -> None:
        payout = self.payouts[p["payout_id"]]
        attempt = payout.attempt(p["attempt"])
        if attempt is not None and not attempt.outcome:
            attempt.outcome, attempt.provider_reference = "accepted", p["provider_reference"]
        if payout.status is PayoutStatus.SUBMITTED and payout.current is attempt:
            payout.status, payout.provider_reference = PayoutStatus.AT_PROVIDER, p["provider_reference"]
            payout.accepted_at = envelope.occurred_at

    def _on_PayoutSettled(self, p: Any, envelope: Any) -> None:
        payout = self.payouts[p["payout_id"]]
        attempt = payout.attempt(p["attempt"])
        if attempt is not None:
            attempt.outcome, attempt.finished_at = "settled", envelope.occurred_at
            attempt.provider_reference = p["provider_reference"] or attempt.provider_reference
        if not payout.status.terminal:
            payout.status, payout.provider_reference = PayoutStatus.SETTLED, p["provider_reference"]
            payout.due_at = None

    def _on_PayoutFailed(self, p: Any, envelope: Any) -> None:
        payout = self.payouts[p["payout_id"]]
        attempt = payout.attempt(p["attempt"])
        if attempt is not None and attempt.outcome != "settled":
            attempt.outcome, attempt.finished_at = "failed", envelope.occurred_at
            attempt.reason_code, attempt.message, attempt.retryable = (
                p["reason_code"], p["provider_message"], p["retryable"])
        if p["retryable"]:
            # the attempt failed; the payout waits for its retry (RetryScheduled says when)
            if payout.status in (PayoutStatus.SUBMITTED, PayoutStatus.AT_PROVIDER) and payout.current is attempt:
                payout.status, payout.due_at = PayoutStatus.RETRY_WAIT, None
                payout.reason_code, payout.message = p["reason_code"], p["provider_message"]
            return
        if payout.status is PayoutStatus.SETTLED:
            payout.reversed = True  # the same money returns to the payee's balance (ledger/earnings.py)
        elif payout.status.terminal:
            return
        payout.status, payout.due_at = PayoutStatus.FAILED, None
        payout.reason_code, payout.message = p["reason_code"], p["provider_message"]

    def _on_PayoutRetryScheduled(self, p: Any, envelope: Any) -> None:
        payout = self.payouts[p["payout_id"]]
        if payout.status in (PayoutStatus.SUBMITTED, PayoutStatus.AT_PROVIDER, PayoutStatus.RETRY_WAIT):
            payout.status, payout.next_attempt, payout.due_at = PayoutStatus.RETRY_WAIT, p["next_attempt"], p["due_at"]
            payout.due_event_id = envelope.event_id

    def _on_PayoutCancelled(self, p: Any, envelope: Any) -> None:
        payout = self.payouts[p["payout_id"]]
        payout.status, payout.due_at, payout.cancel_reason = PayoutStatus.CANCELLED, None, p["reason"]


# --- the events the transfer processor and operators record -----------------------------------
# Each carries its payout's correlation id (the PayoutRequested's, so one id follows a payout from the
# close that decided it to its last outcome) and, as causation id, the event it answers. Event ids stay
# deterministic (outcome_event_id); the ledger dedupes on content, which the envelope ids are not part of.

def outcome_event_id(payout_id: str, attempt: int, kind: str) -> str:
    """One id per payout, attempt and kind: recording the same outcome twice chains it once."""
    return str(uuid.uuid5(OUTCOME_NAMESPACE, f"{payout_id}\x1f{attempt}\x1f{kind}"))


def _event(kind: str, payout: Payout, now: datetime, event_id: str | None, causation_id: str | None,
           **payload: Any) -> Event:
    envelope = new_envelope(kind, payee_id=payout.payee_id, occurred_at=now, recorded_at=now,
                            correlation_id=payout.correlation_id or payout.payout_id,
                            causation_id=causation_id or None, event_id=event_id)
    return Event(envelope, {"payout_id": payout.payout_id, **payload})


def submitted(payout: Payout, attempt: int, provider: str, idempotency_key: str, now: datetime) -> Event:
    """Caused by what made the attempt due: the PayoutRequested, or the retry schedule."""
    return _event("PayoutSubmitted", payout, now, outcome_event_id(payout.payout_id, attempt, "submitted"),
                  payout.due_event_id or payout.payout_id,
                  provider=provider, attempt=attempt, idempotency_key=idempotency_key, amount=payout.amount)


def _answering(payout: Payout, attempt: int) -> str:
    """A provider's outcome answers the attempt's PayoutSubmitted."""
    return outcome_event_id(payout.payout_id, attempt, "submitted")


def accepted(payout: Payout, attempt: int, provider: str, reference: str, now: datetime) -> Event:
    return _event("PayoutAccepted", payout, now, outcome_event_id(payout.payout_id, attempt, "accepted"),
                  _answering(payout, attempt),
                  provider=provider, provider_reference=reference, attempt=attempt, amount=payout.amount)


def settled(payout: Payout, attempt: int, provider: str, reference: str, now: datetime) -> Event:
    return _event("PayoutSettled", payout, now, outcome_event_id(payout.payout_id, attempt, "settled"),
                  _answering(payout, attempt),
                  provider=provider, provider_reference=reference, attempt=attempt, amount=payout.amount)


def failed(payout: Payout, attempt: int, provider: str, reason_code: str, message: str, retryable: bool,
           now: datetime) -> Event:
    return _event("PayoutFailed", payout, now, outcome_event_id(payout.payout_id, attempt, "failed"),
                  _answering(payout, attempt),
                  provider=provider, reason_code=reason_code, provider_message=message[:1000], attempt=attempt,
                  retryable=retryable, amount=payout.amount)


def retry_scheduled(payout: Payout, next_attempt: int, provider: str, due_at: datetime, reason_code: str,
                    message: str, now: datetime, event_id: str | None = None) -> Event:
    """Caused by the last event of the payout (the retryable failure, or what an operator retries after)."""
    return _event("PayoutRetryScheduled", payout, now,
                  event_id or outcome_event_id(payout.payout_id, next_attempt, "retry"), payout.last_event_id,
                  provider=provider, next_attempt=next_attempt, due_at=due_at, reason_code=reason_code,
                  provider_message=message[:1000])


def cancelled(payout: Payout, reason: str, actor: str, now: datetime) -> Event:
    return _event("PayoutCancelled", payout, now, None, payout.last_event_id, reason=reason, actor=actor)


def expiry_hold(payout: Payout, attempt: int, hours: float, now: datetime) -> Event:
    """Hold the payee whose transfer expired unanswered: its money is back in the balance, but the provider
    may still complete the transfer, so nothing more is paid until an operator has checked and released."""
    envelope = new_envelope("PayeeHoldSet", payee_id=payout.payee_id, occurred_at=now, recorded_at=now,
                            correlation_id=payout.correlation_id or payout.payout_id,
                            causation_id=outcome_event_id(payout.payout_id, attempt, "failed"),
                            event_id=outcome_event_id(payout.payout_id, attempt, "expiry-hold"))
    return Event(envelope, {"held": True, "actor": "transfer-processor", "reason": (
        f"payout {payout.payout_id} was still processing at the provider after {hours:g} h and is recorded as "
        "failed; check with the provider before `ledger payee release`")})
