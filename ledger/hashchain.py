"""The per-payee hash chain: each event names the SHA-256 of the payee's previous event bytes.

An event's hash is taken over its exact encoded bytes as stored (which include its previous_hash),
so editing, dropping or reordering any event breaks the link to the event after it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterable

GENESIS_HASH = "0" * 64


def event_hash(encoded: bytes) -> str:
    """Hex SHA-256 of one event's stored bytes."""
    return hashlib.sha256(encoded).hexdigest()


@dataclass(frozen=True, slots=True)
class ChainLink:
    """What verification needs of one stored event."""

    payee_id: str
    sequence: int | None
    previous_hash: str | None
    encoded: bytes


@dataclass(frozen=True, slots=True)
class ChainBreak:
    payee_id: str
    position: int  # 0-based index in the payee's stream as read
    sequence: int | None
    reason: str


def verify_chain(links: Iterable[ChainLink]) -> tuple[dict[str, str], list[ChainBreak]]:
    """Check every payee's chain in read order; return each payee's head hash and every break found.

    After a break, verification continues from the event as stored, so one edit is reported once
    rather than cascading through the rest of the chain.
    """
    expected_sequence: dict[str, int] = {}
    head: dict[str, str] = {}
    positions: dict[str, int] = {}
    breaks: list[ChainBreak] = []
    for link in links:
        position = positions.get(link.payee_id, 0)
        positions[link.payee_id] = position + 1
        want_sequence = expected_sequence.get(link.payee_id, 1)
        want_previous = head.get(link.payee_id, GENESIS_HASH)
        if link.sequence is None or link.previous_hash is None:
            breaks.append(ChainBreak(link.payee_id, position, link.sequence, "event is not sequenced"))
        else:
            if link.sequence != want_sequence:
                breaks.append(
                    ChainBreak(
                        link.payee_id,
                        position,
                        link.sequence,
                        f"sequence {link.sequence} where {want_sequence} was expected (gap, duplicate or reorder)",
                    )
                )
            if link.previous_hash != want_previous:
                breaks.append(
                    ChainBreak(
                        link.payee_id,
                        position,
                        link.sequence,
                        "previous_hash does not match the hash of the payee's previous event (edited or reordered)",
                    )
                )
            expected_sequence[link.payee_id] = link.sequence + 1
        head[link.payee_id] = event_hash(link.encoded)
    return head, breaks
