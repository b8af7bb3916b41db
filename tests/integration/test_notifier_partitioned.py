"""Partitioned notifiers (`ledger notifier --partitioned`) as real processes: one is SIGKILLed while final
payout outcomes flow, its partitions move to the other, and every outcome still gets exactly one notice
per channel, delivered."""

from __future__ import annotations

import signal
import subprocess
from datetime import datetime, timezone

import pytest
import sqlalchemy

from ledger import payouts as records
from processors.partitioning import partition_for
from projections.payee_contacts import set_contact
from runtime.database import make_engine
from tests.integration.cli_env import LEDGER, env_for
from tests.integration.test_notifications import SECRET, all_done, chain, receiver, rows  # noqa: F401 - a fixture
from tests.integration.transfer_helpers import book_of, processor_running, request_payouts, sequencer_running, wait_until

LEASE_S = 4.0


def owners(settings) -> dict[int, str]:  # noqa: ANN001 - Settings
    engine = make_engine(settings.database_url)
    try:
        with engine.connect() as connection:
            return dict(connection.execute(sqlalchemy.text(
                "SELECT partition, owner FROM partition_leases WHERE grp = :g AND owner IS NOT NULL "
                "AND expires_at > now()"), {"g": f"notifier:{settings.topic_events}"}).all())
    finally:
        engine.dispose()


def owner_pids(settings) -> set[int]:  # noqa: ANN001
    return {int(owner.split("-")[-2]) for owner in owners(settings).values()}


def manual_payouts_at_the_operator(settings, payees: list[str], webhooks) -> tuple[dict[str, str], object]:  # noqa: ANN001
    """A manual payout requested for each payee (each with a webhook contact), made by the transfer processor
    (at the operator now); returns payee -> payout id, and the book."""
    requested = {e.payee_id: e.payload["payout_id"] for e in request_payouts(settings, {p: ("manual", "") for p in payees})}
    for payee in payees:
        set_contact(settings.database_url, payee, email=None, webhook_url=f"{webhooks.url}/{payee}", actor="t")
    with sequencer_running(settings), processor_running(settings):
        wait_until(lambda: {p.status.value for p in book_of(settings).payouts.values()} == {"at_provider"}, 60,
                   "manual payouts at the operator")
    return requested, book_of(settings)


def start_notifier(env: dict[str, str], tmp_path, name: str, logs: list) -> subprocess.Popen:  # noqa: ANN001
    """`ledger notifier --partitioned` with its output in <name>.log (the file is added to `logs` to close)."""
    log = open(tmp_path / f"{name}.log", "a")  # noqa: SIM115 - closed when the test ends
    logs.append(log)
    return subprocess.Popen([LEDGER, "notifier", "--partitioned"], env=env, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)


def logs_of(tmp_path) -> str:  # noqa: ANN001
    return "\n".join(f"--- {path.name}\n{path.read_text()[-3000:]}" for path in sorted(tmp_path.glob("*.log")))


@pytest.mark.faults
def test_a_killed_notifiers_partitions_move_and_every_outcome_is_notified_once(settings, receiver, tmp_path):
    partitions = settings.partitions_events
    payees: list[str] = []
    index = 0
    while len(payees) < 4 * partitions:  # four payees in every partition
        name = f"np-{index}"
        if sum(partition_for(p.encode(), partitions) == partition_for(name.encode(), partitions) for p in payees) < 4:
            payees.append(name)
        index += 1
    requested, book = manual_payouts_at_the_operator(settings, payees, receiver)
    now = datetime.now(timezone.utc)
    env = env_for(settings, tmp_path, LEDGER_PARTITION_LEASE_S=str(LEASE_S), LEDGER_NOTIFY_WEBHOOK_SECRET=SECRET)
    logs = []

    def start(name: str) -> subprocess.Popen:
        return start_notifier(env, tmp_path, name, logs)

    def output() -> str:
        return logs_of(tmp_path)

    first, second = start("a"), start("b")
    try:
        wait_until(lambda: owner_pids(settings) == {first.pid, second.pid} and len(owners(settings)) == partitions,
                   60, f"both notifiers own partitions\n{output()}")
        half = len(payees) // 2
        chain(settings, [records.settled(book.get(requested[p]), 1, "manual", f"r-{p}", now) for p in payees[:half]])
        wait_until(lambda: len(rows(settings)) >= 1, 60, f"notices recorded\n{output()}")
        first.send_signal(signal.SIGKILL)  # mid-flow: some of its notices recorded, some perhaps not yet
        first.wait(10)
        chain(settings, [records.settled(book.get(requested[p]), 1, "manual", f"r-{p}", now) for p in payees[half:]])
        wait_until(lambda: owner_pids(settings) == {second.pid} and len(owners(settings)) == partitions,
                   LEASE_S + 10, f"the survivor takes every partition\n{output()}")
        wait_until(lambda: len(rows(settings)) == len(payees) and all_done(settings), 60,
                   f"every notice recorded and delivered\n{output()}")
    finally:
        for process in (first, second):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(30)
        for log in logs:
            log.close()
    found = rows(settings)
    assert sorted(row["payee_id"] for row in found) == sorted(payees)  # one notice per outcome, none missed
    assert all(row["status"] == "sent" and row["channel"] == "webhook" for row in found)
    delivered = {request["delivery"] for request in receiver.requests if request["verified"]}
    assert delivered == {f"notification-{row['id']}" for row in found}
    assert second.returncode == 0, output()


@pytest.mark.faults
def test_a_notifier_paused_past_its_lease_records_nothing_for_the_partitions_it_lost(settings, receiver, tmp_path):
    """Frozen (SIGSTOP) after reading a batch and before recording its notices; the other instance takes every
    partition over and records them; resumed, the frozen one tries to record nothing (every attempted insert
    into the outbox is audited with the writing process's name), and every outcome has one notice."""
    partitions = settings.partitions_events
    payees = [f"ns-{index}" for index in range(4 * partitions)]
    marked = payees[0]
    requested, book = manual_payouts_at_the_operator(settings, payees, receiver)
    engine = make_engine(settings.database_url)
    with engine.begin() as connection:  # BEFORE INSERT: fires for every row tried, ON CONFLICT DO NOTHING or not
        connection.execute(sqlalchemy.text(
            "CREATE TABLE notifier_write_audit (app text, event_id text, at timestamptz DEFAULT clock_timestamp())"))
        connection.execute(sqlalchemy.text(
            "CREATE FUNCTION notifier_write_audit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "INSERT INTO notifier_write_audit (app, event_id) VALUES (current_setting('application_name'), "
            "NEW.event_id); RETURN NEW; END $$"))
        connection.execute(sqlalchemy.text(
            "CREATE TRIGGER notifier_write_audit BEFORE INSERT ON payee_notifications "
            "FOR EACH ROW EXECUTE FUNCTION notifier_write_audit()"))
    env = env_for(settings, tmp_path, LEDGER_PARTITION_LEASE_S=str(LEASE_S), LEDGER_NOTIFY_WEBHOOK_SECRET=SECRET)
    logs = []

    def start(name: str, **more: str) -> subprocess.Popen:
        return start_notifier({**env, "PGAPPNAME": name, **more}, tmp_path, name, logs)

    def output() -> str:
        return logs_of(tmp_path)

    def stopped(process: subprocess.Popen) -> bool:
        return open(f"/proc/{process.pid}/stat").read().split(") ")[1][0] == "T"

    frozen = start("notifier-frozen", LEDGER_FAULT_PAUSE=f"r-{marked}")  # in the marked payee's PayoutSettled only
    other = None
    try:
        wait_until(lambda: owner_pids(settings) == {frozen.pid} and len(owners(settings)) == partitions, 60,
                   "the first notifier owns every partition")
        now = datetime.now(timezone.utc)
        chain(settings, [records.settled(book.get(requested[p]), 1, "manual", f"r-{p}", now) for p in payees])
        wait_until(lambda: stopped(frozen), 60, "the first notifier froze on the marked payee's outcome", every_s=0.1)
        other = start("notifier-other")
        wait_until(lambda: owner_pids(settings) == {other.pid} and len(owners(settings)) == partitions,
                   LEASE_S + 20, "the other notifier takes every partition over", every_s=0.1)
        wait_until(lambda: len(rows(settings)) == len(payees) and all_done(settings), 60,
                   "every notice recorded and delivered by the other")
        with engine.connect() as connection:
            resumed_at = connection.execute(sqlalchemy.text("SELECT clock_timestamp()")).scalar()
        frozen.send_signal(signal.SIGCONT)
        wait_until(lambda: "the batch was not recorded" in output(), 30, "the resumed notifier finds its lease lost")
        wait_until(lambda: owner_pids(settings) == {frozen.pid, other.pid}, 60, "the resumed notifier rejoins")
    except AssertionError as failure:
        raise AssertionError(f"{failure}\n{output()}") from None
    finally:
        for process in (frozen, other):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGCONT)
                process.send_signal(signal.SIGTERM)
                process.wait(30)
        for log in logs:
            log.close()
    with engine.connect() as connection:
        late = connection.execute(sqlalchemy.text(
            "SELECT event_id FROM notifier_write_audit WHERE app = 'notifier-frozen' AND at >= :t"),
            {"t": resumed_at}).scalars().all()
        by_other = connection.execute(sqlalchemy.text(
            "SELECT count(*) FROM notifier_write_audit WHERE app = 'notifier-other'")).scalar()
    engine.dispose()
    assert late == [], f"the resumed notifier tried to record {len(late)} notices after it lost its partitions"
    assert by_other >= 1  # the audit sees the instances' writes
    found = rows(settings)
    assert sorted(row["payee_id"] for row in found) == sorted(payees)
    assert all(row["status"] == "sent" for row in found)
