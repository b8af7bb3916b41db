"""Migrations and the append-only event archive on the real PostgreSQL."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
import sqlalchemy

from ledger.codec import EventCodec
from ledger.events import Event, new_envelope
from ledger.money import Money
from ledger.sequencing import PayeeChains
from projections.archive import archive_events, archived_count
from runtime.database import alembic_config, current_revision, make_engine, run_migrations


def migrations_head() -> str:
    """The newest revision in projections/migrations (the upgrade target)."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config("postgresql://unused/db")).get_current_head()


NOW = datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc)


def _chain(count: int) -> list[tuple[Event, bytes]]:
    sequencer = PayeeChains(EventCodec().encode)
    return [
        sequencer.append(Event(new_envelope("PaymentCompleted", payee_id="payee-a", occurred_at=NOW, recorded_at=NOW),
                               {"payment_id": f"p{i}", "amount": Money.of(500, "XOF")}))
        for i in range(count)
    ]


def test_migrations_upgrade_downgrade_and_upgrade_again(unmigrated_db_url):
    from alembic import command

    assert current_revision(unmigrated_db_url) is None
    assert run_migrations(unmigrated_db_url) == migrations_head()
    command.downgrade(alembic_config(unmigrated_db_url), "base")
    assert current_revision(unmigrated_db_url) is None
    assert run_migrations(unmigrated_db_url) == migrations_head()


def test_archive_is_idempotent_on_event_identity(db_url):
    events = _chain(5)
    engine = make_engine(db_url)
    with engine.begin() as connection:
        assert archive_events(connection, "ledger.events", events) == 5
    with engine.begin() as connection:
        assert archive_events(connection, "ledger.events", events) == 0  # redelivery changes nothing
        assert archived_count(connection, ["payee-a"]) == 5
        stored = connection.execute(sqlalchemy.text("SELECT encoded FROM event_archive ORDER BY sequence")).scalars()
        assert [bytes(value) for value in stored] == [encoded for _, encoded in events]
    engine.dispose()


@pytest.mark.parametrize("statement", [
    "UPDATE event_archive SET payee_id = 'someone-else'",
    "DELETE FROM event_archive",
])
def test_archive_refuses_edits_and_deletes(db_url, statement):
    engine = make_engine(db_url)
    with engine.begin() as connection:
        archive_events(connection, "ledger.events", _chain(2))
    with pytest.raises(sqlalchemy.exc.DatabaseError, match="event_archive is append-only"):
        with engine.begin() as connection:
            connection.execute(sqlalchemy.text(statement))
    with engine.begin() as connection:
        assert archived_count(connection, ["payee-a"]) == 2
    engine.dispose()
