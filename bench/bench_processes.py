"""`ledger` worker processes for the benchmark: start, wait for a log line, read peak memory, stop (bounded)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from runtime.settings import Settings

LEDGER = str(Path(sys.executable).with_name("ledger"))
POLL_S = 0.1


class BenchFailure(RuntimeError):
    """A phase did not finish within its deadline, or a process it needs died: the message says which."""


def ledger_env(settings: Settings, bootstrap: str, database_url: str, data_dir: Path, **extra: str) -> dict[str, str]:
    """This process's environment, pointed at the benchmark's broker, schema and topics."""
    env = dict(os.environ)
    env.update({
        "LEDGER_KAFKA_BOOTSTRAP": bootstrap, "LEDGER_DATABASE_URL": database_url, "LEDGER_DATA_DIR": str(data_dir),
        "LEDGER_TOPIC_INCOMING": settings.topic_incoming, "LEDGER_TOPIC_EVENTS": settings.topic_events,
        "LEDGER_TOPIC_DLQ": settings.topic_dlq, "LEDGER_TOPIC_COMMANDS": settings.topic_commands,
        "LEDGER_TOPIC_CLOCK": settings.topic_clock, **extra,
    })
    return env


def vmhwm_kib(pid: int) -> int | None:
    """Peak resident set size (VmHWM) of a live process, in KiB; None once it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class LedgerProcess:
    """One `ledger ...` command in its own session, stdout and stderr in files under log_dir."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name, self.args = name, args
        self.out_path, self.err_path = log_dir / f"{name}.out", log_dir / f"{name}.err"
        self.peak_kib: int | None = None  # VmHWM read just before the stop signal (or the last poll before exit)
        self.maxrss_kib: int | None = None  # ru_maxrss from wait4 at exit: the kernel's own peak
        self.cpu_s: float | None = None  # user + system CPU seconds, from wait4 at exit
        self.started_at = time.time()
        with self.out_path.open("wb") as out, self.err_path.open("wb") as err:
            self.popen = subprocess.Popen([LEDGER, *args], env=env, stdout=out, stderr=err,
                                          stdin=subprocess.DEVNULL, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.returncode is None and self._reap(block=False) is None

    def output(self) -> str:
        return "".join(path.read_text(errors="replace") for path in (self.out_path, self.err_path) if path.exists())

    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace")

    def tail(self, lines: int = 12) -> str:
        return "\n".join(f"    {line}" for line in self.output().splitlines()[-lines:]) or "    (no output)"

    def check_alive(self, during: str) -> None:
        if not self.running():
            raise BenchFailure(f"`ledger {' '.join(self.args)}` exited with {self.popen.returncode} during "
                               f"{during}; its last lines ({self.out_path.parent}):\n{self.tail()}")

    def wait_for_line(self, text: str, timeout_s: float, what: str) -> float:
        """Wait until `text` appears in its output; returns the time it was seen."""
        deadline = time.monotonic() + timeout_s
        while text not in self.output():
            self.check_alive(f"start-up (waiting for {what})")
            if time.monotonic() > deadline:
                raise BenchFailure(f"`ledger {' '.join(self.args)}` did not report {what} within {timeout_s:.0f} s; "
                                   f"its last lines:\n{self.tail()}")
            time.sleep(POLL_S)
        return time.time()

    def wait_exit(self, timeout_s: float, what: str) -> int:
        """For a command that ends by itself: wait (bounded), following its peak memory while it runs."""
        deadline = time.monotonic() + timeout_s
        while True:
            peak = vmhwm_kib(self.pid)
            if peak is not None and self.popen.returncode is None:
                self.peak_kib = max(self.peak_kib or 0, peak)
            code = self._reap(block=False)
            if code is not None:
                return code
            if time.monotonic() > deadline:
                self.stop()
                raise BenchFailure(f"`ledger {' '.join(self.args)}` did not finish {what} within {timeout_s:.0f} s; "
                                   f"its last lines:\n{self.tail()}")
            time.sleep(POLL_S)

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """Read VmHWM, then SIGTERM; SIGKILL after timeout_s. Returns the exit code (None if it would not die)."""
        if self.popen.returncode is not None:
            return self.popen.returncode
        peak = vmhwm_kib(self.pid)
        if peak is not None:
            self.peak_kib = max(self.peak_kib or 0, peak)
        for signum, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline:
                code = self._reap(block=False)
                if code is not None:
                    return code
                time.sleep(POLL_S)
        return None

    def _reap(self, block: bool) -> int | None:
        """wait4 rather than Popen.wait: it also gives the child's ru_maxrss."""
        if self.popen.returncode is not None:
            return self.popen.returncode
        try:
            pid, status, usage = os.wait4(self.pid, 0 if block else os.WNOHANG)
        except ChildProcessError:
            self.popen.returncode = -1
            return -1
        if pid == 0:
            return None
        self.maxrss_kib = usage.ru_maxrss
        self.cpu_s = round(usage.ru_utime + usage.ru_stime, 2)  # the kernel's count, at exit
        self.popen.returncode = os.waitstatus_to_exitcode(status)
        return self.popen.returncode


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of one live process (its threads included), from /proc/<pid>/stat."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime: fields 14 and 15 of stat(5)


def _machine_busy_s() -> float:
    with open("/proc/stat", encoding="ascii") as stat:
        values = [int(value) for value in stat.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values[:8]) - idle) / CLOCK_TICKS


def cpu_snapshot(workers: dict[str, "LedgerProcess"]) -> dict[str, float]:
    """CPU seconds used so far by each running worker, the driver (this process, its in-process sandboxes
    included), the broker (tansu) and PostgreSQL (all its processes), and the whole machine (busy time)."""
    snapshot = {name: _process_cpu_s(worker.pid) for name, worker in workers.items() if worker.running()}
    snapshot["driver"] = _process_cpu_s(os.getpid())
    broker = postgres = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm", encoding="ascii", errors="replace") as comm:
                name = comm.read().strip()
        except OSError:
            continue
        if name.startswith("tansu"):
            broker += _process_cpu_s(int(entry)) or 0.0
        elif name.startswith("postgres") or name.startswith("postmaster"):
            postgres += _process_cpu_s(int(entry)) or 0.0
    snapshot.update({"broker": broker, "postgres": postgres, "machine": _machine_busy_s()})
    return {name: value for name, value in snapshot.items() if value is not None}


def cpu_used(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """CPU seconds each one used between two snapshots ("other": the machine's busy time no one listed took:
    anything else running on the machine, or processes that ended in between)."""
    used = {name: round(after[name] - before.get(name, 0.0), 2) for name in after if name != "machine"}
    machine = round(after["machine"] - before["machine"], 2)
    used["other"] = round(machine - sum(used.values()), 2)
    used["machine"] = machine
    return used
