"""Named crash points for the kill tests: with LEDGER_FAULT_POINTS="after_submit:0.05,after_provider:0.05"
a process SIGKILLs itself at those points with that probability. Unset (always, outside tests), they do nothing.

This is how the fault test reaches the narrow windows a random outside kill seldom hits (the provider
has paid, the outcome is not recorded yet); the kill itself is a real SIGKILL, not an exception.
"""

from __future__ import annotations

import os
import random
import signal

_POINTS: dict[str, float] | None = None
_POISON: bytes | None = None


def _points() -> dict[str, float]:
    global _POINTS
    if _POINTS is None:
        _POINTS = {}
        for item in filter(None, os.environ.get("LEDGER_FAULT_POINTS", "").split(",")):
            name, _, probability = item.partition(":")
            _POINTS[name.strip()] = float(probability or 1.0)
    return _POINTS


def crash_point(name: str) -> None:
    probability = _points().get(name)
    if probability and random.random() < probability:
        os.kill(os.getpid(), signal.SIGKILL)
    _stop_at(name)


_STOP_AT: str | None = None


def _stop_at(name: str) -> None:
    """With LEDGER_FAULT_STOP_AT=<point>, SIGSTOP this process (once) the first time it reaches that crash point:
    frozen, say, after the provider answered and before the outcome is recorded (the transfer fencing test)."""
    global _STOP_AT, _PAUSED
    if _STOP_AT is None:
        _STOP_AT = os.environ.get("LEDGER_FAULT_STOP_AT", "")
    if _STOP_AT and name == _STOP_AT and not _PAUSED:
        _PAUSED = True
        os.kill(os.getpid(), signal.SIGSTOP)


def poison_point(value: bytes | None) -> None:
    """With LEDGER_FAULT_POISON=<text>, SIGKILL this process whenever it handles a record containing <text>:
    a record that kills the process every time, as a segfault in a parser would (the poison test)."""
    global _POISON
    if _POISON is None:
        _POISON = os.environ.get("LEDGER_FAULT_POISON", "").encode()
    if _POISON and value and _POISON in value:
        os.kill(os.getpid(), signal.SIGKILL)


_PAUSE: bytes | None = None
_PAUSED = False


def pause_point(value: bytes | None) -> None:
    """With LEDGER_FAULT_PAUSE=<text>, SIGSTOP this process (once) when it handles a record containing <text>:
    a process frozen mid-batch, as a long GC pause or a VM migration freezes it, resumed by the test with
    SIGCONT after another instance took its partitions over (the fencing test)."""
    global _PAUSE, _PAUSED
    if _PAUSE is None:
        _PAUSE = os.environ.get("LEDGER_FAULT_PAUSE", "").encode()
    if _PAUSE and not _PAUSED and value and _PAUSE in value:
        _PAUSED = True
        os.kill(os.getpid(), signal.SIGSTOP)


def planted(bug: str) -> bool:
    """With LEDGER_PLANTED_BUG=<bug>, a deliberate defect is switched on, to prove that the soak notices it
    (tests/integration/test_soak.py). Known: commit_before_flush (the sequencer commits a batch's input
    offsets before it makes the batch's outputs, let alone flushes them: a crash in between loses those records)."""
    return os.environ.get("LEDGER_PLANTED_BUG", "") == bug
