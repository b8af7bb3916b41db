"""Database engines and migrations (Alembic scripts live in projections/migrations)."""

from __future__ import annotations

import hashlib
import io

import sqlalchemy
from sqlalchemy.engine import make_url

from ledger.package_data import package_dir

MIGRATIONS_DIR = package_dir("projections", "migrations")  # package data of projections, installed or checked out


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


_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def copy_text(value: object) -> str:
    """One value in PostgreSQL's COPY text format: NULL as \\N, the four special characters escaped."""
    kind = type(value)
    if kind is str:
        text = value
    elif kind is int:
        return str(value)
    elif value is None:
        return "\\N"
    elif isinstance(value, bool):
        return "t" if value else "f"
    elif isinstance(value, int):  # an IntEnum, say: its number, as the driver would send it
        return str(int(value))
    elif isinstance(value, (bytes, bytearray, memoryview)):
        return "\\\\x" + bytes(value).hex()  # bytea in hex form, its backslash escaped for COPY
    else:
        text = str(value)
    if "\\" in text or "\t" in text or "\n" in text or "\r" in text:
        return text.translate(_COPY_ESCAPES)
    return text


def copy_rows(connection: sqlalchemy.Connection, table: str, columns: tuple[str, ...] | list[str], rows: list[tuple],
              on_conflict: str | None = None) -> int:
    """Write many rows with COPY, in the caller's transaction: the bulk path, one round trip for all rows.
    Returns the number of rows inserted or updated.

    Without on_conflict the rows are copied straight into `table`. With it (e.g. "ON CONFLICT (key) DO
    NOTHING") they are copied into a temporary table with just those columns, then moved by one
    INSERT ... SELECT with that clause, since COPY itself cannot skip or update existing rows. Names are
    the caller's own (never input): they are quoted as given."""
    if not rows:
        return 0
    names = ", ".join(f'"{name}"' for name in columns)
    data = io.StringIO("".join("\t".join(map(copy_text, row)) + "\n" for row in rows))
    cursor = connection.connection.driver_connection.cursor()
    try:
        if on_conflict is None:
            cursor.copy_expert(f'COPY "{table}" ({names}) FROM STDIN', data)
            return cursor.rowcount
        staging = f"copy_staging_{table}_{hashlib.sha1(names.encode()).hexdigest()[:8]}"
        cursor.execute(f'CREATE TEMP TABLE IF NOT EXISTS "{staging}" ON COMMIT DELETE ROWS AS '
                       f'SELECT {names} FROM "{table}" WITH NO DATA')
        cursor.copy_expert(f'COPY "{staging}" ({names}) FROM STDIN', data)
        cursor.execute(f'INSERT INTO "{table}" ({names}) SELECT {names} FROM "{staging}" {on_conflict}')
        written = cursor.rowcount
        cursor.execute(f'TRUNCATE "{staging}"')
        return written
    finally:
        cursor.close()
