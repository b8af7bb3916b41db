"""Every process over TLS: the embedded broker behind a TLS listener (stunnel) and the embedded PostgreSQL with
ssl=on and TCP without TLS refused, certificates made by the test. A small demo (payments, a week of cutoffs,
payouts through the sandboxes, read models verified) passes with every client on TLS; a client that trusts
another CA, and one that speaks plaintext, are refused by both."""

from __future__ import annotations

import json

import pytest
import sqlalchemy
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from tests.integration.cli_env import clean_env, run_ledger
from tests.integration.tls_stack import make_pki, tls_broker, tls_postgres, verified_url


@pytest.fixture
def tls(tmp_path):
    pki = make_pki(tmp_path / "pki")
    with tls_broker(tmp_path, pki) as bootstrap, tls_postgres(tmp_path, pki) as postgres:
        yield pki, bootstrap, postgres


def tls_env(tmp_path, bootstrap: str, database_url: str, ca) -> dict[str, str]:  # noqa: ANN001
    return clean_env(LEDGER_KAFKA_BOOTSTRAP=bootstrap, LEDGER_KAFKA_SECURITY_PROTOCOL="SSL",
                     LEDGER_KAFKA_SSL_CA_FILE=str(ca), LEDGER_DATABASE_URL=database_url,
                     LEDGER_DATA_DIR=str(tmp_path / "data"))


@pytest.mark.timeout(600)
def test_a_small_demo_runs_with_every_process_on_tls_to_kafka_and_postgresql(tls, tmp_path):
    pki, bootstrap, postgres = tls
    env = tls_env(tmp_path, bootstrap, verified_url(postgres, pki.ca), pki.ca)
    up = run_ledger(env, "up")  # topics and migrations, over TLS
    assert "SSL" in up.stdout + up.stderr
    ran = run_ledger(env, "demo", "--payees", "10", "--payments", "120", "--days", "1", "--seed", "7", "--json",
                     timeout_s=540)
    summary = json.loads(ran.stdout)
    # Kafka is reachable only through TLS (the broker advertises the TLS port, plaintext there is refused, below),
    # and PostgreSQL refuses TCP without TLS: every process of the demo connected over TLS to both
    assert summary["ledger_balanced"] and summary["verify_mismatches"] == 0 and summary["chain_breaks"] == 0
    assert summary["payments_appended"] >= 120 and summary["payouts_settled"] > 0 and summary["paid_twice"] == 0


def test_a_wrong_ca_and_plaintext_are_refused_by_kafka_and_postgresql(tls, tmp_path):
    pki, bootstrap, postgres = tls
    wrong_ca = run_ledger(tls_env(tmp_path, bootstrap, verified_url(postgres, pki.ca), pki.other_ca), "up",
                          check=False)
    assert wrong_ca.returncode != 0
    assert "Kafka TLS: the broker's certificate is not trusted: check LEDGER_KAFKA_SSL_CA_FILE" in wrong_ca.stderr
    assert len(wrong_ca.stderr.strip().splitlines()) == 1, wrong_ca.stderr

    with pytest.raises(KafkaException):  # plaintext to the TLS listener: no metadata, ever
        AdminClient({"bootstrap.servers": bootstrap, "log_level": 0}).list_topics(timeout=5)

    for mode in ("require", "verify-ca", "verify-full"):  # libpq's modes, given in LEDGER_DATABASE_URL
        engine = sqlalchemy.create_engine(verified_url(postgres, pki.ca, mode))
        with engine.connect() as connection:
            assert connection.execute(sqlalchemy.text("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
                                      ).scalar_one() is True
        engine.dispose()
    for url, why in ((verified_url(postgres, pki.other_ca), "certificate verify failed"),
                     (f"{postgres.url('ledger')}?sslmode=disable", "no encryption")):
        engine = sqlalchemy.create_engine(url)
        with pytest.raises(sqlalchemy.exc.OperationalError, match=why):
            with engine.connect():
                pass
        engine.dispose()

    wrong_pg = run_ledger(tls_env(tmp_path, bootstrap, verified_url(postgres, pki.other_ca), pki.ca), "up",
                          check=False)
    assert wrong_pg.returncode != 0 and "certificate verify failed" in wrong_pg.stderr, wrong_pg.stderr
