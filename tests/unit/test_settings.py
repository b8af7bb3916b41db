"""Settings come from LEDGER_* variables, validated, with the production topic configuration."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from runtime.settings import Settings


def test_environment_overrides_defaults(monkeypatch):
    monkeypatch.setenv("LEDGER_KAFKA_BOOTSTRAP", "kafka-1:9092,kafka-2:9092")
    monkeypatch.setenv("LEDGER_TOPIC_EVENTS", "acme.ledger.events")
    monkeypatch.setenv("LEDGER_PARTITIONS_EVENTS", "12")
    monkeypatch.setenv("LEDGER_DATABASE_URL", "   ")
    settings = Settings()
    assert settings.kafka_bootstrap == "kafka-1:9092,kafka-2:9092"
    assert settings.database_url is None  # blank means unset: use the embedded database
    events = next(spec for spec in settings.topic_specs() if spec.name == "acme.ledger.events")
    assert events.partitions == 12
    assert events.config["retention.ms"] == "-1"


def test_production_replication_requires_two_in_sync_replicas(monkeypatch):
    monkeypatch.setenv("LEDGER_REPLICATION_FACTOR", "3")
    events = next(spec for spec in Settings().topic_specs() if spec.name == "ledger.events")
    assert events.config["min.insync.replicas"] == "2"


def test_invalid_values_name_the_setting(monkeypatch):
    monkeypatch.setenv("LEDGER_PARTITIONS_EVENTS", "0")
    with pytest.raises(ValidationError, match="partitions_events"):
        Settings()


@pytest.mark.parametrize(("given", "expected"), [
    ("postgresql://u@h:5432/db", "postgresql+psycopg2://u@h:5432/db"),
    ("postgres://u:p@h/db", "postgresql+psycopg2://u:p@h/db"),
    ("postgresql+psycopg2://u@h/db", "postgresql+psycopg2://u@h/db"),
])
def test_database_urls_use_the_installed_driver(monkeypatch, given, expected):
    monkeypatch.setenv("LEDGER_DATABASE_URL", given)
    assert Settings().database_url == expected
