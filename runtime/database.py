"""Database engines and migrations (Alembic scripts live in projections/migrations)."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy
from sqlalchemy.engine import make_url

MIGRATIONS_DIR = Path(__file__).resolve().parents[1] / "projections" / "migrations"


def normalize_url(url: str) -> str:
    """Use psycopg2 for plain postgresql:// and postgres:// URLs (SQLAlchemy 2.1 would pick psycopg 3)."""
    parsed = make_url(url.replace("postgres://", "postgresql://", 1) if url.startswith("postgres://") else url)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg2")
    return parsed.render_as_string(hide_password=False)


def with_search_path(url: str, schema: str) -> str:
    """The same database URL, with every connection's search_path set to `schema`."""
    return make_url(normalize_url(url)).update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
        hide_password=False
    )


def make_engine(url: str, **kwargs: object) -> sqlalchemy.Engine:
    return sqlalchemy.create_engine(normalize_url(url), pool_pre_ping=True, **kwargs)


def alembic_config(url: str):
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", normalize_url(url).replace("%", "%%"))
    return config


def run_migrations(url: str) -> str:
    """Upgrade the database to the newest migration; returns the revision it is at."""
    from alembic import command

    command.upgrade(alembic_config(url), "head")
    return current_revision(url) or ""


def current_revision(url: str) -> str | None:
    from alembic.runtime.migration import MigrationContext

    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


def database_answers(url: str) -> bool:
    engine = make_engine(url, connect_args={"connect_timeout": 2})
    try:
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text("SELECT 1"))
        return True
    except sqlalchemy.exc.SQLAlchemyError:
        return False
    finally:
        engine.dispose()


def insert_values(connection: sqlalchemy.Connection, sql: str, rows: list[tuple], page_size: int = 1000) -> None:
    """`INSERT ... VALUES %s ...` for many rows in one round trip per page (psycopg2's execute_values).

    SQLAlchemy sends INSERT .. ON CONFLICT through psycopg2's executemany, one round trip per row: a
    sequencer checkpoint of 10,000 ids spent most of its time there (docs/decisions.md §30)."""
    if not rows:
        return
    from psycopg2.extras import execute_values

    cursor = connection.connection.driver_connection.cursor()
    try:
        execute_values(cursor, sql, rows, page_size=page_size)
    finally:
        cursor.close()
