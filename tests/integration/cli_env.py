"""Running the `ledger` console script in tests: its path, and environments pointing at test services."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from runtime.processes import free_port
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


def run_ledger(env: dict[str, str], *args: str, check: bool = True, timeout_s: float = 180) -> subprocess.CompletedProcess[str]:
    """`ledger ARGS` in a subprocess with no stdin; with check, a non-zero exit fails the test with its output."""
    result = subprocess.run([LEDGER, *args], env=env, capture_output=True, text=True, timeout=timeout_s,
                            stdin=subprocess.DEVNULL)
    if check and result.returncode != 0:
        raise AssertionError(f"ledger {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def run_ledger_json(env: dict[str, str], *args: str) -> dict:
    return json.loads(run_ledger(env, *args, "--json").stdout)


def embedded_stack_env(data_dir: Path) -> dict[str, str]:
    """Environment for an embedded stack of a test's own: its own data dir and free ports."""
    return clean_env(LEDGER_DATA_DIR=str(data_dir), LEDGER_EMBEDDED_KAFKA_PORT=str(free_port()),
                     LEDGER_EMBEDDED_POSTGRES_PORT=str(free_port()))
