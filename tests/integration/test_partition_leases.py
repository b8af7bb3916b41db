"""Partition leases on the real PostgreSQL: fair shares, handover, expiry, fencing with guard(), stop()."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Callable, Iterator, TypeVar

import pytest
import sqlalchemy
from prometheus_client import REGISTRY

from runtime.database import make_engine
from runtime.partition_leases import Change, Fenced, PartitionLeases

TTL = 1.0
RENEW = 0.2
N = 4
ALL = set(range(N))
T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float = 5.0, what: str = "the condition") -> T:
    """Poll predicate until it returns something true; fail after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        time.sleep(0.02)


@pytest.fixture
def engine(db_url: str) -> Iterator[sqlalchemy.Engine]:
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def group() -> str:
    return f"proc-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def member(engine: sqlalchemy.Engine, group: str) -> Iterator[Callable[..., PartitionLeases]]:
    """make("a") -> a PartitionLeases of the test's group named "a" (not started); all stopped at the end."""
    made: list[PartitionLeases] = []

    def make(name: str, ttl_s: float = TTL) -> PartitionLeases:
        leases = PartitionLeases(engine, group, N, member=name, ttl_s=ttl_s, renew_every_s=RENEW,
                                 processor=f"{group}-{name}")
        made.append(leases)
        return leases

    yield make
    for leases in made:
        leases.stop()


def rows(engine: sqlalchemy.Engine, group: str) -> dict[int, tuple[str | None, int]]:
    with engine.connect() as connection:
        return {row.partition: (row.owner, row.epoch) for row in connection.execute(
            sqlalchemy.text("SELECT partition, owner, epoch FROM partition_leases WHERE grp = :g"), {"g": group})}


def db_expired(engine: sqlalchemy.Engine, group: str) -> bool:
    """Every lease and every member heartbeat of the group has expired by the database's clock."""
    with engine.connect() as connection:
        return not connection.execute(sqlalchemy.text(
            "SELECT (SELECT count(*) FROM partition_leases WHERE grp = :g AND expires_at > now()) "
            "+ (SELECT count(*) FROM partition_members WHERE grp = :g AND expires_at > now())"), {"g": group}).scalar()


def changes(leases: PartitionLeases, change: str) -> float:
    return REGISTRY.get_sample_value("ledger_partition_changes_total",
                                     {"processor": leases.processor, "change": change}) or 0.0


def owned_gauge(leases: PartitionLeases) -> float | None:
    return REGISTRY.get_sample_value("ledger_partitions_owned", {"processor": leases.processor})


def gain_until(leases: PartitionLeases, partitions: set[int], timeout: float = 5.0) -> dict[int, int]:
    """Rebalance until `partitions` were gained; returns everything gained meanwhile."""
    gained: dict[int, int] = {}

    def step() -> bool:
        change = leases.rebalance()
        assert not change.lost
        gained.update(change.gained)
        return partitions <= set(gained)

    wait_until(step, timeout, f"{leases.member} gaining {sorted(partitions)}")
    return gained


def test_a_lone_member_owns_every_partition_with_epoch_1_and_keeps_it_beyond_ttl(engine, group, member):
    a = member("a")
    a.start()
    change = a.rebalance()
    assert change == Change(gained={p: 1 for p in ALL}, lost=set(), to_release=set())
    assert a.owned() == {p: 1 for p in ALL}
    assert all(0 < a.valid_for(p) <= TTL for p in ALL)
    assert a.valid_for(N) == 0.0
    assert rows(engine, group) == {p: ("a", 1) for p in ALL}
    assert owned_gauge(a) == N and changes(a, "gained") == N

    with engine.connect() as connection:
        first = connection.execute(sqlalchemy.text(
            "SELECT max(expires_at) FROM partition_leases WHERE grp = :g"), {"g": group}).scalar()

    def renewed_past_first_expiry() -> bool:
        with engine.connect() as connection:
            return connection.execute(sqlalchemy.text(
                "SELECT bool_and(expires_at > :first + interval '0.5 second' AND now() > :first) "
                "FROM partition_leases WHERE grp = :g"), {"g": group, "first": first}).scalar()

    wait_until(renewed_past_first_expiry, what="renewals past the first expiry")  # the renewer thread did it
    assert all(a.valid_for(p) > 0 for p in ALL)
    assert a.rebalance() == Change(gained={}, lost=set(), to_release=set())
    assert rows(engine, group) == {p: ("a", 1) for p in ALL}


def test_a_joining_member_gets_its_share_once_the_first_releases_it(engine, group, member, caplog):
    caplog.set_level(logging.INFO, logger="ledger.partitions")
    a, b = member("a"), member("b")
    a.start()
    assert set(a.rebalance().gained) == ALL
    b.start()
    assert b.rebalance() == Change(gained={}, lost=set(), to_release=set())  # its share is still a's

    change = a.rebalance()
    assert change.gained == {} and change.lost == set()
    assert change.to_release == {1, 3}  # members [a, b]: odd partitions are b's
    assert a.rebalance().to_release == {1, 3}  # reported until released
    assert b.rebalance().gained == {}

    a.release(change.to_release)
    assert a.owned() == {0: 1, 2: 1} and a.valid_for(1) == 0.0
    assert b.rebalance() == Change(gained={1: 2, 3: 2}, lost=set(), to_release=set())
    assert set(a.owned()).isdisjoint(b.owned()) and set(a.owned()) | set(b.owned()) == ALL
    assert rows(engine, group) == {0: ("a", 1), 1: ("b", 2), 2: ("a", 1), 3: ("b", 2)}
    assert a.rebalance() == Change(gained={}, lost=set(), to_release=set())
    assert changes(a, "released") == 2 and owned_gauge(a) == 2 and owned_gauge(b) == 2
    messages = [record.getMessage() for record in caplog.records if record.name == "ledger.partitions"]
    assert f"{group}-a partition 1: released" in messages
    assert f"{group}-b partition 3: gained (epoch 2)" in messages


def test_a_member_that_stops_renewing_loses_its_leases_after_ttl(engine, group, member, caplog):
    caplog.set_level(logging.INFO, logger="ledger.partitions")
    a, b = member("a"), member("b")
    assert set(a.rebalance().gained) == ALL  # a never starts its renewer: as if it hung
    b.start()
    assert b.rebalance().gained == {}  # a is live and its leases are valid: nothing taken early

    gained = gain_until(b, ALL)  # a's heartbeat and leases expire: b alone, its share is everything
    assert gained == {p: 2 for p in ALL}
    assert all(a.valid_for(p) == 0.0 for p in ALL)  # its local deadline was never later than the database's
    assert a.owned() == {p: 1 for p in ALL}  # not told yet

    change = a.rebalance()
    assert change.lost == ALL and change.gained == {} and change.to_release == set()
    assert a.owned() == {} and all(a.valid_for(p) == 0.0 for p in ALL)
    assert rows(engine, group) == {p: ("b", 2) for p in ALL}
    assert b.rebalance().to_release == {0, 2}  # a is back as a live member: its share is handed over
    assert changes(a, "lost") == N and owned_gauge(a) == 0
    assert f"{group}-a partition 0: lost: taken by b (epoch 2)" in [record.getMessage() for record in caplog.records]


def test_the_renewer_finds_a_taken_lease_and_the_next_rebalance_reports_it(engine, group, member):
    a = member("a")
    a.start()
    a.rebalance()
    with engine.begin() as connection:  # taken behind a's back (as after a long pause)
        connection.execute(sqlalchemy.text("UPDATE partition_leases SET owner = 'x', epoch = epoch + 1, "
                                           "expires_at = now() + interval '1 minute' WHERE grp = :g AND partition = 2"),
                           {"g": group})
    wait_until(lambda: 2 not in a.owned(), what="the renewer noticing the loss")
    assert a.valid_for(2) == 0.0 and a.owned() == {0: 1, 1: 1, 3: 1}
    assert a.rebalance() == Change(gained={}, lost={2}, to_release=set())
    assert a.rebalance().lost == set()  # reported once


def test_failing_renewals_let_valid_for_run_down_and_resume_when_the_database_answers(engine, group, member, caplog):
    a = member("a")
    a.start()
    a.rebalance()
    dead = make_engine("postgresql+psycopg2://postgres@127.0.0.1:1/none", connect_args={"connect_timeout": 1})
    a.engine = dead  # test-only: the renewer's connections now fail
    wait_until(lambda: all(a.valid_for(p) == 0.0 for p in ALL), what="valid_for running down")
    assert a.owned() == {p: 1 for p in ALL}  # not lost: nobody took them
    with pytest.raises(sqlalchemy.exc.OperationalError):
        a.rebalance()
    assert any("renewing partition leases failed" in record.getMessage() for record in caplog.records)
    a.engine = engine
    wait_until(lambda: all(a.valid_for(p) > 0 for p in ALL), what="renewals resuming")
    assert a.rebalance() == Change(gained={}, lost=set(), to_release=set())
    assert rows(engine, group) == {p: ("a", 1) for p in ALL}
    dead.dispose()


def test_guard_passes_for_the_owner_and_fences_expired_taken_and_stale_leases(engine, group, member):
    a, b = member("a"), member("b")
    a.rebalance()  # not started: its leases will expire
    with engine.begin() as connection:
        a.guard(connection, [0, 1, 2, 3])
        with pytest.raises(Fenced) as fenced:
            b.guard(connection, [1])
    assert fenced.value.partition == 1 and fenced.value.reason == "not owned by this instance"
    assert str(fenced.value) == "partition 1: not owned by this instance"

    wait_until(lambda: db_expired(engine, group), what="a's leases expiring")
    with pytest.raises(Fenced, match=r"partition 0: lease expired \(epoch 1\)"):
        with engine.begin() as connection:
            a.guard(connection, [0])

    gain_until(b, ALL)
    with engine.begin() as connection:
        b.guard(connection, ALL)
    with pytest.raises(Fenced, match=r"partition 3: owned by b \(epoch 2\)"):
        with engine.begin() as connection:
            a.guard(connection, [3])

    b.stop()
    a_again = member("a")  # a restarted instance with the same member name: same owner, newer epoch
    assert a_again.rebalance().gained == {p: 3 for p in ALL}
    with pytest.raises(Fenced, match=r"partition 2: epoch 3 in the database, 1 here"):
        with engine.begin() as connection:
            a.guard(connection, [2])
    with engine.begin() as connection:
        a_again.guard(connection, [2])
    assert a.rebalance() == Change(gained={}, lost=ALL, to_release=set())  # its renewal returned epoch 3, not 1
    assert a_again.owned() == {p: 3 for p in ALL}


def test_a_claim_waits_until_the_guarded_transaction_commits(engine, group, member):
    with engine.begin() as connection:
        connection.execute(sqlalchemy.text("CREATE TABLE guarded_writes (partition int, epoch bigint)"))
    a = member("a")
    b = member("b", ttl_s=5.0)  # its claim may wait up to ttl_s: ample for this test
    a.rebalance()  # not started: its leases expire while its transaction is open

    connection = engine.connect()
    transaction = connection.begin()
    a.guard(connection, [0])
    connection.execute(sqlalchemy.text("INSERT INTO guarded_writes VALUES (0, 1)"))
    a_pid = connection.execute(sqlalchemy.text("SELECT pg_backend_pid()")).scalar()
    wait_until(lambda: db_expired(engine, group), what="a's leases expiring")

    committing = threading.Event()
    outcome: dict[str, object] = {}

    def claim() -> None:
        outcome["change"] = b.rebalance()
        outcome["after_commit"] = committing.is_set()
        with engine.connect() as reader:
            outcome["writes"] = reader.execute(sqlalchemy.text("SELECT count(*) FROM guarded_writes")).scalar()

    claimer = threading.Thread(target=claim, daemon=True)
    claimer.start()

    def blocked_by_a() -> bool:
        with engine.connect() as probe:
            return bool(probe.execute(sqlalchemy.text(
                "SELECT count(*) FROM pg_stat_activity WHERE :a = ANY(pg_blocking_pids(pid))"), {"a": a_pid}).scalar())

    try:
        wait_until(blocked_by_a, what="b's claim waiting for a's row lock")
        assert claimer.is_alive() and "change" not in outcome
    finally:
        committing.set()
        transaction.commit()
        connection.close()
    claimer.join(5.0)
    assert not claimer.is_alive()
    assert outcome["after_commit"] is True and outcome["writes"] == 1  # a's guarded write came first
    assert outcome["change"] == Change(gained={p: 2 for p in ALL}, lost=set(), to_release=set())


def test_stop_releases_everything_and_leaves_the_group(engine, group, member):
    a, b = member("a"), member("b")
    a.start()
    a.rebalance()
    b.start()
    started = time.monotonic()
    a.stop()
    assert time.monotonic() - started < 2 * RENEW + 1.0
    assert [t.name for t in threading.enumerate() if t.name.startswith(f"leases-{group}-")] == [f"leases-{group}-b"]
    assert a.owned() == {} and owned_gauge(a) == 0 and changes(a, "released") == N
    with engine.connect() as connection:
        assert connection.execute(sqlalchemy.text(
            "SELECT count(*) FROM partition_leases WHERE grp = :g AND (owner IS NOT NULL OR expires_at IS NOT NULL)"),
            {"g": group}).scalar() == 0
        members = connection.execute(sqlalchemy.text(
            "SELECT member FROM partition_members WHERE grp = :g"), {"g": group}).scalars().all()
    assert members == ["b"]
    assert rows(engine, group) == {p: (None, 1) for p in ALL}  # the epoch is kept
    assert b.rebalance().gained == {p: 2 for p in ALL}  # at once: no waiting for an expiry
