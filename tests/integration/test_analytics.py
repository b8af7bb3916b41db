"""Analyst views, the read-only ledger_analyst role and `ledger report payouts`, on the real stack.

One ledger is built and projected for the module (history() from test_projector, plus a card payee with
a fee and a deduction, an XOF payee, and the closes that follow: a carried late payment, a carried bonus,
the failed payout paid again). Tests only read it, or change rows inside a transaction they roll back.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import uuid
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Iterator

import pytest
import sqlalchemy

from ledger.codec import EventCodec
from ledger.money import Money
from processors.ledger_client import LedgerClient
from processors.payout_run import fold_ledger, plan_run, send_commands
from projections.verify import verify
from runtime.database import alembic_config, current_revision, make_engine, run_migrations, with_search_path
from runtime.kafka_admin import ensure_topics
from runtime.plans import plan_book
from runtime.settings import Settings
from tests.integration.cli_env import LEDGER, clean_env, env_for
from tests.integration.sequencing_helpers import ledger_events
from tests.integration.test_migrations import migrations_head
from tests.integration.test_projector import history, project
from tests.integration.transfer_helpers import TWO_DAYS_AGO, sequencer_running, wait_until

ROLE = "ledger_analyst"
GRANTED_TABLES = {"payees", "payee_balances", "earnings", "payout_periods", "payouts", "payout_attempts",
                  "dead_letters", "daily_totals_by_partition", "projection_heads", "projection_positions",
                  "alerts"}  # migration 0005: alerts, not their deliveries (operators' addresses)
VIEWS = {"v_earnings_by_payee_month", "v_payout_failure_rate", "v_pending_payouts_by_age",
         "v_fees_and_commission_by_period", "v_daily_totals",
         "daily_totals"}  # migration 0013: the sum of daily_totals_by_partition
TERMINAL = ("settled", "failed", "cancelled")


@dataclass
class Projected:
    settings: Settings
    requested: dict[str, str]  # history(): payee -> its first payout id
    closes: list  # extend_history(): the close events chained


def extend_history(settings: Settings) -> list:
    """A card payee (fee 0.25% + 0.25, a deduction), an XOF payee, then every close due now; returns the closes."""
    with sequencer_running(settings):
        with LedgerClient(settings.kafka_bootstrap, settings) as client:
            client.set_schedule("h-card", frequency="DAILY", cutoff_time="23:59", timezone="UTC", plan="flat-80",
                                method="stripe_standard", destination="acct_1")
            client.set_schedule("h-xof", frequency="DAILY", cutoff_time="23:59", timezone="UTC", plan="flat-80",
                                method="mobile_money", destination="+221770000000")
            result = client.record_batch([
                {"payment_id": "card-1", "payee_id": "h-card", "amount_minor": 10_001, "currency": "USD",
                 "occurred_at": TWO_DAYS_AGO.isoformat()},
                {"type": "adjustment", "adjustment_id": "adj-2", "kind": "DEDUCTION", "name": "equipment",
                 "payee_id": "h-card", "amount_minor": 100, "currency": "USD", "occurred_at": TWO_DAYS_AGO.isoformat()},
                {"payment_id": "xof-1", "payee_id": "h-xof", "amount_minor": 40_000, "currency": "XOF",
                 "occurred_at": TWO_DAYS_AGO.isoformat()},
            ])
            assert result.rejected == []
        wait_until(lambda: sum(e.payee_id in ("h-card", "h-xof") for e, _ in ledger_events(settings)) == 5, 30,
                   "schedules, payments and the deduction chained")
        codec = EventCodec()
        plan = plan_run(fold_ledger(settings.kafka_bootstrap, settings.topic_events, codec).values(),
                        datetime.now(timezone.utc), plan_book(settings), settings.payout_policy())
        send_commands(settings.kafka_bootstrap, settings.topic_commands, plan.closes, codec)
        close_ids = {event.envelope.event_id for event in plan.closes}
        wait_until(lambda: close_ids <= {e.envelope.event_id for e, _ in ledger_events(settings)}, 30, "closes chained")
    assert sorted((e.payee_id, e.event_type) for e in plan.closes) == [
        ("h-card", "PayoutRequested"), ("h-failed", "PayoutRequested"), ("h-open", "BalanceCarried"),
        ("h-paid", "BalanceCarried"), ("h-xof", "PayoutRequested")]
    return plan.closes


@pytest.fixture(scope="module")
def projected(kafka_bootstrap: str, postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Projected]:
    """The module's ledger in its own schema and topics (as conftest's `settings`), projected and verified."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    engine = make_engine(postgres_url)
    with engine.begin() as connection:
        connection.execute(sqlalchemy.text(f'CREATE SCHEMA "{schema}"'))
    try:
        url = with_search_path(postgres_url, schema)
        run_migrations(url)
        suffix = uuid.uuid4().hex[:10]
        settings = Settings(
            kafka_bootstrap=kafka_bootstrap, database_url=url,
            data_dir=tmp_path_factory.mktemp("analytics") / ".ledger",
            topic_incoming=f"payments.incoming.{suffix}", topic_events=f"ledger.events.{suffix}",
            topic_dlq=f"ledger.dlq.{suffix}", topic_commands=f"ledger.commands.{suffix}",
            topic_clock=f"ledger.clock.{suffix}")
        ensure_topics(kafka_bootstrap, settings.topic_specs())
        requested = history(settings)
        closes = extend_history(settings)
        project(settings)
        report = verify(settings, kafka_bootstrap, url)
        assert report.ok, report.differences  # the tables the views read are the ledger's
        yield Projected(settings, requested, closes)
    finally:
        with engine.begin() as connection:
            connection.execute(sqlalchemy.text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()


def query(url: str, sql: str, **parameters) -> list[dict]:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return [dict(row) for row in connection.execute(sqlalchemy.text(sql), parameters).mappings()]
    finally:
        engine.dispose()


def payout_of(projected: Projected, payee: str, **where) -> dict:
    (row,) = [r for r in query(projected.settings.database_url, "SELECT * FROM payouts WHERE payee_id = :p", p=payee)
              if all(r[k] == v for k, v in where.items())]
    return row


def repaid(projected: Projected) -> dict:
    """h-failed's second payout: its failed money paid again at the next close."""
    return payout_of(projected, "h-failed", status="requested")


# --- the views --------------------------------------------------------------------------------------

def test_earnings_by_payee_month(projected):
    month = date(TWO_DAYS_AGO.year, TWO_DAYS_AGO.month, 1)
    got = {r["payee_id"]: r for r in query(projected.settings.database_url, "SELECT * FROM v_earnings_by_payee_month")}
    columns = ("currency", "exponent", "month", "payments", "gross_minor", "refunds", "refunds_minor",
               "adjustments_minor", "net_minor")
    assert {payee: tuple(row[c] for c in columns) for payee, row in got.items()} == {
        "h-paid": ("USD", 2, month, 1, 5_000, 0, 0, 500, 5_500),  # + a 5.00 bonus
        "h-failed": ("USD", 2, month, 1, 5_000, 0, 0, 0, 5_000),
        "h-open": ("USD", 2, month, 2, 6_234, 1, 234, 0, 6_000),  # 12.34 paid late, 2.34 refunded
        "h-card": ("USD", 2, month, 1, 10_001, 0, 0, -100, 9_901),  # - a 1.00 deduction
        "h-xof": ("XOF", 0, month, 1, 40_000, 0, 0, 0, 40_000),
    }
    (per_currency,) = query(projected.settings.database_url, """
        SELECT sum(signed_amount_minor) FILTER (WHERE currency = 'USD') AS usd,
               sum(signed_amount_minor) FILTER (WHERE currency = 'XOF') AS xof FROM earnings""")
    assert per_currency == {"usd": 26_401, "xof": 40_000}


def test_payout_failure_rate(projected):
    rows = query(projected.settings.database_url, "SELECT * FROM v_payout_failure_rate ORDER BY reason_code")
    columns = ("provider", "method", "reason_code", "attempts", "failed_attempts", "final_failures",
               "provider_attempts", "failure_rate")
    assert [tuple(r[c] for c in columns) for r in rows] == [
        ("manual", "manual", "", 2, 0, 0, 3, Decimal("0.000000")),  # one settled, one at the operator
        ("manual", "manual", "account_closed", 1, 1, 1, 3, Decimal("0.333333")),
    ]
    assert all(isinstance(r["failure_rate"], Decimal) for r in rows)  # numeric, not float
    (failed,) = query(projected.settings.database_url,
                      "SELECT count(*) AS n FROM payouts WHERE status = 'failed' AND attempts > 0")
    assert sum(r["final_failures"] for r in rows) == failed["n"] == 1


def _bucket(age: timedelta) -> str:
    hours = age / timedelta(hours=1)
    return "<1h" if hours < 1 else "1-24h" if hours < 24 else "1-7d" if hours < 24 * 7 else ">7d"


def test_pending_payouts_by_age(projected):
    url = projected.settings.database_url
    engine = make_engine(url)
    try:
        with engine.connect() as connection, connection.begin() as transaction:
            now = connection.execute(sqlalchemy.text("SELECT now()")).scalar_one()  # now() is fixed per transaction

            def view() -> dict:
                return {(r["currency"], r["age_bucket"]): (r["payouts"], r["net_minor"]) for r in connection.execute(
                    sqlalchemy.text("SELECT * FROM v_pending_payouts_by_age")).mappings()}

            pending = [r for r in connection.execute(sqlalchemy.text("SELECT * FROM payouts")).mappings()
                       if r["status"] not in TERMINAL]
            assert sorted((r["payee_id"], r["status"], r["net_minor"]) for r in pending) == [
                ("h-card", "requested", 7_851), ("h-failed", "requested", 4_000), ("h-open", "at_provider", 4_000),
                ("h-xof", "requested", 32_000)]
            expected: dict = {}
            for r in pending:
                key = (r["currency"], _bucket(now - r["requested_at"]))
                count, total = expected.get(key, (0, 0))
                expected[key] = (count + 1, total + r["net_minor"])
            assert view() == expected
            assert sum(v[1] for k, v in view().items() if k[0] == "USD") == 15_851

            # the bucket edges, on rows moved in time (rolled back): [0, 1h) [1h, 24h) [24h, 7d) [7d, ...)
            for payee, status, age in (("h-open", "at_provider", "59 minutes 59.999999 seconds"),
                                       ("h-card", "requested", "1 hour"), ("h-paid", "retry_wait", "6 days 23:59:59"),
                                       ("h-xof", "requested", "24 hours")):
                connection.execute(sqlalchemy.text(
                    "UPDATE payouts SET status = :s, requested_at = now() - CAST(:age AS interval) "
                    "WHERE payee_id = :p AND status <> 'failed'"), {"s": status, "age": age, "p": payee})
            connection.execute(sqlalchemy.text(
                "UPDATE payouts SET requested_at = now() - interval '7 days' WHERE payee_id = 'h-failed' "
                "AND status = 'requested'"))
            assert view() == {("USD", "<1h"): (1, 4_000), ("USD", "1-24h"): (1, 7_851), ("USD", "1-7d"): (1, 4_000),
                              ("USD", ">7d"): (1, 4_000), ("XOF", "1-7d"): (1, 32_000)}
            connection.execute(sqlalchemy.text("UPDATE payouts SET status = 'cancelled' WHERE payee_id = 'h-xof'"))
            assert ("XOF", "1-7d") not in view()
            transaction.rollback()
    finally:
        engine.dispose()


def test_fees_and_commission_by_period(projected):
    first = payout_of(projected, "h-card")["period_id"]
    second = repaid(projected)["period_id"]
    assert first != second
    rows = query(projected.settings.database_url, "SELECT * FROM v_fees_and_commission_by_period")
    columns = ("closes", "payouts", "carried", "gross_minor", "payee_share_minor", "commission_minor", "fee_minor",
               "deductions_minor", "net_minor", "payout_net_minor")
    assert {(r["period_id"], r["currency"], r["exponent"]): tuple(r[c] for c in columns) for r in rows} == {
        # h-paid, h-failed, h-open 50.00 each at 80%; h-card 100.01 -> 80.01, fee 0.25 + 0.25%, 1.00 deducted
        (first, "USD", 2): (4, 4, 0, 25_001, 20_001, 5_000, 50, 100, 19_851, 19_851),
        (first, "XOF", 0): (1, 1, 0, 40_000, 32_000, 8_000, 0, 0, 32_000, 32_000),
        # h-open's late 10.00 and h-paid's 5.00 bonus carry (below 25.00); h-failed's 40.00 is paid again
        (second, "USD", 2): (3, 1, 2, 1_000, 800, 200, 0, -500, 1_300, 4_000),
    }
    card = payout_of(projected, "h-card")
    assert (card["gross_minor"], card["payee_share_minor"], card["fee_minor"], card["net_minor"]) == (
        10_001, 8_001, 50, 7_851)


def test_daily_totals_with_exact_major_amounts(projected):
    url = projected.settings.database_url
    table = {(r["day"], r["currency"]): r for r in query(url, "SELECT * FROM daily_totals")}
    view = {(r["day"], r["currency"]): r for r in query(url, "SELECT * FROM v_daily_totals")}
    assert view.keys() == table.keys() and len(view) >= 2
    for key, row in view.items():
        for column, value in table[key].items():
            assert row[column] == value
            if column.endswith("_minor"):
                assert row[column.replace("_minor", "_major")] == Money.of(value, key[1]).to_major_string()
    usd = {c: sum(r[c] for k, r in table.items() if k[1] == "USD") for c in next(iter(table.values())) if c.endswith(
        ("_minor", "payments", "refunds", "requested", "settled", "failed"))}
    assert usd == {"payments": 5, "payments_minor": 26_235, "refunds": 1, "refunds_minor": 234,
                   "adjustments_minor": 400, "payouts_requested": 5, "payouts_requested_minor": 23_851,
                   "payouts_settled": 1, "payouts_settled_minor": 4_000, "payouts_failed": 1,
                   "payouts_failed_minor": 4_000, "fees_minor": 50}
    (xof,) = [r for k, r in view.items() if k[1] == "XOF"]
    assert (xof["payments_major"], xof["payouts_requested_major"], xof["fees_major"]) == ("40000", "32000", "0")


@pytest.mark.parametrize(("minor", "code"), [
    (0, "USD"), (5, "USD"), (-5, "USD"), (-123_456, "USD"), (100, "USD"), (9_223_372_036_854_775_807, "USD"),
    (-9_223_372_036_854_775_807, "USD"), (24_000, "XOF"), (-1, "XOF"), (1_250, "BHD"), (-7, "BHD"), (1, "JPY"),
])
def test_minor_to_major_is_the_ledgers_exact_conversion(db_url, minor, code):
    money = Money.of(minor, code)
    (row,) = query(db_url, "SELECT minor_to_major(:m, :e) AS major", m=minor, e=money.currency.exponent)
    assert row["major"] == money.to_major_string()


# --- the analyst role -------------------------------------------------------------------------------

def _as_analyst(url: str, sql: str) -> list:
    engine = make_engine(url)
    try:
        with engine.connect() as connection, connection.begin() as transaction:
            connection.execute(sqlalchemy.text(f"SET LOCAL ROLE {ROLE}"))
            try:
                return list(connection.execute(sqlalchemy.text(sql)))
            finally:
                transaction.rollback()
    finally:
        engine.dispose()


def test_analyst_role_reads_exactly_the_read_models_and_views(db_url):
    (role,) = query(db_url, "SELECT rolcanlogin, rolsuper, rolcreaterole FROM pg_roles WHERE rolname = :r", r=ROLE)
    assert role == {"rolcanlogin": False, "rolsuper": False, "rolcreaterole": False}
    for relation in sorted(GRANTED_TABLES | VIEWS):
        assert _as_analyst(db_url, f"SELECT count(*) FROM {relation}") == [(0,)], relation
    privileges = query(db_url, """
        SELECT c.relname, p.privilege
        FROM pg_class c,
             unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'REFERENCES', 'TRIGGER']) AS p(privilege)
        WHERE c.relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = current_schema())
          AND c.relkind IN ('r', 'v', 'm', 'p')
          AND has_table_privilege(:r, c.oid, p.privilege)""", r=ROLE)
    assert {(p["relname"], p["privilege"]) for p in privileges} == {(name, "SELECT") for name in GRANTED_TABLES | VIEWS}


@pytest.mark.parametrize("statement", [
    "INSERT INTO payouts (payout_id) VALUES ('x')",
    "UPDATE payouts SET status = 'settled'",
    "DELETE FROM earnings",
    "TRUNCATE daily_totals_by_partition",
    "DELETE FROM daily_totals_by_partition",
    "UPDATE projection_heads SET last_sequence = 0",
    "SELECT * FROM payout_controls",
    "SELECT * FROM payout_control_history",
    "INSERT INTO payout_control_history (paused, reason, actor) VALUES (true, 'x', 'analyst')",
    "UPDATE payout_controls SET paused = false",
    "SELECT * FROM event_archive",
    "CREATE TABLE analyst_scratch (id int)",
])
def test_analyst_role_is_refused_writes_and_operations_tables(db_url, statement):
    with pytest.raises(sqlalchemy.exc.ProgrammingError, match="permission denied"):
        _as_analyst(db_url, statement)


@pytest.mark.parametrize("statement", ["DELETE FROM daily_totals", "DELETE FROM v_daily_totals"])
def test_the_daily_totals_views_cannot_be_written(db_url, statement):
    with pytest.raises(sqlalchemy.exc.DBAPIError, match="cannot delete from view"):
        _as_analyst(db_url, statement)


def test_downgrade_drops_the_views_and_grants_but_keeps_the_shared_role(unmigrated_db_url):
    from alembic import command

    url = unmigrated_db_url

    def state() -> dict:
        (row,) = query(url, """
            SELECT to_regclass('v_daily_totals') IS NOT NULL AS views,
                   to_regprocedure('minor_to_major(bigint, integer)') IS NOT NULL AS function,
                   has_schema_privilege(:r, current_schema(), 'USAGE') AS usage,
                   EXISTS (SELECT FROM pg_roles WHERE rolname = :r) AS role""", r=ROLE)
        return row

    assert run_migrations(url) == migrations_head()
    assert state() == {"views": True, "function": True, "usage": True, "role": True}
    command.downgrade(alembic_config(url), "0003")
    assert current_revision(url) == "0003"
    assert state() == {"views": False, "function": False, "usage": False, "role": True}
    assert run_migrations(url) == migrations_head()  # the role exists now: creating it again is skipped, not an error
    assert state() == {"views": True, "function": True, "usage": True, "role": True}


DAILY_COUNTS = ("payments", "payments_minor", "refunds", "refunds_minor", "adjustments_minor", "payouts_requested",
                "payouts_requested_minor", "payouts_settled", "payouts_settled_minor", "payouts_failed",
                "payouts_failed_minor", "fees_minor")


def test_the_daily_totals_go_per_partition_and_come_back_summed(unmigrated_db_url):
    """Upgrading to 0013 empties the totals (sums over every partition cannot be split) with the projector's heads,
    checkpoints and stored payouts, so its next start writes every row again; downgrading sums the partitions."""
    from alembic import command

    url, counts = unmigrated_db_url, ", ".join(DAILY_COUNTS)
    command.upgrade(alembic_config(url), "0012")
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(sqlalchemy.text(
                f"INSERT INTO daily_totals (day, currency, exponent, {counts}) "
                f"VALUES ('2026-11-20', 'USD', 2, {', '.join(['7'] * len(DAILY_COUNTS))})"))
            connection.execute(sqlalchemy.text("INSERT INTO projection_heads (payee_id, last_sequence, last_event_id, "
                                               "last_hash) VALUES ('p-1', 4, 'e-4', 'h')"))
            for processor in ("projector:read-models", "projector:read-models:p1", "sequencer"):
                connection.execute(sqlalchemy.text(
                    "INSERT INTO processor_checkpoints (processor, format, positions, proofs, state, state_sha256, "
                    "events, written_at) VALUES (:p, 1, '{}', '{}', '', '', 0, now())"), {"p": processor})
                connection.execute(sqlalchemy.text("INSERT INTO processor_entities (processor, kind, key, state) "
                                                   "VALUES (:p, 'payout', 'po-1', '')"), {"p": processor})
        assert run_migrations(url) == migrations_head()
        assert query(url, "SELECT count(*) AS n FROM daily_totals_by_partition") == [{"n": 0}]
        assert query(url, "SELECT count(*) AS n FROM projection_heads") == [{"n": 0}]
        assert query(url, "SELECT processor FROM processor_checkpoints") == [{"processor": "sequencer"}]
        assert query(url, "SELECT processor FROM processor_entities") == [{"processor": "sequencer"}]

        with engine.begin() as connection:
            for partition, (payments, fees) in enumerate([(2, 50), (3, 25)]):
                values = {column: 0 for column in DAILY_COUNTS} | {"payments": payments, "fees_minor": fees}
                connection.execute(sqlalchemy.text(
                    f"INSERT INTO daily_totals_by_partition (day, currency, partition, exponent, {counts}) "
                    f"VALUES ('2026-11-20', 'USD', :partition, 2, {', '.join(':' + c for c in DAILY_COUNTS)})"),
                    {"partition": partition, **values})
        assert query(url, "SELECT payments, fees_minor FROM v_daily_totals") == [{"payments": 5, "fees_minor": 75}]
        command.downgrade(alembic_config(url), "0012")
        assert query(url, "SELECT day, currency, exponent, payments, fees_minor FROM daily_totals") == [
            {"day": date(2026, 11, 20), "currency": "USD", "exponent": 2, "payments": 5, "fees_minor": 75}]
        assert query(url, "SELECT payments_major, fees_major FROM v_daily_totals") == [
            {"payments_major": "0.00", "fees_major": "0.75"}]
    finally:
        engine.dispose()


def test_a_migrating_user_who_may_not_create_roles_is_told_what_to_do(db_url):
    import importlib.util

    from runtime.database import MIGRATIONS_DIR

    path = MIGRATIONS_DIR / "versions" / "0004_analyst_views.py"
    spec = importlib.util.spec_from_file_location("analyst_views", path)
    migration = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(migration)
    block = migration.CREATE_ROLE.replace(ROLE, "ledger_analyst_missing")  # a role that does not exist yet
    engine = make_engine(db_url)
    try:
        with engine.connect() as connection, connection.begin() as transaction:
            connection.execute(sqlalchemy.text("CREATE ROLE migrator_without_createrole NOLOGIN"))
            connection.execute(sqlalchemy.text("SET LOCAL ROLE migrator_without_createrole"))
            told = 'may not create roles: a DBA must run "CREATE ROLE ledger_analyst_missing NOLOGIN"'
            with pytest.raises(sqlalchemy.exc.DatabaseError, match=told):
                connection.execute(sqlalchemy.text(block))
            transaction.rollback()  # the probe role goes with it
    finally:
        engine.dispose()


# --- ledger report payouts ---------------------------------------------------------------------------

def _report(projected: Projected, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([LEDGER, "report", "payouts", *args], env=env_for(projected.settings, tmp_path),
                          capture_output=True, text=True, timeout=60)


def _days(projected: Projected) -> tuple[str, str, str, str]:
    """The day before the first payouts, their day, the next (h-failed paid again) and the one after."""
    first = payout_of(projected, "h-card")["requested_at"].astimezone(timezone.utc).date()
    assert repaid(projected)["requested_at"].astimezone(timezone.utc).date() == first + timedelta(days=1)
    return tuple((first + timedelta(days=n)).isoformat() for n in (-1, 0, 1, 2))


TOTALS = [
    {"currency": "USD", "exponent": 2, "status": "at_provider", "payouts": 1, "gross_minor": 5_000, "gross": "50.00",
     "fee_minor": 0, "fee": "0.00", "net_minor": 4_000, "net": "40.00"},
    {"currency": "USD", "exponent": 2, "status": "failed", "payouts": 1, "gross_minor": 5_000, "gross": "50.00",
     "fee_minor": 0, "fee": "0.00", "net_minor": 4_000, "net": "40.00"},
    {"currency": "USD", "exponent": 2, "status": "requested", "payouts": 2, "gross_minor": 10_001, "gross": "100.01",
     "fee_minor": 50, "fee": "0.50", "net_minor": 11_851, "net": "118.51"},
    {"currency": "USD", "exponent": 2, "status": "settled", "payouts": 1, "gross_minor": 5_000, "gross": "50.00",
     "fee_minor": 0, "fee": "0.00", "net_minor": 4_000, "net": "40.00"},
    {"currency": "XOF", "exponent": 0, "status": "requested", "payouts": 1, "gross_minor": 40_000, "gross": "40000",
     "fee_minor": 0, "fee": "0", "net_minor": 32_000, "net": "32000"},
]


def test_report_payouts_json(projected, tmp_path):
    before, first, second, after = _days(projected)
    result = _report(projected, tmp_path, "--from", first, "--to", after, "--format", "json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report) == {"payouts", "totals"}
    assert report["totals"] == TOTALS
    by_payee = {(p["payee_id"], p["status"]): p for p in report["payouts"]}
    assert len(report["payouts"]) == len(by_payee) == 6
    paid = payout_of(projected, "h-paid")
    assert by_payee[("h-paid", "settled")] == {
        "payout_id": projected.requested["h-paid"], "payee_id": "h-paid", "period_id": paid["period_id"],
        "method": "manual", "provider": "manual", "provider_reference": "receipt-1", "status": "settled",
        "reversed": False, "currency": "USD", "exponent": 2, "gross_minor": 5_000, "gross": "50.00", "fee_minor": 0,
        "fee": "0.00", "net_minor": 4_000, "net": "40.00", "attempts": 1, "reason_code": "",
        "requested_at": paid["requested_at"].astimezone(timezone.utc).isoformat(),
        "finished_at": paid["finished_at"].astimezone(timezone.utc).isoformat()}
    card = by_payee[("h-card", "requested")]
    assert (card["method"], card["provider"], card["attempts"], card["finished_at"]) == ("stripe_standard", "", 0, None)
    assert (card["gross"], card["fee"], card["net"]) == ("100.01", "0.50", "78.51")
    assert by_payee[("h-failed", "failed")]["reason_code"] == "account_closed"
    assert (by_payee[("h-xof", "requested")]["net"], by_payee[("h-xof", "requested")]["exponent"]) == ("32000", 0)
    instants = [p["requested_at"] for p in report["payouts"]]
    assert instants == sorted(instants)  # oldest request first

    # [from, to) is half-open: the second day alone holds the repaid payout; the day before holds nothing
    only_second = json.loads(_report(projected, tmp_path, "--from", second, "--to", after, "--format", "json").stdout)
    assert [(p["payee_id"], p["net"]) for p in only_second["payouts"]] == [("h-failed", "40.00")]
    first_day = json.loads(_report(projected, tmp_path, "--from", first, "--to", second, "--format", "json").stdout)
    assert len(first_day["payouts"]) == 5
    empty = json.loads(_report(projected, tmp_path, "--from", before, "--to", first, "--format", "json").stdout)
    assert empty == {"payouts": [], "totals": []}


def test_report_payouts_csv_totals_on_stderr_status_filter_and_output_file(projected, tmp_path):
    _, first, _, after = _days(projected)
    as_json = json.loads(_report(projected, tmp_path, "--from", first, "--to", after, "--format", "json").stdout)
    result = _report(projected, tmp_path, "--from", first, "--to", after)
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    expected = [{k: "" if v is None else json.dumps(v) if isinstance(v, bool) else str(v) for k, v in p.items()}
                for p in as_json["payouts"]]
    assert rows == expected and len(rows) == 6
    assert {r["reversed"] for r in rows} == {"false"} and rows[0]["gross_minor"].isdigit()
    totals = list(csv.DictReader(io.StringIO(result.stderr)))
    assert totals == [{k: str(v) for k, v in t.items()} for t in TOTALS]

    settled = _report(projected, tmp_path, "--from", first, "--to", after, "--status", "settled", "--status", "failed")
    assert sorted((r["payee_id"], r["status"], r["net"]) for r in csv.DictReader(io.StringIO(settled.stdout))) == [
        ("h-failed", "failed", "40.00"), ("h-paid", "settled", "40.00")]
    assert [t["status"] for t in csv.DictReader(io.StringIO(settled.stderr))] == ["failed", "settled"]

    target = tmp_path / "payouts.csv"
    written = _report(projected, tmp_path, "--from", first, "--to", after, "--output", str(target))
    assert written.returncode == 0 and written.stdout == ""
    assert target.read_text(encoding="utf-8") == result.stdout


@pytest.mark.parametrize(("args", "message"), [
    (("--from", "2026-13-01", "--to", "2026-12-01"), "--from '2026-13-01' is not a date"),
    (("--from", "yesterday", "--to", "2026-12-01"), "--from 'yesterday' is not a date"),
    (("--from", "2026-11-01", "--to", "20261201"), "--to '20261201' is not a date"),
    (("--from", "2026-12-02", "--to", "2026-12-01"), "--from 2026-12-02 is not before --to 2026-12-01"),
    (("--from", "2026-12-01", "--to", "2026-12-01"), "--from 2026-12-01 is not before --to 2026-12-01"),
])
def test_report_payouts_refuses_bad_dates_in_one_line(tmp_path, args, message):
    result = subprocess.run([LEDGER, "report", "payouts", *args], env=clean_env(LEDGER_DATA_DIR=str(tmp_path)),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stdout == ""
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def _insert_payout(connection: sqlalchemy.Connection, payout_id: str, requested_at: str, currency: str = "USD",
                   exponent: int = 2, net_minor: int = 1_000, status: str = "requested") -> None:
    connection.execute(sqlalchemy.text("""
        INSERT INTO payouts (payout_id, payee_id, period_id, trigger, plan, method, currency, exponent, gross_minor,
                             services, rate_bp, payee_share_minor, fee_minor, carry_over_minor, net_minor, deductions,
                             payment_count, status, attempts, requested_at, updated_at)
        VALUES (:id, 'p', 'period', 'SCHEDULE', 'flat-80', 'manual', :currency, :exponent, :net, 0, 8000, :net, 0, 0,
                :net, '[]', 1, :status, 0, CAST(:at AS timestamptz), CAST(:at AS timestamptz))"""),
        {"id": payout_id, "currency": currency, "exponent": exponent, "net": net_minor, "status": status,
         "at": requested_at})


def test_report_range_is_half_open_to_the_microsecond(db_url):
    from ledger.guards import InvariantViolation
    from projections.reports import payout_report

    engine = make_engine(db_url)
    with engine.begin() as connection:
        _insert_payout(connection, "before", "2026-10-31T23:59:59.999999Z")
        _insert_payout(connection, "first", "2026-11-01T00:00:00Z", net_minor=-5)
        _insert_payout(connection, "last", "2026-11-01T23:59:59.999999Z", net_minor=1_005)
        _insert_payout(connection, "after", "2026-11-02T00:00:00Z")
    start, end = datetime(2026, 11, 1, tzinfo=timezone.utc), datetime(2026, 11, 2, tzinfo=timezone.utc)
    report = payout_report(db_url, start, end)
    assert [p["payout_id"] for p in report.payouts] == ["first", "last"]
    assert report.payouts[0]["requested_at"] == "2026-11-01T00:00:00+00:00" and report.payouts[0]["net"] == "-0.05"
    assert [(t["payouts"], t["net_minor"], t["net"]) for t in report.totals] == [(2, 1_000, "10.00")]
    assert payout_report(db_url, start, end, ("settled",)).payouts == []

    with engine.begin() as connection:  # a row whose exponent disagrees with ISO 4217 is refused, not rescaled
        _insert_payout(connection, "odd", "2026-11-01T12:00:00Z", exponent=3)
    engine.dispose()
    with pytest.raises(InvariantViolation, match="USD has exponent 2 here but 3"):
        payout_report(db_url, start, end)
