"""The soak's other entrances on the real system (demo/entrances.py): `ledger api`, `ledger publish` and
`ledger webhooks serve` as subprocesses on the test broker and database, a sequencer and the transfer
processor beside them, the Stripe sandbox paying. Each sender's verdict is clean, and each can fail: a valid
record sent as if hostile is counted as accepted, a wrong expectation of the ledger is reported.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from connectors.stripe_webhooks import ledger_event_id
from demo.drain import sequencer_lag
from demo.entrances import (
    WEBHOOK_KINDS, Delivery, check_nothing_appended, check_redelivered, hostile_deliveries, publish_hostile, redeliver,
    reverse_and_redeliver, send_api, send_deliveries, send_webhooks_hostile,
)
from demo.hostile import PUBLISH, STATEFUL_KINDS, Hostile, hostile_records
from demo.sandboxes import STRIPE_KEY, Sandboxes
from processors.ledger_client import LedgerClient
from runtime.processes import free_port, log_tail
from sandbox.stripe import StripeTestServer
from processors.dead_letters import read_dead_letters
from tests.integration.cli_env import LEDGER, env_for
from tests.integration.transfer_helpers import (
    book_of, processor_running, request_payouts, sequence_until, sequencer_running, wait_until,
)
from tests.integration.sequencing_helpers import ledger_events

SEED = 20_261_122
REDELIVERY_SEED = SEED + 3  # reverses one payout at once and one in two steps (a partial reversal first)
TOKEN = "soak-ingest-token-0123456789"
SECRET = "whsec_soak_entrances"
WHEN = (datetime.now(timezone.utc) - timedelta(hours=3)).replace(microsecond=0).isoformat()


@contextmanager
def ledger_process(arguments: list[str], env: dict[str, str], log: Path, health: str | None = None) -> Iterator[None]:
    """`ledger ARGUMENTS` in its own process, logging to `log`; with `health`, started once it answers there."""
    with log.open("wb") as handle:
        process = subprocess.Popen([LEDGER, *arguments], env=env, stdin=subprocess.DEVNULL, stdout=handle,
                                   stderr=subprocess.STDOUT, start_new_session=True)

    def up() -> bool:
        assert process.poll() is None, f"`ledger {' '.join(arguments)}` exited:\n{log_tail(log)}"
        try:
            return httpx.get(health, timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    try:
        if health is not None:
            wait_until(up, 60, f"`ledger {' '.join(arguments)}` answering", every_s=0.2)
        yield
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def payment(payment_id: str, payee_id: str = "ent-payee-1", minor: int = 1_000) -> dict:
    return {"type": "payment", "payment_id": payment_id, "payee_id": payee_id, "amount_minor": minor,
            "currency": "USD", "occurred_at": WHEN}


def quiet(settings) -> None:
    """Every record of ledger.commands and payments.incoming chained (the sequencer committed past it)."""
    wait_until(lambda: sequencer_lag(settings, settings.kafka_bootstrap) == 0, 60, "the sequencer caught up")


# --- POST /v1/payments ----------------------------------------------------------------------------------


def test_the_api_refuses_every_hostile_record_naming_its_field_and_a_valid_one_counts_as_accepted(settings, tmp_path):
    records = [record for record in hostile_records(SEED, 90, datetime.now(timezone.utc)) if record.entrance == "api"]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = env_for(settings, tmp_path / "data", LEDGER_API_TOKENS=json.dumps({TOKEN: "ingest"}),
                  LEDGER_INGEST_RATE_PER_S="10000")
    with ledger_process(["api", "--port", str(port)], env, tmp_path / "api.log"):
        verdict = send_api(url, TOKEN, records)  # sent before the API listens: refused connections are retried
        accepted = send_api(url, TOKEN, [Hostile("valid", "api", None, json.dumps({"records": [
            payment("ent-api-ok")]}).encode(), "")])
        unauthorised = send_api(url, "not-a-token-0123456789", records[:2])

    assert verdict["api_failures"] == [], verdict
    assert verdict["api_sent"] == verdict["api_refused"] == len(records) >= 25
    assert verdict["api_retries"] >= 1 and verdict["api_unanswered"] == 0
    assert {record.kind for record in records} >= {"float_amount", "nested_metadata", "oversized_record"}
    assert (accepted["api_accepted"], accepted["api_refused"]) == (1, 0)
    assert accepted["api_failures"][0].startswith("1 hostile API records accepted")
    # a 401 is a refusal that names no field of the record
    assert unauthorised["api_reason_without_field"] == 2 and unauthorised["api_failures"]


# --- ledger publish ---------------------------------------------------------------------------------------


def test_publish_refuses_every_hostile_line_naming_its_field_and_a_valid_line_counts_as_accepted(settings, tmp_path):
    valid = {f"ent-pay-{n}": payment(f"ent-pay-{n}", minor=1_000 + n) for n in range(3)}
    with LedgerClient(settings.kafka_bootstrap, settings) as client:
        client.record_batch(list(valid.values()))
    chained = lambda: {e.payload.get("payment_id") for e, _ in ledger_events(settings)}  # noqa: E731
    sequence_until(settings, lambda: set(valid) <= chained(), "the valid payments chained")
    records = hostile_records(SEED, 18, datetime.now(timezone.utc), valid, entrances=PUBLISH)  # each kind once
    env = env_for(settings, tmp_path / "data")

    verdict = publish_hostile(env, records, tmp_path / "hostile")
    good = Hostile("valid", "publish", None, json.dumps(payment("ent-pub-ok")).encode(), "")
    one_valid = publish_hostile(env, [good, next(r for r in records if r.entrance == "publish")], tmp_path / "mixed")

    assert verdict["publish_failures"] == [], verdict
    assert verdict["publish_sent"] == verdict["publish_refused"] == len(records) == 18
    assert verdict["publish_files"] == 3  # the JSON Lines file, the CSV file, a file with a bad header
    assert {record.kind for record in records} >= STATEFUL_KINDS | {"not_json_line", "csv_cell_count"}
    assert (one_valid["publish_accepted"], one_valid["publish_not_refused"], one_valid["publish_refused"]) == (1, 1, 1)
    assert len(one_valid["publish_failures"]) == 2


# --- the Stripe webhook endpoint ----------------------------------------------------------------------------


def webhook_endpoint(env: dict[str, str], port: int, log: Path):
    return ledger_process(["webhooks", "serve", "--port", str(port)], env, log, f"http://127.0.0.1:{port}/healthz")


def test_hostile_webhooks_append_nothing_and_reversals_redelivered_out_of_order_fail_each_payout_once(
        settings, tmp_path):
    with Sandboxes(tmp_path / "sandboxes") as sandboxes:
        stripe = sandboxes.stripe
        settings = settings.model_copy(update={"stripe_api_key": STRIPE_KEY, "stripe_api_base": stripe.url})
        payees = {f"ent-rev-{n}": ("stripe_standard", stripe.create_account()) for n in range(5)}
        payout_ids = {event.payload["payout_id"] for event in request_payouts(settings, payees)}
        port = free_port()
        url = f"http://127.0.0.1:{port}/webhooks/stripe"
        env = env_for(settings, tmp_path / "data", LEDGER_STRIPE_WEBHOOK_SECRET=SECRET)
        kinds = [kind for kind in WEBHOOK_KINDS if kind != "unknown_payout"]  # the xfail test below
        four, signed_at = sorted(payout_ids)[:4], int(time.time())
        with sequencer_running(settings):
            with processor_running(settings):
                wait_until(lambda: all(book_of(settings).get(p).status.value == "settled" for p in payout_ids), 60,
                           "every Stripe payout settled")
            with webhook_endpoint(env, port, tmp_path / "webhooks-1.log"):
                hostile = send_webhooks_hostile(url, SECRET, SEED, 2 * len(kinds), targets=stripe.transfers(),
                                                kinds=kinds, now=signed_at)
                redelivered = reverse_and_redeliver(stripe, url, SECRET, REDELIVERY_SEED, four, k=4)
            # restarted, the endpoint has forgotten what it recorded: Stripe delivers everything once more
            with webhook_endpoint(env, port, tmp_path / "webhooks-2.log"):
                replays = send_deliveries(url, [d for d in hostile_deliveries(
                    SEED, SECRET, signed_at, 2 * len(kinds), targets=stripe.transfers(), kinds=kinds) if d.kind == "replay"])
                again = redeliver(url, SECRET, REDELIVERY_SEED + 1, {
                    payout: stripe.events(object_id=transfer) for payout, transfer in redelivered["redelivery_transfers"].items()},
                    now=int(time.time()) + 30)
                quiet(settings)
                appended = check_nothing_appended(settings.kafka_bootstrap, settings.topic_events,
                                                  settings.topic_commands, hostile["webhooks_event_ids"])
                outcome = check_redelivered(settings.kafka_bootstrap, settings.topic_events, redelivered)
                book = book_of(settings)
                settled = sum(book.get(p).amount.amount_minor for p in payout_ids
                              if book.get(p).status.value == "settled")
                paid = sandboxes.paid_minor(payout_ids)["stripe"]

                # the verdicts can fail: a harmful event taken (signed with the real secret: accepted, appended)...
                (fifth,) = payout_ids - set(four)
                transfer = next(t for t in stripe.transfers() if t["transfer_group"] == fifth)
                body = StripeTestServer.event("transfer.reversed", {**transfer, "amount_reversed": transfer["amount"],
                                                                    "reversed": True}, event_id="evt_taken")
                taken = send_deliveries(url, [Delivery("forged_signature", body, StripeTestServer.sign_webhook(
                    body, SECRET), "4xx", "evt_taken", ledger_event_id("evt_taken"))])
                quiet(settings)
                found = check_nothing_appended(settings.kafka_bootstrap, settings.topic_events,
                                               settings.topic_commands, taken["webhooks_event_ids"])

    assert hostile["webhooks_failures"] == [], hostile
    assert hostile["webhooks_refused"] == 2 * len(kinds) and hostile["webhooks_replays_after_restart"] == 0
    assert (replays["webhooks_sent"], replays["webhooks_replays_after_restart"], replays["webhooks_failures"]) == (
        2, 2, [])  # answered 2xx by the new process: nothing new may be appended (checked below)
    assert appended == []
    assert redelivered["redelivery_failures"] == [] and again["redelivery_failures"] == [], (redelivered, again)
    assert outcome == [], outcome  # after both rounds: each reversed payout failed once, the others settled
    assert redelivered["redelivery_payouts"] == four and len(redelivered["redelivery_reversed"]) == 2
    assert len(redelivered["redelivery_reversed_in_two_steps"]) == 1
    assert redelivered["redelivery_sent_transfer.reversed"] >= 3 and redelivered["redelivery_sent_transfer.created"] >= 4
    assert redelivered["redelivery_sent"] > redelivered["redelivery_events"] == again["redelivery_events"] == 11
    assert paid == {"USD": settled} and settled == 3 * book.get(fifth).amount.amount_minor  # reversals left out
    assert taken["webhooks_accepted"] == 1 and taken["webhooks_failures"]
    assert len(found) == 2 and all(f.startswith("a hostile webhook delivery (forged_signature) was appended")
                                   for f in found)
    # ... and a ledger other than expected is reported
    flipped = {**redelivered, "redelivery_expected": {
        payout: "settled" if status == "failed" else "failed" for payout, status in redelivered["redelivery_expected"].items()}}
    assert len(check_redelivered(settings.kafka_bootstrap, settings.topic_events, flipped, wait_s=0)) == 4


def test_a_webhook_naming_a_payout_the_ledger_never_requested_is_dead_lettered_never_chained(settings, tmp_path):
    """Signed with the real secret, so the endpoint takes it (it cannot tell a payout never requested from one
    not projected yet); the sequencer refuses an outcome of a payout never requested, into the dead-letter topic."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/webhooks/stripe"
    env = env_for(settings, tmp_path / "data", LEDGER_STRIPE_WEBHOOK_SECRET=SECRET)
    with sequencer_running(settings), webhook_endpoint(env, port, tmp_path / "webhooks.log"):
        verdict = send_webhooks_hostile(url, SECRET, SEED, 3, kinds=("unknown_payout",))
        quiet(settings)
        appended = check_nothing_appended(settings.kafka_bootstrap, settings.topic_events, settings.topic_commands,
                                          verdict["webhooks_event_ids"])
    assert verdict["webhooks_failures"] == [] and appended == [], (verdict["webhooks_failures"], appended)
    assert verdict["webhooks_left_to_the_sequencer"] + verdict["webhooks_refused"] == 3
    letters = [entry for entry in read_dead_letters(settings.kafka_bootstrap, settings.topic_dlq)
               if "was never requested" in entry.reason]
    assert len(letters) == verdict["webhooks_left_to_the_sequencer"], [entry.reason for entry in letters]


# --- the Stripe sandbox's reversals and events ----------------------------------------------------------------


def test_the_stripe_sandbox_reverses_transfers_in_parts_and_records_the_events_stripe_would_send():
    import stripe as stripe_sdk

    with StripeTestServer() as server:
        account = server.create_account(balance=10_000)
        client = stripe_sdk.StripeClient("sk_test_soak", base_addresses={"api": server.url}, max_network_retries=0)
        transfer = client.v1.transfers.create(params={"amount": 4_000, "currency": "usd", "destination": account,
                                                      "metadata": {"payout_id": "po-1", "payee_id": "payee-1"}})
        client.v1.transfers.update(transfer.id, params={"description": "payout po-1"})
        part = client.v1.transfers.reversals.create(transfer.id, params={"amount": 1_500})
        with pytest.raises(stripe_sdk.InvalidRequestError, match="greater than the unreversed amount"):
            client.v1.transfers.reversals.create(transfer.id, params={"amount": 2_501})
        rest = client.v1.transfers.reversals.create(transfer.id, options={"idempotency_key": "rev-rest"})
        with pytest.raises(stripe_sdk.InvalidRequestError, match="already been fully reversed"):
            client.v1.transfers.reversals.create(transfer.id)
        listed = client.v1.transfers.reversals.list(transfer.id)
        found = client.v1.transfers.reversals.retrieve(transfer.id, part.id)
        final = client.v1.transfers.retrieve(transfer.id)
        events = server.events()

    assert (part.object, part.amount, rest.amount, found.id) == ("transfer_reversal", 1_500, 2_500, part.id)
    assert [reversal.id for reversal in listed.data] == [rest.id, part.id]  # newest first
    assert (final.amount_reversed, final.reversed, final.reversals.total_count) == (4_000, True, 2)
    assert server.account_balance(account) == 10_000  # the money came back
    assert [event["type"] for event in events] == ["transfer.created", "transfer.updated", "transfer.reversed",
                                                   "transfer.reversed"]
    created, updated, partly, fully = (event["data"] for event in events)
    assert created["object"]["description"] is None and updated["previous_attributes"] == {"description": None}
    assert (partly["object"]["amount_reversed"], partly["object"]["reversed"]) == (1_500, False)
    assert (fully["object"]["amount_reversed"], fully["object"]["reversed"]) == (4_000, True)
    assert events[3]["request"]["idempotency_key"] == "rev-rest" and server.creations_by_key()["rev-rest"] == 1
    # signatures are over the bytes as given, so a body that is not UTF-8 can be signed (and refused for its body)
    header = StripeTestServer.sign_webhook(b"\xff{}", "whsec_x", 1_800_000_000)
    assert header.startswith("t=1800000000,v1=") and header != StripeTestServer.sign_webhook(b"{}", "whsec_x", 1_800_000_000)
