"""Prometheus metrics of every ledger process (prometheus-client), one registry, names shared with the
alert rules and dashboards. A process serves them with `--metrics-port` (start_metrics_server), on the same
port as its probes: GET /health (the process answers: 200) and GET /ready (200 once the processor has
started its work loop, mark_ready(); 503 before), for Kubernetes (deploy/kubernetes/).

Amounts are counted in minor units per currency (a counter of integers: no float money); label sets
are bounded (event types, providers, reason codes, currencies, stages), never ids.
"""

from __future__ import annotations

import json
import socket
import threading
from socketserver import ThreadingMixIn
from typing import Any, Callable, Iterable
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import Counter, Gauge, Histogram, make_wsgi_app

EVENTS_APPENDED = Counter("ledger_events_appended_total", "Events chained into ledger.events by the sequencer",
                          ["event_type"])
DUPLICATES = Counter("ledger_duplicates_total", "Inputs dropped as already recorded", ["topic"])
DEAD_LETTERS = Counter("ledger_dead_letters_total", "Inputs refused to the dead-letter topic", ["stage"])
PAYOUT_ATTEMPTS = Counter("ledger_payout_attempts_total", "Payout attempts recorded before a provider call",
                          ["provider"])
PAYOUTS_REQUESTED = Counter("ledger_payouts_requested_total", "Payouts requested (chained by the sequencer)",
                            ["method", "currency"])
PAYOUTS_SETTLED = Counter("ledger_payouts_settled_total", "Payouts settled", ["provider", "currency"])
PAYOUTS_FAILED = Counter("ledger_payouts_failed_total", "Payouts failed for good (their money returns)",
                         ["provider", "reason"])
PAYOUT_RETRIES = Counter("ledger_payout_retries_scheduled_total", "Retryable failures with a retry scheduled",
                         ["provider", "reason"])
PAYOUT_AMOUNT = Counter("ledger_payout_amount_minor_total", "Payout amounts by outcome, in minor units",
                        ["currency", "outcome"])
PROVIDER_LATENCY = Histogram("ledger_provider_call_seconds", "Provider call latency", ["provider", "mode"],
                             buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 30))
RETRY_QUEUE = Gauge("ledger_retry_queue_depth", "Payouts waiting for their next attempt", ["provider"])
OPEN_PAYOUTS = Gauge("ledger_open_payouts", "Payouts requested and not yet settled, failed or cancelled",
                     ["status"])
BREAKER_OPEN = Gauge("ledger_provider_circuit_open", "1 while a provider's circuit breaker is open", ["provider"])
PROJECTED = Counter("ledger_projector_events_total", "Events written to the read models")
ALERTS_OPEN = Gauge("ledger_alerts_open", "Open alerts (firing or acknowledged) by rule and severity", ["rule", "severity"])
# Lag as time, not offsets: Tansu's high watermark is wrong (docs/decisions.md §7). 0 once caught up.
CONSUMER_LAG = Gauge("ledger_consumer_lag_seconds",
                     "Age of the record being processed (now - its Kafka timestamp); 0 when caught up",
                     ["processor", "topic"])
CONSUMER_LAST_RECORD = Gauge("ledger_consumer_last_record_timestamp_seconds",
                             "Kafka timestamp of the last record consumed (Unix seconds)", ["processor", "topic"])
WEBHOOKS_RECEIVED = Counter("ledger_webhooks_received_total",
                            "Stripe webhook deliveries by outcome (accepted, duplicate, ignored, rejected, error)",
                            ["outcome"])
NOTIFICATIONS = Counter("ledger_notifications_total", "Payee notices by channel (email, webhook, none) and outcome (sent, retry, given_up, no_contact)", ["channel", "outcome"])


CHECKPOINT_AGE = Gauge("ledger_checkpoint_age_seconds",
                       "Seconds since the processor's last checkpoint was written (or loaded at start)", ["processor"])
CHECKPOINT_TAIL = Gauge("ledger_checkpoint_tail_records",
                        "Records read at the last start after the checkpoint (the whole log after a full replay)",
                        ["processor"])
CHECKPOINT_BYTES = Gauge("ledger_checkpoint_state_bytes", "Size of the last checkpoint's state blob", ["processor"])
FULL_REPLAYS = Counter("ledger_full_replays_total", "Starts that replayed the whole log, by why no checkpoint was used",
                       ["processor", "why"])
PARTITIONS_OWNED = Gauge("ledger_partitions_owned", "Partitions this instance owns", ["processor"])
PARTITIONS_TOTAL = Gauge("ledger_partitions_total", "Partitions the instances of this processor share", ["processor"])
PARTITION_CHANGES = Counter("ledger_partition_changes_total", "Partition ownership changes of this instance",
                            ["processor", "change"])  # change: gained | released | lost


# --- the HTTP server: /metrics, /health, /ready ------------------------------------------------------

_READY = threading.Event()


def mark_ready() -> None:
    """The processor has started its work loop: /ready answers 200 from now on."""
    _READY.set()


def mark_not_ready() -> None:
    """/ready answers 503 again (before the loop starts, the flag's initial state)."""
    _READY.clear()


def is_ready() -> bool:
    return _READY.is_set()


WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def probes_app(metrics_app: WsgiApp, ready: Callable[[], bool] = is_ready) -> WsgiApp:
    """A WSGI app: GET|HEAD /health -> 200; GET|HEAD /ready -> 200 when ready() else 503; anything else
    goes to metrics_app (prometheus-client's, which serves /metrics)."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path, method = environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD", "GET")
        if path not in ("/health", "/ready"):
            return metrics_app(environ, start_response)
        if method not in ("GET", "HEAD"):
            start_response("405 Method Not Allowed", [("Allow", "GET, HEAD"), ("Content-Length", "0")])
            return [b""]
        if path == "/health":
            status, body = "200 OK", {"status": "ok"}
        else:
            ok = ready()
            status, body = ("200 OK" if ok else "503 Service Unavailable"), {"ready": ok}
        data = json.dumps(body).encode()
        start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
        return [b"" if method == "HEAD" else data]

    return app


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a probe in flight never holds the process at exit


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        """Probes every few seconds would flood the logs."""


def serve_metrics(port: int, host: str, ready: Callable[[], bool] = is_ready) -> WSGIServer:
    """Serve /metrics, /health and /ready on host:port from a daemon thread; returns the server
    (server.shutdown() stops it). IPv6 addresses work as well as IPv4 ones."""
    family, _, _, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    server_class = type("MetricsServer", (_Server,), {"address_family": family})
    server = make_server(sockaddr[0], port, probes_app(make_wsgi_app(), ready), server_class,
                         handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name=f"metrics:{port}", daemon=True).start()
    return server


def start_metrics_server(port: int | None, host: str | None = None) -> WSGIServer | None:
    """Serve /metrics, /health and /ready on port (nothing when None), on host (default: LEDGER_METRICS_HOST,
    127.0.0.1). /ready answers 503 until the command calls mark_ready() where its work loop starts."""
    if port is None:
        return None
    if host is None:
        from runtime.settings import Settings

        host = Settings().metrics_host
    return serve_metrics(port, host)
