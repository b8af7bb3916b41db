"""The transfer processor end to end with mobile money and bank transfers, and its protections: the 24 h
mobile money expiry, the circuit breaker and the emergency stop (real broker, real PostgreSQL, providers
over HTTP or files)."""

from __future__ import annotations

import os
import threading
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path


from connectors.bank_transfer import iban_problem
from connectors.circuit_breaker import BreakerState
from connectors.sepa_status import end_to_end_id_of, read_credit_transfers, write_status_report
from ledger.codec import EventCodec
from processors.kafka_io import read_topic
from processors.payout_run import fold_ledger
from processors.provider_lane import utc_now
from projections.payout_controls import set_pause
from runtime.kafka_admin import ensure_topics
from tests.integration.sequencing_helpers import ledger_events
from tests.integration.transfer_helpers import (all_final, book_of, outcome_counts, request_payouts,
                                                sequencer_running, wait_until, processor_running, types_of)
from sandbox.mobile_money import MobileMoneyTestServer
from sandbox.stripe import StripeTestServer

CASHIN_PATH = "/omcoreapis/1.0.2/cashin"
OBSERVE_S = 3.0  # how long "nothing happens" is watched for (a bounded observation, not a wait for work)


class ShiftedClock:
    """The wall clock plus an offset the test moves forward (thread-safe): days pass in no time."""

    def __init__(self) -> None:
        self._offset = timedelta(0)
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return utc_now() + self._offset

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._offset += timedelta(seconds=seconds)


def statuses(settings, requested):
    book = book_of(settings)
    return {payee: book.get(e.payload["payout_id"]).status.value for payee, e in requested.items()}


def unpaid_minor(settings, payee_id, currency):
    earnings = fold_ledger(settings.kafka_bootstrap, settings.topic_events, EventCodec())
    return earnings[payee_id].balance(currency).unpaid.amount_minor


def submits_anywhere(settings) -> int:
    """PayoutSubmitted events chained in ledger.events or waiting in ledger.commands."""
    codec = EventCodec()
    count = 0
    for topic in (settings.topic_events, settings.topic_commands):
        for record in read_topic(settings.kafka_bootstrap, topic):
            count += codec.decode(record.value or b"").event_type == "PayoutSubmitted"
    return count


def ids_of(requested) -> set[str]:
    return {e.payload["payout_id"] for e in requested.values()}


# --- mobile money ------------------------------------------------------------------------------------


def mobile_settings(settings, server, **changes):
    return settings.model_copy(update={
        "mobile_money_url": server.url, "mobile_money_client_id": server.client_id,
        "mobile_money_client_secret": server.client_secret, "mobile_money_timeout_s": 3.0,
        "pending_poll_s": 0.5, "retry_delays_s": [1, 1, 1], **changes})


def status_polls(server, key):
    return sum(1 for method, path, _ in server.requests_log() if method == "GET" and path == f"{CASHIN_PATH}/{key}")


def test_mobile_money_payouts_are_accepted_then_polled_until_settled_or_failed(settings):
    wallets = {"m0": "2250701020304", "m1": "2250701020305", "m2": "+2250701020306"}
    closed_wallet = "2250709999999"
    with MobileMoneyTestServer(complete_after_polls=2) as server:
        server.fail_msisdn(closed_wallet, "ACCOUNT_CLOSED", at="completion")
        settings = mobile_settings(settings, server)
        payees = {payee: ("mobile_money", msisdn) for payee, msisdn in wallets.items()}
        payees["closed"] = ("mobile_money", closed_wallet)
        requested = {e.payee_id: e for e in request_payouts(settings, payees, currency="XOF", minor=30000)}
        assert len(requested) == 4
        with sequencer_running(settings), processor_running(settings):
            wait_until(lambda: all_final(settings, ids_of(requested)), 30, "every mobile money payout final")

        assert statuses(settings, requested) == {"m0": "settled", "m1": "settled", "m2": "settled", "closed": "failed"}
        for payee in wallets:
            payout_id = requested[payee].payload["payout_id"]
            assert types_of(settings, payout_id) == [
                ("PayoutRequested", None), ("PayoutSubmitted", 1), ("PayoutAccepted", 1), ("PayoutSettled", 1)]
            assert status_polls(server, payout_id) >= 2  # it was PENDING at the provider, then polled to SUCCESS
        closed_id = requested["closed"].payload["payout_id"]
        assert types_of(settings, closed_id) == [
            ("PayoutRequested", None), ("PayoutSubmitted", 1), ("PayoutAccepted", 1), ("PayoutFailed", 1)]
        closed = book_of(settings).get(closed_id)
        assert closed.reason_code == "account_closed" and closed.message.startswith("ACCOUNT_CLOSED:")
        # one cash-in per payout, for the payout's exact net in whole francs, to the normalized MSISDN
        assert server.creations_by_key() == {e.payload["payout_id"]: 1 for e in requested.values()}
        net = requested["m0"].payload["net"]
        assert net.currency.code == "XOF" and net.amount_minor > 0
        sent = {t["partnerTransactionId"]: t for t in server.transactions()}
        assert {(t["amount"]["value"], t["amount"]["unit"]) for t in sent.values()} == {(net.to_major_string(), "XOF")}
        assert sent[requested["m2"].payload["payout_id"]]["customerMsisdn"] == "2250701020306"
        assert set(outcome_counts(settings).values()) == {1}
        assert unpaid_minor(settings, "closed", "XOF") == requested["closed"].payload["net"].amount_minor
        earnings = fold_ledger(settings.kafka_bootstrap, settings.topic_events, EventCodec())
        assert earnings["m0"].balance("XOF").settled.amount_minor == net.amount_minor
        assert earnings["m0"].balance("XOF").unpaid.amount_minor == 0


def test_a_mobile_money_transfer_still_processing_after_the_limit_fails_as_expired(settings):
    clock = ShiftedClock()
    with MobileMoneyTestServer(complete_after_polls=None) as server:  # stays PENDING until told otherwise
        settings = mobile_settings(settings, server, pending_poll_s=0.3, mobile_money_max_pending_s=86400.0)
        (request,) = request_payouts(settings, {"slow": ("mobile_money", "2250701020304")}, currency="XOF",
                                     minor=30000)
        payout_id = request.payload["payout_id"]
        with sequencer_running(settings), processor_running(settings, clock=clock) as worker:
            wait_until(lambda: status_polls(server, payout_id) >= 3, 30, "three status polls of the pending cash-in")
            # polled while PENDING, well inside 24 h: still at the provider, nothing failed
            assert book_of(settings).get(payout_id).status.value == "at_provider"
            assert worker.stats.expired == 0
            clock.advance(86400 + 60)
            wait_until(lambda: all_final(settings, {payout_id}), 30, "the expired payout failed")

        payout = book_of(settings).get(payout_id)
        assert (payout.status.value, payout.reason_code) == ("failed", "processing_expired")
        assert "24 h" in payout.message
        assert types_of(settings, payout_id) == [
            ("PayoutRequested", None), ("PayoutSubmitted", 1), ("PayoutAccepted", 1), ("PayoutFailed", 1)]
        assert worker.stats.expired == 1
        assert server.creations_by_key() == {payout_id: 1}
        # the failure came from the clock, not from the provider, which still says PENDING: it may complete
        # the cash-in later, so the money is back in the balance but the payee is held (decisions.md §25)
        assert server.transaction(payout_id)["status"] == "PENDING"
        earnings = fold_ledger(settings.kafka_bootstrap, settings.topic_events, EventCodec())["slow"]
        assert earnings.balance("XOF").unpaid.amount_minor == request.payload["net"].amount_minor
        assert earnings.held
        (hold,) = [e for e, _ in ledger_events(settings) if e.event_type == "PayeeHoldSet"]
        assert (hold.payee_id, hold.payload["held"]) == ("slow", True) and payout_id in hold.payload["reason"]


def test_failing_status_checks_do_not_fail_a_transfer_the_provider_holds(settings):
    with MobileMoneyTestServer(complete_after_polls=1) as server:
        settings = mobile_settings(settings, server, pending_poll_s=0.3)
        (request,) = request_payouts(settings, {"held": ("mobile_money", "2250701020304")}, currency="XOF",
                                     minor=30000)
        payout_id = request.payload["payout_id"]
        # every attempt's status check fails for a while (the provider's status API is down); the cash-in
        # itself was accepted and is processing
        server.inject(kind="server_error", path_prefix=f"{CASHIN_PATH}/", method="GET", times=4)
        with sequencer_running(settings), processor_running(settings):
            wait_until(lambda: all_final(settings, {payout_id}), 30, "the payout final")
        provider_status = server.transaction(payout_id)["status"]
        payout = book_of(settings).get(payout_id)
        assert (payout.status.value, payout.reason_code, provider_status) == ("settled", "", "SUCCESS"), (
            f"ledger says {payout.status.value} {payout.reason_code} ({payout.message}); provider says "
            f"{provider_status}; events {types_of(settings, payout_id)}")
        assert types_of(settings, payout_id) == [
            ("PayoutRequested", None), ("PayoutSubmitted", 1), ("PayoutAccepted", 1), ("PayoutSettled", 1)]


# --- bank transfer -----------------------------------------------------------------------------------


def german_iban(account_number: int, bank_code: str = "37040044") -> str:
    """A valid DE IBAN for this bank code and account number (check digits by ISO 7064 mod 97-10)."""
    bban = f"{bank_code}{account_number:010d}"
    numeric = "".join(str(int(ch, 36)) for ch in bban + "DE00")
    return f"DE{98 - int(numeric) % 97:02d}{bban}"


def drop_status_report(status_dir: Path, name: str, report: bytes) -> None:
    """Whole or absent, as a bank upload job would drop it (hidden files are not read)."""
    temp = status_dir / f".{name}.tmp"
    temp.write_bytes(report)
    os.replace(temp, status_dir / name)


def single_partition_topics(settings):
    """Fresh topics with one partition each: the submits of a run reach the ledger in one fetch (see below)."""
    suffix = uuid.uuid4().hex[:10]
    changed = settings.with_topic_suffix(suffix).model_copy(update={
        "partitions_incoming": 1, "partitions_events": 1, "partitions_dlq": 1, "partitions_commands": 1})
    ensure_topics(changed.kafka_bootstrap, changed.topic_specs())
    return changed


def test_bank_transfers_go_out_in_one_file_and_settle_from_the_status_report(settings, tmp_path):
    outbox, status_dir = tmp_path / "bank" / "outbox", tmp_path / "bank" / "status"
    settings = single_partition_topics(settings).model_copy(update={
        "bank_debtor_iban": "DE89370400440532013000", "bank_debtor_bic": "COBADEFFXXX",
        "bank_outbox_dir": outbox, "bank_status_dir": status_dir, "pending_poll_s": 0.3,
        "retry_delays_s": [1, 1, 1]})
    ibans = {"b0": german_iban(532013001), "b1": german_iban(1234567890),
             "b2": "FR1420041010050500013M02606", "b3": "NL91 ABNA 0417 1643 00/ABNANL2A"}
    assert all(iban_problem(german_iban(n)) == "" for n in (532013001, 1234567890))
    payees = {payee: ("bank_transfer", iban) for payee, iban in ibans.items()}
    payees["typo"] = ("bank_transfer", "DE89370400440532013001")  # one digit off: fails mod 97
    requested = {e.payee_id: e for e in request_payouts(settings, payees, currency="EUR", minor=5000)}
    valid = {payee: e for payee, e in requested.items() if payee != "typo"}
    typo_id = requested["typo"].payload["payout_id"]
    with processor_running(settings) as worker:
        # The processor records every attempt, then calls the bank only for attempts the sequencer has
        # chained. A file holds the attempts chained by the same round, so the sequencer starts once all
        # five are recorded: then they reach the processor together (what a payout run does at scale).
        wait_until(lambda: submits_anywhere(settings) == 5, 30, "five attempts recorded in ledger.commands")
        assert list(outbox.iterdir()) == []  # recorded, not chained: nothing is sent yet
        with sequencer_running(settings):
            wait_until(lambda: set(statuses(settings, requested).values()) == {"at_provider", "failed"}, 30,
                       "valid payouts at the bank, the typo failed")
            assert statuses(settings, requested) == {**{payee: "at_provider" for payee in valid}, "typo": "failed"}
            typo = book_of(settings).get(typo_id)
            assert typo.reason_code == "invalid_account_number" and "mod-97" in typo.message

            files = sorted(outbox.glob("pain001-*.xml"))
            assert len(files) == 1, [f.name for f in files]  # one batch, one file
            batch = read_credit_transfers(files[0].read_bytes())
            assert sorted(t.end_to_end_id for t in batch.transfers) == sorted(
                end_to_end_id_of(e.payload["payout_id"]) for e in valid.values())
            assert {t.amount for t in batch.transfers} == {requested["b0"].payload["net"]}
            assert {t.iban for t in batch.transfers} == {iban.split("/")[0].replace(" ", "") for iban in ibans.values()}

            rejected_id = valid["b1"].payload["payout_id"]
            report = write_status_report(files[0].read_bytes(), rejected={end_to_end_id_of(rejected_id): "AC04"})
            drop_status_report(status_dir, "pain002-bank-1.xml", report)
            wait_until(lambda: all_final(settings, ids_of(requested)), 30, "every bank payout settled or failed")
            assert worker.stats.settled == 3

    assert statuses(settings, requested) == {"b0": "settled", "b1": "failed", "b2": "settled", "b3": "settled",
                                             "typo": "failed"}
    rejected = book_of(settings).get(rejected_id)
    assert rejected.reason_code == "account_closed" and "AC04" in rejected.message
    assert types_of(settings, valid["b0"].payload["payout_id"]) == [
        ("PayoutRequested", None), ("PayoutSubmitted", 1), ("PayoutAccepted", 1), ("PayoutSettled", 1)]
    assert types_of(settings, typo_id) == [("PayoutRequested", None), ("PayoutSubmitted", 1), ("PayoutFailed", 1)]
    assert len(list(outbox.glob("pain001-*.xml"))) == 1  # nothing was sent again
    assert set(outcome_counts(settings).values()) == {1}
    assert unpaid_minor(settings, "b1", "EUR") == requested["b1"].payload["net"].amount_minor
    assert unpaid_minor(settings, "typo", "EUR") == requested["typo"].payload["net"].amount_minor
    assert unpaid_minor(settings, "b0", "EUR") == 0


def test_attempts_recorded_before_a_crash_are_looked_up_then_sent_in_one_file(settings, tmp_path):
    from ledger import payouts as records
    from processors.payout_run import send_commands
    from tests.integration.sequencing_helpers import run_sequencer

    outbox = tmp_path / "bank" / "outbox"
    settings = single_partition_topics(settings).model_copy(update={
        "bank_debtor_iban": "DE89370400440532013000", "bank_outbox_dir": outbox,
        "bank_status_dir": tmp_path / "bank" / "status"})
    requested = request_payouts(settings, {f"r{i}": ("bank_transfer", german_iban(100 + i)) for i in range(4)},
                                currency="EUR", minor=5000)
    # an earlier processor recorded every attempt, then died before calling the bank
    book = book_of(settings)
    recorded = [records.submitted(book.get(e.payload["payout_id"]), 1, "bank_transfer", e.payload["payout_id"],
                                  e.envelope.occurred_at) for e in requested]
    send_commands(settings.kafka_bootstrap, settings.topic_commands, recorded, EventCodec())
    run_sequencer(settings, idle_exit_s=1.0)
    assert set(statuses(settings, {e.payee_id: e for e in requested}).values()) == {"submitted"}
    with sequencer_running(settings), processor_running(settings) as worker:
        wait_until(lambda: set(statuses(settings, {e.payee_id: e for e in requested}).values()) == {"at_provider"},
                   30, "the recovered attempts at the bank")
        assert worker.stats.submitted == 0  # nothing was recorded again
    files = sorted(outbox.glob("pain001-*.xml"))
    assert len(files) == 1, [f.name for f in files]  # asked one by one, sent together
    assert sorted(t.end_to_end_id for t in read_credit_transfers(files[0].read_bytes()).transfers) == sorted(
        end_to_end_id_of(e.payload["payout_id"]) for e in requested)


# --- protections (Stripe) ----------------------------------------------------------------------------


def stripe_settings(settings, server, **changes):
    return settings.model_copy(update={"stripe_api_key": "sk_test_ledger", "stripe_api_base": server.url,
                                       "stripe_timeout_s": 3.0, "retry_delays_s": [1, 1, 1], **changes})


def transfer_posts(server) -> int:
    return sum(1 for method, path, _, _ in server.requests_log() if method == "POST" and path == "/v1/transfers")


def test_an_open_circuit_stops_calls_until_its_cooldown_then_one_trial_reopens_the_provider(settings):
    clock = ShiftedClock()
    with StripeTestServer() as server:
        # one call at a time, so exactly `breaker_failures` calls fail before the circuit opens
        settings = stripe_settings(settings, server, breaker_failures=2, breaker_cooldown_s=300.0,
                                   provider_concurrency=1)
        requested = {e.payee_id: e for e in request_payouts(
            settings, {f"s{i}": ("stripe_standard", server.create_account()) for i in range(6)})}
        server.inject(path_prefix="/v1/transfers", method="POST", kind="server_error", times=100)
        with sequencer_running(settings), processor_running(settings, clock=clock) as worker:
            breaker = worker.lanes["stripe"].breaker
            wait_until(lambda: transfer_posts(server) >= 2 and breaker.state is BreakerState.OPEN, 30,
                       "two failed calls and an open circuit")
            wait_until(lambda: sum(s == "retry_wait" for s in statuses(settings, requested).values()) == 2, 30,
                       "the two failed payouts waiting for their retry")
            deadline = time.monotonic() + OBSERVE_S  # retries fall due after 1 s: the open circuit holds them
            while time.monotonic() < deadline:
                assert transfer_posts(server) == 2
                assert not any(p.status.terminal for p in book_of(settings).payouts.values())
                time.sleep(0.3)  # a bounded observation that nothing happens
            assert sorted(statuses(settings, requested).values()) == ["retry_wait"] * 2 + ["submitted"] * 4
            assert breaker.state is BreakerState.OPEN and server.transfers() == []

            server.clear_faults()
            clock.advance(301)  # the cooldown is over: one trial, then the lane is open again
            wait_until(lambda: all_final(settings, ids_of(requested)), 30, "every payout settled")
            assert breaker.state is BreakerState.CLOSED

    assert set(statuses(settings, requested).values()) == {"settled"}
    assert transfer_posts(server) == 2 + 6
    creations = server.creations_by_key()
    assert sum(creations.values()) == 6 and set(creations.values()) == {1} and len(server.transfers()) == 6
    retried = [pid for pid in ids_of(requested) if f"{pid}:2" in creations]
    assert len(retried) == 2
    for payout_id in retried:
        assert types_of(settings, payout_id) == [
            ("PayoutRequested", None), ("PayoutSubmitted", 1), ("PayoutFailed", 1), ("PayoutRetryScheduled", 2),
            ("PayoutSubmitted", 2), ("PayoutSettled", 2)]


def test_an_emergency_stop_records_no_attempt_and_calls_no_provider_until_lifted(settings):
    with StripeTestServer() as server:
        settings = stripe_settings(settings, server)
        requested = {e.payee_id: e for e in request_payouts(
            settings, {f"e{i}": ("stripe_standard", server.create_account()) for i in range(3)})}
        assert set_pause(settings.database_url, True, "provider incident", "ops").paused
        log_lines: list[str] = []
        with sequencer_running(settings), processor_running(settings, database_url=settings.database_url,
                                                            log_lines=log_lines) as worker:
            wait_until(lambda: any("payouts PAUSED" in line for line in log_lines), 30, "the processor saw the pause")
            assert len(worker.book.payouts) == 3
            deadline = time.monotonic() + OBSERVE_S
            while time.monotonic() < deadline:
                assert server.requests_log() == [] and worker.stats.submitted == 0
                time.sleep(0.3)  # a bounded observation that nothing happens
            assert submits_anywhere(settings) == 0
            assert set(statuses(settings, requested).values()) == {"requested"}

            set_pause(settings.database_url, False, "incident over", "ops")
            wait_until(lambda: all_final(settings, ids_of(requested)), 30, "every payout settled after the resume")
            assert any("payouts resumed" in line for line in log_lines)

    assert set(statuses(settings, requested).values()) == {"settled"}
    assert server.creations_by_key() == {pid: 1 for pid in ids_of(requested)}
