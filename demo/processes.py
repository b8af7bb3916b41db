"""The processors the demo runs, each the real `ledger` command in its own process, logging to a file.

They share the demo's broker, database and topics; the transfer processor also gets the sandboxes'
settings. A processor that dies while the demo needs it is an error that shows the end of its log.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from runtime.processes import log_tail, stop_pid

# name -> the `ledger` arguments; order of start (the sequencer first: everything else feeds it)
PROCESSORS = {
    "sequencer": ["sequencer"],
    "projector": ["projector"],
    "aggregator": ["aggregator"],
    "transfers": ["transfers"],
    "notifier": ["notifier"],
    "alerts": ["alerts", "watch", "--every", "2"],
}
# the ones that make events on their own: stopped first, so the ledger can go quiet
EVENT_MAKERS = ("aggregator", "transfers", "notifier", "alerts")
LEDGER = str(Path(sys.executable).with_name("ledger"))


def spawn(arguments: list[str], env: dict[str, str], log: Path, mode: str = "wb") -> subprocess.Popen:
    """`ledger ARGUMENTS` in its own session (a kill of its group reaches what it starts), output to `log`."""
    with log.open(mode) as handle:
        return subprocess.Popen([LEDGER, *arguments], env={**os.environ, **env}, stdin=subprocess.DEVNULL,
                                stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)


class ProcessorDied(RuntimeError):
    """A processor exited while the demo still needed it."""


@dataclass
class Processor:
    name: str
    process: subprocess.Popen
    log: Path

    def check(self) -> None:
        if self.process.poll() is not None:
            raise ProcessorDied(f"`ledger {' '.join(PROCESSORS[self.name])}` exited with {self.process.returncode};"
                                f" the end of {self.log}:\n{log_tail(self.log)}")


class Processors:
    def __init__(self, log_dir: Path, env: dict[str, str], transfer_env: dict[str, str]) -> None:
        self.log_dir, self.env, self.transfer_env = log_dir, env, transfer_env
        self.running: dict[str, Processor] = {}

    def __enter__(self) -> "Processors":
        self.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            for name, arguments in PROCESSORS.items():
                log = self.log_dir / f"{name}.log"
                process = spawn(arguments, {**self.env, **(self.transfer_env if name == "transfers" else {})}, log)
                self.running[name] = Processor(name, process, log)
        except BaseException:
            self.stop_all()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()

    def check(self) -> None:
        for processor in self.running.values():
            processor.check()

    def stop(self, names: tuple[str, ...]) -> None:
        for name in names:
            processor = self.running.pop(name, None)
            if processor is not None:
                stop_pid(processor.process.pid, timeout_s=15)
                processor.process.wait(timeout=10)

    def stop_all(self) -> None:
        self.stop(tuple(reversed(list(self.running))))

    def pids(self) -> dict[str, int]:
        return {name: processor.process.pid for name, processor in self.running.items()}
