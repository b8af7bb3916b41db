"""Process logs: JSON lines with the ids of what is being handled, across threads; text lines as before."""

from __future__ import annotations

import contextvars
import io
import json
import logging
import queue
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

import pytest

from connectors.base import Outcome, TransferRequest, TransferResult
from connectors.circuit_breaker import CircuitBreaker
from ledger.money import Money
from processors.provider_lane import ProviderLane
from runtime.logs import bind, configure_logging, current_context, log_context, unbind


@pytest.fixture
def output():
    """Logging configured into a buffer for the test, and the root logger restored afterwards."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, logging.getLogger("ledger").level)
    buffer = io.StringIO()
    yield buffer
    for handler in list(root.handlers):
        if getattr(handler, "_ledger_handler", False):
            root.removeHandler(handler)
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    logging.getLogger("ledger").setLevel(saved[2])
    logging.captureWarnings(False)


def lines(buffer: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def test_a_json_line_has_the_fixed_fields_the_ids_and_extra_fields(output):
    configure_logging("json", "sequencer", stream=output)
    with log_context(correlation_id="corr-1", event_id="evt-1", payee_id="barber-7", payout_id=None):
        logging.getLogger("ledger.sequencer").info("chained %s", "PaymentCompleted",
                                                   extra={"stage": "ledger", "amount": Money.of(1050, "USD")})
    (line,) = lines(output)
    assert list(line)[:5] == ["ts", "level", "logger", "process", "message"]
    assert line["level"] == "info" and line["logger"] == "ledger.sequencer" and line["process"] == "sequencer"
    assert line["message"] == "chained PaymentCompleted"
    assert (line["correlation_id"], line["event_id"], line["payee_id"]) == ("corr-1", "evt-1", "barber-7")
    assert "payout_id" not in line and "run_id" not in line  # only ids that are known
    assert line["stage"] == "ledger" and line["amount"] == "USD 10.50"  # extra values as text, never floats
    assert datetime.fromisoformat(line["ts"].replace("Z", "+00:00")).tzinfo == timezone.utc
    assert line["ts"].endswith("Z")


def test_the_context_nests_and_is_restored_and_bind_lasts_until_unbound(output):
    configure_logging("json", "transfers", stream=output)
    log = logging.getLogger("ledger.transfers")
    token = bind(run_id="run-9")
    with log_context(payout_id="po-1", payee_id="p-1"):
        with log_context(payout_id="po-2"):
            log.info("inner")
        log.info("outer")
    log.info("after")
    unbind(token)
    log.info("unbound")
    inner, outer, after, unbound = lines(output)
    assert (inner["payout_id"], inner["payee_id"], inner["run_id"]) == ("po-2", "p-1", "run-9")
    assert (outer["payout_id"], outer["run_id"]) == ("po-1", "run-9")
    assert "payout_id" not in after and after["run_id"] == "run-9"
    assert "run_id" not in unbound
    assert current_context() == {}


def test_pool_threads_carry_the_ids_only_when_submitted_with_copy_context(output):
    configure_logging("json", "transfers", stream=output)
    log = logging.getLogger("ledger.connectors.stripe")
    with ThreadPoolExecutor(max_workers=1) as pool, log_context(payout_id="po-7", correlation_id="close:w47"):
        pool.submit(contextvars.copy_context().run, log.info, "copied").result()
        pool.submit(log.info, "plain").result()
    copied, plain = lines(output)
    assert (copied["payout_id"], copied["correlation_id"]) == ("po-7", "close:w47")
    assert "payout_id" not in plain  # why provider_lane.py submits with copy_context().run


class LoggingConnector:
    name = "stripe"

    def submit(self, request: TransferRequest) -> TransferResult:
        logging.getLogger("ledger.connectors.stripe").info("transfer created")
        return TransferResult(Outcome.SETTLED, provider_reference="tr_1")

    def lookup(self, request: TransferRequest) -> TransferResult | None:
        raise RuntimeError("provider bug")


def test_a_provider_lane_runs_connector_calls_in_the_submitting_context(output):
    configure_logging("json", "transfers", stream=output)
    results: queue.Queue = queue.Queue()
    lane = ProviderLane(LoggingConnector(), concurrency=2, rate_per_s=100.0, results=results, window=10,
                        breaker=CircuitBreaker(lambda: datetime.now(timezone.utc), 5, 30.0))
    request = TransferRequest("po-3", "barber-3", Money.of(500, "EUR"), "stripe_standard", "acct_1", 1)
    try:
        with log_context(payout_id="po-3", payee_id="barber-3", correlation_id="close:w48"):
            lane.submit([request])
            lane.resolve(request, "resolve")
        answers = [results.get(timeout=10), results.get(timeout=10)]
    finally:
        lane.shutdown()
    assert {answer.mode for answer in answers} == {"submit", "resolve"}
    by_message = {line["message"].split(":")[0]: line for line in lines(output)}
    created, raised = by_message["transfer created"], by_message["stripe resolve raised"]
    for line in (created, raised):
        assert (line["payout_id"], line["payee_id"], line["correlation_id"]) == ("po-3", "barber-3", "close:w48")
    assert raised["level"] == "error" and "RuntimeError: provider bug" in raised["exc_info"]


def test_exceptions_are_one_json_line_with_the_traceback_as_text(output):
    configure_logging("json", "projector", stream=output)
    try:
        raise ValueError("bad\nrow")
    except ValueError:
        logging.getLogger("ledger.projector").exception("batch failed")
    assert len(output.getvalue().splitlines()) == 1
    (line,) = lines(output)
    assert line["level"] == "error" and line["message"] == "batch failed"
    assert line["exc_info"].startswith("Traceback") and "ValueError: bad\nrow" in line["exc_info"]


def test_text_mode_prints_process_colon_message_as_before(output):
    configure_logging("text", "sequencer", stream=output)
    with log_context(event_id="evt-1"):
        logging.getLogger("ledger.sequencer").info("rebuilt from %d ledger events", 3)
    logging.getLogger("ledger.sequencer").debug("not shown at INFO")
    assert output.getvalue() == "sequencer: rebuilt from 3 ledger events\n"


def test_libraries_log_warnings_only_and_a_second_configure_replaces_the_handler(output):
    configure_logging("text", "aggregator", stream=io.StringIO())
    configure_logging("json", "aggregator", stream=output)
    logging.getLogger("faust.worker").info("starting (noise)")
    logging.getLogger("aiokafka").warning("heartbeat failed")
    logging.getLogger("ledger.aggregator").info("rebuilt")
    assert [(line["logger"], line["message"]) for line in lines(output)] == [
        ("aiokafka", "heartbeat failed"), ("ledger.aggregator", "rebuilt")]
    assert sum(getattr(h, "_ledger_handler", False) for h in logging.getLogger().handlers) == 1


def test_an_unknown_format_is_refused_naming_the_setting(output, monkeypatch):
    with pytest.raises(ValueError, match="LEDGER_LOG_FORMAT must be one of text, json, got 'xml'"):
        configure_logging("xml", "sequencer", stream=output)
    from pydantic import ValidationError

    from runtime.settings import Settings

    monkeypatch.setenv("LEDGER_LOG_FORMAT", "yaml")
    with pytest.raises(ValidationError, match="LEDGER_LOG_FORMAT must be text or json, got 'yaml'"):
        Settings()
    monkeypatch.setenv("LEDGER_LOG_FORMAT", " JSON ")
    assert Settings().log_format == "json"


def test_a_payouts_events_carry_its_requests_correlation_id_and_what_caused_each():
    """What the transfer processor's log lines (and a trace through the ledger) follow; ids unchanged."""
    from ledger import payouts as records
    from ledger.payouts import PayoutBook, outcome_event_id
    from tests.unit.event_factory import make_event

    request = make_event("PayoutRequested", "EUR", payee_id="payee-1")
    book = PayoutBook()
    book.apply(request)
    payout = book.get(request.payload["payout_id"])
    now = datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc)
    first = records.submitted(payout, 1, "bank_transfer", payout.payout_id, now)
    book.apply(first)
    failure = records.failed(payout, 1, "bank_transfer", "could_not_process", "try later", True, now)
    book.apply(failure)
    retry = records.retry_scheduled(payout, 2, "bank_transfer", now, "could_not_process", "try later", now)
    book.apply(retry)
    second = records.submitted(payout, 2, "bank_transfer", f"{payout.payout_id}:2", now)
    book.apply(second)
    paid = records.settled(payout, 2, "bank_transfer", "ref-2", now)
    chain = [first, failure, retry, second, paid]
    assert {event.envelope.correlation_id for event in chain} == {request.envelope.correlation_id} == {"corr-payee-1"}
    assert [event.envelope.causation_id for event in chain] == [
        request.envelope.event_id, first.envelope.event_id, failure.envelope.event_id, retry.envelope.event_id,
        second.envelope.event_id]
    assert [event.envelope.event_id for event in chain] == [
        outcome_event_id(payout.payout_id, attempt, kind)
        for attempt, kind in ((1, "submitted"), (1, "failed"), (2, "retry"), (2, "submitted"), (2, "settled"))]
    hold = records.expiry_hold(payout, 2, 24, now)
    assert (hold.envelope.correlation_id, hold.envelope.causation_id) == (
        "corr-payee-1", outcome_event_id(payout.payout_id, 2, "failed"))
