"""The platform-wide payout pause, kept in PostgreSQL with its history (who, why, when)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy

from runtime.database import make_engine


@dataclass(frozen=True)
class PauseState:
    paused: bool
    reason: str = ""
    actor: str = ""
    changed_at: datetime | None = None


def read_pause(database_url: str) -> PauseState:
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            row = connection.execute(sqlalchemy.text(
                "SELECT paused, reason, actor, changed_at FROM payout_controls WHERE id = 1")).first()
    finally:
        engine.dispose()
    return PauseState(*row) if row else PauseState(False)


def set_pause(database_url: str, paused: bool, reason: str, actor: str) -> PauseState:
    engine = make_engine(database_url)
    try:
        with engine.begin() as connection:
            connection.execute(sqlalchemy.text(
                "INSERT INTO payout_controls (id, paused, reason, actor, changed_at) VALUES (1, :p, :r, :a, now()) "
                "ON CONFLICT (id) DO UPDATE SET paused = :p, reason = :r, actor = :a, changed_at = now()"),
                {"p": paused, "r": reason, "a": actor})
            connection.execute(sqlalchemy.text(
                "INSERT INTO payout_control_history (paused, reason, actor) VALUES (:p, :r, :a)"),
                {"p": paused, "r": reason, "a": actor})
    finally:
        engine.dispose()
    return read_pause(database_url)
