"""`ledger up / status / down` as a user runs them: the console script, in subprocesses."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest
import sqlalchemy

from runtime.database import make_engine
from ledger.codec import EventCodec
from tests.integration.cli_env import LEDGER, embedded_stack_env, env_for, run_ledger, run_ledger_json
from tests.integration.test_migrations import migrations_head
from runtime.kafka_admin import topic_partition_counts
from runtime.processes import pid_is_alive, wait_until

EXIT_NOT_RUNNING = 3


run, run_json = run_ledger, run_ledger_json


@pytest.fixture
def embedded_env(tmp_path: Path):
    """Environment for an embedded stack of this test's own, in a data dir of its own."""
    env = embedded_stack_env(tmp_path / "data")
    yield env
    run(env, "down", "--discard", check=False)  # a teardown: throw away what a test left


def test_help_lists_every_command_with_a_description():
    result = subprocess.run([LEDGER, "--help"], capture_output=True, text=True, check=True)
    for command in ("up", "down", "status", "schemas", "smoke"):
        line = next((l for l in result.stdout.splitlines() if l.strip().startswith(command + " ")), None)
        assert line is not None and len(line.split()) > 2, f"{command} missing or undescribed in:\n{result.stdout}"
        assert "..." not in line, f"description of {command} is cut: {line}"


def test_embedded_stack_lifecycle(embedded_env):
    first = run_json(embedded_env, "up")
    assert first["already_running"] is False

    status = run_json(embedded_env, "status")
    assert status["running"] is True
    assert status["broker"]["embedded"] and status["postgres"]["embedded"]
    assert status["postgres"]["revision"] == migrations_head()
    assert {"payments.incoming", "ledger.events", "ledger.dlq"} <= set(topic_partition_counts(first["kafka_bootstrap"]))

    again = run(embedded_env, "up")
    assert "already running" in again.stdout
    mismatch = run({**embedded_env, "LEDGER_PARTITIONS_EVENTS": "6"}, "up", check=False)
    assert mismatch.returncode == 1
    assert "ledger.events has 3 partitions but the settings say 6" in mismatch.stderr.replace("\n", " ")
    assert run_json(embedded_env, "status")["broker"]["pid"] == status["broker"]["pid"]

    smoke = run_json(embedded_env, "smoke", "--payments", "40", "--seed", "7")
    assert smoke["ok"] and smoke["chain_breaks"] == 0
    assert (smoke["events_appended"], smoke["dead_lettered"]) == (42, 2)  # 40 payments + 2 refunds; 2 malformed
    assert smoke["sequenced_by"] == "this process"

    assert run_json(embedded_env, "down")["stopped"] == ["broker", "postgres"]
    assert not pid_is_alive(status["broker"]["pid"]) and not pid_is_alive(status["postgres"]["pid"])
    stopped = run(embedded_env, "status", check=False)
    assert stopped.returncode == EXIT_NOT_RUNNING

    # PostgreSQL keeps its files across down/up: the archive written by the smoke run is still there.
    restarted = run_json(embedded_env, "up")
    assert restarted["already_running"] is False
    engine = make_engine(restarted["database_url"])
    with engine.connect() as connection:
        assert connection.execute(sqlalchemy.text("SELECT count(*) FROM event_archive")).scalar_one() == 42
    engine.dispose()
    # ... and the new, empty broker's ledger is restored from it, every chain intact, once
    from processors.kafka_io import read_topic
    from tests.integration.sequencing_helpers import chain_breaks

    codec = EventCodec()
    restored = [(codec.decode(r.value), r.value) for r in read_topic(restarted["kafka_bootstrap"], "ledger.events")]
    assert len(restored) == 42 and chain_breaks(restored) == []
    assert run_json(embedded_env, "up")["already_running"] is True
    assert sum(1 for _ in read_topic(restarted["kafka_bootstrap"], "ledger.events")) == 42


def test_up_restarts_only_the_service_that_died(embedded_env):
    run_json(embedded_env, "up")
    before = run_json(embedded_env, "status")
    os.kill(before["broker"]["pid"], signal.SIGKILL)
    assert wait_until(lambda: not pid_is_alive(before["broker"]["pid"]), 10)

    broken = run(embedded_env, "status", "--json", check=False)
    assert broken.returncode == EXIT_NOT_RUNNING
    assert json.loads(broken.stdout)["broker"]["running"] is False

    assert run_json(embedded_env, "up")["already_running"] is False
    after = run_json(embedded_env, "status")
    assert after["running"] is True
    assert after["broker"]["pid"] != before["broker"]["pid"]
    assert after["postgres"]["pid"] == before["postgres"]["pid"]


def test_up_on_a_busy_port_fails_clearly(embedded_env):
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", int(embedded_env["LEDGER_EMBEDDED_KAFKA_PORT"])))
        blocker.listen()
        result = run(embedded_env, "up", check=False)
    assert result.returncode == 1
    assert "already in use" in result.stderr and "LEDGER_EMBEDDED_KAFKA_PORT" in result.stderr
    assert "Traceback" not in result.stderr


def test_commands_without_a_stack_say_how_to_get_one(embedded_env):
    result = run(embedded_env, "smoke", check=False)
    assert result.returncode == 1
    assert "ledger up" in result.stderr and "LEDGER_KAFKA_BOOTSTRAP" in result.stderr


def test_external_services_are_used_and_nothing_is_started(settings, tmp_path):
    env = env_for(settings, tmp_path / "external", LEDGER_TOPIC_INCOMING=settings.topic_incoming + ".x",
                  LEDGER_TOPIC_EVENTS=settings.topic_events + ".x", LEDGER_TOPIC_DLQ=settings.topic_dlq + ".x")
    up = run_json(env, "up")
    assert up["kafka_bootstrap"] == settings.kafka_bootstrap
    assert not (tmp_path / "external" / "broker.log").exists()
    assert not (tmp_path / "external" / "postgres").exists()
    assert settings.topic_events + ".x" in topic_partition_counts(settings.kafka_bootstrap)

    status = run_json(env, "status")
    assert status["running"] is True
    assert status["broker"]["embedded"] is False and status["postgres"]["embedded"] is False
    assert status["broker"]["pid"] is None

    assert run_json(env, "down")["stopped"] == []
    assert run_json(env, "status")["running"] is True  # external services are not ours to stop


@pytest.mark.parametrize(("variable", "value", "message"), [
    ("LEDGER_PARTITIONS_EVENTS", "0", "LEDGER_PARTITIONS_EVENTS"),
    ("LEDGER_DATABASE_URL", "not a url", "not a database URL"),
    ("LEDGER_EMBEDDED_KAFKA_PORT", "99999", "LEDGER_EMBEDDED_KAFKA_PORT"),
])
def test_invalid_settings_are_named_without_a_traceback(embedded_env, variable, value, message):
    result = run({**embedded_env, variable: value}, "status", check=False)
    assert result.returncode == 1
    assert message in result.stderr.replace("\n", " ")
    assert "Traceback" not in result.stderr
