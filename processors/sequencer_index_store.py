"""The sequencer's ledger index in PostgreSQL: what grows with the history leaves memory.

Dedupe ids with their content digests (table sequencer_recorded, one row per event), what remains
refundable of each payment (sequencer_payments) and finished payouts (processor_entities) are written
(by COPY) in the checkpoint's transaction and looked up per batch, many keys per query (ledger/ledger_index.py
IndexBacking). Dedupe stays exact and ledger-wide: a payment id reused years later, under any payee,
is found by its unique key.
"""

from __future__ import annotations

from typing import Collection, Mapping

import sqlalchemy

from ledger.ledger_index import IndexChanges, PaymentFacts
from ledger.money import Money
from ledger.payouts import Payout
from processors.entity_store import EntityStore
from runtime.database import copy_rows



class PostgresIndexBacking:
    def __init__(self, engine: sqlalchemy.Engine, processor: str = "sequencer") -> None:
        self.engine = engine
        self.entities = EntityStore(engine, processor)

    def recorded(self, keys: Collection[str]) -> Mapping[str, tuple[str, str]]:
        with self.engine.connect() as connection:
            rows = connection.execute(sqlalchemy.text(
                "SELECT dedupe_key, event_id, digest FROM sequencer_recorded WHERE dedupe_key = ANY(:keys)"),
                {"keys": sorted(keys)}).all()
        return {key: (event_id, digest) for key, event_id, digest in rows}

    def payments(self, payment_ids: Collection[str]) -> Mapping[str, PaymentFacts]:
        with self.engine.connect() as connection:
            rows = connection.execute(sqlalchemy.text(
                "SELECT payment_id, payee_id, currency, amount_minor, refunded_minor FROM sequencer_payments "
                "WHERE payment_id = ANY(:ids)"), {"ids": sorted(payment_ids)}).all()
        return {pid: PaymentFacts(pid, payee, Money.of(amount, currency), Money.of(refunded, currency))
                for pid, payee, currency, amount, refunded in rows}

    def payouts(self, payout_ids: Collection[str]) -> Mapping[str, Payout]:
        return self.entities.get_many("payout", payout_ids)

    def store(self, connection: sqlalchemy.Connection, changes: IndexChanges) -> None:
        """Write what the index handed over, in the caller's transaction (the checkpoint's)."""
        copy_rows(connection, "sequencer_recorded", ("dedupe_key", "event_id", "digest"),
                  [(key, event_id, digest) for key, (event_id, digest) in changes.recorded.items()],
                  "ON CONFLICT (dedupe_key) DO NOTHING")
        copy_rows(connection, "sequencer_payments", ("payment_id", "payee_id", "currency", "amount_minor",
                                                     "refunded_minor"),
                  [(p.payment_id, p.payee_id, p.amount.currency.code, p.amount.amount_minor, p.refunded.amount_minor)
                   for p in changes.payments],
                  "ON CONFLICT (payment_id) DO UPDATE SET refunded_minor = EXCLUDED.refunded_minor")
        self.entities.put_many(connection, "payout", {p.payout_id: p for p in changes.finished_payouts})

    def clear(self, connection: sqlalchemy.Connection) -> None:
        """Before a full replay: nothing folded earlier is trusted."""
        connection.execute(sqlalchemy.text("TRUNCATE sequencer_recorded, sequencer_payments"))
        self.entities.clear(connection)
