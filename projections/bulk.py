"""Bulk upserts by COPY (runtime/database.copy_rows): one round trip for a whole batch of rows.

SQLAlchemy sends INSERT .. ON CONFLICT through psycopg2's executemany (one round trip per row here),
and compiling a multi-row VALUES statement costs more than the insert; psycopg2's execute_values, used
before, still formatted every value through the driver in Python and spent a third of a rebuild there.
COPY into a temporary table and one INSERT ... SELECT ... ON CONFLICT does the same in one statement.
"""

from __future__ import annotations

import json
import operator

import sqlalchemy
from sqlalchemy.dialects.postgresql import JSONB

from runtime.database import copy_rows


def upsert(connection: sqlalchemy.Connection, table: sqlalchemy.Table, keys: tuple[str, ...], rows: list[dict],
           *, update: bool = True) -> int:
    """Insert rows; on a key conflict replace the other columns (or keep the stored row, update=False).
    Returns the number of rows inserted or updated."""
    if not rows:
        return 0
    columns = list(rows[0])
    json_columns = {c.name for c in table.columns if isinstance(c.type, JSONB)}
    others = [name for name in columns if name not in keys]
    if update and others:
        quoted_keys = ", ".join(f'"{key}"' for key in keys)
        conflict = f"ON CONFLICT ({quoted_keys}) DO UPDATE SET " + ", ".join(f'"{n}" = EXCLUDED."{n}"' for n in others)
    else:
        conflict = "ON CONFLICT DO NOTHING"  # on any unique key (the archive has two: event id, payee + sequence)
    if json_columns & set(columns):
        values = [tuple(json.dumps(row[c]) if c in json_columns else row[c] for c in columns) for row in rows]
    else:
        pick = operator.itemgetter(*columns)
        values = [pick(row) for row in rows] if len(columns) > 1 else [(row[columns[0]],) for row in rows]
    return copy_rows(connection, table.name, columns, values, conflict)
