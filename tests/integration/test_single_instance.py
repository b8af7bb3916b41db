"""One active process per kind, hot standbys that take over: the PostgreSQL advisory lock (runtime/single_instance.py)."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Callable

import pytest
import sqlalchemy

from runtime.database import make_engine
from runtime.settings import Settings
from runtime.single_instance import AlreadyRunning, _lock_id, single_instance
from tests.integration.cli_env import LEDGER, env_for

DEADLINE_S = 30.0
LOGGER = "ledger.single_instance"


def poll(condition: Callable[[], bool], what: str, deadline_s: float = DEADLINE_S) -> None:
    """Wait (bounded) until condition() holds; fail naming what did not happen."""
    deadline = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"within {deadline_s:g} s: {what}")
        time.sleep(0.02)


def unique_name() -> str:
    return f"test-lock:{uuid.uuid4().hex}"


def holder_backend_pid(database_url: str, name: str) -> int | None:
    """The PostgreSQL backend that holds the advisory lock `name` (a bigint key: classid high, objid low 32 bits)."""
    key = _lock_id(name) & 0xFFFF_FFFF_FFFF_FFFF
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            return connection.execute(sqlalchemy.text(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1 "
                "AND classid::bigint = :high AND objid::bigint = :low"),
                {"high": key >> 32, "low": key & 0xFFFF_FFFF}).scalar()
    finally:
        engine.dispose()


class Standby:
    """single_instance(standby=True) on a thread, with a counting sleep so the test sees each poll."""

    def __init__(self, database_url: str, name: str) -> None:
        self.polls = 0
        self.acquired = threading.Event()
        self.release = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(database_url, name), daemon=True)

    def _sleep(self, seconds: float) -> None:
        self.polls += 1
        threading.Event().wait(seconds)

    def _run(self, database_url: str, name: str) -> None:
        try:
            with single_instance(database_url, name, standby=True, poll_s=0.02, sleep=self._sleep,
                                 on_lock_lost=lambda: None):
                self.acquired.set()
                self.release.wait(DEADLINE_S)
        except BaseException as exc:  # reported by the test, not lost in the thread
            self.error = exc

    def __enter__(self) -> "Standby":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self._thread.join(DEADLINE_S)
        assert not self._thread.is_alive(), "the standby did not give its lock back"


def test_a_second_instance_without_standby_is_refused(postgres_url: str) -> None:
    name = unique_name()
    with single_instance(postgres_url, name):
        with pytest.raises(AlreadyRunning, match=f"another {name} is running"):
            with single_instance(postgres_url, name):
                pass
    with single_instance(postgres_url, name):  # released with its holder
        pass


def test_a_standby_waits_while_the_holder_lives_then_takes_over_when_its_connection_closes(
        postgres_url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    name = unique_name()
    holder = ExitStack()
    holder.enter_context(single_instance(postgres_url, name))
    try:
        with Standby(postgres_url, name) as standby:
            poll(lambda: standby.polls >= 5 or standby.error is not None, "the standby polled 5 times")
            assert standby.error is None
            assert not standby.acquired.is_set(), "the standby took a lock that is still held"

            holder.close()  # the holder's session ends, as when its process dies
            poll(standby.acquired.is_set, "the standby took the lock after the holder's connection closed")
            assert holder_backend_pid(postgres_url, name) is not None
            with pytest.raises(AlreadyRunning):  # the new holder is exclusive too
                with single_instance(postgres_url, name):
                    pass
    finally:
        holder.close()
    waiting = [r.getMessage() for r in caplog.records if "waiting for the lock held by another" in r.getMessage()]
    assert waiting == [f"standby: waiting for the lock held by another {name} (checking every 0.02 s)"], \
        "the wait is logged exactly once, however often it polls"
    assert any("took the lock" in r.getMessage() for r in caplog.records)


def test_a_standby_takes_over_when_the_holder_process_is_killed(postgres_url: str) -> None:
    name = unique_name()
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys\nfrom runtime.single_instance import single_instance\n"
         f"with single_instance({postgres_url!r}, {name!r}):\n"
         "    print('held', flush=True)\n    sys.stdin.read()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2])
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with Standby(postgres_url, name) as standby:
            poll(lambda: standby.polls >= 3, "the standby polled while the holder process lives")
            assert not standby.acquired.is_set()
            holder.send_signal(signal.SIGKILL)  # no clean exit: PostgreSQL ends the session when the socket closes
            holder.wait(DEADLINE_S)
            poll(standby.acquired.is_set, "the standby took the lock after the holder was SIGKILLed")
            assert standby.error is None
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(DEADLINE_S)


def test_a_standby_holder_stops_when_its_lock_session_dies(postgres_url: str) -> None:
    """Split brain guard: a holder whose session was killed (lock gone) must stop, since a standby takes over."""
    name = unique_name()
    lost = threading.Event()
    with single_instance(postgres_url, name, standby=True, poll_s=0.02, on_lock_lost=lost.set):
        pid = holder_backend_pid(postgres_url, name)
        assert pid is not None
        assert not lost.is_set()
        engine = make_engine(postgres_url)
        try:
            with engine.connect() as connection:
                assert connection.execute(sqlalchemy.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar()
        finally:
            engine.dispose()
        poll(lost.is_set, "the holder noticed that its lock's session is gone")
        with single_instance(postgres_url, name):  # the lock is free: a standby would have it now
            pass


def test_a_standby_with_a_bound_gives_up_naming_the_lock(postgres_url: str) -> None:
    name = unique_name()
    with single_instance(postgres_url, name):
        with pytest.raises(AlreadyRunning, match=f"another {name} still holds the lock after 0.1 s"):
            with single_instance(postgres_url, name, standby=True, poll_s=0.02, wait_max_s=0.1):
                pass


def test_poll_interval_must_be_positive(postgres_url: str) -> None:
    with pytest.raises(ValueError, match="poll_s: must be positive"):
        with single_instance(postgres_url, unique_name(), standby=True, poll_s=0):
            pass


def test_ledger_notifier_standby_waits_then_takes_over(settings: Settings, tmp_path: Path) -> None:
    """The real command: without --standby it refuses to start; with it, it waits and then runs."""
    env = env_for(settings, tmp_path / "data")
    name = f"notifier:{settings.topic_events}"
    holder = ExitStack()
    holder.enter_context(single_instance(settings.database_url or "", name))
    log_path = tmp_path / "standby.log"
    try:
        refused = subprocess.run([LEDGER, "notifier", "--idle-exit", "1"], env=env, capture_output=True, text=True,
                                 timeout=120, stdin=subprocess.DEVNULL)
        assert refused.returncode == 1
        assert f"another {name} is running" in refused.stderr

        with log_path.open("w") as log:
            standby = subprocess.Popen([LEDGER, "notifier", "--standby", "--idle-exit", "1"], env=env,
                                       stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            poll(lambda: "waiting for the lock held by another notifier" in log_path.read_text(),
                 "`ledger notifier --standby` said it waits", deadline_s=60)
            assert standby.poll() is None, "the standby exited instead of waiting"
            holder.close()
            assert standby.wait(120) == 0, log_path.read_text()
        finally:
            if standby.poll() is None:
                standby.kill()
                standby.wait(DEADLINE_S)
        output = log_path.read_text()
        assert output.count("waiting for the lock held by another notifier") == 1
        assert "took the lock" in output and "notifier stopped" in output
    finally:
        holder.close()
