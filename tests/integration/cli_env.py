"""Running the `ledger` console script in tests: its path, and environments pointing at test services."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from runtime.settings import Settings

LEDGER = str(Path(sys.executable).with_name("ledger"))


def clean_env(**overrides: str) -> dict[str, str]:
    """This process's environment without any LEDGER_* variable, plus `overrides`."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("LEDGER_")}
    env.update(overrides)
    return env


def env_for(settings: Settings, data_dir: Path, **overrides: str) -> dict[str, str]:
    """An environment in which `ledger` uses the test's broker, database and topics."""
    return clean_env(**{
        "LEDGER_KAFKA_BOOTSTRAP": settings.kafka_bootstrap or "", "LEDGER_DATABASE_URL": settings.database_url or "",
        "LEDGER_TOPIC_INCOMING": settings.topic_incoming, "LEDGER_TOPIC_EVENTS": settings.topic_events,
        "LEDGER_TOPIC_DLQ": settings.topic_dlq, "LEDGER_TOPIC_COMMANDS": settings.topic_commands,
        "LEDGER_TOPIC_CLOCK": settings.topic_clock,
        "LEDGER_DATA_DIR": str(data_dir), **overrides,
    })
