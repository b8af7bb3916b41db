"""The probes every processor serves beside /metrics (runtime/metrics.py), and the webhook endpoint's own:
GET /health answers 200 while the process answers; GET /ready answers 503 until the processor has started its
work loop (mark_ready), 200 after. Kubernetes asks them (deploy/kubernetes/)."""

from __future__ import annotations

import threading
from typing import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient

from processors.webhook_app import make_app
from runtime import metrics
from runtime.processes import free_port


@pytest.fixture
def flag() -> threading.Event:
    return threading.Event()


@pytest.fixture
def server(flag: threading.Event) -> Iterator[str]:
    port = free_port()
    running = metrics.serve_metrics(port, "127.0.0.1", ready=flag.is_set)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        running.shutdown()
        running.server_close()


def test_health_answers_at_once_and_ready_only_once_the_loop_has_started(server: str, flag: threading.Event) -> None:
    health = httpx.get(f"{server}/health", timeout=5)
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    before = httpx.get(f"{server}/ready", timeout=5)
    assert (before.status_code, before.json()) == (503, {"ready": False})
    flag.set()
    after = httpx.get(f"{server}/ready", timeout=5)
    assert (after.status_code, after.json()) == (200, {"ready": True})
    flag.clear()
    assert httpx.get(f"{server}/ready", timeout=5).status_code == 503


def test_metrics_are_served_beside_the_probes(server: str) -> None:
    metrics.DUPLICATES.labels("probe-test").inc(3)
    text = httpx.get(f"{server}/metrics", timeout=5).text
    assert 'ledger_duplicates_total{topic="probe-test"} 3.0' in text
    assert httpx.head(f"{server}/health", timeout=5).status_code == 200
    refused = httpx.post(f"{server}/ready", timeout=5)
    assert refused.status_code == 405 and refused.headers["allow"] == "GET, HEAD"


def test_start_metrics_server_serves_the_process_readiness_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    assert metrics.start_metrics_server(None) is None
    monkeypatch.setattr(metrics, "_READY", threading.Event())  # this process's flag, fresh for the test
    port = free_port()
    running = metrics.start_metrics_server(port, "127.0.0.1")
    try:
        assert httpx.get(f"http://127.0.0.1:{port}/ready", timeout=5).status_code == 503
        metrics.mark_ready()
        assert metrics.is_ready()
        assert httpx.get(f"http://127.0.0.1:{port}/ready", timeout=5).status_code == 200
        metrics.mark_not_ready()
        assert httpx.get(f"http://127.0.0.1:{port}/ready", timeout=5).status_code == 503
    finally:
        running.shutdown()
        running.server_close()


def test_the_webhook_endpoint_answers_health_and_ready_and_keeps_healthz() -> None:
    def append(events: list) -> None:  # noqa: ANN001 - never called by a probe
        raise AssertionError("a probe appended to the ledger")

    client = TestClient(make_app("whsec_probe", append))
    assert (client.get("/health").status_code, client.get("/health").json()) == (200, {"status": "ok"})
    assert (client.get("/ready").status_code, client.get("/ready").json()) == (200, {"ready": True})
    assert client.get("/healthz").json() == {"ok": True}
    assert client.post("/ready").status_code == 405
