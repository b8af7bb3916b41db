"""When a failed payout attempt is tried again (by default after 5 min, 15 min, 1 h), and when to give up."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from ledger.guards import require

DEFAULT_RETRY_DELAYS_S = (300, 900, 3600)


@dataclass(frozen=True)
class RetryPolicy:
    """Attempt n (1-based) that fails retryably is retried after delays_s[n-1]; after the last, it fails."""

    delays_s: tuple[int, ...] = DEFAULT_RETRY_DELAYS_S

    def __post_init__(self) -> None:
        require(all(isinstance(d, int) and d > 0 for d in self.delays_s), "retry delays must be positive integers")

    @property
    def max_attempts(self) -> int:
        return len(self.delays_s) + 1

    def next_attempt_at(self, failed_attempt: int, failed_at: datetime, retry_after_s: float | None = None) -> datetime | None:
        """When to try again after `failed_attempt` failed retryably, or None when attempts are exhausted.

        A provider's Retry-After is honoured when it asks for longer than the schedule.
        """
        require(failed_attempt >= 1, f"attempts are 1-based, got {failed_attempt}")
        if failed_attempt > len(self.delays_s):
            return None
        delay_s = float(self.delays_s[failed_attempt - 1])
        if retry_after_s is not None and retry_after_s > delay_s:
            delay_s = retry_after_s
        return failed_at + timedelta(seconds=delay_s)
