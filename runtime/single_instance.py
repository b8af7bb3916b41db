"""At most one process of a kind per ledger: a PostgreSQL advisory lock, released when the process dies.

Without `standby`, a second process exits at once with AlreadyRunning. With `standby` it is a hot
standby: it polls pg_try_advisory_lock every `poll_s` and becomes the active one as soon as the
holder's session ends (the holder exited, crashed, or lost its connection). That is how
`docker compose up --scale sequencer=2` runs: one active, the others waiting.

A standby that took over must not run beside a holder that is still alive but whose database session
died (the lock went with it). So in standby mode the holder also checks its lock's session every
`poll_s` and, when it is gone, stops the process at once (`on_lock_lost`, by default os._exit):
to the rest of the system that is a crash, which every processor already survives.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

import sqlalchemy

from runtime.database import make_engine

logger = logging.getLogger("ledger.single_instance")

EXIT_LOCK_LOST = 75  # EX_TEMPFAIL: restart me (compose's restart policy does), I will come back as a standby
WATCHDOG_JOIN_S = 10.0  # bound on waiting for the watchdog's last check when the holder stops


class AlreadyRunning(RuntimeError):
    """Another process holds the lock."""


def _lock_id(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def _exit_now() -> None:
    logger.critical("the database session holding the single-instance lock is gone: stopping now, "
                    "so that a standby can take over alone")
    logging.shutdown()
    os._exit(EXIT_LOCK_LOST)


def _try_lock(connection: sqlalchemy.Connection, lock_id: int, shared: bool = False) -> bool:
    function = "pg_try_advisory_lock_shared" if shared else "pg_try_advisory_lock"
    locked = connection.execute(sqlalchemy.text(f"SELECT {function}(:id)"), {"id": lock_id}).scalar()
    connection.commit()
    return bool(locked)


def _wait_for_lock(connection: sqlalchemy.Connection, lock_id: int, name: str, poll_s: float,
                   wait_max_s: float | None, sleep: Callable[[float], None]) -> None:
    """Poll until the lock is ours; log once that we wait and once that we took over."""
    deadline = None if wait_max_s is None else time.monotonic() + wait_max_s
    waited = False
    while not _try_lock(connection, lock_id):
        if not waited:
            logger.warning("standby: waiting for the lock held by another %s (checking every %g s)", name, poll_s)
            waited = True
        if deadline is not None and time.monotonic() >= deadline:
            raise AlreadyRunning(f"another {name} still holds the lock after {wait_max_s:g} s of waiting as a standby")
        sleep(poll_s)
    if waited:
        logger.warning("standby: took the lock; this %s is now the active one", name)


def _watch_session(connection: sqlalchemy.Connection, poll_s: float, stop: threading.Event,
                   on_lock_lost: Callable[[], None]) -> None:
    """Check every poll_s that the session holding the lock is alive; call on_lock_lost once if not."""
    while not stop.wait(poll_s):
        try:
            connection.execute(sqlalchemy.text("SELECT 1"))
            connection.commit()
        except Exception:  # any failure means the session (and with it the lock) cannot be trusted
            if not stop.is_set():
                on_lock_lost()
            return


@contextmanager
def single_instance(database_url: str, name: str, *, standby: bool = False, poll_s: float = 1.0,
                    wait_max_s: float | None = None, sleep: Callable[[float], None] = time.sleep,
                    on_lock_lost: Callable[[], None] = _exit_now, shared: bool = False) -> Iterator[None]:
    """Hold an exclusive session lock named `name` for the duration.

    shared=True: hold it shared instead, with any number of other shared holders (partitioned instances
    of a processor), and never beside an exclusive holder (the same processor run as a single instance).
    standby=False: raise AlreadyRunning if another process holds it.
    standby=True: wait for it (polling every poll_s; for ever unless wait_max_s), then watch the
    lock's session while holding it and call on_lock_lost if it dies.
    """
    if poll_s <= 0:
        raise ValueError(f"poll_s: must be positive, got {poll_s}")
    engine = make_engine(database_url, poolclass=sqlalchemy.pool.NullPool)
    connection = engine.connect()
    stop = threading.Event()
    watchdog: threading.Thread | None = None
    try:
        lock_id = _lock_id(name)
        if standby:
            _wait_for_lock(connection, lock_id, name, poll_s, wait_max_s, sleep)
            watchdog = threading.Thread(target=_watch_session, args=(connection, poll_s, stop, on_lock_lost),
                                        name=f"lock-watch-{name}", daemon=True)
            watchdog.start()
        elif not _try_lock(connection, lock_id, shared):
            if shared:
                raise AlreadyRunning(f"a single-instance {name} is running against this ledger: stop it before "
                                     "starting partitioned instances")
            raise AlreadyRunning(f"another {name} is running against this ledger (PostgreSQL advisory lock held)")
        yield
    finally:
        stop.set()
        if watchdog is not None:
            watchdog.join(WATCHDOG_JOIN_S)  # the connection is not shared: let the last check finish first
        connection.close()  # ends the session, releasing the lock
        engine.dispose()
