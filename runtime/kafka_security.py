"""How every Kafka client of the ledger connects: LEDGER_KAFKA_* security settings mapped onto each client
library's own option names, in this one place.

    Consumer(secure({"bootstrap.servers": bootstrap, "group.id": ...}))   # confluent-kafka (librdkafka)
    faust.App(..., **faust_options(settings))                             # Faust / aiokafka (the aggregator)

Settings (runtime/settings.py): LEDGER_KAFKA_SECURITY_PROTOCOL (PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL),
LEDGER_KAFKA_SSL_CA_FILE, LEDGER_KAFKA_SSL_CERT_FILE + LEDGER_KAFKA_SSL_KEY_FILE (mutual TLS),
LEDGER_KAFKA_SASL_MECHANISM (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512), LEDGER_KAFKA_SASL_USERNAME and
LEDGER_KAFKA_SASL_PASSWORD. They are read once per process from the environment, like every setting:
the clients are created deep in the processors, which are handed a bootstrap address, not settings.

The password is a SecretStr: it is given to the client libraries and to nothing else (not to logs, not
to `ledger status`, not to error messages). A connection refused for its certificate or credentials is
one line naming the setting to check (`explain`).
"""

from __future__ import annotations

import functools
import os
import ssl
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runtime.settings import Settings

TLS_PROTOCOLS = frozenset({"SSL", "SASL_SSL"})
SASL_PROTOCOLS = frozenset({"SASL_PLAINTEXT", "SASL_SSL"})
_SETTING = "LEDGER_KAFKA_{}".format


def check_settings(settings: "Settings") -> None:
    """Refuse combinations that cannot work, naming the setting (raised from Settings' validation)."""
    protocol = settings.kafka_security_protocol
    if protocol != "PLAINTEXT" and settings.kafka_bootstrap is None:
        raise ValueError(f"LEDGER_KAFKA_SECURITY_PROTOCOL={protocol} needs LEDGER_KAFKA_BOOTSTRAP: the embedded broker "
                         "speaks plaintext only")
    sasl = {"SASL_MECHANISM": settings.kafka_sasl_mechanism, "SASL_USERNAME": settings.kafka_sasl_username,
            "SASL_PASSWORD": settings.kafka_sasl_password}
    files = {"SSL_CA_FILE": settings.kafka_ssl_ca_file, "SSL_CERT_FILE": settings.kafka_ssl_cert_file,
             "SSL_KEY_FILE": settings.kafka_ssl_key_file}
    if protocol in SASL_PROTOCOLS:
        for name, value in sasl.items():
            if value is None:
                raise ValueError(f"{_SETTING(name)} is required with LEDGER_KAFKA_SECURITY_PROTOCOL={protocol}")
    else:
        given = [_SETTING(name) for name, value in sasl.items() if value is not None]
        if given:
            raise ValueError(f"{', '.join(given)} only apply with LEDGER_KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT or "
                             f"SASL_SSL, not {protocol}")
    if protocol not in TLS_PROTOCOLS:
        given = [_SETTING(name) for name, value in files.items() if value is not None]
        if given:
            raise ValueError(f"{', '.join(given)} only apply with LEDGER_KAFKA_SECURITY_PROTOCOL=SSL or SASL_SSL, "
                             f"not {protocol}")
    if (files["SSL_CERT_FILE"] is None) != (files["SSL_KEY_FILE"] is None):
        raise ValueError("LEDGER_KAFKA_SSL_CERT_FILE and LEDGER_KAFKA_SSL_KEY_FILE go together (mutual TLS)")
    for name, path in files.items():
        if path is not None and not os.access(path, os.R_OK):
            raise ValueError(f"{_SETTING(name)}: cannot read {path}")


def librdkafka_options(settings: "Settings") -> dict[str, Any]:
    """The confluent-kafka (librdkafka) configuration for the security settings; {} for PLAINTEXT."""
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return {}
    options: dict[str, Any] = {"security.protocol": protocol.lower()}
    if protocol in TLS_PROTOCOLS:
        if settings.kafka_ssl_ca_file is not None:
            options["ssl.ca.location"] = str(settings.kafka_ssl_ca_file)
        if settings.kafka_ssl_cert_file is not None:
            options["ssl.certificate.location"] = str(settings.kafka_ssl_cert_file)
            options["ssl.key.location"] = str(settings.kafka_ssl_key_file)
    if protocol in SASL_PROTOCOLS:
        options["sasl.mechanism"] = settings.kafka_sasl_mechanism
        options["sasl.username"] = settings.kafka_sasl_username
        options["sasl.password"] = settings.kafka_sasl_password.get_secret_value()  # type: ignore[union-attr]
    return options


def ssl_context(settings: "Settings") -> ssl.SSLContext | None:
    """The TLS context for Python clients (aiokafka): the CA file (or the system's), the client pair if any."""
    if settings.kafka_security_protocol not in TLS_PROTOCOLS:
        return None
    context = ssl.create_default_context(cafile=str(settings.kafka_ssl_ca_file) if settings.kafka_ssl_ca_file else None)
    if settings.kafka_ssl_cert_file is not None:
        context.load_cert_chain(str(settings.kafka_ssl_cert_file), str(settings.kafka_ssl_key_file))
    return context


def faust_options(settings: "Settings") -> dict[str, Any]:
    """faust.App keyword arguments for the security settings (Faust hands them to aiokafka); {} for PLAINTEXT."""
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return {}
    from faust.auth import SASLCredentials, SSLCredentials

    context = ssl_context(settings)
    if protocol == "SSL":
        return {"broker_credentials": SSLCredentials(context)}
    return {"broker_credentials": SASLCredentials(
        username=settings.kafka_sasl_username, password=settings.kafka_sasl_password.get_secret_value(),  # type: ignore[union-attr]
        ssl_context=context, mechanism=settings.kafka_sasl_mechanism)}


@functools.lru_cache(maxsize=1)
def _process_options() -> tuple[tuple[str, Any], ...]:
    from runtime.settings import Settings

    return tuple(librdkafka_options(Settings()).items())


def secure(config: dict[str, Any]) -> dict[str, Any]:
    """`config` for a confluent-kafka client, with this process's security settings added."""
    return {**config, **dict(_process_options())}


def explain(error: object) -> str | None:
    """One line naming the setting to check, for a client error that is about TLS or SASL; None otherwise."""
    text = str(error)
    lowered = text.lower()
    if "certificate verify failed" in lowered or "unable to get local issuer" in lowered or (
            "ssl handshake failed" in lowered and "verify" in lowered):
        return ("Kafka TLS: the broker's certificate is not trusted: check LEDGER_KAFKA_SSL_CA_FILE (the CA that "
                "signed the brokers' certificates) and the host name in LEDGER_KAFKA_BOOTSTRAP")
    if "ssl handshake failed" in lowered or "wrong version number" in lowered or "packet length too long" in lowered:
        return ("Kafka TLS: the TLS handshake with the broker failed: check LEDGER_KAFKA_SECURITY_PROTOCOL "
                "(does this listener speak TLS?) and LEDGER_KAFKA_SSL_CERT_FILE / LEDGER_KAFKA_SSL_KEY_FILE")
    if "authentication" in lowered or "sasl" in lowered:
        return ("Kafka SASL: the broker refused the credentials: check LEDGER_KAFKA_SASL_USERNAME, "
                "LEDGER_KAFKA_SASL_PASSWORD and LEDGER_KAFKA_SASL_MECHANISM")
    return None


class KafkaRefused(RuntimeError):
    """The broker could not be reached with these settings; the message names what to check."""


def preflight(bootstrap: str, protocol: str, timeout_s: float = 10.0) -> None:
    """Ask the broker for its metadata once, with this process's settings; KafkaRefused (one line) if that fails.

    Done when a command starts on a broker given by LEDGER_KAFKA_BOOTSTRAP, so a wrong CA, password or
    protocol is said once, clearly, instead of as the client library's retries in the log."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    errors: list[str] = []
    admin = AdminClient(secure({"bootstrap.servers": bootstrap, "error_cb": lambda error: errors.append(str(error)),
                                "log_level": 0}))
    try:
        admin.list_topics(timeout=timeout_s)
        return
    except KafkaException as exc:
        admin.poll(1.0)  # serves the error callbacks, which say why (a handshake refused, credentials refused)
        errors.append(str(exc))
    for error in errors:
        line = explain(error)
        if line:
            raise KafkaRefused(f"{line} ({bootstrap})")
    hint = (" (a TLS listener? set LEDGER_KAFKA_SECURITY_PROTOCOL)" if protocol in ("PLAINTEXT", "SASL_PLAINTEXT")
            else "")
    raise KafkaRefused(f"Kafka at {bootstrap} did not answer within {timeout_s:g} s{hint}: "
                       f"{errors[0] if errors else 'no answer'}")
