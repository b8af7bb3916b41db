"""The Celery peer of the payout benchmark (bench/run_all.py, phase d): the same Stripe payouts through a Celery
worker on Redis, the usual Python way of running provider calls in parallel.

Worker side: the Celery app `app` and its one task, `bench.pay_stripe`: one Stripe transfer through the real
`stripe` SDK (idempotency key = payout id), then one INSERT of its outcome into `celery_payouts` in the
benchmark's own PostgreSQL schema. The worker learns where everything is from BENCH_CELERY_* variables.

Driver side: `pay_through_celery` starts `celery -A celery_peer worker` as a process (its own session, bounded
waits), queues the payouts on a queue of the run's own in a Redis database of the benchmark's own, polls the table
until every payout has an outcome, then stops the worker and deletes the Redis keys the run made.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy
import stripe
from celery import Celery

from bench_processes import BenchFailure
from runtime.database import make_engine

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/12"  # database 12: the benchmark's own; each run has its own queue
TASK = "bench.pay_stripe"
TABLE = "celery_payouts"
BENCH_DIR = Path(__file__).resolve().parent
BROKER_ENV, QUEUE_ENV, DATABASE_ENV = "BENCH_CELERY_BROKER", "BENCH_CELERY_QUEUE", "BENCH_CELERY_DATABASE_URL"
STRIPE_BASE_ENV, POOL_SIZE_ENV = "BENCH_CELERY_STRIPE_API_BASE", "BENCH_CELERY_DB_POOL"
STRIPE_KEY = "sk_test_bench"
STARTUP_S = 60.0  # the worker must say it is ready within this
STOP_S = 30.0  # warm shutdown (SIGTERM) before SIGKILL of its process group
POLL_S = 0.1  # the worker's log, while it starts
FOLLOW_S = 0.2  # the table, while the payouts run
REDIS_BOOKKEEPING = ("unacked", "unacked_index", "unacked_mutex")  # kombu's keys for acks_late, per database

INSERT = sqlalchemy.text(
    f"INSERT INTO {TABLE} (payout_id, run, outcome, transfer_id, amount_minor, currency, ended_at, detail) "
    "VALUES (:payout_id, :run, :outcome, :transfer_id, :amount_minor, :currency, :ended_at, :detail) "
    "ON CONFLICT (payout_id) DO NOTHING")  # a redelivered task (acks_late) finds its row: one outcome per payout


# ------------------------------------------------------------------------------------------------ worker side

def make_app(broker_url: str, queue: str) -> Celery:
    """The app, as a payments team would configure it: acks_late (a task lost with its worker runs again: safe, as
    the idempotency key makes the retry replay the same transfer), no result backend (the row is the result)."""
    app = Celery("celery_peer", broker=broker_url, set_as_current=False)
    app.conf.update(task_default_queue=queue, task_ignore_result=True, task_acks_late=True,
                    worker_prefetch_multiplier=4, worker_enable_remote_control=False, worker_send_task_events=False,
                    broker_connection_retry_on_startup=False, broker_transport_options={"visibility_timeout": 600})
    app.task(name=TASK)(pay_stripe)
    return app


_held: dict[str, object] = {}
_held_lock = threading.Lock()


def _resources() -> tuple[stripe.StripeClient, sqlalchemy.Engine]:
    """One Stripe client and one engine per worker process (made after the prefork pool forked), shared by threads."""
    with _held_lock:
        if _held.get("pid") != os.getpid():
            _held.update(pid=os.getpid(), client=stripe.StripeClient(
                STRIPE_KEY, base_addresses={"api": os.environ[STRIPE_BASE_ENV]}, max_network_retries=2,
                http_client=stripe.new_default_http_client(timeout=30)),
                engine=make_engine(os.environ[DATABASE_ENV], pool_size=int(os.environ.get(POOL_SIZE_ENV, "1")),
                                   max_overflow=0, pool_timeout=30))
        return _held["client"], _held["engine"]  # type: ignore[return-value]


def pay_stripe(payout_id: str, run: str, destination: str, amount_minor: int, currency: str) -> str:
    """One payout: a Stripe transfer (idempotency key = payout id), then its outcome as one row."""
    client, engine = _resources()
    try:
        transfer = client.v1.transfers.create(
            params={"amount": amount_minor, "currency": currency.lower(), "destination": destination,
                    "transfer_group": payout_id, "metadata": {"payout_id": payout_id}},
            options={"idempotency_key": payout_id})
        outcome, transfer_id, detail = "settled", transfer.id, None
    except stripe.StripeError as exc:  # a final answer for the benchmark: it counts failures, it does not retry
        outcome, transfer_id, detail = "failed", None, f"{type(exc).__name__}: {exc}"[:500]
    with engine.begin() as connection:
        connection.execute(INSERT, {"payout_id": payout_id, "run": run, "outcome": outcome, "transfer_id": transfer_id,
                                    "amount_minor": amount_minor, "currency": currency, "ended_at": time.time(),
                                    "detail": detail})
    return outcome


# Celery logs two INFO lines per task (received, succeeded), as `ledger transfers` logs two per payout (paying,
# settled); the SDK's own request lines stay out, as they do in the ledger's processes (root logger at WARNING).
logging.getLogger("stripe").setLevel(logging.WARNING)
app = make_app(os.environ.get(BROKER_ENV, DEFAULT_REDIS_URL), os.environ.get(QUEUE_ENV, "ledger-bench-payouts"))


# ------------------------------------------------------------------------------------------------ driver side

def preflight(redis_url: str) -> None:
    """Before the run spends minutes on other phases: Redis answers at redis_url (and its client is installed)."""
    try:
        import redis
    except ImportError as exc:
        raise BenchFailure(f"the Celery peer needs the bench extra (`make install`, or pip install -e '.[bench]'), "
                           f"or run with --skip-peer: {exc}") from None
    client = redis.Redis.from_url(redis_url, socket_connect_timeout=3, socket_timeout=5)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise BenchFailure(f"the Celery peer needs Redis at {redis_url} and could not reach it ({exc}); start "
                           "redis-server there, pass --peer-redis, or run with --skip-peer") from None
    finally:
        client.close()


def create_table(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        with engine.begin() as connection:
            connection.execute(sqlalchemy.text(
                f"CREATE TABLE IF NOT EXISTS {TABLE} (payout_id text PRIMARY KEY, run text NOT NULL, "
                "outcome text NOT NULL, transfer_id text, amount_minor bigint NOT NULL, currency text NOT NULL, "
                "ended_at double precision NOT NULL, detail text)"))
    finally:
        engine.dispose()


class CeleryWorker:
    """`celery -A celery_peer worker` in its own session; output in log_dir/<name>.log."""

    def __init__(self, name: str, pool: str, concurrency: int, queue: str, env: dict[str, str],
                 log_dir: Path) -> None:
        self.name, self.log_path = name, log_dir / f"{name}.log"
        command = [sys.executable, "-m", "celery", "-A", "celery_peer", "worker", "--pool", pool,
                   "--concurrency", str(concurrency), "--queues", queue, "--hostname", f"{name}@%h",
                   "--loglevel", "INFO", "--without-gossip", "--without-mingle", "--without-heartbeat"]
        self.started_at = time.time()
        with self.log_path.open("wb") as log:
            self.popen = subprocess.Popen(command, cwd=BENCH_DIR, env=env, stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, start_new_session=True)

    def tail(self, lines: int = 12) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(f"    {line}" for line in text.splitlines()[-lines:]) or "    (no output)"

    def check_alive(self, during: str) -> None:
        if self.popen.poll() is not None:
            raise BenchFailure(f"the Celery worker {self.name} exited with {self.popen.returncode} during {during}; "
                               f"its last lines ({self.log_path}):\n{self.tail()}")

    def wait_ready(self, timeout_s: float) -> float:
        """Until its log says `<name>@<host> ready.`; returns the seconds since it was started."""
        deadline = time.monotonic() + timeout_s
        while f"{self.name}@" not in (text := self.log_path.read_text(errors="replace")) or " ready." not in text:
            self.check_alive("start-up")
            if time.monotonic() > deadline:
                raise BenchFailure(f"the Celery worker {self.name} was not ready within {timeout_s:.0f} s; its last "
                                   f"lines:\n{self.tail()}")
            time.sleep(POLL_S)
        return time.time() - self.started_at

    def stop(self) -> int | None:
        """SIGTERM (warm shutdown: running tasks finish), then SIGKILL to its process group (the pool's children)."""
        for signum, wait_s in ((signal.SIGTERM, STOP_S), (signal.SIGKILL, 5.0)):
            if self.popen.poll() is not None:
                break
            try:
                if signum == signal.SIGTERM:
                    os.kill(self.popen.pid, signum)
                else:
                    os.killpg(self.popen.pid, signum)  # its own session: the worker and the children it forked
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(wait_s)
            except subprocess.TimeoutExpired:
                continue
        try:  # children the pool left behind (the worker itself died first): its group outlives it, so the id is ours
            os.killpg(self.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return self.popen.returncode


def remove_keys(redis_url: str, queue: str) -> None:
    """Delete what the run left in Redis: its queue (and kombu's binding of it) and kombu's acks_late bookkeeping."""
    import redis

    client = redis.Redis.from_url(redis_url, socket_connect_timeout=3, socket_timeout=5)
    try:
        keys = list(client.scan_iter(match=f"*{queue}*", count=1000)) + list(REDIS_BOOKKEEPING)
        client.delete(*keys)
    finally:
        client.close()


@dataclass
class CeleryRun:
    settled_at: list[float]  # sorted: when each settled payout's row was written (worker's clock, this machine)
    failed: int
    failures: list[str]  # the first few failures' error text
    worker_start_s: float  # from the worker's start to its `ready.`
    enqueued_from: float  # time.time() when the first task was sent
    enqueue_s: float  # time to send every task
    exit_code: int | None


def pay_through_celery(ctx, server, log_dir: Path, redis_url: str, name: str, count: int, pool: str,  # noqa: ANN001
                       concurrency: int, timeout_s: float) -> CeleryRun:
    """`count` new Stripe accounts, paid once each by a Celery worker (pool, concurrency); bounded by timeout_s."""
    preflight(redis_url)
    create_table(ctx.database_url)
    run, queue = f"{ctx.run_id}-{name}", f"ledger-bench-{ctx.run_id}-{name}"
    jobs = [(f"{run}-{i}", run, server.create_account(), 5_000 + i % 97, "USD") for i in range(count)]
    env = {**os.environ, BROKER_ENV: redis_url, QUEUE_ENV: queue, DATABASE_ENV: ctx.database_url,
           STRIPE_BASE_ENV: server.url, POOL_SIZE_ENV: str(concurrency if pool == "threads" else 1),
           "PYTHONPATH": os.pathsep.join(filter(None, (str(BENCH_DIR), os.environ.get("PYTHONPATH"))))}
    starting = ctx.progress.add_task(f"(d) payouts {name}: starting the Celery worker ({pool}, {concurrency})",
                                     total=None)
    worker = CeleryWorker(name, pool, concurrency, queue, env, log_dir)
    sender = make_app(redis_url, queue)
    engine = make_engine(ctx.database_url)
    try:
        worker_start_s = worker.wait_ready(STARTUP_S)
        ctx.progress.update(starting, total=1, completed=1)
        task = ctx.progress.add_task(f"(d) payouts {name}: settled", total=count)
        enqueued_from = time.time()
        with sender.producer_or_acquire() as producer:
            for job in jobs:
                sender.send_task(TASK, args=job, queue=queue, producer=producer)
        enqueue_s = time.time() - enqueued_from
        deadline = time.monotonic() + timeout_s
        count_rows = sqlalchemy.text(f"SELECT count(*) FROM {TABLE} WHERE run = :run")
        while True:
            with engine.connect() as connection:
                done = connection.execute(count_rows, {"run": run}).scalar_one()
            ctx.progress.update(task, completed=done)
            if done >= count:
                break
            worker.check_alive(f"(d) payouts {name}")
            if time.monotonic() > deadline:
                raise BenchFailure(f"(d) payouts {name}: {done} of {count} Celery payouts ended after "
                                   f"{timeout_s:.0f} s; the worker's last lines:\n{worker.tail()}")
            time.sleep(FOLLOW_S)
        with engine.connect() as connection:
            rows = connection.execute(sqlalchemy.text(
                f"SELECT outcome, ended_at, detail FROM {TABLE} WHERE run = :run"), {"run": run}).all()
    finally:
        exit_code = worker.stop()
        engine.dispose()
        sender.close()
        try:
            remove_keys(redis_url, queue)
        except Exception as exc:  # best effort: say so, keep the run's own outcome
            ctx.progress.console.print(f"could not delete the Redis keys of {queue} at {redis_url}: {exc}")
    failures = [detail for outcome, _, detail in rows if outcome != "settled"]
    return CeleryRun(sorted(ended for outcome, ended, _ in rows if outcome == "settled"), len(failures), failures[:3],
                     worker_start_s, enqueued_from, enqueue_s, exit_code)

