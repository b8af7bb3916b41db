"""`ledger verify`: replay the ledger, fold it afresh, and prove the read models, the archive and the
hash chains agree with it; and that every payee's money balances
(per currency, earned_net = settled + in_flight + unpaid).

The fold here is a new ReadModel over every event, independent of the projector's own state; a row the
projector wrote wrongly, or one edited by hand, shows as a difference naming the table, key and column.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable

import sqlalchemy

from ledger.codec import EventCodec, UndecodableEvent
from ledger.guards import InvariantViolation
from ledger.hashchain import ChainLink, verify_chain
from processors.kafka_io import read_topic
from projections.projector import load_tables
from projections.read_model import KEYS, ReadModel
from runtime.database import make_engine
from runtime.settings import Settings

MAX_LISTED = 200


@dataclass
class VerifyReport:
    events: int = 0
    payees: int = 0
    tables: dict[str, int] = field(default_factory=dict)  # rows compared per table
    differences: list[dict[str, Any]] = field(default_factory=list)
    mismatches: int = 0
    chain_breaks: int = 0
    unbalanced: int = 0

    @property
    def ok(self) -> bool:
        return self.mismatches == 0

    def add(self, kind: str, **details: Any) -> None:
        self.mismatches += 1
        if len(self.differences) < MAX_LISTED:
            self.differences.append({"kind": kind, **details})

    def as_dict(self) -> dict[str, Any]:
        return {"events": self.events, "payees": self.payees, "mismatches": self.mismatches,
                "chain_breaks": self.chain_breaks, "unbalanced": self.unbalanced,
                "ledger_balanced": self.unbalanced == 0, "tables": self.tables, "differences": self.differences,
                "differences_listed": len(self.differences)}


def _same(expected: Any, actual: Any) -> bool:
    if isinstance(expected, datetime) and isinstance(actual, datetime):
        return expected == actual  # instants, whatever the session's time zone
    if isinstance(actual, memoryview):
        actual = bytes(actual)
    return expected == actual


def _plain(value: Any) -> Any:
    return value.isoformat() if hasattr(value, "isoformat") else value


def verify(settings: Settings, bootstrap: str, database_url: str, *,
           progress: Callable[[int], None] | None = None) -> VerifyReport:
    report = VerifyReport()
    codec, model, links = EventCodec(), ReadModel(), []
    raw_by_id: dict[str, bytes] = {}
    for record in read_topic(bootstrap, settings.topic_events, timeout_s=600):
        raw = record.value or b""
        try:
            event = codec.decode(raw)
        except UndecodableEvent as exc:
            report.add("undecodable_event", partition=record.partition, offset=record.offset, reason=exc.reason)
            continue
        links.append(ChainLink(event.payee_id, event.envelope.sequence, event.envelope.previous_hash, raw))
        raw_by_id[event.envelope.event_id] = raw
        try:
            model.apply(event, raw, partition=record.partition)
        except InvariantViolation as exc:  # a gap or a foreign event: the chain check names it too
            report.add("fold", payee_id=event.payee_id, sequence=event.envelope.sequence, reason=str(exc))
        report.events += 1
        if progress is not None:
            progress(1)
    heads, breaks = verify_chain(links)
    report.payees = len(heads)
    for chain_break in breaks:
        report.chain_breaks += 1
        report.add("hash_chain", payee_id=chain_break.payee_id, sequence=chain_break.sequence,
                   reason=chain_break.reason)
    for (payee, currency), row in model.all_rows()["payee_balances"].items():
        if row["earned_net_minor"] != row["settled_minor"] + row["in_flight_minor"] + row["unpaid_minor"]:
            report.unbalanced += 1
            report.add("unbalanced", payee_id=payee, currency=currency, row={k: _plain(v) for k, v in row.items()})
    engine = make_engine(database_url)
    try:
        tables = load_tables(engine)
        expected_rows = model.all_rows()
        with engine.connect() as connection:
            for table, expected in expected_rows.items():
                _compare(report, connection, tables[table], KEYS[table], expected)
            _compare_archive(report, connection, tables["event_archive"], raw_by_id)
    finally:
        engine.dispose()
    return report


def _compare(report: VerifyReport, connection: sqlalchemy.Connection, table: sqlalchemy.Table,
             keys: tuple[str, ...], expected: dict[tuple, dict[str, Any] | None]) -> None:
    actual = {tuple(row[k] for k in keys): row for row in connection.execute(sqlalchemy.select(table)).mappings()}
    expected = {key: row for key, row in expected.items() if row is not None}
    report.tables[table.name] = len(expected)
    for key, row in expected.items():
        stored = actual.get(key)
        if stored is None:
            report.add("missing_row", table=table.name, key=[_plain(k) for k in key])
            continue
        for column, value in row.items():
            if not _same(value, stored[column]):
                report.add("different_value", table=table.name, key=[_plain(k) for k in key], column=column,
                           ledger=_plain(value), table_value=_plain(stored[column]))
    for key in actual.keys() - expected.keys():
        report.add("extra_row", table=table.name, key=[_plain(k) for k in key])


def _compare_archive(report: VerifyReport, connection: sqlalchemy.Connection, archive: sqlalchemy.Table,
                     raw_by_id: dict[str, bytes]) -> None:
    archived = dict(connection.execute(sqlalchemy.select(archive.c.event_id, archive.c.encoded)).all())
    report.tables["event_archive"] = len(raw_by_id)
    for event_id, raw in raw_by_id.items():
        stored = archived.get(event_id)
        if stored is None:
            report.add("missing_row", table="event_archive", key=[event_id])
        elif bytes(stored) != raw:
            report.add("different_value", table="event_archive", key=[event_id], column="encoded",
                       ledger=f"{len(raw)} bytes", table_value=f"{len(bytes(stored))} bytes (not the ledger's)")
    for event_id in archived.keys() - raw_by_id.keys():
        report.add("extra_row", table="event_archive", key=[event_id])
