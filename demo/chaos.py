"""The soak's processors and its fault schedule: two instances of each partitioned processor, killed at random.

`ChaosProcessors` runs every processor the demo runs, the partitioned ones (sequencer, projector,
transfers, notifier) as `--partitioned` instances, and restarts any instance that dies (a SIGKILL from
the schedule, or one it gave itself at a crash point: LEDGER_FAULT_POINTS), so a dead processor is a
fault to ride out, not an error. `FaultSchedule` is derived from the seed alone: the same seed gives the
same list of (delay, victim, provider trouble), whatever the timing of the processes.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from demo.processes import PROCESSORS, ProcessorDied, spawn
from runtime.processes import log_tail, stop_pid

PARTITIONED = ("sequencer", "projector", "transfers", "notifier")
# how often each kind is picked as a victim: the aggregator (Faust) takes ~25 s to rejoin its group after a
# kill, so it is picked rarely, and never twice within AGGREGATOR_GAP_S; "postgres" restarts the embedded
# PostgreSQL (at most once per POSTGRES_GAP_S; skipped when the database is not the embedded one)
WEIGHTS = {"sequencer": 4, "projector": 3, "transfers": 4, "notifier": 2, "aggregator": 1, "alerts": 1, "api": 1,
           "webhooks": 1, "postgres": 1}
AGGREGATOR_GAP_S = 60.0
POSTGRES_GAP_S = 45.0
# exits other than a SIGKILL within this long after a PostgreSQL restart began are the outage's, not a bug's
OUTAGE_GRACE_S = 30.0
MAX_CRASHES = 3  # exits other than SIGKILL of one instance before the soak gives up
# provider troubles injected with a kill: Stripe's (a stall of STALL_S included) and mobile money's
STRIPE_TROUBLE = ("server_error", "rate_limit", "accepted_then_500", "reset", "accepted_then_reset", "slow",
                  "accepted_then_drop")
MOBILE_TROUBLE = ("mobile_503", "mobile_slow")
STALL_S = 6.0


@dataclass(frozen=True)
class Fault:
    delay_s: float  # after the previous fault
    victim: str  # a kind (WEIGHTS); the instance is picked among the running ones with the same draw
    pick: int
    trouble: str | None  # a provider fault injected with the kill (STRIPE_TROUBLE, MOBILE_TROUBLE), or None


def fault_schedule(seed: int, count: int, mean_gap_s: float) -> list[Fault]:
    rng = random.Random(seed ^ 0x5EED)
    kinds, weights = zip(*WEIGHTS.items())
    faults = []
    for _ in range(count):
        trouble = rng.choice(STRIPE_TROUBLE + MOBILE_TROUBLE) if rng.random() < 0.1 else None
        faults.append(Fault(min(rng.expovariate(1 / mean_gap_s), 4 * mean_gap_s), rng.choices(kinds, weights)[0],
                            rng.randrange(1 << 30), trouble))
    return faults


class ChaosProcessors:
    """The demo's `Processors` interface (check, stop, stop_all, pids, log_dir), with instances and restarts."""

    def __init__(self, log_dir: Path, env: dict[str, str], transfer_env: dict[str, str], instances: int,
                 fault_points: str, servers: dict[str, list[str]] | None = None,
                 restart_database: Callable[[], bool] | None = None) -> None:
        """`servers`: more processes by name ("api", "webhooks") and their `ledger` arguments, one instance
        each; `restart_database`: restarts PostgreSQL (None: the schedule's "postgres" faults are skipped)."""
        self.log_dir, self.env, self.transfer_env = log_dir, env, transfer_env
        self.fault_points = fault_points
        self.arguments = {**{name: [*arguments, *(["--partitioned"] if name in PARTITIONED else [])]
                             for name, arguments in PROCESSORS.items()}, **(servers or {})}
        self.specs = {f"{name}-{n}": name for name in self.arguments
                      for n in range(1, (instances if name in PARTITIONED else 1) + 1)}
        self.restart_database = restart_database
        self.database_restarts = 0
        self.outage_exits = 0  # exits other than a SIGKILL while PostgreSQL was restarting (or just after)
        self._outage_until = 0.0
        self._last_database_restart = 0.0
        self.running: dict[str, subprocess.Popen] = {}
        self.deaths: Counter = Counter()  # kind -> deaths the schedule did not cause (crash points)
        self.kills: Counter = Counter()  # kind -> SIGKILLs sent by the schedule
        self.restarts = 0
        self.crashes: list[str] = []  # exits that were not a SIGKILL (an error, a refused setting): a failure
        self._stopped: set[str] = set()
        self._lock = threading.RLock()
        self._last_aggregator_kill = 0.0

    def __enter__(self) -> "ChaosProcessors":
        self.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            for instance in self.specs:
                self._start(instance)
        except BaseException:
            self.stop_all()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()

    def _start(self, instance: str) -> None:
        name = self.specs[instance]
        env = {**self.env, **(self.transfer_env if name == "transfers" else {}),
               "LEDGER_FAULT_POINTS": self.fault_points, "PGAPPNAME": instance}
        self.running[instance] = spawn(self.arguments[name], env, self.log_dir / f"{instance}.log", "ab")

    def check(self) -> None:
        """Restart every instance that died (a crash point's SIGKILL, or anything else: counted by kind)."""
        with self._lock:
            for instance, process in list(self.running.items()):
                if instance in self._stopped or process.poll() is None:
                    continue
                self.deaths[f"{self.specs[instance]} (exit {process.returncode})"] += 1
                if process.returncode != -signal.SIGKILL and time.monotonic() < self._outage_until:
                    self.outage_exits += 1  # the database went away under it: a supervisor restarts it
                elif process.returncode != -signal.SIGKILL:  # not a crash point: the processor failed by itself
                    self.crashes.append(f"{instance} exited {process.returncode}: {self.tail(instance)[-300:]}")
                    if sum(1 for crash in self.crashes if crash.startswith(f"{instance} ")) >= MAX_CRASHES:
                        raise ProcessorDied(f"{instance} exited {process.returncode} {MAX_CRASHES} times; the end of "
                                            f"its log:\n{self.tail(instance)}")
                self._start(instance)
                self.restarts += 1

    def kill(self, fault: Fault) -> str | None:
        """SIGKILL one running instance of the fault's kind and start it again; returns the instance."""
        if fault.victim == "postgres":
            return self._restart_database()
        with self._lock:
            if fault.victim == "aggregator":
                if time.monotonic() - self._last_aggregator_kill < AGGREGATOR_GAP_S:
                    return None
                self._last_aggregator_kill = time.monotonic()
            candidates = sorted(i for i, name in self.specs.items() if name == fault.victim and i not in self._stopped)
            if not candidates:
                return None
            instance = candidates[fault.pick % len(candidates)]
            process = self.running[instance]
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)  # its own session: the process and anything it started
                process.wait(timeout=10)
                self.kills[fault.victim] += 1
            self._start(instance)
            self.restarts += 1
            return instance

    def _restart_database(self) -> str | None:
        if self.restart_database is None or time.monotonic() - self._last_database_restart < POSTGRES_GAP_S:
            return None
        self._last_database_restart = time.monotonic()
        self._outage_until = time.monotonic() + OUTAGE_GRACE_S + 60  # the restart itself takes seconds
        try:
            if not self.restart_database():
                return None
        finally:
            self._outage_until = time.monotonic() + OUTAGE_GRACE_S
        self.database_restarts += 1
        return "postgres"

    def stop(self, names: tuple[str, ...]) -> None:
        """Stop every instance of these kinds (SIGTERM, then SIGKILL after a bound); they are not restarted."""
        with self._lock:
            for instance, name in self.specs.items():
                if name in names and instance not in self._stopped:
                    self._stopped.add(instance)
                    process = self.running[instance]
                    stop_pid(process.pid, timeout_s=15)
                    process.wait(timeout=10)

    def stop_all(self) -> None:
        self.stop(tuple(reversed(list(self.arguments))))

    def pids(self) -> dict[str, int]:
        return {instance: process.pid for instance, process in self.running.items() if instance not in self._stopped}

    def tail(self, instance: str) -> str:
        return log_tail(self.log_dir / f"{instance}.log")


class ChaosThread(threading.Thread):
    """Walks the fault schedule until stopped: wait, kill (and restart) the victim, maybe trouble Stripe."""

    def __init__(self, processors: ChaosProcessors, schedule: list[Fault], sandboxes) -> None:  # noqa: ANN001
        super().__init__(name="soak-faults", daemon=True)
        self.processors, self.schedule, self.sandboxes = processors, schedule, sandboxes
        self.stopping = threading.Event()
        self.applied = 0
        self.troubles = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for fault in self.schedule:
                if self.stopping.wait(fault.delay_s):
                    return
                if fault.trouble is not None:
                    self._trouble(fault.trouble)
                    self.troubles += 1
                self.processors.kill(fault)
                self.processors.check()
                self.applied += 1
        except BaseException as error:  # noqa: BLE001 - reported by the soak
            self.error = error

    def _trouble(self, kind: str) -> None:
        if kind in MOBILE_TROUBLE:  # a 503 on the next cash-in, or a cash-in answered after STALL_S
            self.sandboxes.mobile.inject(kind="server_error" if kind == "mobile_503" else "slow", times=1,
                                         status=503 if kind == "mobile_503" else None, delay_s=STALL_S)
        else:
            self.sandboxes.stripe.inject(path_prefix="/v1/transfers", method="POST", kind=kind, times=1,
                                         retry_after_s=1, delay_s=STALL_S)

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=30)
