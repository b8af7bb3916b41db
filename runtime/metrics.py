"""Prometheus metrics of every ledger process (prometheus-client), one registry, names shared with the
alert rules and dashboards. A process serves them with `--metrics-port` (start_metrics_server).

Amounts are counted in minor units per currency (a counter of integers: no float money); label sets
are bounded (event types, providers, reason codes, currencies, stages), never ids.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

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


def start_metrics_server(port: int | None, host: str | None = None) -> None:
    """Serve /metrics on port (nothing when None), on host (default: LEDGER_METRICS_HOST, 127.0.0.1)."""
    if port is not None:
        if host is None:
            from runtime.settings import Settings

            host = Settings().metrics_host
        start_http_server(port, addr=host)
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
