"""LEDGER_KAFKA_* security settings: one mapping onto librdkafka's and Faust's option names, settings that cannot
work refused naming the setting, the password never shown, and client errors explained in one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from runtime.kafka_security import explain, faust_options, librdkafka_options
from runtime.settings import Settings

PASSWORD = "s3cret-pa55word-7f1c"


@pytest.fixture
def pem(tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    path.write_text("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n")
    return path


def settings(**values: object) -> Settings:
    return Settings(_env_file=None, **{"kafka_bootstrap": "broker-1:9093", **values})  # type: ignore[call-arg]


def test_plaintext_adds_nothing_to_any_client() -> None:
    plain = settings()
    assert librdkafka_options(plain) == {} and faust_options(plain) == {}


def test_tls_with_a_ca_file_and_mutual_tls(pem: Path) -> None:
    assert librdkafka_options(settings(kafka_security_protocol="ssl", kafka_ssl_ca_file=pem)) == {
        "security.protocol": "ssl", "ssl.ca.location": str(pem)}
    mutual = settings(kafka_security_protocol="SSL", kafka_ssl_ca_file=pem, kafka_ssl_cert_file=pem,
                      kafka_ssl_key_file=pem)
    assert librdkafka_options(mutual)["ssl.certificate.location"] == str(pem)
    assert librdkafka_options(mutual)["ssl.key.location"] == str(pem)


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "scram-sha-512"])
def test_sasl_over_plaintext_and_over_tls(mechanism: str) -> None:
    sasl = settings(kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_mechanism=mechanism,
                    kafka_sasl_username="ledger", kafka_sasl_password=PASSWORD)
    assert librdkafka_options(sasl) == {"security.protocol": "sasl_plaintext", "sasl.mechanism": mechanism.upper(),
                                        "sasl.username": "ledger", "sasl.password": PASSWORD}
    credentials = faust_options(sasl)["broker_credentials"]
    assert (credentials.username, credentials.password, credentials.mechanism.value) == (
        "ledger", PASSWORD, mechanism.upper())
    assert credentials.protocol.value == "SASL_PLAINTEXT" and credentials.ssl_context is None


def test_sasl_ssl_gives_faust_a_tls_context_and_the_credentials() -> None:
    secured = settings(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="SCRAM-SHA-512",
                       kafka_sasl_username="ledger", kafka_sasl_password=PASSWORD)
    options = librdkafka_options(secured)
    assert options["security.protocol"] == "sasl_ssl" and "ssl.ca.location" not in options  # the system's CAs
    credentials = faust_options(secured)["broker_credentials"]
    assert credentials.protocol.value == "SASL_SSL" and credentials.ssl_context is not None


@pytest.mark.parametrize("values, named", [
    ({"kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": "PLAIN", "kafka_sasl_username": "u"},
     "LEDGER_KAFKA_SASL_PASSWORD is required with LEDGER_KAFKA_SECURITY_PROTOCOL=SASL_SSL"),
    ({"kafka_security_protocol": "SASL_PLAINTEXT", "kafka_sasl_username": "u", "kafka_sasl_password": "p"},
     "LEDGER_KAFKA_SASL_MECHANISM is required"),
    ({"kafka_sasl_username": "u"}, "LEDGER_KAFKA_SASL_USERNAME only apply with"),
    ({"kafka_ssl_ca_file": "/etc/hostname"}, "LEDGER_KAFKA_SSL_CA_FILE only apply with"),
    ({"kafka_security_protocol": "SSL", "kafka_ssl_cert_file": "/etc/hostname"},
     "LEDGER_KAFKA_SSL_CERT_FILE and LEDGER_KAFKA_SSL_KEY_FILE go together"),
    ({"kafka_security_protocol": "SSL", "kafka_ssl_ca_file": "/nonexistent/ca.pem"},
     "LEDGER_KAFKA_SSL_CA_FILE: cannot read /nonexistent/ca.pem"),
    ({"kafka_security_protocol": "TLS"}, "kafka_security_protocol"),
    ({"kafka_security_protocol": "SSL", "kafka_bootstrap": None},
     "LEDGER_KAFKA_SECURITY_PROTOCOL=SSL needs LEDGER_KAFKA_BOOTSTRAP: the embedded broker speaks plaintext only"),
    ({"kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": "GSSAPI", "kafka_sasl_username": "u",
      "kafka_sasl_password": "p"}, "kafka_sasl_mechanism"),
])
def test_settings_that_cannot_work_are_refused_naming_the_setting(values: dict, named: str) -> None:
    with pytest.raises(ValidationError) as refused:
        settings(**values)
    assert named in str(refused.value)


def test_the_password_is_never_shown() -> None:
    secured = settings(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="PLAIN",
                       kafka_sasl_username="ledger", kafka_sasl_password=PASSWORD)
    assert PASSWORD not in repr(secured) and PASSWORD not in str(secured.model_dump())
    assert PASSWORD not in repr(faust_options(secured)["broker_credentials"])
    with pytest.raises(ValidationError) as refused:  # a refusal quotes no password either
        settings(kafka_security_protocol="SASL_SSL", kafka_sasl_username="ledger", kafka_sasl_password=PASSWORD)
    assert PASSWORD not in str(refused.value)


def test_a_refused_setting_is_one_line_from_the_cli_without_the_password(tmp_path: Path) -> None:
    ledger = str(Path(sys.executable).with_name("ledger"))
    env = {"PATH": "/usr/bin:/bin", "LEDGER_DATA_DIR": str(tmp_path), "LEDGER_KAFKA_BOOTSTRAP": "127.0.0.1:1",
           "LEDGER_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/x", "LEDGER_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
           "LEDGER_KAFKA_SASL_USERNAME": "ledger", "LEDGER_KAFKA_SASL_PASSWORD": PASSWORD}
    ran = subprocess.run([ledger, "status"], env=env, capture_output=True, text=True, timeout=60,
                         stdin=subprocess.DEVNULL)
    assert ran.returncode != 0
    assert "LEDGER_KAFKA_SASL_MECHANISM is required with LEDGER_KAFKA_SECURITY_PROTOCOL=SASL_SSL" in ran.stderr
    assert PASSWORD not in ran.stderr + ran.stdout and len(ran.stderr.strip().splitlines()) == 1, ran.stderr


@pytest.mark.parametrize("error, named", [
    ("KafkaError{code=_SSL,val=-181,str=\"ssl://127.0.0.1:9093/bootstrap: SSL handshake failed: "
     "error:0A000086:SSL routines::certificate verify failed: broker certificate could not be verified, verify "
     "that ssl.ca.location is correctly configured\"}", "LEDGER_KAFKA_SSL_CA_FILE"),
    ("KafkaError{code=_AUTHENTICATION,val=-169,str=\"sasl_ssl://b:9093/bootstrap: SASL authentication error: "
     "Authentication failed during authentication due to invalid credentials with SASL mechanism SCRAM-SHA-512\"}",
     "LEDGER_KAFKA_SASL_PASSWORD"),
    ("KafkaError{code=_SSL,val=-181,str=\"ssl://b:9093/bootstrap: SSL handshake failed: error:0A00010B:SSL "
     "routines::wrong version number\"}", "LEDGER_KAFKA_SECURITY_PROTOCOL"),
])
def test_client_errors_about_tls_and_sasl_name_the_setting_to_check(error: str, named: str) -> None:
    line = explain(error)
    assert line is not None and named in line and "\n" not in line


def test_other_client_errors_are_not_explained_as_security() -> None:
    assert explain("KafkaError{code=_TRANSPORT,val=-195,str=\"Connection refused\"}") is None


def test_a_setting_that_cannot_be_read_is_one_line_naming_it(tmp_path: Path) -> None:
    ledger = str(Path(sys.executable).with_name("ledger"))
    env = {"PATH": "/usr/bin:/bin", "LEDGER_DATA_DIR": str(tmp_path), "LEDGER_API_TOKENS": "REPLACE_ME"}
    ran = subprocess.run([ledger, "status"], env=env, capture_output=True, text=True, timeout=60,
                         stdin=subprocess.DEVNULL)
    assert ran.returncode != 0 and ran.stderr.strip() == (
        "error: invalid setting: LEDGER_API_TOKENS cannot be read (JSON expected for lists and maps)"), ran.stderr
