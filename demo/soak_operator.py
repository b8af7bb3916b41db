"""The soak's operator: the demo's (retry, confirm, fail by hand, hold) plus a pause of every payout now and
then, and cancellations of payouts requested while paused, racing the transfer processor's restarts.

A cancelled payout's money goes back to its payee's balance, so the verdict's balance and provider checks
cover it: a cancelled payout that a provider paid anyway shows as the providers disagreeing with the
ledger. The pause lives in PostgreSQL, so a change can fail while the soak restarts the database: it is
tried again at the next round.
"""

from __future__ import annotations

import random
import time
from typing import Callable

import sqlalchemy.exc

from demo.operator import DemoOperator
from demo.tail import LedgerTail
from ledger.payouts import PayoutStatus
from processors.operations import InvalidRequest, OperationRefused
from projections.payout_controls import set_pause

ACTOR = "soak-operator"
PAUSE_EVERY_S = 20.0  # from the end of one pause to the start of the next
PAUSE_S = 6.0
CANCELS_PER_PAUSE = 2


class SoakOperator(DemoOperator):
    def __init__(self, *args, database_url: str, rng: random.Random,  # noqa: ANN002 - DemoOperator's
                 clock: Callable[[], float] = time.monotonic, **kwargs) -> None:  # noqa: ANN003
        super().__init__(*args, **kwargs)
        self.database_url, self.rng, self.clock = database_url, rng, clock
        self.paused = False
        self.pauses = self.cancels_sent = 0
        self._changed_at = clock()
        self._cancelled_in_pause = 0
        self._cancel_tried: set[str] = set()

    def act(self, tail: LedgerTail) -> int:
        actions = super().act(tail)
        now = self.clock()
        if not self.paused and now - self._changed_at >= PAUSE_EVERY_S:
            if self._set_pause(True):
                self.pauses += 1
                self._cancelled_in_pause = 0
        elif self.paused:
            actions += self._cancel_some(tail)
            if now - self._changed_at >= PAUSE_S:
                self._set_pause(False)
        return actions

    def resume(self) -> None:
        """Lift a pause in force (before payouts are awaited); retried until the database answers."""
        deadline = self.clock() + 60
        while self.paused and not self._set_pause(False):
            if self.clock() > deadline:
                raise TimeoutError("could not lift the soak's payout pause within 60 s: the database does not answer")
            time.sleep(0.5)  # the database is restarting: bounded by the deadline above

    def _set_pause(self, paused: bool) -> bool:
        reason = "soak: payouts paused for a few seconds" if paused else "soak: payouts resumed"
        try:
            set_pause(self.database_url, paused, reason, ACTOR)
        except sqlalchemy.exc.OperationalError:
            return False
        self.paused, self._changed_at = paused, self.clock()
        return True

    def _cancel_some(self, tail: LedgerTail) -> int:
        if self._cancelled_in_pause >= CANCELS_PER_PAUSE:
            return 0
        requested = sorted(payout.payout_id for payout in tail.payouts()
                           if payout.status is PayoutStatus.REQUESTED and payout.payout_id not in self._cancel_tried)
        if not requested:
            return 0
        payout_id = self.rng.choice(requested)
        self._cancel_tried.add(payout_id)
        self._cancelled_in_pause += 1
        try:
            self.operations.cancel(payout_id, "soak: cancelled while payouts were paused", ACTOR, wait_s=0)
        except (OperationRefused, InvalidRequest, sqlalchemy.exc.OperationalError):
            return 0  # already submitted meanwhile (the ledger's view moved on), or the database is restarting
        self.cancels_sent += 1
        return 1
