"""The checkpoint core on the real broker and PostgreSQL: write, load, prove; every way a checkpoint is refused."""

from __future__ import annotations

import sqlalchemy

from processors.checkpoints import CheckpointStore, prove, record_hash, resume
from processors.entity_store import EntityStore
from processors.kafka_io import DeliveryTracker, flush_or_raise, make_producer, topic_partitions
from processors.log_reader import LogReader
from runtime.database import make_engine
from runtime.settings import Settings


def _fill(settings: Settings, count: int, first: int = 0) -> None:
    producer = make_producer(settings.kafka_bootstrap)
    tracker = DeliveryTracker()
    for number in range(first, first + count):
        producer.produce(settings.topic_events, key=f"payee-{number % 7}".encode(), value=f"event {number}".encode(),
                         on_delivery=tracker)
    flush_or_raise(producer, tracker, count)


def _read_all(settings: Settings, starts=None, proofs=None) -> tuple[LogReader, list]:
    reader = LogReader(settings.kafka_bootstrap, "core-test", {settings.topic_events: starts or {}}, proofs=proofs,
                       wait_s=0.2)
    got = []
    for _ in range(200):
        got.extend(reader.poll())
        if reader.caught_up:
            break
    assert reader.caught_up
    return reader, got


def test_a_written_checkpoint_proves_and_resumes_at_its_positions(settings: Settings, db_url: str) -> None:
    _fill(settings, 40)
    engine = make_engine(db_url)
    store = CheckpointStore(engine, "core-test", 3)
    reader, got = _read_all(settings)
    assert len(got) == 40
    with engine.begin() as connection:
        store.write(connection, reader.checkpoint_positions(), reader.proofs(), {"folded": 40}, 40)
    reader.close()
    lines: list[str] = []
    resumed = resume(settings.kafka_bootstrap, store, lines.append)
    assert resumed.checkpoint is not None and resumed.checkpoint.state == {"folded": 40} and lines == []
    _fill(settings, 5, first=40)
    starts = resumed.start(settings.topic_events, topic_partitions(settings.kafka_bootstrap, settings.topic_events))
    tail_reader, tail = _read_all(settings, starts, resumed.checkpoint.proofs)
    assert sorted(m.value() for m in tail) == sorted(f"event {n}".encode() for n in range(40, 45))
    # a partition that got no new record keeps its proof from the checkpoint
    proofs = tail_reader.proofs()
    assert set(proofs[settings.topic_events]) == set(tail_reader.checkpoint_positions()[settings.topic_events])
    tail_reader.close()


def test_each_broken_checkpoint_is_refused_with_its_reason(settings: Settings, db_url: str) -> None:
    _fill(settings, 30)
    engine = make_engine(db_url)
    store = CheckpointStore(engine, "core-test", 3)
    reader, _ = _read_all(settings)
    positions, proofs = reader.checkpoint_positions(), reader.proofs()
    reader.close()
    topic = settings.topic_events
    partition = sorted(positions[topic])[0]

    def write(**change) -> None:
        with engine.begin() as connection:
            store.write(connection, change.get("positions", positions), change.get("proofs", proofs), "state", 30)

    def refused() -> tuple[str, str]:
        lines: list[str] = []
        result = resume(settings.kafka_bootstrap, store, lines.append)
        assert result.checkpoint is None and len(lines) == 1 and lines[0].startswith("full replay: ")
        return result.why, result.reason

    assert refused()[0] == "none"
    write()
    with engine.begin() as connection:
        connection.execute(sqlalchemy.text("UPDATE processor_checkpoints SET format = 2"))
    assert refused()[0] == "format"
    write()
    with engine.begin() as connection:
        connection.execute(sqlalchemy.text("UPDATE processor_checkpoints SET state = state || '\\x00'::bytea"))
    assert refused()[0] == "digest"
    ahead = {topic: {**positions[topic], partition: positions[topic][partition] + 10}}
    write(positions=ahead)
    why, reason = refused()
    assert why == "ahead" and f"[{partition}]" in reason
    edited = {topic: {**proofs[topic], partition: record_hash(b"something else")}}
    write(proofs=edited)
    assert refused()[0] == "mismatch"
    write(positions={topic: {**positions[topic], 99: 1}}, proofs={topic: {**proofs[topic], 99: "x"}})
    assert refused()[0] == "partitions"
    write()
    checkpoint, _, _ = store.load()
    assert checkpoint is not None and prove(settings.kafka_bootstrap, checkpoint) == ("", "")


def test_entities_round_trip_and_clear(db_url: str) -> None:
    engine = make_engine(db_url)
    entities = EntityStore(engine, "core-test")
    with engine.begin() as connection:
        entities.put_many(connection, "payout", {"p1": {"a": 1}, "p2": [2]})
        entities.put_many(connection, "payout", {"p1": {"a": 3}})
    assert entities.get_many("payout", ["p1", "p2", "p3"]) == {"p1": {"a": 3}, "p2": [2]}
    with engine.begin() as connection:
        entities.delete_many(connection, "payout", ["p2"])
    assert entities.get_many("payout", ["p2"]) == {}
    with engine.begin() as connection:
        entities.clear(connection)
    assert entities.get_many("payout", ["p1"]) == {}


def test_reading_to_the_end_gives_every_record_and_bounds_a_wait_without_progress(settings: Settings) -> None:
    _fill(settings, 25)
    reader = LogReader(settings.kafka_bootstrap, "core-test", {settings.topic_events: {}}, wait_s=0.1)
    got = [message.value() for batch in reader.batches_to_end(30) for message in batch]
    assert sorted(got) == sorted(f"event {n}".encode() for n in range(25))
    reader.close()
    stuck = LogReader(settings.kafka_bootstrap, "core-test", {settings.topic_events: {}}, wait_s=0.05)
    stuck.at_end.clear()
    stuck._partitions.add((settings.topic_events, 99))  # a partition that never reports its end
    import pytest

    with pytest.raises(TimeoutError, match="nothing arrived for 0.5 s"):
        for _ in stuck.batches_to_end(0.5):
            pass
    stuck.close()


def test_a_checkpoint_of_other_topics_is_not_used(settings: Settings, db_url: str) -> None:
    """A ledger configured with other topic names must not start from the old topics' state."""
    _fill(settings, 10)
    engine = make_engine(db_url)
    store = CheckpointStore(engine, "core-test", 3)
    reader, _ = _read_all(settings)
    with engine.begin() as connection:
        store.write(connection, reader.checkpoint_positions(), reader.proofs(), "state", 10)
    reader.close()
    assert resume(settings.kafka_bootstrap, store, topics=(settings.topic_events,)).checkpoint is not None
    lines: list[str] = []
    other = resume(settings.kafka_bootstrap, store, lines.append, topics=("ledger.events.elsewhere",))
    assert other.checkpoint is None and other.why == "topics"
    assert lines == [f"full replay: the checkpoint covers {settings.topic_events}, which this processor does not "
                     "read (other topics)"]
