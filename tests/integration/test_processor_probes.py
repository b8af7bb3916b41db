"""A real `ledger sequencer --metrics-port P` answers the probes Kubernetes asks (deploy/kubernetes/): /health as
soon as it runs, /ready only once its work loop has started. A hot standby shows the difference for as long as
it waits for the lock: alive, not ready; it becomes ready when it takes over."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import httpx

from processors.ledger_client import LedgerClient
from runtime.processes import free_port
from tests.integration.cli_env import LEDGER, env_for
from tests.integration.sequencing_helpers import ledger_events
from tests.integration.transfer_helpers import TWO_DAYS_AGO, wait_until


def start(args: list[str], env: dict, log_file: Path) -> subprocess.Popen:
    with log_file.open("w") as sink:  # a file, not a pipe: a full pipe would block the process
        return subprocess.Popen([LEDGER, *args], env=env, stdin=subprocess.DEVNULL, stdout=sink,
                                stderr=subprocess.STDOUT)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def status(port: int, path: str) -> int | None:
    try:
        return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=2).status_code
    except httpx.TransportError:
        return None


def test_a_sequencer_is_alive_at_once_and_ready_only_while_it_sequences(settings, tmp_path):
    env = env_for(settings, tmp_path)
    active_port, standby_port = free_port(), free_port()
    active = start(["sequencer", "--metrics-port", str(active_port)], env, tmp_path / "active.log")
    standby = None
    try:
        wait_until(lambda: status(active_port, "/ready") == 200, 60, "the active sequencer ready")
        assert status(active_port, "/health") == 200

        standby_log = tmp_path / "standby.log"
        standby = start(["sequencer", "--standby", "--metrics-port", str(standby_port)], env, standby_log)
        wait_until(lambda: "standby: waiting for the lock" in standby_log.read_text(), 60, "the standby waiting")
        assert status(standby_port, "/health") == 200, "a waiting standby is alive"
        assert status(standby_port, "/ready") == 503, "a waiting standby is not ready"

        stop(active)
        wait_until(lambda: status(standby_port, "/ready") == 200, 60, "the standby ready once it took over")
        with LedgerClient(settings.kafka_bootstrap, settings) as client:
            client.record_payment(payment_id="probe-1", payee_id="probe", amount_minor=4_500, currency="USD",
                                  occurred_at=TWO_DAYS_AGO)
        wait_until(lambda: len(ledger_events(settings)) == 1, 30, "the ready standby sequencing the payment")
    finally:
        stop(active)
        if standby is not None:
            stop(standby)
    assert standby.returncode == 0, standby_log.read_text()
