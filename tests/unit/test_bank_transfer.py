"""The bank-transfer connector: pain.001 batches in an outbox, exactly once per payout, settled by pain.002."""

from __future__ import annotations

import fcntl
import uuid
import xml.etree.ElementTree as ET
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import sepaxml
import xmlschema
from sepaxml.validation import ValidationError

from connectors import bank_transfer
from connectors.bank_transfer import BankTransferConnector, parse_destination
from connectors.base import Outcome, TransferRequest
from connectors.sepa_status import write_status_report
from ledger.guards import InvariantViolation
from ledger.money import Money

T0 = datetime(2026, 11, 20, 9, 30, tzinfo=timezone.utc)
NS = {"p": "urn:iso:std:iso:20022:tech:xsd:pain.001.001.03"}
FR = "FR1420041010050500013M02606"
NL = "NL91ABNA0417164300"
GB = "GB29NWBK60161331926819"
DEBTOR_IBAN = "DE89370400440532013000"


def payout_id(name: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"payout/{name}"))


def request(name: str, amount_minor: int = 10_000, currency: str = "EUR", destination: str = FR,
            attempt: int = 1) -> TransferRequest:
    return TransferRequest(payout_id(name), f"payee-{name}", Money.of(amount_minor, currency), "bank_transfer",
                           destination, attempt)


def make_connector(root: Path) -> BankTransferConnector:
    return BankTransferConnector(root / "outbox", root / "status", "Platform Payouts SA", DEBTOR_IBAN,
                                 "COBADEFFXXX", clock=lambda: T0)


@pytest.fixture
def connector(tmp_path: Path) -> BankTransferConnector:
    return make_connector(tmp_path)


@pytest.fixture(scope="module")
def pain001_schema() -> xmlschema.XMLSchema:
    return xmlschema.XMLSchema(str(Path(sepaxml.__file__).parent / "schemas" / "pain.001.001.03.xsd"))


def outbox_files(connector: BankTransferConnector) -> list[Path]:
    return sorted(connector.outbox_dir.rglob("pain001-*.xml"))


def message_id_of(reference: str) -> str:
    return reference.split("/")[0]


def texts(root: ET.Element, path: str) -> list[str]:
    return [el.text or "" for el in root.findall(path, NS)]


def drop_status(connector: BankTransferConnector, name: str, raw: bytes) -> None:
    (connector.status_dir / name).write_bytes(raw)


# ------------------------------------------------------------------------------------------ writing


def test_a_batch_is_one_xsd_valid_file_with_exact_amounts_ids_and_control_sum(connector, pain001_schema):
    requests = [request("a", 123_456), request("b", 5, destination=f"{NL}/ABNANL2A"), request("c", 100, destination=GB),
                request("d", 99_999_999_999)]
    results = connector.submit_batch(requests)

    [path] = outbox_files(connector)
    raw = path.read_bytes()
    pain001_schema.validate(raw.decode())
    root = ET.fromstring(raw)
    message_id = root.find("p:CstmrCdtTrfInitn/p:GrpHdr/p:MsgId", NS).text
    assert path.name == f"pain001-{message_id}.xml" and len(message_id) <= 35
    assert all(len(t) <= 35 for t in texts(root, ".//p:PmtInfId"))
    assert texts(root, "p:CstmrCdtTrfInitn/p:GrpHdr/p:NbOfTxs") == ["4"]
    assert texts(root, "p:CstmrCdtTrfInitn/p:GrpHdr/p:CtrlSum") == ["1000001235.60"]
    assert texts(root, ".//p:PmtInf/p:CtrlSum") == ["1000001235.60"]
    assert texts(root, "p:CstmrCdtTrfInitn/p:GrpHdr/p:CreDtTm") == ["2026-11-20T09:30:00"]
    assert texts(root, ".//p:ReqdExctnDt") == ["2026-11-20"]
    assert texts(root, ".//p:InstdAmt") == ["1234.56", "0.05", "1.00", "999999999.99"]
    assert {el.get("Ccy") for el in root.findall(".//p:InstdAmt", NS)} == {"EUR"}
    assert texts(root, ".//p:EndToEndId") == [uuid.UUID(r.payout_id).hex for r in requests]
    assert texts(root, ".//p:InstrId") == [f"{uuid.UUID(r.payout_id).hex}-1" for r in requests]
    assert texts(root, ".//p:CdtrAcct/p:Id/p:IBAN") == [FR, NL, GB, FR]
    assert texts(root, ".//p:CdtrAgt/p:FinInstnId/p:BIC") == ["ABNANL2A"]
    assert texts(root, ".//p:Cdtr/p:Nm") == ["payee-a", "payee-b", "payee-c", "payee-d"]
    assert texts(root, ".//p:DbtrAcct/p:Id/p:IBAN") == [DEBTOR_IBAN]
    assert [r.outcome for r in results] == [Outcome.PENDING] * 4
    assert [r.provider_reference for r in results] == [f"{message_id}/{uuid.UUID(r.payout_id).hex}" for r in requests]


@pytest.mark.parametrize("destination, amount_minor, currency, reason_code", [
    ("DE89370400440532013001", 100, "EUR", "invalid_account_number"),  # mod-97 fails
    ("DE8937040044053201300", 100, "EUR", "invalid_account_number"),  # one character short for DE
    ("ZZ89370400440532013000", 100, "EUR", "invalid_account_number"),  # no such country
    ("DE00370400440532013000", 100, "EUR", "invalid_account_number"),  # check digits 00
    ("not an iban", 100, "EUR", "invalid_account_number"),
    ("", 100, "EUR", "invalid_account_number"),
    (f"{FR}/NOTABIC", 100, "EUR", "invalid_account_number"),
    (FR, 100, "USD", "invalid_currency"),
    (FR, 100, "GBP", "invalid_currency"),
    (FR, 0, "EUR", "invalid_amount"),
    (FR, -500, "EUR", "invalid_amount"),
    (FR, 100_000_000_000, "EUR", "invalid_amount"),  # above SEPA's EUR 999,999,999.99
])
def test_invalid_requests_fail_permanently_and_stay_out_of_the_file(connector, destination, amount_minor, currency,
                                                                    reason_code):
    bad = request("bad", amount_minor, currency, destination)
    results = connector.submit_batch([request("good-1"), bad, request("good-2")])

    assert results[1].outcome is Outcome.FAILED
    assert (results[1].reason_code, results[1].retryable) == (reason_code, False)
    assert [results[0].outcome, results[2].outcome] == [Outcome.PENDING, Outcome.PENDING]
    [path] = outbox_files(connector)
    assert texts(ET.fromstring(path.read_bytes()), ".//p:EndToEndId") == [
        uuid.UUID(payout_id("good-1")).hex, uuid.UUID(payout_id("good-2")).hex]
    assert connector.lookup(bad) is None


def test_a_batch_of_only_invalid_requests_writes_no_file(connector):
    results = connector.submit_batch([request("x", currency="USD"), request("y", destination="FR00")])
    assert [r.reason_code for r in results] == ["invalid_currency", "invalid_account_number"]
    assert outbox_files(connector) == []


def test_destination_accepts_spaces_lower_case_and_a_bic():
    assert parse_destination("fr14 2004 1010 0505 0001 3m02 606") == (FR, None)
    assert parse_destination(f"{NL}/abnanl2a") == (NL, "ABNANL2A")
    assert parse_destination(f"{NL}/ABNANL2AXXX") == (NL, "ABNANL2AXXX")
    with pytest.raises(ValueError, match="mod-97"):
        parse_destination("FR1520041010050500013M02606")


def test_a_debtor_without_a_bic_writes_valid_files(tmp_path, pain001_schema):
    connector = BankTransferConnector(tmp_path / "o", tmp_path / "s", "Platform", DEBTOR_IBAN, "", clock=lambda: T0)
    assert connector.submit(request("a")).outcome is Outcome.PENDING
    [path] = outbox_files(connector)
    pain001_schema.validate(path.read_text())
    assert texts(ET.fromstring(path.read_bytes()), ".//p:DbtrAgt/p:FinInstnId/p:BIC") == []


def test_the_debtor_account_is_checked_at_construction(tmp_path):
    with pytest.raises(ValueError, match="mod-97"):
        BankTransferConnector(tmp_path / "o", tmp_path / "s", "Platform", "DE89370400440532013001", "COBADEFFXXX")
    with pytest.raises(ValueError, match="BIC"):
        BankTransferConnector(tmp_path / "o", tmp_path / "s", "Platform", DEBTOR_IBAN, "COBA")


def test_a_payout_id_that_is_not_a_uuid_is_a_bug_and_nothing_is_written(connector):
    broken = TransferRequest("payout-7", "payee-7", Money.of(100, "EUR"), "bank_transfer", FR, 1)
    with pytest.raises(InvariantViolation, match="not a UUID"):
        connector.submit_batch([request("a"), broken])
    assert outbox_files(connector) == []


def test_an_attempt_that_does_not_fit_the_instruction_id_is_a_bug(connector):
    with pytest.raises(InvariantViolation, match="attempt 100"):
        connector.submit(request("a", attempt=100))
    assert outbox_files(connector) == []


def test_a_file_that_fails_the_xsd_raises_and_is_not_written(connector, monkeypatch):
    monkeypatch.setattr(bank_transfer, "_remittance", lambda _request: "")  # Ustrd must have 1..140 characters
    with pytest.raises(ValidationError):
        connector.submit(request("a"))
    assert list(connector.outbox_dir.iterdir()) == [connector.outbox_dir / ".bank_transfer.lock"]


def test_a_large_batch_is_split_into_files_of_at_most_the_limit(connector, monkeypatch):
    monkeypatch.setattr(bank_transfer, "MAX_TRANSFERS_PER_FILE", 2)
    results = connector.submit_batch([request(f"p{n}") for n in range(5)])
    files = outbox_files(connector)
    assert sorted(len(texts(ET.fromstring(f.read_bytes()), ".//p:EndToEndId")) for f in files) == [1, 2, 2]
    assert len({message_id_of(r.provider_reference) for r in results}) == 3


# ------------------------------------------------------------------------------------------ exactly once


def test_resubmitting_writes_nothing_new_and_returns_the_same_references(connector):
    first = connector.submit_batch([request("a"), request("b"), request("c")])
    [path] = outbox_files(connector)
    content = path.read_bytes()

    again = connector.submit_batch([request("c", attempt=2), request("a", attempt=2)])
    single = connector.submit(request("b"))

    assert [r.provider_reference for r in again] == [first[2].provider_reference, first[0].provider_reference]
    assert single.provider_reference == first[1].provider_reference
    assert {r.outcome for r in [*again, single]} == {Outcome.PENDING}
    assert outbox_files(connector) == [path] and path.read_bytes() == content


def test_a_mixed_batch_writes_only_the_new_payouts(connector):
    first = connector.submit_batch([request("a"), request("b")])
    mixed = connector.submit_batch([request("a"), request("d")])

    assert mixed[0].provider_reference == first[0].provider_reference
    files = outbox_files(connector)
    assert len(files) == 2
    newest = next(f for f in files if message_id_of(mixed[1].provider_reference) in f.name)
    assert texts(ET.fromstring(newest.read_bytes()), ".//p:EndToEndId") == [uuid.UUID(payout_id("d")).hex]


def test_a_payout_twice_in_one_call_is_written_once(connector):
    results = connector.submit_batch([request("a"), request("b"), request("a")])
    [path] = outbox_files(connector)
    assert texts(ET.fromstring(path.read_bytes()), ".//p:EndToEndId").count(uuid.UUID(payout_id("a")).hex) == 1
    assert results[0] == results[2]


def test_a_restarted_connector_finds_what_an_earlier_one_wrote(tmp_path):
    first = make_connector(tmp_path).submit(request("a"))
    again = make_connector(tmp_path).submit(request("a", attempt=2))
    assert again.provider_reference == first.provider_reference
    assert len(outbox_files(make_connector(tmp_path))) == 1


def test_files_moved_into_a_subdirectory_still_count(connector):
    first = connector.submit(request("a"))
    [path] = outbox_files(connector)
    (connector.outbox_dir / "sent").mkdir()
    path.rename(connector.outbox_dir / "sent" / path.name)

    assert connector.submit(request("a")).provider_reference == first.provider_reference
    assert len(outbox_files(connector)) == 1


def test_a_changed_amount_for_a_sent_payout_is_not_written_and_is_reported(connector):
    first = connector.submit(request("a", 10_000))
    again = connector.submit(request("a", 20_000))
    assert (again.outcome, again.provider_reference) == (Outcome.PENDING, first.provider_reference)
    assert "EUR 100.00" in again.message and "EUR 200.00" in again.message and "not written" in again.message
    assert len(outbox_files(connector)) == 1


def test_a_temp_file_left_by_a_crash_is_not_a_submission(connector, tmp_path):
    # What a crash between writing the temp file and os.replace leaves: a complete or a half file, hidden.
    elsewhere = make_connector(tmp_path / "elsewhere")
    elsewhere.submit(request("a"))
    [complete] = outbox_files(elsewhere)
    raw = complete.read_bytes()
    (connector.outbox_dir / f".{complete.name}.k2j4h1.tmp").write_bytes(raw)
    (connector.outbox_dir / f".{complete.name}.x9z8y7.tmp").write_bytes(raw[: len(raw) // 2])

    assert connector.lookup(request("a")) is None
    result = connector.submit(request("a"))
    assert result.outcome is Outcome.PENDING
    [path] = outbox_files(connector)
    assert uuid.UUID(payout_id("a")).hex in path.read_text()


def test_a_failed_write_leaves_no_file_and_the_retry_writes_it(connector, monkeypatch):
    def crash(*_args):
        raise OSError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(bank_transfer.os, "replace", crash)
        with pytest.raises(OSError, match="disk full"):
            connector.submit(request("a"))
    assert [p.name for p in connector.outbox_dir.iterdir()] == [".bank_transfer.lock"]
    assert connector.lookup(request("a")) is None
    assert connector.submit(request("a")).outcome is Outcome.PENDING
    assert len(outbox_files(connector)) == 1


def test_a_batch_waits_for_the_outbox_lock_and_gives_up_within_its_bound(tmp_path):
    connector = BankTransferConnector(tmp_path / "outbox", tmp_path / "status", "Platform", DEBTOR_IBAN,
                                      "COBADEFFXXX", clock=lambda: T0, lock_timeout_s=0)
    with open(connector.outbox_dir / ".bank_transfer.lock", "a+b") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(TimeoutError, match="bank_transfer.lock"):
            connector.submit(request("a"))
        fcntl.flock(held, fcntl.LOCK_UN)
    assert outbox_files(connector) == []


# ------------------------------------------------------------------------------------------ status


def test_lookup_of_a_payout_in_no_file_is_none_and_in_a_file_without_status_is_pending(connector):
    sent = connector.submit(request("a"))
    assert connector.lookup(request("never-sent")) is None
    found = connector.lookup(request("a"))
    assert (found.outcome, found.provider_reference) == (Outcome.PENDING, sent.provider_reference)


def test_an_accepted_status_report_settles(connector):
    sent = connector.submit_batch([request("a"), request("b")])
    [path] = outbox_files(connector)
    drop_status(connector, "report.xml", write_status_report(path.read_bytes(), {}, created_at=T0))
    for r, s in zip([request("a"), request("b")], sent):
        found = connector.lookup(r)
        assert (found.outcome, found.provider_reference) == (Outcome.SETTLED, s.provider_reference)


@pytest.mark.parametrize("iso, reason_code, retryable", [
    ("AC01", "invalid_account_number", False),
    ("AC04", "account_closed", False),
    ("AC06", "account_frozen", False),
    ("AG01", "declined", False),
    ("AM04", "insufficient_funds", True),
    ("BE04", "incorrect_account_holder_address", False),
    ("BE05", "incorrect_account_holder_name", False),
    ("MS03", "declined", False),
    ("NARR", "declined", False),  # not mapped: declined, with the ISO code kept
])
def test_a_rejection_maps_the_iso_reason(connector, iso, reason_code, retryable):
    sent = connector.submit_batch([request("a"), request("b")])
    [path] = outbox_files(connector)
    drop_status(connector, "report.xml", write_status_report(path.read_bytes(), {payout_id("b"): iso}, created_at=T0))

    rejected = connector.lookup(request("b"))
    assert rejected.outcome is Outcome.FAILED
    assert (rejected.reason_code, rejected.retryable) == (reason_code, retryable)
    assert iso in rejected.message and rejected.provider_reference == sent[1].provider_reference
    assert connector.lookup(request("a")).outcome is Outcome.SETTLED


@pytest.mark.parametrize("status", ["ACSP", "ACTC", "ACCP", "PDNG"])
def test_an_accepted_but_unsettled_status_is_pending(connector, status):
    connector.submit(request("a"))
    [path] = outbox_files(connector)
    drop_status(connector, "report.xml", write_status_report(path.read_bytes(), accepted_status=status, created_at=T0))
    found = connector.lookup(request("a"))
    assert found.outcome is Outcome.PENDING and status in found.message


def test_a_group_rejection_fails_every_transfer_of_that_file_only(connector):
    connector.submit_batch([request("a"), request("b")])
    later = connector.submit(request("c"))
    first_file = next(f for f in outbox_files(connector) if message_id_of(later.provider_reference) not in f.name)
    message_id = first_file.name.removeprefix("pain001-").removesuffix(".xml")
    drop_status(connector, "bank-report.xml", f"""<?xml version="1.0" encoding="UTF-8"?>
<Document xmlns="urn:iso:std:iso:20022:tech:xsd:pain.002.001.03"><CstmrPmtStsRpt>
  <GrpHdr><MsgId>BANK-0001</MsgId><CreDtTm>2026-11-21T08:00:00+01:00</CreDtTm></GrpHdr>
  <OrgnlGrpInfAndSts><OrgnlMsgId>{message_id}</OrgnlMsgId><OrgnlMsgNmId>pain.001.001.03</OrgnlMsgNmId>
    <GrpSts>RJCT</GrpSts><StsRsnInf><Rsn><Cd>AG01</Cd></Rsn><AddtlInf>file not authorised</AddtlInf></StsRsnInf>
  </OrgnlGrpInfAndSts>
</CstmrPmtStsRpt></Document>""".encode())

    for name in ("a", "b"):
        found = connector.lookup(request(name))
        assert (found.outcome, found.reason_code) == (Outcome.FAILED, "declined")
        assert "AG01" in found.message and "file not authorised" in found.message
    assert connector.lookup(request("c")).outcome is Outcome.PENDING


def test_a_final_status_wins_over_a_newer_pending_one_and_the_newest_final_wins(connector):
    connector.submit(request("a"))
    raw = outbox_files(connector)[0].read_bytes()
    drop_status(connector, "1.xml", write_status_report(raw, created_at=T0, message_id="R1"))
    drop_status(connector, "2.xml", write_status_report(raw, accepted_status="ACSP", created_at=T0 + timedelta(hours=1),
                                                        message_id="R2"))
    assert connector.lookup(request("a")).outcome is Outcome.SETTLED
    # A settled transfer the bank reports rejected later (it bounced): the newest final status wins.
    drop_status(connector, "3.xml", write_status_report(raw, {payout_id("a"): "AC04"},
                                                        created_at=T0 + timedelta(days=2), message_id="R3"))
    assert connector.lookup(request("a")).reason_code == "account_closed"


def test_a_rejected_payout_is_sent_again_in_a_new_file_and_settles_there(connector):
    first = connector.submit_batch([request("a"), request("b")])
    [path] = outbox_files(connector)
    drop_status(connector, "1.xml", write_status_report(path.read_bytes(), {payout_id("a"): "AM04"}, created_at=T0))
    assert connector.lookup(request("a")).retryable is True

    retried = connector.submit_batch([request("a", attempt=2), request("b", attempt=2)])

    assert message_id_of(retried[0].provider_reference) != message_id_of(first[0].provider_reference)
    assert retried[0].outcome is Outcome.PENDING
    assert (retried[1].outcome, retried[1].provider_reference) == (Outcome.SETTLED, first[1].provider_reference)
    assert len(outbox_files(connector)) == 2
    assert connector.lookup(request("a")).provider_reference == retried[0].provider_reference
    connector.confirm_file(message_id_of(retried[0].provider_reference))
    settled = connector.lookup(request("a"))
    assert (settled.outcome, settled.provider_reference) == (Outcome.SETTLED, retried[0].provider_reference)
    assert connector.submit(request("a", attempt=3)).provider_reference == retried[0].provider_reference
    assert len(outbox_files(connector)) == 2


def test_lookup_answers_the_processor_retry_protocol(connector):
    # The processor asks lookup(attempt n) before submitting retry n: None means "send it".
    first = connector.submit(request("a"))
    assert connector.lookup(request("a", attempt=2)).provider_reference == first.provider_reference  # still live
    connector.confirm_file(message_id_of(first.provider_reference), rejected={payout_id("a"): "AM04"})
    assert connector.lookup(request("a", attempt=1)).reason_code == "insufficient_funds"  # the poll of attempt 1
    assert connector.lookup(request("a", attempt=2)) is None  # attempt 2 never reached the bank

    second = connector.submit(request("a", attempt=2))
    [newest] = [f for f in outbox_files(connector) if message_id_of(second.provider_reference) in f.name]
    assert texts(ET.fromstring(newest.read_bytes()), ".//p:InstrId") == [f"{uuid.UUID(payout_id('a')).hex}-2"]
    for attempt in (1, 2, 3):  # the live file answers for every attempt, so none is sent a third time
        found = connector.lookup(request("a", attempt=attempt))
        assert (found.outcome, found.provider_reference) == (Outcome.PENDING, second.provider_reference)


def test_a_payout_live_in_two_files_stops_the_connector(connector):
    first = connector.submit(request("a"))
    first_file = outbox_files(connector)[0].read_bytes()
    drop_status(connector, "1.xml", write_status_report(first_file, {payout_id("a"): "AM04"}, created_at=T0))
    connector.submit(request("a", attempt=2))
    # The bank changes its mind about the first file: both files may now pay.
    drop_status(connector, "2.xml", write_status_report(first_file, created_at=T0 + timedelta(days=1)))
    with pytest.raises(InvariantViolation, match="paid more than once"):
        connector.lookup(request("a", attempt=2))
    with pytest.raises(InvariantViolation, match=message_id_of(first.provider_reference)):
        connector.submit(request("a", attempt=3))


def test_an_operator_confirmation_settles_and_rejects_like_a_bank_report(connector):
    sent = connector.submit_batch([request("a"), request("b")])
    path = connector.confirm_file(message_id_of(sent[0].provider_reference), rejected={payout_id("b"): "AC01"})
    assert path.parent == connector.status_dir and path.name.startswith("pain002-")
    assert connector.lookup(request("a")).outcome is Outcome.SETTLED
    assert connector.lookup(request("b")).reason_code == "invalid_account_number"
    with pytest.raises(ValueError, match="no outbox file"):
        connector.confirm_file("20261120-unknown")


def test_a_malformed_status_file_stops_lookups_with_its_name(connector):
    connector.submit(request("a"))
    drop_status(connector, ".half-uploaded.xml", b"<Document><CstmrPmtStsRpt>")  # hidden: not a report yet
    assert connector.lookup(request("a")).outcome is Outcome.PENDING
    drop_status(connector, "broken.xml", b"<Document><CstmrPmtStsRpt>")
    with pytest.raises(ValueError, match="broken.xml.*not well-formed"):
        connector.lookup(request("a"))


def test_a_tampered_outbox_file_stops_the_connector(connector):
    connector.submit_batch([request("a"), request("b")])
    [path] = outbox_files(connector)
    path.write_bytes(path.read_bytes().replace(b"<NbOfTxs>2</NbOfTxs>", b"<NbOfTxs>3</NbOfTxs>", 1))
    with pytest.raises(ValueError, match=f"{path.name}.*NbOfTxs"):
        connector.submit(request("c"))
    with pytest.raises(ValueError, match="NbOfTxs"):
        connector.lookup(request("a"))
