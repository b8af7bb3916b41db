"""The per-payee hash chain: PayeeChains builds it from encoded bytes, verify_chain finds every break.

Chains here are real: events are encoded with EventCodec, sequenced by PayeeChains, and the links
verify_chain checks are read back out of the stored bytes.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from event_factory import make_event, with_payload
from ledger.codec import EventCodec, EventEncodingError
from ledger.events import Event
from ledger.guards import InvariantViolation
from ledger.hashchain import GENESIS_HASH, ChainBreak, ChainLink, event_hash, verify_chain
from ledger.money import Money
from ledger.sequencing import ChainHead, PayeeChains

CODEC = EventCodec()
CHAIN_TYPES = ("PaymentCompleted", "EarningsAdjusted", "PaymentRefunded")  # all carry an `amount`
CODE_OF = {"alice": "USD", "bakary": "XOF", "chaima": "BHD"}


def new_event(payee: str, index: int) -> Event:
    """A distinct unsequenced event for payee, its amount varying with index."""
    event_type = CHAIN_TYPES[index % len(CHAIN_TYPES)]
    event = make_event(event_type, CODE_OF.get(payee, "USD"), payee_id=payee, event_id=f"evt-{payee}-{index}")
    return with_payload(event, amount=Money.of(1000 + 37 * index, CODE_OF.get(payee, "USD")))


def build(order: list[str]) -> tuple[PayeeChains, list[bytes]]:
    """Sequence one new event per entry of order (a payee id), interleaved as given."""
    sequencer = PayeeChains(CODEC.encode)
    stored = [sequencer.append(new_event(payee, index))[1] for index, payee in enumerate(order)]
    return sequencer, stored


def link(data: bytes) -> ChainLink:
    """What a verifier reads back from one stored event."""
    event = CODEC.decode(data)
    return ChainLink(event.payee_id, event.envelope.sequence, event.envelope.previous_hash, data)


def verify(stored: list[bytes]) -> tuple[dict[str, str], list[ChainBreak]]:
    return verify_chain(link(data) for data in stored)


def edit_amount(data: bytes) -> bytes:
    """The same event, one minor unit more, re-encoded: its sequence and previous_hash are kept."""
    event = CODEC.decode(data)
    amount = event.payload["amount"]
    edited = CODEC.encode(with_payload(event, amount=Money(amount.amount_minor + 1, amount.currency)))
    assert edited != data and len(edited) == len(data)
    assert CODEC.decode(edited).envelope == event.envelope
    return edited


def positions_of(stored: list[bytes], payee: str) -> list[int]:
    return [i for i, data in enumerate(stored) if CODEC.decode(data).payee_id == payee]


def breaks_of(breaks: list[ChainBreak], payee: str) -> list[ChainBreak]:
    return [b for b in breaks if b.payee_id == payee]


ORDER = ["alice", "bakary", "alice", "chaima", "bakary", "alice", "chaima", "alice", "bakary", "alice"]


# --- an intact chain ----------------------------------------------------------------------


def test_intact_interleaved_chains_verify_and_report_their_heads() -> None:
    sequencer, stored = build(ORDER)
    heads, breaks = verify(stored)
    assert breaks == []
    last = {CODEC.decode(data).payee_id: data for data in stored}
    assert heads == {payee: event_hash(data) for payee, data in last.items()}
    assert heads == {payee: head.hash for payee, head in sequencer.heads.items()}
    assert {p: h.sequence for p, h in sequencer.heads.items()} == {"alice": 5, "bakary": 3, "chaima": 2}


def test_sequencer_numbers_from_one_and_links_each_event_to_the_previous_bytes() -> None:
    _, stored = build(ORDER)
    previous: dict[str, bytes] = {}
    for data in stored:
        envelope = CODEC.decode(data).envelope
        before = previous.get(envelope.payee_id)
        if before is None:
            assert (envelope.sequence, envelope.previous_hash) == (1, GENESIS_HASH)
        else:
            assert envelope.sequence == CODEC.decode(before).envelope.sequence + 1
            assert envelope.previous_hash == event_hash(before)
        previous[envelope.payee_id] = data


def test_event_hash_is_hex_sha256_of_the_bytes() -> None:
    assert event_hash(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert len(event_hash(b"\xc3\x01")) == 64 and GENESIS_HASH == "0" * 64


def test_sequencer_refuses_an_already_sequenced_event() -> None:
    sequencer = PayeeChains(CODEC.encode)
    sequenced, _ = sequencer.append(new_event("alice", 0))
    with pytest.raises(InvariantViolation, match=r"event evt-alice-0 is already sequenced"):
        sequencer.append(sequenced)
    assert sequencer.heads["alice"].sequence == 1


def test_sequencer_does_not_advance_when_encoding_fails() -> None:
    sequencer = PayeeChains(CODEC.encode)
    sequencer.append(new_event("alice", 0))
    head = dataclasses.replace(sequencer.heads["alice"])
    bad = make_event("PaymentCompleted", payee_id="alice", event_id="evt-bad", services="three")
    with pytest.raises(EventEncodingError, match=r"PaymentCompleted\.services is 'three' \(str\), expected an integer"):
        sequencer.append(bad)
    assert sequencer.heads["alice"] == head
    assert sequencer.heads.get("nobody", ChainHead()) == ChainHead(0, GENESIS_HASH)


# --- tampering ----------------------------------------------------------------------------


def test_edited_amount_breaks_the_link_to_the_next_event() -> None:
    _, stored = build(ORDER)
    alice = positions_of(stored, "alice")
    stored[alice[2]] = edit_amount(stored[alice[2]])
    _, breaks = verify(stored)
    assert breaks == [
        ChainBreak(
            "alice",
            3,
            4,
            "previous_hash does not match the hash of the payee's previous event (edited or reordered)",
        )
    ]


def test_one_changed_byte_anywhere_breaks_the_link() -> None:
    _, stored = build(ORDER)
    alice = positions_of(stored, "alice")
    original = stored[alice[1]]
    event = CODEC.decode(original)
    at = original.index(b"pi_3Pq") + 3
    flipped = original[:at] + b"X" + original[at + 1 :]
    links = [link(data) for data in stored]
    links[alice[1]] = ChainLink("alice", event.envelope.sequence, event.envelope.previous_hash, flipped)
    _, breaks = verify_chain(links)
    assert [(b.payee_id, b.position, b.sequence) for b in breaks] == [("alice", 2, 3)]


def test_dropped_event_is_a_sequence_gap() -> None:
    _, stored = build(ORDER)
    del stored[positions_of(stored, "bakary")[1]]
    _, breaks = verify(stored)
    assert [(b.payee_id, b.position, b.sequence) for b in breaks] == [("bakary", 1, 3), ("bakary", 1, 3)]
    assert breaks[0].reason == "sequence 3 where 2 was expected (gap, duplicate or reorder)"
    assert breaks[1].reason.startswith("previous_hash does not match")


def test_dropped_first_event_is_detected() -> None:
    _, stored = build(ORDER)
    del stored[positions_of(stored, "chaima")[0]]
    _, breaks = verify(stored)
    assert {(b.payee_id, b.position) for b in breaks} == {("chaima", 0)}
    assert any("sequence 2 where 1 was expected" in b.reason for b in breaks)


def test_swapped_adjacent_events_break_the_chain() -> None:
    _, stored = build(ORDER)
    first, second = positions_of(stored, "alice")[1:3]
    stored[first], stored[second] = stored[second], stored[first]
    _, breaks = verify(stored)
    assert {b.payee_id for b in breaks} == {"alice"}
    assert [b.reason for b in breaks if b.position == 1][0] == (
        "sequence 3 where 2 was expected (gap, duplicate or reorder)"
    )
    assert {b.position for b in breaks} >= {1, 2}


def test_duplicated_event_is_detected() -> None:
    _, stored = build(ORDER)
    at = positions_of(stored, "alice")[1]
    stored.insert(at + 1, stored[at])
    _, breaks = verify(stored)
    assert {(b.payee_id, b.position, b.sequence) for b in breaks} == {("alice", 2, 2)}
    assert "sequence 2 where 3 was expected" in breaks[0].reason


def test_unsequenced_event_in_the_stream_is_a_break() -> None:
    _, stored = build(ORDER)
    loose = CODEC.encode(new_event("bakary", 99))
    assert CODEC.decode(loose).envelope.sequence is None
    stored.insert(positions_of(stored, "bakary")[1], loose)
    _, breaks = verify(stored)
    assert breaks[0] == ChainBreak("bakary", 1, None, "event is not sequenced")
    assert {b.payee_id for b in breaks} == {"bakary"}


@pytest.mark.parametrize(
    ("sequence", "previous_hash"),
    [(None, GENESIS_HASH), (1, None)],
    ids=["no-sequence", "no-previous-hash"],
)
def test_half_sequenced_link_is_a_break(sequence: int | None, previous_hash: str | None) -> None:
    _, breaks = verify_chain([ChainLink("alice", sequence, previous_hash, b"\xc3\x01")])
    assert breaks == [ChainBreak("alice", 0, sequence, "event is not sequenced")]


def test_first_event_must_name_the_genesis_hash() -> None:
    _, breaks = verify_chain([ChainLink("alice", 1, "f" * 64, b"x")])
    assert [b.reason for b in breaks] == [
        "previous_hash does not match the hash of the payee's previous event (edited or reordered)"
    ]


# --- what the chain alone cannot see ------------------------------------------------------


@pytest.mark.parametrize("tamper", ["edit-last", "drop-last"])
def test_tampering_with_the_last_event_is_invisible_to_the_chain_alone(tamper: str) -> None:
    """The newest event has no successor to vouch for it: an edited or dropped head verifies cleanly.

    Only a head hash kept somewhere else (the PayeeChains's ChainHead, a checkpoint) exposes it, so the
    head must be anchored outside the chain.
    """
    sequencer, stored = build(ORDER)
    last = positions_of(stored, "alice")[-1]
    if tamper == "edit-last":
        stored[last] = edit_amount(stored[last])
    else:
        del stored[last]
    heads, breaks = verify(stored)
    assert breaks == []  # the chain alone does not notice
    assert heads["alice"] != sequencer.heads["alice"].hash  # the anchored head does
    assert heads["bakary"] == sequencer.heads["bakary"].hash


# --- property: any single tampering with a successor is caught, and only for its payee ------


Tamper = Callable[[list[bytes], list[int], int], None]


def _edit(stored: list[bytes], at: list[int], k: int) -> None:
    stored[at[k]] = edit_amount(stored[at[k]])


def _drop(stored: list[bytes], at: list[int], k: int) -> None:
    del stored[at[k]]


def _swap(stored: list[bytes], at: list[int], k: int) -> None:
    stored[at[k]], stored[at[k + 1]] = stored[at[k + 1]], stored[at[k]]


def _duplicate(stored: list[bytes], at: list[int], k: int) -> None:
    stored.insert(at[k] + 1, stored[at[k]])


# name -> (operation, needs a successor, the payee positions where breaks may be reported)
OPERATIONS: dict[str, tuple[Tamper, bool, Callable[[int], set[int]]]] = {
    "edit": (_edit, True, lambda k: {k + 1}),
    "drop": (_drop, True, lambda k: {k}),
    "swap": (_swap, True, lambda k: {k, k + 1, k + 2}),
    "duplicate": (_duplicate, False, lambda k: {k + 1}),
}


@st.composite
def tampered_chains(draw: st.DrawFn) -> tuple[list[str], str, str, int]:
    payees = draw(st.lists(st.sampled_from(["alice", "bakary", "chaima"]), min_size=1, max_size=3, unique=True))
    order = draw(st.lists(st.sampled_from(payees), min_size=1, max_size=14))
    target = draw(st.sampled_from(sorted(set(order))))
    count = order.count(target)
    allowed = sorted(name for name, (_, needs_successor, _) in OPERATIONS.items() if count >= 2 or not needs_successor)
    operation = draw(st.sampled_from(allowed))
    last = count - 2 if OPERATIONS[operation][1] else count - 1
    return order, target, operation, draw(st.integers(min_value=0, max_value=last))


@settings(max_examples=200, deadline=None)
@given(tampered_chains())
def test_any_single_tampering_is_caught_for_that_payee_only(case: tuple[list[str], str, str, int]) -> None:
    order, target, operation, k = case
    sequencer, stored = build(order)
    tamper, _, where = OPERATIONS[operation]
    tamper(stored, positions_of(stored, target), k)
    heads, breaks = verify(stored)
    assert breaks, f"{operation} at {k} went unnoticed"
    assert {b.payee_id for b in breaks} == {target}
    assert {b.position for b in breaks} <= where(k)
    for payee in set(order) - {target}:
        assert heads[payee] == sequencer.heads[payee].hash
