"""Noticing lost payments at once, instead of waiting out a phase's deadline.

A payment is lost when the sequencer has committed its input offsets past every record sent (so it will
never read them again) and the payment is still not in the ledger after a quiet period: a correct sequencer
flushes a batch's outputs before committing its inputs, so once the commit covers everything, each record
is chained, dead-lettered or parked waiting for its payment (refunds only) within a second or two.
`LossWatch` is polled by the demo's waits; it returns the failure text once loss is proven, else None.
"""

from __future__ import annotations

import time
from typing import Callable

from demo.drain import sequencer_lag
from demo.tail import LedgerTail
from runtime.settings import Settings

QUIET_S = 20.0  # committed past everything, and the ledger has not grown for this long
EVERY_S = 2.0  # between looks at the broker (each look opens a few short-lived clients)


class LossWatch:
    def __init__(self, settings: Settings, bootstrap: str, tail: LedgerTail,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings, self.bootstrap, self.tail, self.clock = settings, bootstrap, tail, clock
        self.expected: set[str] = set()
        self._next_look = 0.0
        self._quiet_since: float | None = None
        self._seen = -1

    def expect(self, payment_ids: set[str]) -> None:
        """Payments sent (and acknowledged by the broker) that the ledger must chain."""
        self.expected |= payment_ids
        self._quiet_since = None

    def __call__(self) -> str | None:
        now = self.clock()
        if now < self._next_look:
            return None
        self._next_look = now + EVERY_S
        missing = self.expected - self.tail.payment_ids
        chained = sum(self.tail.counts.values())
        if not missing or chained != self._seen or sequencer_lag(self.settings, self.bootstrap) > 0:
            self._seen, self._quiet_since = chained, None
            return None
        if self._quiet_since is None:
            self._quiet_since = now
            return None
        if now - self._quiet_since < QUIET_S:
            return None
        return (f"{len(missing)} payments lost: the sequencer committed its input offsets past them, and "
                f"{QUIET_S:.0f} s later they are not in the ledger (e.g. {sorted(missing)[:5]})")
