"""Circuit breakers shared by the partitioned transfer processors of one ledger (table provider_breakers).

A provider's limits are the ledger's, not an instance's: when one instance's breaker for a provider
opens (repeated retryable failures), every instance stops calling that provider for the cooldown.
Each instance, about once a second (SYNC_EVERY_S):
- publishes a local opening it has not published yet (provider, opened_at, itself);
- trips its own breaker for every row opened by another instance less than the cooldown ago and later
  than its own breaker last opened. The cooldown then runs from the first opening, and the half-open
  trial after it is made by whichever instance comes first (each has its own trial; a failed trial
  opens the breaker again everywhere).
A database error skips one round (logged): the breakers keep working locally meanwhile.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Mapping

import sqlalchemy
from sqlalchemy import text

from connectors.circuit_breaker import BreakerState, CircuitBreaker

SYNC_EVERY_S = 1.0
logger = logging.getLogger("ledger.transfers")
_PUBLISH = text("INSERT INTO provider_breakers (provider, opened_at, opened_by) VALUES (:p, :at, :me) "
                "ON CONFLICT (provider) DO UPDATE SET opened_at = EXCLUDED.opened_at, opened_by = EXCLUDED.opened_by "
                "WHERE provider_breakers.opened_at < EXCLUDED.opened_at")
_READ = text("SELECT provider, opened_at, opened_by FROM provider_breakers")


class BreakerSync:
    def __init__(self, engine: sqlalchemy.Engine, member: str) -> None:
        self.engine, self.member = engine, member
        self._published: dict[str, datetime] = {}

    def sync(self, breakers: Mapping[str, CircuitBreaker]) -> list[str]:
        """Publish local openings and adopt the others'; returns the providers whose breaker it tripped."""
        try:
            with self.engine.begin() as connection:
                connection.execute(text("SET LOCAL statement_timeout = 2000"))
                for provider, breaker in breakers.items():
                    opened_at = breaker.opened_at
                    if breaker.state is BreakerState.OPEN and opened_at is not None and (
                            self._published.get(provider) != opened_at):
                        connection.execute(_PUBLISH, {"p": provider, "at": opened_at, "me": self.member})
                        self._published[provider] = opened_at
                rows = connection.execute(_READ).all()
        except sqlalchemy.exc.SQLAlchemyError as error:
            logger.warning("circuit breakers not shared this round (%s)", (str(error).splitlines() or ["?"])[0])
            return []
        tripped = []
        for provider, opened_at, opened_by in rows:
            breaker = breakers.get(provider)
            if breaker is None or opened_by == self.member or self._published.get(provider) == opened_at:
                continue
            if breaker.clock() - opened_at >= timedelta(seconds=breaker.cooldown_s):
                continue
            if breaker.trip(opened_at):
                self._published[provider] = opened_at  # (already in the table: not published again)
                tripped.append(provider)
                logger.warning("%s circuit opened by instance %s at %s: no calls here either until %s", provider,
                               opened_by, opened_at.isoformat(timespec="seconds"),
                               (opened_at + timedelta(seconds=breaker.cooldown_s)).isoformat(timespec="seconds"))
        return tripped
