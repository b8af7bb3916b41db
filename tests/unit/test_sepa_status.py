"""pain.002 status reports: reading a bank's, writing one that answers a pain.001, and which status wins."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from connectors.bank_transfer import BankTransferConnector
from connectors.base import Outcome, TransferRequest
from connectors.sepa_status import (
    StatusScope, current_status, end_to_end_id_of, payout_id_of, read_credit_transfers, read_status_report,
    write_status_report,
)
from ledger.money import Money

T0 = datetime(2026, 11, 20, 9, 30, tzinfo=timezone.utc)
PAYOUTS = [str(uuid.uuid5(uuid.NAMESPACE_URL, f"payout/{n}")) for n in range(3)]
E2E = [uuid.UUID(p).hex for p in PAYOUTS]


@pytest.fixture(scope="module")
def pain001(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    root = tmp_path_factory.mktemp("bank")
    connector = BankTransferConnector(root / "outbox", root / "status", "Platform", "DE89370400440532013000",
                                      "COBADEFFXXX", clock=lambda: T0)
    connector.submit_batch([TransferRequest(p, f"payee-{n}", Money.of(1000 + n, "EUR"), "bank_transfer",
                                            "FR1420041010050500013M02606", 1) for n, p in enumerate(PAYOUTS)])
    [path] = sorted(connector.outbox_dir.glob("pain001-*.xml"))
    return path.read_bytes()


def report(body: str, created: str = "2026-11-21T08:00:00") -> bytes:
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<Document xmlns="urn:iso:std:iso:20022:tech:xsd:pain.002.001.03"><CstmrPmtStsRpt>
  <GrpHdr><MsgId>BANK-7</MsgId><CreDtTm>{created}</CreDtTm></GrpHdr>
  {body}
</CstmrPmtStsRpt></Document>""".encode()


GROUP = ("<OrgnlGrpInfAndSts><OrgnlMsgId>M1</OrgnlMsgId><OrgnlMsgNmId>pain.001.001.03</OrgnlMsgNmId>{}"
         "</OrgnlGrpInfAndSts>")


def test_end_to_end_ids_carry_payout_ids_both_ways():
    assert end_to_end_id_of(PAYOUTS[0]) == E2E[0] and len(E2E[0]) == 32
    assert payout_id_of(E2E[0]) == PAYOUTS[0]
    assert payout_id_of(E2E[0].upper()) == PAYOUTS[0]
    assert payout_id_of("NOTPROVIDED") == ""


def test_write_status_report_round_trips_through_read_status_report(pain001):
    original = read_credit_transfers(pain001)
    raw = write_status_report(pain001, {PAYOUTS[1]: "AC04", E2E[2]: "AM04"}, created_at=T0, message_id="BANKSIM-1")
    lines = read_status_report(raw)

    assert {line.scope for line in lines} == {StatusScope.TRANSACTION}  # GrpSts/PmtInfSts PART say nothing more
    assert [(line.end_to_end_id, line.payout_id, line.status, line.iso_reason, line.outcome, line.reason_code)
            for line in lines] == [
        (E2E[0], PAYOUTS[0], "ACSC", "", Outcome.SETTLED, ""),
        (E2E[1], PAYOUTS[1], "RJCT", "AC04", Outcome.FAILED, "account_closed"),
        (E2E[2], PAYOUTS[2], "RJCT", "AM04", Outcome.FAILED, "insufficient_funds"),
    ]
    assert {(line.original_message_id, line.original_payment_information_id, line.report_message_id,
             line.report_created_at) for line in lines} == {
        (original.message_id, original.transfers[0].payment_information_id, "BANKSIM-1", T0)}
    assert "AC04" in lines[1].message
    assert [t.instruction_id for t in original.transfers] == [f"{e}-1" for e in E2E]
    assert f"<OrgnlInstrId>{E2E[0]}-1</OrgnlInstrId>".encode() in raw  # echoed for the bank's reconciliation


def test_an_all_accepted_report_speaks_at_every_level(pain001):
    lines = read_status_report(write_status_report(pain001, created_at=T0))
    assert [line.scope for line in lines] == [StatusScope.GROUP, StatusScope.PAYMENT_INFORMATION] + [
        StatusScope.TRANSACTION] * 3
    assert {line.outcome for line in lines} == {Outcome.SETTLED}


def test_a_file_rejection_is_one_group_line(pain001):
    [line] = read_status_report(write_status_report(pain001, reject_file="FF01", created_at=T0))
    assert (line.scope, line.status, line.iso_reason, line.outcome, line.end_to_end_id) == (
        StatusScope.GROUP, "RJCT", "FF01", Outcome.FAILED, "")
    assert line.applies_to(E2E[0], read_credit_transfers(pain001).message_id, "any")


@pytest.mark.parametrize("kwargs, match", [
    ({"rejected": {"not-in-the-file": "AC04"}}, "neither an end-to-end id nor a payout id"),
    ({"rejected": {str(uuid.uuid4()): "AC04"}}, "neither an end-to-end id nor a payout id"),
    ({"rejected": {PAYOUTS[0]: "closed"}}, "ISO 20022 reason code"),
    ({"accepted_status": "RJCT"}, "accepted_status"),
    ({"reject_file": "FF01", "rejected": {PAYOUTS[0]: "AC04"}}, "reject_file"),
    ({"message_id": "M" * 36}, "MsgId"),
])
def test_write_status_report_refuses_what_it_cannot_say(pain001, kwargs, match):
    with pytest.raises(ValueError, match=match):
        write_status_report(pain001, **kwargs)


def test_a_bank_style_report_inherits_statuses_and_keeps_proprietary_reasons():
    lines = read_status_report(report(GROUP.format("<GrpSts>PART</GrpSts>") + f"""
  <OrgnlPmtInfAndSts><OrgnlPmtInfId>P1</OrgnlPmtInfId><PmtInfSts>RJCT</PmtInfSts>
    <StsRsnInf><Rsn><Prtry>LIMIT</Prtry></Rsn><AddtlInf>daily limit</AddtlInf><AddtlInf>call us</AddtlInf></StsRsnInf>
    <TxInfAndSts><OrgnlEndToEndId>{E2E[0].upper()}</OrgnlEndToEndId></TxInfAndSts>
    <TxInfAndSts><OrgnlEndToEndId>NOTPROVIDED</OrgnlEndToEndId><TxSts>ACCP</TxSts></TxInfAndSts>
  </OrgnlPmtInfAndSts>""", created="2026-11-21T08:00:00.250Z"))

    payment, inherited, foreign = lines
    assert (payment.scope, payment.original_payment_information_id) == (StatusScope.PAYMENT_INFORMATION, "P1")
    assert (inherited.status, inherited.iso_reason, inherited.reason_code, inherited.payout_id) == (
        "RJCT", "LIMIT", "declined", PAYOUTS[0])
    assert "LIMIT" in inherited.message and "daily limit; call us" in inherited.message
    assert (foreign.outcome, foreign.payout_id) == (Outcome.PENDING, "")
    assert inherited.report_created_at == datetime(2026, 11, 21, 8, 0, 0, 250_000, tzinfo=timezone.utc)


def test_an_unknown_status_code_is_pending_never_a_guess():
    [line] = read_status_report(report(GROUP.format("") + f"""<OrgnlPmtInfAndSts><OrgnlPmtInfId>P1</OrgnlPmtInfId>
      <TxInfAndSts><OrgnlEndToEndId>{E2E[0]}</OrgnlEndToEndId><TxSts>ZZZZ</TxSts></TxInfAndSts></OrgnlPmtInfAndSts>"""))
    assert line.outcome is Outcome.PENDING and "ZZZZ" in line.message


TX = "<OrgnlPmtInfAndSts><OrgnlPmtInfId>P1</OrgnlPmtInfId><TxInfAndSts>{}</TxInfAndSts></OrgnlPmtInfAndSts>"


@pytest.mark.parametrize("raw, match", [
    (b"this is not xml", "not well-formed XML"),
    (b"<Document><CstmrPmtStsRpt>", "not well-formed XML"),
    (b"<Report/>", "root element"),
    (b'<Document xmlns="urn:iso:std:iso:20022:tech:xsd:pain.001.001.03"/>', "namespace"),
    (b'<!DOCTYPE d [<!ENTITY a "aaaa">]><Document/>', "DOCTYPE"),
    (report("").replace(b"<GrpHdr><MsgId>BANK-7</MsgId>", b"<GrpHdr>"), "MsgId"),
    (report(GROUP.format("")).replace(b"<CstmrPmtStsRpt>\n  <GrpHdr>", b"<CstmrPmtStsRpt><Hdr>")
     .replace(b"</GrpHdr>", b"</Hdr>"), "GrpHdr"),
    (report(""), "OrgnlGrpInfAndSts"),
    (report("<OrgnlGrpInfAndSts><GrpSts>RJCT</GrpSts></OrgnlGrpInfAndSts>"), "OrgnlMsgId"),
    (report(GROUP.format("") + TX.format("<TxSts>ACSC</TxSts>")), "OrgnlEndToEndId"),
    (report(GROUP.format("") + TX.format(f"<OrgnlEndToEndId>{E2E[0]}</OrgnlEndToEndId><TxSts>done</TxSts>")),
     "TxSts"),
    (report(GROUP.format("") + TX.format(f"<OrgnlEndToEndId>{E2E[0]}</OrgnlEndToEndId>")), "no TxSts"),
    (report(GROUP.format(""), created="yesterday"), "CreDtTm"),
])
def test_a_malformed_report_is_a_value_error_naming_the_problem(raw, match):
    with pytest.raises(ValueError, match=match):
        read_status_report(raw)


def test_a_status_report_must_be_bytes():
    with pytest.raises(TypeError):
        read_status_report("<Document/>")  # type: ignore[arg-type]


def test_the_most_specific_line_wins_within_a_report_and_final_then_newest_across_reports(pain001):
    message_id = read_credit_transfers(pain001).message_id
    payment_id = read_credit_transfers(pain001).transfers[0].payment_information_id
    group_reject = read_status_report(write_status_report(pain001, reject_file="AG01", created_at=T0, message_id="A"))
    accepted = read_status_report(write_status_report(pain001, {PAYOUTS[1]: "AC01"}, created_at=T0, message_id="B"))
    # One report: a group RJCT with a transaction ACSC line -> the transaction line.
    mixed = [replace(line, report_message_id="A") for line in group_reject + accepted]
    assert current_status(mixed, E2E[0], message_id, payment_id).status == "ACSC"
    assert current_status(mixed, E2E[1], message_id, payment_id).reason_code == "invalid_account_number"

    later = T0 + timedelta(hours=1)
    pending_later = [replace(line, report_created_at=later) for line in read_status_report(
        write_status_report(pain001, accepted_status="ACSP", created_at=later, message_id="C"))]
    assert current_status(accepted + pending_later, E2E[0], message_id, payment_id).status == "ACSC"
    assert current_status(pending_later, E2E[0], message_id, payment_id).outcome is Outcome.PENDING
    rejected_later = [replace(line, report_created_at=later + timedelta(days=1)) for line in group_reject]
    assert current_status(accepted + rejected_later, E2E[0], message_id, payment_id).status == "RJCT"

    assert current_status(accepted, E2E[0], "another message", payment_id) is None
    assert current_status(accepted, E2E[0]).status == "ACSC"  # by end-to-end id alone: transaction lines only
    assert current_status(group_reject, E2E[0]) is None


def test_read_credit_transfers_checks_the_counts_it_is_given(pain001):
    parsed = read_credit_transfers(pain001)
    assert [(t.end_to_end_id, t.amount) for t in parsed.transfers] == [
        (E2E[n], Money.of(1000 + n, "EUR")) for n in range(3)]
    with pytest.raises(ValueError, match="CtrlSum"):
        read_credit_transfers(pain001.replace(b"<CtrlSum>30.03</CtrlSum>", b"<CtrlSum>30.04</CtrlSum>", 1))
    with pytest.raises(ValueError, match="InstdAmt"):
        read_credit_transfers(pain001.replace(b">10.00<", b">10.001<", 1))
