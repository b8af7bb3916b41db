"""Ledger-wide dedupe between sequencer instances: a business id is claimed by one partition before it is chained.

A payment id must be unique in the whole ledger, but each sequencer instance sees only the chains of
the partitions it owns, and a client may send the same id under two payees (two partitions). So,
in partitioned mode, each batch first claims the business ids it may chain (table
`sequencer_claims`, one row per id, in a transaction that also checks the partition's lease). An id
already claimed by another partition comes back with that claim's event id and content digest, and
the index judges the record against it: a duplicate if the content is the same, else a conflict.

A claim of this partition is never evidence against this partition's own records: after a crash
between the claim and the produce, the record comes again and is chained under its own claim. Ids
claimed but not chained in the batch (refused, or waiting for their payment) are released at the
end of the batch; chained ones are deleted by the checkpoint that writes them to
`sequencer_recorded`, where every partition's lookups find them. So the table holds only what is
in flight, not the history.
"""

from __future__ import annotations

from typing import Collection, Mapping

import sqlalchemy

from runtime.database import copy_rows


class ClaimStore:
    def __init__(self, partition: int) -> None:
        self.partition = partition

    def claim(self, connection: sqlalchemy.Connection,
              candidates: Mapping[str, tuple[str, str]]) -> dict[str, tuple[str, str]]:
        """Claim these keys (key -> (event id, digest)) for this partition, in the caller's transaction.
        Returns those already claimed by another partition, with that claim's (event id, digest)."""
        if not candidates:
            return {}
        copy_rows(connection, "sequencer_claims", ("dedupe_key", "partition", "event_id", "digest"),
                  [(key, self.partition, event_id, digest) for key, (event_id, digest) in candidates.items()],
                  "ON CONFLICT (dedupe_key) DO NOTHING")
        rows = connection.execute(sqlalchemy.text(
            "SELECT dedupe_key, event_id, digest FROM sequencer_claims "
            "WHERE dedupe_key = ANY(:keys) AND partition <> :partition"),
            {"keys": sorted(candidates), "partition": self.partition}).all()
        return {key: (event_id, digest) for key, event_id, digest in rows}

    def release(self, connection: sqlalchemy.Connection, keys: Collection[str]) -> None:
        """Give back this partition's claims of keys it did not chain."""
        if keys:
            connection.execute(sqlalchemy.text(
                "DELETE FROM sequencer_claims WHERE dedupe_key = ANY(:keys) AND partition = :partition"),
                {"keys": sorted(keys), "partition": self.partition})

    def settle(self, connection: sqlalchemy.Connection) -> None:
        """In the checkpoint's transaction, after the recorded ids were written: their claims are no longer needed."""
        connection.execute(sqlalchemy.text(
            "DELETE FROM sequencer_claims c USING sequencer_recorded r "
            "WHERE c.partition = :partition AND c.dedupe_key = r.dedupe_key"), {"partition": self.partition})
