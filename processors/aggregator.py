"""The earnings aggregator (Faust): folds ledger.events per payee; at each clock tick requests due closes.

Its state is rebuilt from ledger.events itself at every start, and is not kept in a Faust table: on
this broker a SIGKILLed worker's restored table missed an update whose input offset had already
been committed, so that payee's close was never decided (docs/decisions.md §20). After the rebuild
the agent on ledger.events continues from the group's committed offsets and skips, by per-payee
sequence, whatever the rebuild already applied. It never emits per input event. The agent on
ledger.clock decides closes from the state at each tick and sends them to ledger.commands with
deterministic ids: a close lost in a crash is decided again at the next tick, and one sent twice is
dropped by the sequencer.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone

import faust

from ledger.codec import EventCodec, UndecodableEvent
from ledger.earnings import PayeeEarnings
from processors.payout_run import fold_ledger
from projections.payout_controls import read_pause
from runtime.plans import plan_book
from runtime.settings import Settings

# A close refused by the sequencer never comes back: decide that payee again after this long.
PENDING_EXPIRY_S = 300.0

def make_app(settings: Settings, bootstrap: str, database_url: str) -> faust.App:
    app = faust.App(
        f"ledger-aggregator-{settings.topic_events}", broker=f"kafka://{bootstrap}", store="memory://",
        topic_partitions=settings.partitions_events, topic_replication_factor=settings.replication_factor,
        broker_session_timeout=settings.aggregator_session_timeout_s, broker_heartbeat_interval=1.0,
        processing_guarantee="at_least_once", consumer_auto_offset_reset="earliest", web_enabled=False,
        datadir=str(settings.data_dir / "aggregator"),
    )
    codec = EventCodec()
    book = plan_book(settings)
    policy = settings.payout_policy()
    events = app.topic(settings.topic_events, key_type=bytes, value_type=bytes, value_serializer="raw",
                       key_serializer="raw")
    clock = app.topic(settings.topic_clock, key_type=bytes, value_type=bytes, value_serializer="raw",
                      key_serializer="raw")
    commands = app.topic(settings.topic_commands, key_type=bytes, value_type=bytes, value_serializer="raw",
                         key_serializer="raw")
    state: dict[str, PayeeEarnings] = {}
    pending: dict[str, tuple[set[str], float]] = {}  # payee -> (close ids sent, when), until chained
    ready = asyncio.Event()

    @app.task
    async def rebuild() -> None:
        state.update(await asyncio.to_thread(fold_ledger, bootstrap, settings.topic_events, codec))
        ready.set()

    @app.agent(events, concurrency=1)
    async def fold(stream):  # noqa: ANN001 - a Faust stream
        async for value in stream:
            await ready.wait()
            try:
                event = codec.decode(value)
            except UndecodableEvent as exc:  # ledger.events is written by the sequencer only: stop
                raise RuntimeError(f"ledger.events holds an unreadable event: {exc.reason}") from None
            state.setdefault(event.payee_id, PayeeEarnings(event.payee_id)).apply(event)
            waiting = pending.get(event.payee_id)
            if waiting is not None:
                waiting[0].discard(event.envelope.event_id)
                if not waiting[0]:
                    del pending[event.payee_id]

    @app.agent(clock, concurrency=1)
    async def tick(stream):  # noqa: ANN001
        async for value in stream:
            await ready.wait()
            at = datetime.fromisoformat(value.decode()).astimezone(timezone.utc)
            if (await asyncio.to_thread(read_pause, database_url)).paused:
                continue  # emergency stop: nothing is requested; earnings keep folding
            for payee_id in sorted(state):
                waiting = pending.get(payee_id)
                if waiting is not None and time.monotonic() - waiting[1] < PENDING_EXPIRY_S:
                    continue  # decide again only on top of the closes already sent, once they are chained
                closes = state[payee_id].decide_closes(at, book, policy)
                for close in closes:
                    await commands.send(key=payee_id.encode(), value=codec.encode(close))
                if closes:
                    pending[payee_id] = ({close.envelope.event_id for close in closes}, time.monotonic())

    return app


def run_worker(settings: Settings, bootstrap: str, database_url: str) -> None:
    """Run the aggregator until SIGTERM/SIGINT."""
    from faust.worker import Worker

    app = make_app(settings, bootstrap, database_url)
    Worker(app, loglevel="WARN", quiet=True).execute_from_commandline()
