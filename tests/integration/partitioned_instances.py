"""`ledger <processor> --partitioned` processes of one test: started with their own log and PGAPPNAME, their
leases read from PostgreSQL, waited on with a bounded deadline, and stopped (resumed first if frozen)."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path
from typing import Callable

import sqlalchemy

from runtime.database import make_engine
from tests.integration.cli_env import LEDGER, env_for


def member_pid(member: str) -> int:
    """The pid in a lease member's name (host-pid-random)."""
    return int(member.split("-")[-2])


class PartitionedInstances:
    def __init__(self, settings, tmp_path: Path, processor: str, group: str, **env: str) -> None:  # noqa: ANN001
        self.settings, self.tmp_path, self.processor, self.group = settings, tmp_path, processor, group
        self.env = env_for(settings, tmp_path, **env)
        self.processes: dict[str, subprocess.Popen] = {}
        self.pid_of: dict[str, int] = {}  # application name (PGAPPNAME) -> pid
        self.engine = make_engine(settings.database_url)
        self.started = 0

    def start(self, name: str, *args: str, **env: str) -> subprocess.Popen:
        self.started += 1
        app = f"{name}-{self.started}"
        log = open(self.tmp_path / f"{app}.log", "w")  # noqa: SIM115 - closed with the process
        process = subprocess.Popen([LEDGER, self.processor, "--partitioned", *args], stdout=log,
                                   env={**self.env, "PGAPPNAME": app, **env}, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)
        self.processes[name] = process
        self.pid_of[app] = process.pid
        return process

    def log_of(self, name: str) -> str:
        return "\n".join(path.read_text() for path in sorted(self.tmp_path.glob(f"{name}-*.log")))

    def logs(self) -> str:
        return "\n".join(f"--- {path.name}\n{path.read_text()[-4000:]}" for path in sorted(self.tmp_path.glob("*.log")))

    def owners(self) -> dict[int, tuple[str | None, int]]:
        """partition -> (owner, epoch) of the live leases."""
        with self.engine.connect() as connection:
            rows = connection.execute(sqlalchemy.text(
                "SELECT partition, owner, epoch FROM partition_leases WHERE grp = :g AND expires_at > now()"),
                {"g": self.group}).all()
        return {partition: (owner, epoch) for partition, owner, epoch in rows}

    def owner_pids(self) -> dict[int, int]:
        """partition -> pid of the live owner."""
        return {partition: member_pid(owner) for partition, (owner, _) in self.owners().items() if owner}

    def owns_all(self, *processes: subprocess.Popen) -> bool:
        """Every partition has a live owner, and the owners are exactly these processes."""
        pids = self.owner_pids()
        return len(pids) == self.settings.partitions_events and set(pids.values()) == {p.pid for p in processes}

    def wait_for(self, condition: Callable[[], object], timeout_s: float, what: str) -> None:
        """Poll `condition` with a bounded deadline; fail with the exit codes and the logs (read then)."""
        deadline = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() > deadline:
                codes = {name: process.poll() for name, process in self.processes.items()}
                raise AssertionError(f"not within {timeout_s} s: {what} (exit codes {codes})\n{self.logs()}")
            time.sleep(0.1)  # polling interval of a bounded wait, not a wait for work

    def stop_all(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGCONT)
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)

    def close(self) -> None:
        self.stop_all()
        self.engine.dispose()
