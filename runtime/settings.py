"""All settings in one place, read from LEDGER_* environment variables (pydantic-settings)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from ledger.earnings import PayoutPolicy
    from ledger.intake import IntakeLimits


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str]


class Settings(BaseSettings):
    """Connection settings, topic names and partition counts, and where embedded services keep data.

    With kafka_bootstrap / database_url unset, the embedded broker and PostgreSQL started by
    `ledger up` are used (their addresses are read from the data dir's stack.json).
    """

    # hide_input_in_errors: a refused setting's error must not quote the other settings (a password among them)
    model_config = SettingsConfigDict(env_prefix="LEDGER_", extra="ignore", hide_input_in_errors=True)

    kafka_bootstrap: str | None = Field(None, description="Kafka bootstrap servers; unset = embedded broker")
    database_url: str | None = Field(None, description="SQLAlchemy URL of PostgreSQL; unset = embedded")
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="how every Kafka client connects: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL")
    kafka_ssl_ca_file: Path | None = Field(None, description="PEM file of the CA(s) that signed the brokers' certificates (SSL, SASL_SSL); unset = the system's")
    kafka_ssl_cert_file: Path | None = Field(None, description="PEM client certificate, for brokers that require mutual TLS (with kafka_ssl_key_file)")
    kafka_ssl_key_file: Path | None = Field(None, description="PEM private key of kafka_ssl_cert_file")
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="SASL mechanism (SASL_PLAINTEXT, SASL_SSL): PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512")
    kafka_sasl_username: str | None = Field(None, description="SASL user name")
    kafka_sasl_password: SecretStr | None = Field(None, description="SASL password (never logged or shown)")
    data_dir: Path = Field(Path(".ledger"), description="where the embedded stack keeps its files")

    topic_incoming: str = "payments.incoming"
    topic_events: str = "ledger.events"
    topic_dlq: str = "ledger.dlq"
    topic_commands: str = Field("ledger.commands", description="internal events for the sequencer to chain (closes, outcomes, operator actions)")
    partitions_incoming: int = Field(3, ge=1)
    partitions_events: int = Field(3, ge=1)
    partitions_dlq: int = Field(1, ge=1)
    partitions_commands: int = Field(3, ge=1)
    topic_clock: str = Field("ledger.clock", description="clock ticks: 'close what is due as of T' (one per partition)")
    aggregator_session_timeout_s: float = Field(10.0, gt=0, description="Faust consumer session timeout")
    replication_factor: int = Field(1, ge=1, description="3 in production (Apache Kafka)")

    max_payment_amount: str = Field("50000.00", description="largest amount per record, in major units")
    max_payment_amounts: dict[str, str] = Field(default_factory=dict, description='per-currency overrides, JSON: {"XOF": "30000000"}')
    future_skew_s: int = Field(300, ge=0, description="how far in the future occurred_at may be")
    metadata_max_keys: int = Field(32, ge=0)
    metadata_max_bytes: int = Field(4096, ge=0)

    default_plan: str = Field("flat-80", description="commission plan of payees that set none")
    default_payout_method: str = Field("manual", description="payout method of payees that set none")
    minimum_payout: str = Field("25.00", description="below this (major units) a balance carries over")
    default_frequency: str = Field("WEEKLY", description="DAILY, WEEKLY, BIWEEKLY, MONTHLY or MANUAL")
    default_cutoff_time: str = "23:59"
    default_timezone: str = "UTC"
    default_day_of_week: int | None = Field(4, description="0 = Monday; for WEEKLY and BIWEEKLY")
    default_day_of_month: int | None = Field(None, description="1-31; for MONTHLY")
    plans_file: Path | None = Field(None, description="TOML file of commission plans and fees, merged over the built-ins")

    sequencer_group: str = "ledger-sequencer"
    sequencer_batch_max: int = Field(2000, ge=1, le=100_000)
    sequencer_batch_wait_ms: int = Field(50, ge=1, le=10_000)
    sequencer_wait_s: int = Field(300, ge=1, le=7 * 86_400, description="how long a refund that arrived before its payment waits for it before it is dead-lettered")
    sequencer_wait_max_records: int = Field(10_000, ge=1, le=1_000_000, description="at most this many refunds wait for their payments; beyond it the oldest is dead-lettered")
    sequencer_poison_deaths: int = Field(2, ge=1, le=10, description="a record the sequencer died on this many times, processing it alone, is dead-lettered as poison")
    sequencer_careful_window: int = Field(200, ge=1, le=100_000, description="after an unclean stop, records processed one at a time (at most one batch) before batches resume")
    partition_lease_s: float = Field(15.0, ge=3, le=600, description="partitioned processors (`--partitioned`): how long an instance's lease on a partition lasts without renewal; a dead instance's partitions move after about this long")

    checkpoint_every_events: int = Field(10_000, ge=1, le=1_000_000, description="a processor writes a checkpoint after at most this many records folded since the last one")
    checkpoint_every_s: float = Field(30.0, ge=0.1, le=3_600, description="... or after this many seconds, whichever comes first (only when something was folded)")

    # The transfer processor and its providers (docs/decisions.md: transfers).
    retry_delays_s: list[int] = Field([300, 900, 3600], description="delays after attempts 1, 2, 3 that failed retryably; then the payout fails")
    provider_concurrency: int | None = Field(None, ge=1, le=256, description="provider calls in flight at once, per provider; unset = each provider's default (runtime/providers.py: Stripe 16 with a test key, 64 live; others 4)")
    provider_rate_per_s: float | None = Field(None, gt=0, description="provider requests started per second, per provider; unset = each provider's default (Stripe's documented limit: 25/s with a test key, 100/s live; others 20)")
    provider_limits: dict[str, dict[str, float]] = Field(default_factory=dict, description='per-provider overrides of the two above, JSON: {"stripe": {"concurrency": 32, "rate_per_s": 50}}')
    provider_window: int | None = Field(None, ge=1, description="attempts recorded and not answered yet, per provider; unset = the larger of 200 and 8 x its concurrency")
    provider_quick_retries: int = Field(3, ge=0, le=10, description="quick retries under the same idempotency key after a connection-level failure (reset, refused, timeout), 0.5 s doubling up to 5 s apart, before the retry delays apply")
    breaker_failures: int = Field(5, ge=1, description="consecutive retryable failures that open a provider's circuit")
    breaker_cooldown_s: float = Field(60.0, gt=0, description="how long an open circuit stops calls before one trial")
    pending_poll_s: float = Field(3600.0, gt=0, description="how often transfers still processing are checked (default hourly)")
    mobile_money_max_pending_s: float = Field(86400.0, gt=0, description="a mobile money transfer still processing after this fails (default 24 h)")
    stripe_api_key: str | None = Field(None, description="Stripe secret key; unset = no Stripe provider")
    stripe_api_base: str | None = Field(None, description="Stripe API address (a local test server in tests and the demo)")
    stripe_timeout_s: float = Field(30.0, gt=0)
    stripe_webhook_secret: str | None = Field(None, description="whsec_... for `ledger webhooks serve`")
    mobile_money_url: str | None = Field(None, description="mobile money (Orange-Money-style) API address; unset = no provider")
    mobile_money_client_id: str = ""
    mobile_money_client_secret: str = ""
    mobile_money_timeout_s: float = Field(30.0, gt=0)
    bank_debtor_name: str = Field("Payout Ledger Platform", description="the platform's account name in SEPA files")
    bank_debtor_iban: str | None = Field(None, description="the platform's IBAN; unset = no bank transfer provider")
    bank_debtor_bic: str = Field("", description="the platform's BIC")
    bank_outbox_dir: Path | None = Field(None, description="where pain.001 files are written (default: <data_dir>/bank/outbox)")
    bank_status_dir: Path | None = Field(None, description="where the bank's pain.002 status reports are dropped (default: <data_dir>/bank/status)")

    # Operations: the HTTP API (`ledger api`), alerts, notifications, logs (issue 7).
    api_tokens: dict[str, str] = Field(default_factory=dict, description='bearer tokens and their roles, JSON: {"<token>": "operator", "<token>": "read-only"}')
    api_host: str = Field("127.0.0.1", description="where `ledger api` listens")
    api_port: int = Field(8080, ge=1, le=65535)
    api_body_bytes_max: int = Field(4_194_304, ge=1024, description="largest request body the API reads (above the 1 MiB a single record may reach before it is refused unread, so such a record gets the same error as on every other way in)")
    ingest_rate_per_s: float = Field(50.0, gt=0, description="payment ingestion requests per second, per token (burst: ingest_burst)")
    ingest_burst: int = Field(100, ge=1)
    ingest_batch_max: int = Field(500, ge=1, le=10_000, description="most payments in one ingestion request")
    ready_projector_lag_max: int = Field(10_000, ge=0, description="/ready fails while the projector is more events than this behind the ledger")
    smtp_host: str | None = Field(None, description="SMTP server for alert and payee emails; unset = no email")
    smtp_port: int = Field(25, ge=1, le=65535)
    smtp_username: str = ""
    smtp_password: str = ""
    smtp_starttls: bool = False
    smtp_timeout_s: float = Field(10.0, gt=0)
    email_from: str = Field("payouts@localhost", description="From: of the emails the ledger sends")
    alert_failure_rate_pct: float = Field(10.0, ge=0, le=100, description="alert when more than this % of payouts finished in the window failed")
    alert_failure_window_s: int = Field(86400, ge=60, description="window of the failure rate")
    alert_failure_min_payouts: int = Field(1, ge=1, description="the failure rate is judged only on at least this many finished payouts")
    alert_pending_max: int = Field(50, ge=0, description="alert when more payouts than this are open")
    alert_processing_delay_h: float = Field(24.0, gt=0, description="alert when an open payout is older than this")
    alert_run_total_max: str = Field("10000.00", description="alert when payouts requested in one day exceed this, major units per currency")
    alert_gateway_latency_s: float = Field(3.0, gt=0, description="alert when providers' p95 answer time exceeds this")
    alert_webhook_backlog_max: int = Field(50, ge=0, description="alert when more outcomes than this are awaited from providers")
    alert_webhook_urls: list[str] = Field(default_factory=list, description="alerts are POSTed here, HMAC-signed")
    alert_webhook_secret: str = Field("", description="HMAC-SHA256 key of alert webhooks (X-Ledger-Signature)")
    alert_emails: list[str] = Field(default_factory=list, description="alerts are emailed here")
    alert_interval_s: float = Field(60.0, gt=0, description="how often `ledger alerts watch` evaluates")
    notify_webhook_secret: str = Field("", description="HMAC-SHA256 key of payee notification webhooks")
    notify_retry_delays_s: list[int] = Field([10, 60, 300, 1800, 7200], description="waits between delivery attempts of a notification; then it is given up")
    log_format: str = Field("text", description="text or json (one JSON object per line, with correlation ids)")
    metrics_host: str = Field("127.0.0.1", description="address that --metrics-port listens on; 0.0.0.0 in containers, so Prometheus can scrape")

    embedded_kafka_port: int = Field(19092, ge=1, le=65535)
    embedded_postgres_port: int = Field(15432, ge=1, le=65535)
    embedded_database: str = "ledger"

    @field_validator("kafka_bootstrap", "database_url", "kafka_ssl_ca_file", "kafka_ssl_cert_file",
                     "kafka_ssl_key_file", "kafka_sasl_mechanism", "kafka_sasl_username", "kafka_sasl_password",
                     mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("kafka_security_protocol", "kafka_sasl_mechanism", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.strip().upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _kafka_security(self) -> "Settings":
        from runtime.kafka_security import check_settings

        check_settings(self)
        return self

    @field_validator("provider_limits")
    @classmethod
    def _provider_limits(cls, value: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        for provider, limits in value.items():
            unknown = set(limits) - {"concurrency", "rate_per_s"}
            if unknown:
                raise ValueError(f"{provider}: unknown limit {sorted(unknown)} (concurrency, rate_per_s)")
            if "concurrency" in limits and not (1 <= limits["concurrency"] <= 256
                                                and float(limits["concurrency"]).is_integer()):
                raise ValueError(f"{provider}: concurrency must be a whole number from 1 to 256")
            if "rate_per_s" in limits and not limits["rate_per_s"] > 0:
                raise ValueError(f"{provider}: rate_per_s must be above 0")
        return value

    @field_validator("log_format", mode="before")
    @classmethod
    def _log_format(cls, value: object) -> object:
        text = value.strip().lower() if isinstance(value, str) else value
        if text not in ("text", "json"):
            raise ValueError(f"LEDGER_LOG_FORMAT must be text or json, got {value!r}")
        return text

    @field_validator("database_url")
    @classmethod
    def _psycopg2_driver(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from runtime.database import normalize_url

        try:
            return normalize_url(value)
        except Exception as exc:  # SQLAlchemy's ArgumentError: say which setting and why
            raise ValueError(f"not a database URL ({exc})") from None

    def intake_limits(self) -> "IntakeLimits":
        from ledger.intake import IntakeLimits

        return IntakeLimits(self.max_payment_amount, dict(self.max_payment_amounts), self.future_skew_s,
                            self.metadata_max_keys, self.metadata_max_bytes)

    def payout_policy(self) -> "PayoutPolicy":
        from ledger.earnings import PayoutPolicy
        from ledger.schedules import Frequency, Schedule

        weekly = self.default_frequency in (Frequency.WEEKLY.value, Frequency.BIWEEKLY.value)
        schedule = Schedule.create(self.default_frequency, cutoff_time=self.default_cutoff_time,
                                   timezone=self.default_timezone,
                                   day_of_week=self.default_day_of_week if weekly else None,
                                   day_of_month=self.default_day_of_month if self.default_frequency == "MONTHLY" else None)
        return PayoutPolicy(self.default_plan, self.default_payout_method, self.minimum_payout, schedule)

    def with_topic_suffix(self, suffix: str) -> "Settings":
        """The same settings on topics of their own (`<name>.<suffix>`): benchmarks, tests, a restored broker."""
        names = ("topic_incoming", "topic_events", "topic_dlq", "topic_commands", "topic_clock")
        return self.model_copy(update={name: f"{getattr(self, name)}.{suffix}" for name in names})

    def topic_specs(self) -> list[TopicSpec]:
        """The topics the ledger needs; ledger.events keeps everything forever (it is the ledger)."""
        from ledger.intake import OUTPUT_MESSAGE_MAX_BYTES, RECORD_READ_MAX_BYTES

        # Inputs take records up to the size the sequencer reads; what it writes (an event, a dead
        # letter with the original record and its headers) has room for the headers on top.
        inputs = {"max.message.bytes": str(RECORD_READ_MAX_BYTES)}
        durable = {"cleanup.policy": "delete", "retention.ms": "-1", "max.message.bytes": str(OUTPUT_MESSAGE_MAX_BYTES)}
        if self.replication_factor >= 3:
            durable["min.insync.replicas"] = "2"
        return [
            TopicSpec(self.topic_incoming, self.partitions_incoming, inputs),
            TopicSpec(self.topic_events, self.partitions_events, durable),
            TopicSpec(self.topic_dlq, self.partitions_dlq, durable),
            TopicSpec(self.topic_commands, self.partitions_commands, inputs),
            TopicSpec(self.topic_clock, self.partitions_events, {}),
        ]
