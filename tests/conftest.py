"""Test harness: a real broker and a real PostgreSQL for the session; fresh topics and schema per test.

LEDGER_TEST_KAFKA_BOOTSTRAP / LEDGER_TEST_DATABASE_URL point the tests at running services;
otherwise the embedded broker (Tansu) and embedded PostgreSQL are started, once, and only when a
test asks for them (unit tests start nothing).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Iterator

import pytest
import sqlalchemy

from runtime.database import make_engine, run_migrations, with_search_path
from runtime.embedded_broker import start_broker
from runtime.embedded_postgres import start_postgres, stop_postgres
from runtime.kafka_admin import ensure_topics
from runtime.processes import free_port, stop_pid
from runtime.settings import Settings


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    external = os.environ.get("LEDGER_TEST_KAFKA_BOOTSTRAP")
    if external:
        yield external
        return
    handle = start_broker(tmp_path_factory.mktemp("broker"), free_port())
    yield handle.bootstrap
    stop_pid(handle.pid)


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    external = os.environ.get("LEDGER_TEST_DATABASE_URL")
    if external:
        yield external
        return
    handle = start_postgres(tmp_path_factory.mktemp("postgres") / "pgdata", free_port(), "ledger_test")
    yield handle.url("ledger_test")
    stop_postgres(handle.pgdata)


@pytest.fixture
def unmigrated_db_url(postgres_url: str) -> Iterator[str]:
    """A URL whose connections use a fresh, empty schema (dropped after the test)."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    engine = make_engine(postgres_url)
    with engine.begin() as connection:
        connection.execute(sqlalchemy.text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield with_search_path(postgres_url, schema)
    finally:
        with engine.begin() as connection:
            connection.execute(sqlalchemy.text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()


@pytest.fixture
def db_url(unmigrated_db_url: str) -> str:
    """A fresh schema migrated to the newest revision."""
    run_migrations(unmigrated_db_url)
    return unmigrated_db_url


@pytest.fixture
def settings(kafka_bootstrap: str, db_url: str, tmp_path: Path) -> Settings:
    """Settings pointing at the session's services, with this test's own topics (created)."""
    suffix = uuid.uuid4().hex[:10]
    configured = Settings(
        kafka_bootstrap=kafka_bootstrap,
        database_url=db_url,
        data_dir=tmp_path / ".ledger",
        topic_incoming=f"payments.incoming.{suffix}",
        topic_events=f"ledger.events.{suffix}",
        topic_dlq=f"ledger.dlq.{suffix}",
        topic_commands=f"ledger.commands.{suffix}",
        topic_clock=f"ledger.clock.{suffix}",
    )
    ensure_topics(kafka_bootstrap, configured.topic_specs())
    return configured
