"""How a processor command holds its place in the ledger: alone (with an optional hot standby), or shared
with the other partitioned instances of the same processor (runtime/single_instance.py)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import click

from runtime.single_instance import AlreadyRunning, single_instance


@contextmanager
def processor_lock(database_url: str, name: str, *, partitioned: bool, standby: bool) -> Iterator[None]:
    """Partitioned instances hold the lock shared (never beside a single instance); a single one holds it alone."""
    if not partitioned:
        with single_instance(database_url, name, standby=standby):
            yield
        return
    if standby:
        raise click.UsageError("--standby is for a single instance; partitioned instances take over by themselves")
    try:
        with single_instance(database_url, name, shared=True):
            yield
    except AlreadyRunning as exc:
        raise click.ClickException(str(exc)) from None
