"""Partition leases in PostgreSQL: the instances of one processor share the partitions of its topic.

The rules (tables: migration 0010):
- A partition has at most one owner at a time, with an epoch (fencing token) that grows by one on every
  claim; a graceful release clears owner and expiry and keeps the epoch.
- Expiries are by PostgreSQL's clock (the hosts' clocks may differ). Locally, a lease is ours until its
  deadline: the time.monotonic() reading taken just before the claim or renewal was sent, + ttl_s. That is
  never later than the database's expiry, so valid_for() is conservative.
- Live members: heartbeat (expires_at = now() + ttl) still ahead. Fair share: live members sorted by name
  (Python's order, not the database's collation); partition i belongs to members[i % len(members)], so
  every member computes the same map. A member claims only its own share (everything when it is the only
  live member), and only leases that are free or expired: a share still held by another member waits
  until that member releases it (it reports it in to_release) or its lease expires.
- A lease renewed with another epoch, or not renewed because its owner changed, is lost: stop at once and
  write nothing more for it. If a renewal fails with a database error nothing is renewed: valid_for() runs
  down to 0 by itself, owned() keeps the partition until a renewal succeeds (same epoch: still ours) or
  finds it taken (reported lost by the next rebalance()). Every change is logged and counted.
- A write made for partitions calls guard() in its transaction: the rows are locked FOR SHARE and checked
  (owner, epoch, expires_at > clock_timestamp()). A claim of a locked row waits until that transaction ends,
  so a guarded write is committed before any new owner starts.
- Nothing waits without bound: every statement runs under a statement_timeout (ttl_s in the caller's
  calls, renew_every_s / 2 in the renewer thread), and the renewer stops within renew_every_s of stop().
  A transaction that called guard() also delays the renewal of those rows: keep it well under
  renew_every_s / 2, and never call rebalance(), release() or stop() inside it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterable, Iterator
from uuid import uuid4

import sqlalchemy
from sqlalchemy import text

from runtime.metrics import PARTITION_CHANGES, PARTITIONS_OWNED, PARTITIONS_TOTAL

logger = logging.getLogger("ledger.partitions")

_TTL = "now() + make_interval(secs => :ttl)"
_HEARTBEAT_AND_RENEW = text(  # one statement, so one bounded round trip per renewal
    "WITH beat AS (INSERT INTO partition_members (grp, member, expires_at) VALUES (:g, :me, " + _TTL + ") "
    "ON CONFLICT (grp, member) DO UPDATE SET expires_at = EXCLUDED.expires_at) "
    "UPDATE partition_leases SET expires_at = " + _TTL + " "
    "WHERE grp = :g AND partition = ANY(CAST(:mine AS int[])) AND owner = :me RETURNING partition, epoch")
_CREATE_ROWS = text("INSERT INTO partition_leases (grp, partition) SELECT :g, generate_series(0, :n - 1) "
                    "ON CONFLICT DO NOTHING")
_LIVE = text("SELECT member FROM partition_members WHERE grp = :g AND expires_at > now()")
_CLAIM = text("UPDATE partition_leases SET owner = :me, epoch = epoch + 1, expires_at = " + _TTL + " "
              "WHERE grp = :g AND partition = :p AND (owner IS NULL OR expires_at <= now()) RETURNING epoch")
_RELEASE = text("UPDATE partition_leases SET owner = NULL, expires_at = NULL "
                "WHERE grp = :g AND partition = :p AND owner = :me AND epoch = :e")
_GUARD = text("SELECT partition, owner, epoch, expires_at > clock_timestamp() AS live FROM partition_leases "
              "WHERE grp = :g AND partition = ANY(CAST(:ps AS int[])) ORDER BY partition FOR SHARE")
_WHO = text("SELECT partition, owner, epoch FROM partition_leases "
            "WHERE grp = :g AND partition = ANY(CAST(:ps AS int[]))")
_LEAVE = text("DELETE FROM partition_members WHERE grp = :g AND member = :me")


class Fenced(RuntimeError):
    """This instance no longer owns a partition it acted for."""

    def __init__(self, partition: int, reason: str):
        super().__init__(f"partition {partition}: {reason}")
        self.partition = partition
        self.reason = reason


@dataclass(frozen=True)
class Change:
    """What one rebalance() found. Apply lost first: a partition lost earlier can be gained again (new epoch)."""

    gained: dict[int, int]  # partition -> epoch, newly ours
    lost: set[int]          # were ours, are not (expired, taken, or renew failed): stop at once, write nothing
    to_release: set[int]    # ours, but the fair share gives them to another live member: checkpoint, then release()


def _first_line(error: BaseException) -> str:
    return (str(error).splitlines() or [type(error).__name__])[0]


class PartitionLeases:
    """This instance's leases on the partitions 0..partitions-1 of `group` (one topic of one processor)."""

    def __init__(self, engine: sqlalchemy.Engine, group: str, partitions: int, *, member: str | None = None,
                 ttl_s: float = 10.0, renew_every_s: float = 2.0, processor: str = "") -> None:
        if partitions < 1 or not 0 < renew_every_s < ttl_s:
            raise ValueError("need partitions >= 1 and 0 < renew_every_s < ttl_s")
        self.engine, self.group, self.partitions = engine, group, partitions
        self.member = member or f"{socket.gethostname()}-{os.getpid()}-{uuid4().hex[:6]}"
        self.ttl_s, self.renew_every_s = ttl_s, renew_every_s
        self.processor = processor or group  # the label of metrics and logs
        PARTITIONS_TOTAL.labels(self.processor).set(partitions)
        PARTITIONS_OWNED.labels(self.processor).set(0)
        self._lock = threading.Lock()  # guards the local view below, shared with the renewer thread
        self._rebalancing = threading.Lock()  # one rebalance() or stop() at a time
        self._held: dict[int, tuple[int, float]] = {}  # partition -> (epoch, local monotonic deadline)
        self._lost: set[int] = set()  # found lost since the last rebalance() reported
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._rows_ready = False
        self.live_members = 1  # as the last rebalance() found them (this instance included)

    def start(self) -> None:
        """Register as a live member, then renew (heartbeat + held leases) every renew_every_s in a daemon thread."""
        self._renew(self.ttl_s)
        self._stop.clear()
        self._thread = threading.Thread(target=self._renew_forever, name=f"leases-{self.group}-{self.member}",
                                        daemon=True)
        self._thread.start()

    def rebalance(self) -> Change:
        """Heartbeat and renew, then claim the partitions of my fair share that are free or expired.
        Raises the database's error if the heartbeat and renewal fail (nothing changed; call again)."""
        with self._rebalancing:
            self._renew(self.ttl_s)
            with self._tx(self.ttl_s) as connection:
                if not self._rows_ready:
                    connection.execute(_CREATE_ROWS, {"g": self.group, "n": self.partitions})
                live = set(connection.execute(_LIVE, {"g": self.group}).scalars())
            self._rows_ready = True
            members = sorted(live | {self.member})  # just heartbeated: live, unless ttl_s is below the round trip
            self.live_members = len(members)
            fair = {p: members[p % len(members)] for p in range(self.partitions)}
            held = self.owned()
            gained: dict[int, int] = {}
            for partition in sorted(p for p, owner in fair.items() if owner == self.member and p not in held):
                started = time.monotonic()
                try:
                    with self._tx(self.ttl_s) as connection:
                        epoch = connection.execute(_CLAIM, self._params(p=partition)).scalar()
                except sqlalchemy.exc.SQLAlchemyError as error:  # a timeout behind a guarded write, say: next time
                    logger.warning("%s partition %d: claim failed (%s)", self.processor, partition, _first_line(error))
                    continue
                if epoch is not None:
                    with self._lock:
                        self._held[partition] = (epoch, started + self.ttl_s)
                    gained[partition] = epoch
                    self._note(partition, "gained", f"gained (epoch {epoch})")
            with self._lock:  # a gain already lost again is reported as lost only: apply lost, then gained
                lost, self._lost = self._lost, set()
                gained = {p: epoch for p, epoch in gained.items() if self._held.get(p, (None,))[0] == epoch}
                to_release = {p for p in self._held if fair[p] != self.member}
            return Change(gained=gained, lost=lost, to_release=to_release)

    def owned(self) -> dict[int, int]:
        """Partition -> epoch of the leases held by the local view (see valid_for() for how long)."""
        with self._lock:
            return {partition: epoch for partition, (epoch, _) in self._held.items()}

    def valid_for(self, partition: int) -> float:
        """Seconds left on my lease of `partition` by the local monotonic clock; 0.0 if it is not mine."""
        with self._lock:
            held = self._held.get(partition)
        return max(0.0, held[1] - time.monotonic()) if held else 0.0

    def guard(self, connection: sqlalchemy.Connection, partitions: Iterable[int]) -> None:
        """In the caller's transaction: lock the lease rows FOR SHARE and raise Fenced unless each one is
        owned by me, with my epoch, and not expired. A claim of these rows then waits for the commit."""
        wanted = sorted(set(partitions))
        mine = self.owned()
        for partition in wanted:
            if partition not in mine:
                raise Fenced(partition, "not owned by this instance")
        rows = {row.partition: row for row in connection.execute(_GUARD, {"g": self.group, "ps": wanted})}
        for partition in wanted:
            row = rows.get(partition)
            if row is None:
                raise Fenced(partition, "no lease row")
            if row.owner != self.member:
                raise Fenced(partition, f"owned by {row.owner or 'nobody'} (epoch {row.epoch})")
            if row.epoch != mine[partition]:
                raise Fenced(partition, f"epoch {row.epoch} in the database, {mine[partition]} here")
            if not row.live:
                raise Fenced(partition, f"lease expired (epoch {row.epoch})")

    def release(self, partitions: Iterable[int]) -> None:
        """Give up leases gracefully (owner and expiry cleared, epoch kept) after checkpointing them.
        They leave the local view at once; if the database cannot be told, they expire within ttl_s."""
        with self._lock:
            dropping = {p: self._held.pop(p)[0] for p in set(partitions) if p in self._held}
        if not dropping:
            return
        try:
            with self._tx(self.ttl_s) as connection:
                done = {p for p, epoch in dropping.items()
                        if connection.execute(_RELEASE, self._params(p=p, e=epoch)).rowcount}
        except sqlalchemy.exc.SQLAlchemyError as error:
            logger.warning("%s: releasing partitions %s failed (%s): their leases expire within %g s",
                           self.processor, sorted(dropping), _first_line(error), self.ttl_s)
            done = set(dropping)
        for partition in sorted(dropping):
            if partition in done:
                self._note(partition, "released", "released")
            else:
                self._note(partition, "lost", "lost: taken before it was released")

    def stop(self) -> None:
        """Stop the renewer thread, release every lease, and leave the group (delete my member row)."""
        with self._rebalancing:
            self._stop.set()
            if self._thread is not None:
                self._thread.join(self.renew_every_s * 2)
                if self._thread.is_alive():
                    logger.warning("%s: the lease renewer did not stop in time", self.processor)
                self._thread = None
            self.release(self.owned())
            try:
                with self._tx(self.ttl_s) as connection:
                    connection.execute(_LEAVE, {"g": self.group, "me": self.member})
            except sqlalchemy.exc.SQLAlchemyError as error:
                logger.warning("%s: leaving the group failed (%s): my heartbeat expires within %g s",
                               self.processor, _first_line(error), self.ttl_s)

    def _params(self, **more: object) -> dict[str, object]:
        return {"g": self.group, "me": self.member, "ttl": self.ttl_s, **more}

    @contextmanager
    def _tx(self, timeout_s: float) -> Iterator[sqlalchemy.Connection]:
        """A transaction on a connection of the engine, each statement bounded by timeout_s."""
        with self.engine.begin() as connection:
            connection.execute(text("SELECT set_config('statement_timeout', :ms, true)"),
                               {"ms": str(max(1, int(timeout_s * 1000)))})
            yield connection

    def _renew_forever(self) -> None:
        while not self._stop.wait(self.renew_every_s):
            try:
                self._renew(self.renew_every_s / 2)
            except Exception as error:  # keep renewing; the leases run down locally meanwhile
                logger.warning("%s: renewing partition leases failed (%s)", self.processor, _first_line(error))

    def _renew(self, timeout_s: float) -> None:
        """Heartbeat and renew every lease of the local view; one not renewed with its epoch is lost."""
        mine = self.owned()
        started = time.monotonic()
        with self._tx(timeout_s) as connection:
            renewed = dict(connection.execute(_HEARTBEAT_AND_RENEW, self._params(mine=sorted(mine))).all())
            gone = {p for p, epoch in mine.items() if renewed.get(p) != epoch}
            who = {}
            if gone:  # rare: ask why, for the log
                who = {row.partition: row for row in connection.execute(_WHO, {"g": self.group, "ps": sorted(gone)})}
        lost: dict[int, str] = {}
        with self._lock:
            for partition, epoch in mine.items():
                current = self._held.get(partition)
                if current is None or current[0] != epoch:
                    continue  # released (or lost and claimed again) meanwhile: not this renewal's business
                if partition in gone:
                    del self._held[partition]
                    self._lost.add(partition)
                    lost[partition] = self._why(who.get(partition), epoch)
                else:
                    self._held[partition] = (epoch, max(current[1], started + self.ttl_s))
        for partition, why in sorted(lost.items()):
            self._note(partition, "lost", f"lost: {why}")

    def _why(self, row: sqlalchemy.Row | None, epoch: int) -> str:
        if row is None:
            return "its lease row is gone"
        if row.owner is None:
            return f"released by another instance (epoch {row.epoch})"
        if row.owner != self.member:
            return f"taken by {row.owner} (epoch {row.epoch})"
        return f"epoch {row.epoch} in the database, {epoch} here"

    def _note(self, partition: int, change: str, what: str) -> None:
        logger.info("%s partition %d: %s", self.processor, partition, what)
        PARTITION_CHANGES.labels(self.processor, change).inc()
        with self._lock:
            PARTITIONS_OWNED.labels(self.processor).set(len(self._held))
