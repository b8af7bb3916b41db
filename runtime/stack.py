"""`ledger up / down / status`: the embedded broker and PostgreSQL as one stack under the data dir.

The stack's state (pids, addresses) lives in <data_dir>/stack.json so that every later command, in
any shell, finds the running services. A service given by LEDGER_KAFKA_BOOTSTRAP or
LEDGER_DATABASE_URL is used as it is and never started or stopped here.
"""

from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

from sqlalchemy.engine import make_url

from runtime import embedded_broker, embedded_postgres, kafka_security
from runtime.database import current_revision, database_answers, run_migrations
from runtime.kafka_admin import ensure_topics
from processors.kafka_io import DeliveryFailed
from processors.log_end import end_offsets
from runtime.preserve import FAILURES, CannotPreserve, Preserved, at_risk, preserve
from runtime.processes import pid_is_alive, stop_pid
from runtime.settings import Settings
from runtime.tails import Progress

Report = Callable[[str], None]


class StackNotRunning(RuntimeError):
    """No broker or database is configured and the embedded stack is not up."""


@dataclass
class StackState:
    kafka_bootstrap: str
    database_url: str
    broker_pid: int | None = None  # None: external broker, not ours to stop
    postgres_pgdata: str | None = None  # None: external database
    postgres_pid: int | None = None
    started_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat())
    broker_run: str | None = None  # this run of the embedded broker (its topics live and die with it)

    def broker_identity(self) -> str:
        return self.broker_run or f"pid {self.broker_pid} up since {self.started_at}"


def _state_path(settings: Settings) -> Path:
    return settings.data_dir / "stack.json"


def read_state(settings: Settings) -> StackState | None:
    try:
        return StackState(**json.loads(_state_path(settings).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _write_state(settings: Settings, state: StackState) -> None:
    path = _state_path(settings)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(state), indent=2))
    os.replace(tmp, path)


@contextmanager
def _exclusive(settings: Settings) -> Iterator[None]:
    """One `ledger up`/`down` at a time per data dir."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    with (settings.data_dir / ".lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _broker_running(state: StackState | None) -> bool:
    return bool(state and state.broker_pid and embedded_broker.broker_is_running(state.broker_pid, state.kafka_bootstrap))


def _postgres_running(state: StackState | None) -> bool:
    if not (state and state.postgres_pgdata):
        return False
    pid = embedded_postgres.postmaster_pid(Path(state.postgres_pgdata))
    return bool(pid and state.postgres_pid == pid and database_answers(state.database_url))


def up(settings: Settings, report: Report = lambda _: None) -> tuple[StackState, bool]:
    """Start what is not running, create topics, migrate. Returns (state, already_running)."""
    with _exclusive(settings):
        previous = read_state(settings)
        want_broker = settings.kafka_bootstrap is None
        want_postgres = settings.database_url is None
        broker_ok = want_broker and _broker_running(previous)
        postgres_ok = want_postgres and _postgres_running(previous)
        same_externals = previous is not None and settings.kafka_bootstrap in (None, previous.kafka_bootstrap) and (
            settings.database_url in (None, previous.database_url)
        )
        if (want_broker or want_postgres) and same_externals and broker_ok == want_broker and postgres_ok == want_postgres:
            _prepare(settings, previous, report)  # idempotent: catches settings that no longer match
            return previous, True

        broker_run = None
        if settings.kafka_bootstrap:
            bootstrap, broker_pid = settings.kafka_bootstrap, None
            report(f"broker: using {bootstrap} (LEDGER_KAFKA_BOOTSTRAP, {settings.kafka_security_protocol})")
            if settings.kafka_security_protocol != "PLAINTEXT":
                kafka_security.preflight(bootstrap, settings.kafka_security_protocol)
        elif broker_ok and previous:
            bootstrap, broker_pid, broker_run = previous.kafka_bootstrap, previous.broker_pid, previous.broker_run
        else:
            report("broker: starting embedded Tansu")
            handle = embedded_broker.start_broker(settings.data_dir, settings.embedded_kafka_port)
            bootstrap, broker_pid = handle.bootstrap, handle.pid
            broker_run = f"pid {handle.pid} started {datetime.now(timezone.utc).isoformat()}"

        if settings.database_url:
            database_url, pgdata, postgres_pid = settings.database_url, None, None
            report("database: using LEDGER_DATABASE_URL")
        elif postgres_ok and previous:
            database_url, pgdata, postgres_pid = previous.database_url, previous.postgres_pgdata, previous.postgres_pid
        else:
            report("database: starting embedded PostgreSQL")
            pg = embedded_postgres.start_postgres(
                (settings.data_dir / "postgres").resolve(), settings.embedded_postgres_port, settings.embedded_database
            )
            database_url, pgdata, postgres_pid = pg.url(settings.embedded_database), str(pg.pgdata), pg.pid

        state = StackState(bootstrap, database_url, broker_pid, pgdata, postgres_pid, broker_run=broker_run)
        _write_state(settings, state)
        _prepare(settings, state, report)
        return state, False


def _prepare(settings: Settings, state: StackState, report: Report) -> None:
    """Create missing topics (checking partition counts of existing ones) and migrate the database."""
    created = ensure_topics(state.kafka_bootstrap, settings.topic_specs(), settings.replication_factor)
    report(f"topics: {'created ' + ', '.join(created) if created else 'all present'}")
    revision = run_migrations(state.database_url)
    report(f"database: migrated to revision {revision}")
    from runtime.restore import restore_all

    restore_all(settings, state.kafka_bootstrap, state.database_url, report)


class WouldLoseRecords(RuntimeError):
    """`ledger down` could not save what only the embedded broker holds, so it stopped nothing."""


@dataclass
class DownResult:
    stopped: list[str]
    preserved: Preserved | None  # None: nothing to save (external or dead broker), or --discard
    not_stopped: list[str] = field(default_factory=list)  # ours, but still running after the attempt


def down(settings: Settings, report: Report = lambda _: None, *, discard: bool = False,
         progress: Progress = lambda *_: None) -> DownResult:
    """Save what only the embedded broker holds (unless `discard`), then stop the embedded services this
    data dir started. Raises WouldLoseRecords, stopping nothing, when the save fails."""
    with _exclusive(settings):
        state = read_state(settings)
        stopped: list[str] = []
        if state is None:
            return DownResult(stopped, None)
        preserved = None
        if state.broker_pid and pid_is_alive(state.broker_pid) and not discard:
            preserved = _preserve_or_refuse(settings, state, progress)
            report(f"saved to PostgreSQL: {preserved.inputs} inputs not yet sequenced, {preserved.dead_letters} "
                   f"dead letters not yet projected, {preserved.events_archived} events archived")
        elif state.broker_pid and discard:
            report("--discard: what only the broker held is thrown away")
        broker_stopped = bool(state.broker_pid) and stop_pid(state.broker_pid)
        if broker_stopped:
            stopped.append("broker")
            report("broker: stopped")
        postgres_stopped = bool(state.postgres_pgdata) and embedded_postgres.stop_postgres(Path(state.postgres_pgdata))
        if postgres_stopped:
            stopped.append("postgres")
            report("database: stopped (data kept in the data dir)")
        failed = [name for name, ours, done in (("broker", state.broker_pid, broker_stopped),
                                                 ("postgres", state.postgres_pgdata, postgres_stopped)) if ours and not done]
        if failed:  # keep the state of what still runs, so that `ledger down` again can stop it
            _write_state(settings, replace(state, broker_pid=None if broker_stopped else state.broker_pid,
                                           broker_run=None if broker_stopped else state.broker_run))
        else:
            _state_path(settings).unlink(missing_ok=True)
        return DownResult(stopped, preserved, failed)


def _preserve_or_refuse(settings: Settings, state: StackState, progress: Progress) -> Preserved:
    try:
        return preserve(settings, state.kafka_bootstrap, state.database_url, state.broker_identity(), progress)
    except (*FAILURES, CannotPreserve, DeliveryFailed) as exc:
        reason = " ".join(str(exc).split("\n")[0].split()) or type(exc).__name__  # one line: no driver details
        if _broker_is_empty(state.kafka_bootstrap, settings):
            return Preserved(0, 0, 0)  # nothing to lose: stopping is safe whatever failed
        risk = at_risk(settings, state.kafka_bootstrap, state.database_url, timeout_s=5)
        raise WouldLoseRecords(
            f"not stopping anything: could not save to PostgreSQL what only the embedded broker holds, because "
            f"{reason}; stopping it would lose {_describe(risk)}. Fix that and run `ledger down` again, or run "
            "`ledger down --discard` to stop anyway and throw them away") from None


def _broker_is_empty(bootstrap: str, settings: Settings) -> bool:
    try:
        return all(sum(end_offsets(bootstrap, topic).values()) == 0 for topic in (
            settings.topic_incoming, settings.topic_commands, settings.topic_dlq, settings.topic_events))
    except (*FAILURES, CannotPreserve):
        return False


def _describe(risk: dict[str, int | str]) -> str:
    return (f"{risk['inputs_not_sequenced']} inputs not yet sequenced, {risk['dead_letters_not_projected']} dead "
            f"letters not yet projected and {risk['events_not_archived']} events not yet archived")


def status(settings: Settings) -> dict[str, object]:
    """What runs: each service's address, whether it answers, and whether it is embedded."""
    state = read_state(settings)
    bootstrap = settings.kafka_bootstrap or (state.kafka_bootstrap if state else None)
    database_url = settings.database_url or (state.database_url if state else None)
    broker_embedded = settings.kafka_bootstrap is None
    postgres_embedded = settings.database_url is None
    broker_up = (
        _broker_running(state) if broker_embedded else embedded_broker.broker_answers(bootstrap)
    )
    postgres_up = _postgres_running(state) if postgres_embedded else database_answers(database_url)
    return {
        "data_dir": str(settings.data_dir.resolve()),
        "running": bool(broker_up and postgres_up),
        "broker": {
            "embedded": broker_embedded,
            "running": bool(broker_up),
            "bootstrap": bootstrap,
            "pid": state.broker_pid if state and broker_embedded else None,
        },
        "postgres": {
            "embedded": postgres_embedded,
            "running": bool(postgres_up),
            "url": make_url(database_url).render_as_string(hide_password=True) if database_url else None,
            "pid": state.postgres_pid if state and postgres_embedded else None,
            "revision": current_revision(database_url) if postgres_up and database_url else None,
        },
        "started_at": state.started_at if state else None,
        # what a crash of the embedded broker would lose now; nothing with an external (durable) broker
        "at_risk": at_risk(settings, bootstrap if broker_up else None, database_url if postgres_up else None)
        if broker_embedded else None,
    }


def connections(settings: Settings) -> tuple[str, str]:
    """(kafka bootstrap, database URL) for every other command: settings first, else the running stack."""
    state = read_state(settings)
    bootstrap = settings.kafka_bootstrap or (state.kafka_bootstrap if state else None)
    database_url = settings.database_url or (state.database_url if state else None)
    if not bootstrap or not database_url:
        raise StackNotRunning(
            "no broker or database: run `ledger up` (embedded) or set LEDGER_KAFKA_BOOTSTRAP and LEDGER_DATABASE_URL"
        )
    if settings.kafka_security_protocol != "PLAINTEXT":  # a wrong CA or password: one clear line, at once
        kafka_security.preflight(bootstrap, settings.kafka_security_protocol)
    return bootstrap, database_url


def restart_postgres(settings: Settings) -> bool:
    """Stop the embedded PostgreSQL (fast: open transactions roll back, clients are cut off) and start it
    again on the same port and data; the soak's fault. False, doing nothing, when the database is not ours."""
    with _exclusive(settings):
        state = read_state(settings)
        if state is None or not state.postgres_pgdata:
            return False
        pgdata = Path(state.postgres_pgdata)
        if not embedded_postgres.stop_postgres(pgdata):
            raise RuntimeError(f"the embedded PostgreSQL in {pgdata} did not stop")
        url = make_url(state.database_url)  # the port and database it was started with
        handle = embedded_postgres.start_postgres(pgdata, url.port or settings.embedded_postgres_port,
                                                  url.database or settings.embedded_database)
        _write_state(settings, replace(state, postgres_pid=handle.pid))
        return True


def embedded_postgres_in_use(settings: Settings) -> bool:
    state = read_state(settings)
    return bool(state and state.postgres_pgdata and settings.database_url is None)
