"""demo/hostile.py: every hostile record the soak sends is refused by the rules, naming its field; and the
webhook deliveries of demo/entrances.py, refused by the endpoint's own app (no broker: appends are collected)."""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.intake import RECORD_MAX_BYTES, IntakeLimits, json_size, parse_record
from ledger.ledger_index import content_digest
from processors.sequencer_input import interpret
from demo.entrances import (
    WEBHOOK_KINDS, Delivery, _redelivery_order, _Tally, hostile_deliveries, send_deliveries, send_webhooks_hostile,
)
from demo.hostile import (
    ALL_ENTRANCES, CATEGORIES, CSV_HEADER, ENTRANCES, PUBLISH, STATEFUL_KINDS, Hostile, _codec, _csv_row, _json,
    entrances_of, expected_refusal, hostile_records, named_reason, names_field, publish_file_refusal,
)
from processors.webhook_app import make_app
from sandbox.stripe import StripeTestServer

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc)
ZONES = [timezone.utc, timezone(timedelta(hours=-5)), timezone(timedelta(hours=9))]
NOWS = st.datetimes(datetime(2021, 1, 1), datetime(2035, 12, 31), timezones=st.sampled_from(ZONES))


def valid_payments(now: datetime) -> dict[str, dict]:
    """The soak's valid payments the stateful kinds are built from (one at its currency's maximum: no refund)."""
    payments = {f"soak-pay-{n}": {"type": "payment", "payment_id": f"soak-pay-{n}", "payee_id": f"soak-payee-{n % 3}",
                                  "amount_minor": 1000 + n, "currency": ["USD", "JPY", "BHD"][n % 3],
                                  "occurred_at": (now - timedelta(hours=n + 1)).isoformat()} for n in range(6)}
    payments["soak-pay-max"] = {"payment_id": "soak-pay-max", "payee_id": "soak-payee-0", "amount_minor": 5_000_000,
                                "currency": "USD", "occurred_at": now - timedelta(minutes=5), "source": "pos"}
    return payments


@settings(max_examples=12, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(min_value=-(2**63), max_value=2**64), now=NOWS)
def test_every_stateless_record_is_refused_naming_its_field(seed, now):
    later = now + timedelta(hours=12)  # a soak sends its records after generating them: still refused
    for record in hostile_records(seed, 3000, now, valid_payments(now)):
        for clock in (now, later):
            refusal = expected_refusal(record, clock)
            if record.kind in STATEFUL_KINDS:  # only the sequencer's state refuses these: the rules must not
                assert refusal is None, (record.kind, record.entrance, refusal)
                continue
            assert refusal is not None, f"accepted: {record.kind} at {record.entrance}: {record.value[:300]!r}"
            if record.field:
                assert refusal[0] == record.field, (record.kind, record.entrance, refusal, record.value[:300])


@settings(max_examples=3, deadline=None, database=None)
@given(seed=st.integers(min_value=0, max_value=2**32))
def test_the_same_seed_gives_the_same_bytes_and_another_seed_others(seed):
    first = hostile_records(seed, 400, NOW, valid_payments(NOW))
    assert first == hostile_records(seed, 400, NOW, valid_payments(NOW))
    assert first != hostile_records(seed + 1, 400, NOW, valid_payments(NOW))


def test_every_category_and_entrance_appears_in_a_run_of_1000():
    records = hostile_records(11, 1000, NOW, valid_payments(NOW))
    assert len(records) == 1000
    assert {record.kind for record in records} == {kind for kind in CATEGORIES if entrances_of(kind)}
    assert {record.entrance for record in records} == set(ENTRANCES)
    pairs = Counter((record.kind, record.entrance) for record in records)
    assert set(pairs) == {(kind, entrance) for kind in CATEGORIES for entrance in entrances_of(kind)}
    assert all(record.key is None for record in records if record.entrance == "api")


def test_without_valid_ids_the_stateful_kinds_are_left_out():
    records = hostile_records(5, 200, NOW)
    assert len(records) == 200 and not {record.kind for record in records} & STATEFUL_KINDS
    assert {record.kind for record in records} == {kind for kind in CATEGORIES if entrances_of(kind)} - STATEFUL_KINDS
    at_the_maximum = {"p": valid_payments(NOW)["soak-pay-max"]}  # nothing to refund more of: refunds left out
    assert "refund_too_large" not in {record.kind for record in hostile_records(5, 200, NOW, at_the_maximum)}
    assert len(hostile_records(5, 3, NOW)) == 3


def event_of(record: Hostile, now: datetime = NOW):
    """The event a record the rules accept becomes (the sequencer's or the API's own parse)."""
    if record.entrance == "api":
        (item,) = json.loads(record.value)["records"]
        return parse_record(item, IntakeLimits(), now, size=json_size(item))
    return interpret(record.value, _codec(), IntakeLimits(), now, record.key, check_key=True)


def test_stateful_records_conflict_with_or_overdraw_a_valid_payment():
    valid = valid_payments(NOW)
    originals = {pid: event_of(Hostile("valid", "api", None, _json(payment, api=True), ""))
                 for pid, payment in valid.items()}
    records = [record for record in hostile_records(8, 1000, NOW, valid) if record.kind in STATEFUL_KINDS]
    assert {(record.kind, record.entrance) for record in records} == {(kind, entrance) for kind in STATEFUL_KINDS
                                                                      for entrance in ENTRANCES}
    for record in records:
        event = event_of(record)
        original = originals[event.payload["payment_id"]]
        assert event.payee_id == original.payee_id and (record.key in (None, event.payee_id.encode()))
        if record.kind == "conflicting_id":
            assert event.event_type == "PaymentCompleted" and content_digest(event) != content_digest(original)
        else:
            assert event.event_type == "PaymentRefunded" and event.payload["amount"] > original.payload["amount"]
            assert event.payload["refund_id"] not in valid


def test_oversized_records_are_larger_than_a_record_may_be():
    for record in hostile_records(3, 2000, NOW):
        if record.kind == "oversized_record" and record.entrance == "api":
            (item,) = json.loads(record.value)["records"]
            assert json_size(item) > RECORD_MAX_BYTES
        elif record.kind == "oversized_record":
            assert len(record.value) > RECORD_MAX_BYTES


def test_a_valid_record_mutated_by_nothing_is_accepted():
    record = {"type": "payment", "payment_id": "soak-pay-1", "payee_id": "soak-payee-1", "amount_minor": 1250,
              "currency": "EUR", "occurred_at": "2026-11-22T11:00:00+01:00", "metadata": {"chair": "4"}}
    avro = _codec().encode(parse_record(record, IntakeLimits(), NOW))
    for entrance, value in (("incoming_json", _json(record)), ("incoming_avro", avro),
                            ("api", _json(record, api=True))):
        key = None if entrance == "api" else b"soak-payee-1"
        assert expected_refusal(Hostile("valid", entrance, key, value, ""), NOW) is None, entrance
    # and the checker sees a single change: the key
    assert expected_refusal(Hostile("wrong_key", "incoming_avro", b"soak-payee-2", avro, "key"), NOW)[0] == "key"


# --- `ledger publish` files ------------------------------------------------------------------------------


@settings(max_examples=5, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(min_value=-(2**63), max_value=2**64), now=NOWS)
def test_every_publish_line_is_refused_by_the_commands_reading_naming_its_field(seed, now):
    later = now + timedelta(hours=12)
    for record in hostile_records(seed, 1000, now, valid_payments(now), entrances=PUBLISH):
        assert record.entrance in PUBLISH and record.key is None
        body = record.value.split(b"\n", 1)[1] if record.kind == "bad_csv_header" else record.value
        assert b"\n" not in body and b"\r" not in body, (record.kind, record.value[:100])  # one line each
        for clock in (now, later):
            refusal = expected_refusal(record, clock)
            if record.kind in STATEFUL_KINDS:  # refused by the ledger index `ledger publish` consults, not the rules
                assert refusal is None, (record.kind, record.entrance, refusal)
                continue
            assert refusal is not None, f"accepted: {record.kind} at {record.entrance}: {record.value[:300]!r}"
            if record.field:
                assert refusal[0] == record.field, (record.kind, record.entrance, refusal, record.value[:300])


def test_publish_entrances_come_only_when_asked_for_and_leave_the_default_records_alone():
    valid = valid_payments(NOW)
    assert hostile_records(4, 600, NOW, valid) == hostile_records(4, 600, NOW, valid, entrances=ENTRANCES)
    everywhere = hostile_records(4, 3000, NOW, valid, entrances=ALL_ENTRANCES)
    pairs = {(record.kind, record.entrance) for record in everywhere}
    assert pairs == {(kind, entrance) for kind in CATEGORIES for entrance in entrances_of(kind, ALL_ENTRANCES)}
    assert {"not_json_line", "csv_cell_count", "bad_csv_header"} <= {kind for kind, _ in pairs}
    assert {entrance for _, entrance in pairs} == set(ALL_ENTRANCES)
    with pytest.raises(ValueError, match="unknown entrances"):
        hostile_records(4, 10, NOW, entrances=("ftp",))


def test_a_valid_line_and_row_are_accepted_and_the_reasons_are_read_as_the_command_writes_them():
    record = {"type": "payment", "payment_id": "soak-pay-1", "payee_id": "soak-payee-1", "amount_minor": 1250,
              "currency": "EUR", "occurred_at": "2026-11-22T11:00:00+01:00", "metadata": {"chair": "4"}}
    assert expected_refusal(Hostile("valid", "publish", None, _json(record), ""), NOW) is None
    assert expected_refusal(Hostile("valid", "publish_csv", None, _csv_row(record), ""), NOW) is None
    row = _csv_row(record, {"amount_minor": "12.50"})
    header = ",".join(CSV_HEADER).encode()
    assert publish_file_refusal(header + b"\n" + row + b"\n", "publish_csv", NOW)[0] == "amount_minor"
    assert publish_file_refusal(b"a,a\n1,2\n", "publish_csv", NOW)[0] == "header"
    assert publish_file_refusal(b"\n\n", "publish", NOW) is None  # blank lines hold no record
    assert named_reason("not valid JSON: Expecting value (column 1)") == ("", "not valid JSON: Expecting value (column 1)")
    assert named_reason("metadata.k: Input should be a valid string; currency: x") == (
        "metadata.k", "Input should be a valid string; currency: x")
    assert names_field("amount_minor: bad; currency: unknown", "currency")
    assert not names_field("amount_minor: currency is odd", "currency")


# --- webhook deliveries (demo/entrances.py) --------------------------------------------------------------

SECRET = "whsec_soak_unit"
TARGETS = [{"id": "tr_known1", "object": "transfer", "amount": 5_000, "currency": "usd", "amount_reversed": 0,
            "reversed": False, "metadata": {"payout_id": "po-known-1", "payee_id": "payee-1"}}]


def test_the_same_seed_and_clock_give_the_same_deliveries_and_every_kind_comes():
    first = hostile_deliveries(9, SECRET, 1_800_000_000, 33, targets=TARGETS)
    assert first == hostile_deliveries(9, SECRET, 1_800_000_000, 33, targets=TARGETS)
    assert first != hostile_deliveries(10, SECRET, 1_800_000_000, 33, targets=TARGETS)
    assert {delivery.kind for delivery in first} == set(WEBHOOK_KINDS) | {"genuine"}
    replays = [d for d in first if d.kind == "replay"]
    genuine = [d for d in first if d.kind == "genuine"]
    assert len(replays) == len(genuine) == 3 and [(d.body, d.header) for d in replays] == [
        (d.body, d.header) for d in genuine]
    with pytest.raises(ValueError, match="unknown webhook kinds"):
        hostile_deliveries(9, SECRET, 1_800_000_000, 3, kinds=("smuggled",))


def endpoint(collected: list):
    return TestClient(make_app(SECRET, collected.extend))


def test_the_endpoint_refuses_every_hostile_delivery_and_appends_nothing():
    collected: list = []
    kinds = [kind for kind in WEBHOOK_KINDS if kind != "unknown_payout"]  # see the next test
    with endpoint(collected) as client:
        verdict = send_webhooks_hostile("http://testserver/webhooks/stripe", SECRET, 3, 3 * len(kinds),
                                        targets=TARGETS, kinds=kinds, client=client)
    assert verdict["webhooks_failures"] == [], verdict
    assert verdict["webhooks_sent"] == 3 * len(kinds) + 3  # each replay comes after its genuine delivery
    assert verdict["webhooks_refused"] == 3 * len(kinds) and collected == []
    assert set(verdict["webhooks_event_ids"].values()) == set(kinds) - {"not_json_body"}


def test_the_verdict_counts_an_accepted_hostile_delivery_and_a_refused_genuine_one():
    """A delivery expected refused that the app takes (here: one "forged" but signed with the real secret) is an
    acceptance; an event naming a payout the app cannot look up is left to the sequencer (not a failure here: the
    ledger's check decides); a genuine delivery signed with another secret is a refused genuine one."""
    collected: list = []
    (unknown,) = hostile_deliveries(5, SECRET, int(time.time()), 1, kinds=("unknown_payout",))
    forged = Delivery("forged_signature", unknown.body, StripeTestServer.sign_webhook(unknown.body, SECRET), "4xx",
                      unknown.event_id, unknown.ledger_event_id)
    deliveries = [forged]
    body = StripeTestServer.event("transfer.created", TARGETS[0], event_id="evt_genuine")
    genuine = Delivery("genuine", body, StripeTestServer.sign_webhook(body, "whsec_other"), "2xx", "evt_genuine")
    with endpoint(collected) as client:
        verdict = send_deliveries("http://testserver/webhooks/stripe", [*deliveries, genuine], client=client)
    assert verdict["webhooks_accepted"] == 1 and verdict["webhooks_genuine_refused"] == 1
    assert len(verdict["webhooks_failures"]) == 2 and len(collected) == 1
    assert collected[0].envelope.event_id in verdict["webhooks_event_ids"]


def test_redeliveries_come_newest_first_per_transfer_with_copies_after_the_original():
    events = {f"po-{n}": [{"id": f"evt_{n}_{i}", "n": i} for i in range(n + 1)] for n in range(1, 6)}
    for seed in range(20):
        order = _redelivery_order(random.Random(seed), events)
        for chronological in events.values():
            mine = [event["n"] for event in order if event in chronological]
            firsts = list(dict.fromkeys(mine))
            assert firsts == sorted(firsts, reverse=True)  # newest first: every older event after a newer one
            assert set(mine) == {event["n"] for event in chronological}
            assert all(mine.count(n) <= 3 for n in set(mine))


def test_a_tally_keeps_twenty_examples_and_names_failures_only_when_counted():
    tally = _Tally("x")
    for n in range(30):
        tally.count("bad", f"example {n}")
    tally.count("sent", n=5)
    result = tally.result(("sent", "bad", "other"), {"bad": "bad things", "other": "other things"})
    assert (result["x_sent"], result["x_bad"], result["x_other"]) == (5, 30, 0)
    assert len(result["x_bad_examples"]) == 20 and result["x_failures"][0].startswith("30 bad things: ")
    assert len(result["x_failures"]) == 1
