"""runtime.database.copy_rows: the COPY bulk path writes every value back exactly, and upserts."""

from __future__ import annotations

import sqlalchemy

from runtime.database import copy_rows, make_engine

AWKWARD = ["plain", "tab\there", "new\nline", "carriage\rreturn", "back\\slash", "\\N", "", "ünïcødé €", "\\.", "a\\tb"]


def test_copy_rows_round_trips_awkward_text_nulls_numbers_and_bytes(unmigrated_db_url: str) -> None:
    engine = make_engine(unmigrated_db_url)
    try:
        with engine.begin() as connection:
            connection.execute(sqlalchemy.text(
                "CREATE TABLE copy_probe (id int PRIMARY KEY, label text, amount bigint, blob bytea, flag boolean)"))
            rows = [(i, text, -(2**63) + i, text.encode("utf-8") + b"\x00\xff", i % 2 == 0)
                    for i, text in enumerate(AWKWARD)] + [(99, None, None, None, None)]
            copy_rows(connection, "copy_probe", ("id", "label", "amount", "blob", "flag"), rows)
        with engine.connect() as connection:
            stored = connection.execute(sqlalchemy.text(
                "SELECT id, label, amount, blob, flag FROM copy_probe ORDER BY id")).all()
        assert [(i, label, amount, None if blob is None else bytes(blob), flag)
                for i, label, amount, blob, flag in stored] == rows
    finally:
        engine.dispose()


def test_copy_rows_with_on_conflict_skips_or_updates_existing_rows(unmigrated_db_url: str) -> None:
    engine = make_engine(unmigrated_db_url)
    try:
        with engine.begin() as connection:
            connection.execute(sqlalchemy.text("CREATE TABLE copy_upsert (key text PRIMARY KEY, value text)"))
            copy_rows(connection, "copy_upsert", ("key", "value"), [("a", "1"), ("b", "1")])
            copy_rows(connection, "copy_upsert", ("key", "value"), [("a", "2"), ("c", "2")],
                      "ON CONFLICT (key) DO NOTHING")
            copy_rows(connection, "copy_upsert", ("key", "value"), [("b", "3")],
                      "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value")
        with engine.connect() as connection:
            stored = dict(connection.execute(sqlalchemy.text("SELECT key, value FROM copy_upsert")).all())
        assert stored == {"a": "1", "b": "3", "c": "2"}
    finally:
        engine.dispose()
