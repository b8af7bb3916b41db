"""SEPA files exchanged with the bank: reading our pain.001 batches, reading and writing pain.002 status reports.

Accepted formats (ISO 20022, parsed with xml.etree by local element name inside the message's own
namespace; a DOCTYPE is refused, so no entity tricks reach the parser; at most MAX_FILE_BYTES):

- pain.001.001.03 CustomerCreditTransferInitiation (`read_credit_transfers`): GrpHdr/MsgId, CreDtTm,
  NbOfTxs and CtrlSum (both checked against the transactions), and per PmtInf/CdtTrfTxInf the
  PmtInfId, InstrId (optional), EndToEndId, InstdAmt[@Ccy], CdtrAcct/Id/IBAN and Cdtr/Nm. sepaxml
  writes these files but does not read them, so this small reader is ours.
- pain.002.001.03 CustomerPaymentStatusReport (`read_status_report`; other pain.002.001.xx versions
  share the elements read here and are accepted). Read: GrpHdr/MsgId and CreDtTm; OrgnlGrpInfAndSts/
  OrgnlMsgId, GrpSts and StsRsnInf; each OrgnlPmtInfAndSts/OrgnlPmtInfId, PmtInfSts and StsRsnInf; each
  TxInfAndSts/OrgnlEndToEndId, TxSts and StsRsnInf (Rsn/Cd or Rsn/Prtry, and AddtlInf). A TxInfAndSts
  without TxSts inherits its payment information's or group's status. GrpSts/PmtInfSts PART (partly
  accepted) says nothing about a transaction it does not list.

Statuses: ACSC and ACCC settle; RJCT fails with the ISO reason mapped to the ledger's failure codes
(ISO_REASONS, unlisted reasons are `declined`, the ISO code is always kept in the message); ACTC,
ACCP, ACSP, ACWC, ACWP, PDNG, RCVD and unknown codes are pending (an unknown code must neither pay nor
fail a payout by guess).

`write_status_report` answers a pain.001 with a pain.002 (every transaction ACSC unless listed as
rejected): the demo bank simulator, operator confirmations and tests use it. The pain.002 XSD is not
shipped by sepaxml, so its output is checked by reading it back (tests) rather than by a schema.
"""

from __future__ import annotations

import hashlib
import re
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum

from connectors.base import Outcome, TransferResult
from connectors.classification import failed
from ledger.money import Money, sum_money

PAIN001_NAMESPACE = "urn:iso:std:iso:20022:tech:xsd:pain.001.001.03"
PAIN002_NAMESPACE = "urn:iso:std:iso:20022:tech:xsd:pain.002.001.03"
_PAIN002_PREFIX = "urn:iso:std:iso:20022:tech:xsd:pain.002."

MAX_FILE_BYTES = 64 * 1024 * 1024  # a status report or batch beyond this is not a file we produced or expect

SETTLED_STATUSES = frozenset({"ACSC", "ACCC"})
PENDING_STATUSES = frozenset({"ACTC", "ACCP", "ACSP", "ACWC", "ACWP", "PDNG", "RCVD"})
REJECTED = "RJCT"
PARTIAL = "PART"
# The accepted statuses a pain.002.001.03 TxSts may carry (its schema has no ACCC).
WRITABLE_ACCEPTED_STATUSES = frozenset({"ACSC", "ACSP", "ACTC", "ACCP", "ACWC", "PDNG"})

# ISO 20022 external status reason codes -> (ledger failure code, what the bank means).
ISO_REASONS: dict[str, tuple[str, str]] = {
    "AC01": ("invalid_account_number", "incorrect account number"),
    "AC03": ("invalid_account_number", "invalid creditor account number"),
    "AC04": ("account_closed", "closed account number"),
    "AC06": ("account_frozen", "blocked account"),
    "AG01": ("declined", "transaction forbidden"),
    "AM04": ("insufficient_funds", "insufficient funds"),
    "BE04": ("incorrect_account_holder_address", "missing or incorrect creditor address"),
    "BE05": ("incorrect_account_holder_name", "party not recognised"),
    "MS03": ("declined", "reason not specified"),
    "RC01": ("invalid_account_number", "bank identifier (BIC) incorrect"),
}

_ISO_CODE = re.compile(r"[A-Z0-9]{4}")
_HEX_END_TO_END_ID = re.compile(r"[0-9a-fA-F]{32}")


def end_to_end_id_of(payout_id: str) -> str:
    """The EndToEndId that carries a payout: its UUID as 32 lowercase hex digits (SEPA allows 35)."""
    return uuid.UUID(payout_id).hex


def payout_id_of(end_to_end_id: str) -> str:
    """The payout id an EndToEndId carries, or "" when it is not one of ours (not 32 hex digits)."""
    if not _HEX_END_TO_END_ID.fullmatch(end_to_end_id):
        return ""
    return str(uuid.UUID(hex=end_to_end_id))


# ---------------------------------------------------------------------------------------------- pain.001


@dataclass(frozen=True)
class CreditTransfer:
    payment_information_id: str
    end_to_end_id: str
    amount: Money
    iban: str
    creditor_name: str
    instruction_id: str = ""  # PmtId/InstrId, when the file has one


@dataclass(frozen=True)
class CreditTransferFile:
    message_id: str
    created_at: str  # GrpHdr/CreDtTm as written
    transfers: tuple[CreditTransfer, ...]


def read_credit_transfers(raw: bytes) -> CreditTransferFile:
    """The transfers of a pain.001.001.03 file; ValueError naming the element when it is malformed."""
    root = _parse(raw, "pain.001")
    xml = _Reader(root, PAIN001_NAMESPACE, "pain.001")
    initiation = xml.required(root, "CstmrCdtTrfInitn")
    header = xml.required(initiation, "GrpHdr")
    message_id = xml.text(header, "MsgId")
    transfers: list[CreditTransfer] = []
    for payment in xml.all(initiation, "PmtInf"):
        payment_id = xml.text(payment, "PmtInfId")
        for tx in xml.all(payment, "CdtTrfTxInf"):
            end_to_end_id = xml.text(tx, "PmtId/EndToEndId")
            amount_el = xml.required(tx, "Amt/InstdAmt")
            currency = amount_el.get("Ccy") or ""
            try:
                amount = Money.from_major((amount_el.text or "").strip(), currency)
            except ValueError as exc:
                raise ValueError(f"pain.001: InstdAmt of {end_to_end_id!r} is not an amount: {exc}") from exc
            instruction = xml.optional(tx, "PmtId/InstrId")
            transfers.append(CreditTransfer(payment_id, end_to_end_id, amount, xml.text(tx, "CdtrAcct/Id/IBAN"),
                                            xml.text(tx, "Cdtr/Nm"), instruction))
    if int(xml.text(header, "NbOfTxs")) != len(transfers):
        raise ValueError(f"pain.001 {message_id}: GrpHdr/NbOfTxs says {xml.text(header, 'NbOfTxs')},"
                         f" the file holds {len(transfers)} transactions")
    currencies = {t.amount.currency.code for t in transfers}
    if len(currencies) == 1:
        total = sum_money((t.amount for t in transfers), currencies.pop())
        control_sum = xml.text(header, "CtrlSum")
        if Money.from_major(control_sum, total.currency.code) != total:
            raise ValueError(f"pain.001 {message_id}: GrpHdr/CtrlSum {control_sum} is not the sum of the"
                             f" transactions, {total.to_major_string()}")
    return CreditTransferFile(message_id, xml.text(header, "CreDtTm"), tuple(transfers))


# ---------------------------------------------------------------------------------------------- pain.002


class StatusScope(str, Enum):
    TRANSACTION = "transaction"                   # a TxInfAndSts line: one end-to-end id
    PAYMENT_INFORMATION = "payment_information"   # PmtInfSts: every transaction of one PmtInf
    GROUP = "group"                               # GrpSts: every transaction of the original message


@dataclass(frozen=True)
class StatusLine:
    """One status a pain.002 gives: for one transaction, or for a whole PmtInf or message (scope)."""

    report_message_id: str
    report_created_at: datetime  # aware (a report without an offset is read as UTC)
    original_message_id: str
    original_payment_information_id: str  # "" for a group-level line
    end_to_end_id: str  # "" unless scope is TRANSACTION
    payout_id: str  # recovered from a 32-hex end-to-end id, else ""
    status: str  # the ISO code: ACSC, RJCT, ACSP, ...
    iso_reason: str  # StsRsnInf/Rsn/Cd (or Prtry), "" when none was given
    outcome: Outcome
    reason_code: str  # the ledger's failure code when outcome is FAILED, else ""
    message: str
    scope: StatusScope

    @property
    def final(self) -> bool:
        return self.outcome is not Outcome.PENDING

    def applies_to(self, end_to_end_id: str, message_id: str | None = None,
                   payment_information_id: str | None = None) -> bool:
        """Whether this line speaks of that transaction (of that message, when one is given)."""
        if self.scope is StatusScope.TRANSACTION:
            return (self.end_to_end_id.lower() == end_to_end_id.lower()
                    and (message_id is None or self.original_message_id == message_id))
        if message_id is None or self.original_message_id != message_id:
            return False
        return (self.scope is StatusScope.GROUP
                or self.original_payment_information_id == payment_information_id)

    def result(self, provider_reference: str) -> TransferResult:
        if self.outcome is Outcome.FAILED:
            found = failed(self.reason_code, self.message)
            return TransferResult(found.outcome, provider_reference, found.reason_code, found.message,
                                  found.retryable)
        return TransferResult(self.outcome, provider_reference, message=self.message)


def current_status(lines: Iterable[StatusLine], end_to_end_id: str, message_id: str | None = None,
                   payment_information_id: str | None = None) -> StatusLine | None:
    """The status of one transaction after all these reports, or None when none speaks of it.

    Within one report the most specific line wins (transaction, then PmtInf, then group). Across
    reports a final status (settled or rejected) beats a pending one, and among equals the report
    created last wins. Without message_id only transaction lines are considered.
    """
    specificity = {StatusScope.TRANSACTION: 2, StatusScope.PAYMENT_INFORMATION: 1, StatusScope.GROUP: 0}
    per_report: dict[str, StatusLine] = {}
    for line in lines:
        if not line.applies_to(end_to_end_id, message_id, payment_information_id):
            continue
        known = per_report.get(line.report_message_id)
        if known is None or specificity[line.scope] > specificity[known.scope]:
            per_report[line.report_message_id] = line
    if not per_report:
        return None
    return max(per_report.values(), key=lambda line: (line.final, line.report_created_at, line.report_message_id))


def read_status_report(raw: bytes) -> list[StatusLine]:
    """The status lines of a pain.002 report; ValueError naming the element when it is malformed."""
    root = _parse(raw, "pain.002")
    namespace = _namespace(root)
    if not namespace.startswith(_PAIN002_PREFIX):
        raise ValueError(f"pain.002: the Document is in namespace {namespace!r}, not a pain.002 one")
    xml = _Reader(root, namespace, "pain.002")
    report = xml.required(root, "CstmrPmtStsRpt")
    header = xml.required(report, "GrpHdr")
    report_id = xml.text(header, "MsgId")
    created_at = _report_time(xml.text(header, "CreDtTm"))
    group = xml.required(report, "OrgnlGrpInfAndSts")
    original_message_id = xml.text(group, "OrgnlMsgId")

    def line(scope: StatusScope, status: str, reason: tuple[str, str], where: str,
             payment_id: str = "", end_to_end_id: str = "") -> StatusLine:
        outcome, reason_code, message = _classify(status, reason, where)
        return StatusLine(report_id, created_at, original_message_id, payment_id, end_to_end_id,
                          payout_id_of(end_to_end_id), status, reason[0], outcome, reason_code, message, scope)

    lines: list[StatusLine] = []
    group_status = xml.status(group, "GrpSts")
    group_reason = xml.reason(group)
    if group_status and group_status != PARTIAL:
        lines.append(line(StatusScope.GROUP, group_status, group_reason, f"message {original_message_id}"))
    for payment in xml.all(report, "OrgnlPmtInfAndSts"):
        payment_id = xml.text(payment, "OrgnlPmtInfId")
        payment_status = xml.status(payment, "PmtInfSts")
        payment_reason = xml.reason(payment)
        if payment_status and payment_status != PARTIAL:
            lines.append(line(StatusScope.PAYMENT_INFORMATION, payment_status, payment_reason,
                              f"payment information {payment_id}", payment_id))
        for tx in xml.all(payment, "TxInfAndSts"):
            end_to_end_id = xml.text(tx, "OrgnlEndToEndId")
            status, reason = xml.status(tx, "TxSts"), xml.reason(tx)
            if not status:  # inherited, with the reason given where the status is
                for inherited, inherited_reason in ((payment_status, payment_reason), (group_status, group_reason)):
                    if inherited and inherited != PARTIAL:
                        status, reason = inherited, reason if reason[0] else inherited_reason
                        break
            if not status:
                raise ValueError(f"pain.002 {report_id}: TxInfAndSts of {end_to_end_id!r} has no TxSts and"
                                 " no PmtInfSts or GrpSts to inherit")
            lines.append(line(StatusScope.TRANSACTION, status, reason, f"transfer {end_to_end_id}",
                              payment_id, end_to_end_id))
    return lines


def write_status_report(pain001: bytes, rejected: Mapping[str, str] | None = None, *,
                        accepted_status: str = "ACSC", reject_file: str | None = None,
                        created_at: datetime | None = None, message_id: str | None = None,
                        initiating_party: str = "bank") -> bytes:
    """A pain.002.001.03 answering `pain001`: every transaction `accepted_status` except `rejected`.

    `rejected` maps an end-to-end id or a payout id to an ISO reason code (AC04, AM04...); an id that
    is not in the file is a ValueError. `reject_file` (an ISO code such as FF01) rejects the whole
    message at group level, without transaction lines.
    """
    original = read_credit_transfers(pain001)
    if accepted_status not in WRITABLE_ACCEPTED_STATUSES:
        raise ValueError(
            f"accepted_status must be one of {sorted(WRITABLE_ACCEPTED_STATUSES)}, not {accepted_status!r}")
    rejections = _rejections_by_end_to_end_id(original, rejected or {})
    if reject_file is not None:
        _require_iso_code(reject_file, "reject_file")
        if rejections:
            raise ValueError("reject_file rejects every transaction: give no per-transaction rejections with it")
    created_at = (created_at or datetime.now(timezone.utc)).astimezone(timezone.utc)
    if message_id is None:
        parts = [original.message_id, accepted_status, reject_file or "", created_at.isoformat(),
                 *sorted(f"{k}={v}" for k, v in rejections.items())]
        digest = hashlib.sha256("\x1f".join(parts).encode()).hexdigest()
        message_id = f"STS-{digest[:31]}"
    if not 1 <= len(message_id) <= 35:
        raise ValueError(f"a pain.002 MsgId has 1 to 35 characters, got {message_id!r}")

    def summary(transfers: list[CreditTransfer]) -> str:
        refused = sum(1 for t in transfers if t.end_to_end_id in rejections)
        return accepted_status if refused == 0 else REJECTED if refused == len(transfers) else PARTIAL

    w = _Writer(PAIN002_NAMESPACE)
    root = w.element(None, "Document")
    report = w.element(root, "CstmrPmtStsRpt")
    header = w.element(report, "GrpHdr")
    w.element(header, "MsgId", message_id)
    w.element(header, "CreDtTm", created_at.strftime("%Y-%m-%dT%H:%M:%S"))
    w.element(w.element(header, "InitgPty"), "Nm", initiating_party[:140] or "bank")
    group = w.element(report, "OrgnlGrpInfAndSts")
    w.element(group, "OrgnlMsgId", original.message_id)
    w.element(group, "OrgnlMsgNmId", "pain.001.001.03")
    w.element(group, "OrgnlNbOfTxs", str(len(original.transfers)))
    if reject_file is not None:
        w.element(group, "GrpSts", REJECTED)
        w.element(w.element(w.element(group, "StsRsnInf"), "Rsn"), "Cd", reject_file)
        return w.serialize(root)
    w.element(group, "GrpSts", summary(list(original.transfers)))
    by_payment: dict[str, list[CreditTransfer]] = {}
    for transfer in original.transfers:
        by_payment.setdefault(transfer.payment_information_id, []).append(transfer)
    for payment_id, transfers in by_payment.items():
        payment = w.element(report, "OrgnlPmtInfAndSts")
        w.element(payment, "OrgnlPmtInfId", payment_id)
        w.element(payment, "PmtInfSts", summary(transfers))
        for transfer in transfers:
            tx = w.element(payment, "TxInfAndSts")
            if transfer.instruction_id:
                w.element(tx, "OrgnlInstrId", transfer.instruction_id)
            w.element(tx, "OrgnlEndToEndId", transfer.end_to_end_id)
            code = rejections.get(transfer.end_to_end_id)
            w.element(tx, "TxSts", REJECTED if code else accepted_status)
            if code:
                w.element(w.element(w.element(tx, "StsRsnInf"), "Rsn"), "Cd", code)
    return w.serialize(root)


def _rejections_by_end_to_end_id(original: CreditTransferFile, rejected: Mapping[str, str]) -> dict[str, str]:
    in_file = {t.end_to_end_id for t in original.transfers}
    by_end_to_end_id: dict[str, str] = {}
    for key, code in rejected.items():
        _require_iso_code(code, f"the rejection of {key!r}")
        end_to_end_id = key
        if key not in in_file:
            try:
                end_to_end_id = uuid.UUID(key).hex
            except ValueError:
                pass
        if end_to_end_id not in in_file:
            raise ValueError(f"{key!r} is neither an end-to-end id nor a payout id of pain.001 {original.message_id}")
        by_end_to_end_id[end_to_end_id] = code
    return by_end_to_end_id


def _classify(status: str, reason: tuple[str, str], where: str) -> tuple[Outcome, str, str]:
    iso_reason, additional = reason
    detail = f"; {additional}" if additional else ""
    if status in SETTLED_STATUSES:
        return Outcome.SETTLED, "", f"bank status {status} for {where}"
    if status == REJECTED:
        if not iso_reason:
            return Outcome.FAILED, "declined", f"bank rejected {where} (RJCT without a reason code){detail}"
        reason_code, meaning = ISO_REASONS.get(iso_reason, ("declined", "ISO reason not mapped"))
        return Outcome.FAILED, reason_code, f"bank rejected {where}: {iso_reason} {meaning}{detail}"
    if status in PENDING_STATUSES:
        return Outcome.PENDING, "", f"bank status {status} for {where}{detail}"
    return Outcome.PENDING, "", f"bank status {status} (not a status this connector knows) for {where}{detail}"


def _require_iso_code(code: str, what: str) -> None:
    if not isinstance(code, str) or not _ISO_CODE.fullmatch(code):
        raise ValueError(f"{what} must be a 4-character ISO 20022 reason code such as AC04, got {code!r}")


def _report_time(text: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ValueError(f"pain.002: GrpHdr/CreDtTm {text!r} is not an ISO date-time") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


# ---------------------------------------------------------------------------------------------- XML


def _parse(raw: bytes, kind: str) -> ET.Element:
    if not isinstance(raw, (bytes, bytearray)):
        raise TypeError(f"a {kind} file is read from bytes, got {type(raw).__name__}")
    if len(raw) > MAX_FILE_BYTES:
        raise ValueError(f"{kind}: {len(raw)} bytes is more than the {MAX_FILE_BYTES} a file may have")
    if b"<!DOCTYPE" in raw or b"<!ENTITY" in raw:
        raise ValueError(f"{kind}: a DOCTYPE or ENTITY declaration is not allowed in a payment file")
    try:
        root = ET.fromstring(raw)
    except ET.ParseError as exc:
        raise ValueError(f"{kind} is not well-formed XML: {exc}") from exc
    if root.tag.rpartition("}")[2] != "Document":
        raise ValueError(f"{kind}: the root element is {root.tag!r}, not Document")
    return root


def _namespace(element: ET.Element) -> str:
    return element.tag[1:].partition("}")[0] if element.tag.startswith("{") else ""


class _Reader:
    """Finds elements by their ISO names in one namespace, and names the missing one in its error."""

    def __init__(self, root: ET.Element, namespace: str, kind: str) -> None:
        if _namespace(root) != namespace:
            raise ValueError(f"{kind}: the Document is in namespace {_namespace(root)!r}, not {namespace!r}")
        self._ns = {"m": namespace}
        self._kind = kind

    def _path(self, path: str) -> str:
        return "/".join(f"m:{step}" for step in path.split("/"))

    def all(self, parent: ET.Element, path: str) -> list[ET.Element]:
        return parent.findall(self._path(path), self._ns)

    def required(self, parent: ET.Element, path: str) -> ET.Element:
        found = parent.find(self._path(path), self._ns)
        if found is None:
            raise ValueError(f"{self._kind}: missing element {path} in {parent.tag.rpartition('}')[2]}")
        return found

    def text(self, parent: ET.Element, path: str) -> str:
        value = (self.required(parent, path).text or "").strip()
        if not value:
            raise ValueError(f"{self._kind}: element {path} in {parent.tag.rpartition('}')[2]} is empty")
        return value

    def optional(self, parent: ET.Element, path: str) -> str:
        found = parent.find(self._path(path), self._ns)
        return (found.text or "").strip() if found is not None else ""

    def status(self, parent: ET.Element, name: str) -> str:
        found = parent.find(self._path(name), self._ns)
        if found is None:
            return ""
        value = (found.text or "").strip()
        if not re.fullmatch(r"[A-Z]{4}", value):
            raise ValueError(f"{self._kind}: element {name} holds {value!r}, not a 4-letter ISO status code")
        return value

    def reason(self, parent: ET.Element) -> tuple[str, str]:
        """(ISO reason code or proprietary reason, additional information) of the first StsRsnInf."""
        info = parent.find(self._path("StsRsnInf"), self._ns)
        if info is None:
            return "", ""
        code = info.find(self._path("Rsn/Cd"), self._ns)
        if code is None:
            code = info.find(self._path("Rsn/Prtry"), self._ns)
        additional = "; ".join((el.text or "").strip() for el in info.findall(self._path("AddtlInf"), self._ns))
        return ((code.text or "").strip() if code is not None else ""), additional


class _Writer:
    def __init__(self, namespace: str) -> None:
        self._namespace = namespace

    def element(self, parent: ET.Element | None, name: str, text: str | None = None) -> ET.Element:
        tag = f"{{{self._namespace}}}{name}"
        element = ET.Element(tag) if parent is None else ET.SubElement(parent, tag)
        element.text = text
        return element

    def serialize(self, root: ET.Element) -> bytes:
        ET.indent(root)
        return ET.tostring(root, encoding="utf-8", xml_declaration=True, default_namespace=self._namespace)
