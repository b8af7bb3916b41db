"""Operator look-ups read the projector's archive plus the tail of ledger.events, and see what a full fold sees."""

from __future__ import annotations

import sqlalchemy

from ledger.payouts import PayoutBook
from processors.operations import Operations
from processors.payout_state import payout_book
from projections.projector import Projector
from runtime.database import make_engine
from tests.integration.sequencing_helpers import ledger_events
from tests.integration.transfer_helpers import book_of, request_payouts, running, sequence_until, wait_until


def statuses(book: PayoutBook) -> dict[str, tuple[str, int, str]]:
    return {pid: (p.status.value, len(p.attempts), p.payee_id) for pid, p in book.payouts.items()}


def projected_to_end(settings, engine) -> bool:
    with engine.connect() as connection:
        projected = connection.execute(sqlalchemy.text(
            "SELECT coalesce(sum(next_offset), 0) FROM projection_positions WHERE topic = :t"),
            {"t": settings.topic_events}).scalar()
    return projected == len(ledger_events(settings))


def test_archive_plus_tail_gives_the_same_payouts_as_the_whole_log(settings, tmp_path):
    engine = make_engine(settings.database_url)
    requested = {e.payee_id: e.payload["payout_id"]
                 for e in request_payouts(settings, {name: ("manual", "") for name in ("a-1", "b-1", "c-1")})}
    # no projector yet: the tail is the whole log
    assert statuses(payout_book(settings.kafka_bootstrap, engine, settings.topic_events)) == statuses(book_of(settings))

    projector = Projector(settings, settings.kafka_bootstrap, settings.database_url, log=lambda line: None)
    with running(projector):
        wait_until(lambda: projected_to_end(settings, engine), 60, "the projector to catch up")
    operations = Operations(settings, settings.kafka_bootstrap, settings.database_url)
    cancelled = operations.cancel(requested["a-1"], "duplicate", "ops", wait_s=0)  # chained after the archive
    sequence_until(settings, lambda: book_of(settings).get(requested["a-1"]).status.value == "cancelled",
                   "the cancel chained")

    full = statuses(book_of(settings))
    assert full[requested["a-1"]][0] == "cancelled" and cancelled.verdict == "waiting"
    assert statuses(payout_book(settings.kafka_bootstrap, engine, settings.topic_events)) == full
    one = payout_book(settings.kafka_bootstrap, engine, settings.topic_events, payout_id=requested["a-1"])
    assert statuses(one) == {requested["a-1"]: full[requested["a-1"]]}  # only that payee's payouts
    assert operations.find(requested["a-1"]).status.value == "cancelled"
    assert operations.find(requested["b-1"]).status.value == "requested"
    engine.dispose()
