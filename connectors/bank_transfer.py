"""Bank transfers: SEPA credit transfer batches (pain.001.001.03) written to an outbox directory, one
file per batch, settled by the bank's status reports (pain.002) or an operator's confirmation.

Destination format: "IBAN" or "IBAN/BIC" (spaces inside the IBAN and lower case are accepted, e.g.
"DE89 3704 0044 0532 0130 00/COBADEFFXXX"). The IBAN must have its country's length and a valid mod-97
check; the BIC, when given, 8 or 11 characters. The creditor name is the payee id (a real bank checks
the name against the account holder, Verification of Payee: a payee's legal name belongs here once the
ledger holds one). SEPA is EUR only. Invalid destinations, other currencies and amounts that are not
positive come back FAILED (permanent) and are not written.

Outbox files: `<outbox_dir>/pain001-<MsgId>.xml`, written atomically (a hidden temp file in the same
directory, fsync, os.replace, fsync of the directory), so an upload job never sees half a file. The
upload may copy files or move them into a subdirectory, but must never delete them: every
`pain001-*.xml` below outbox_dir, subdirectories included, is the record of what was sent. Hidden
files (the lock, temp files a crash left behind) are not payment files: the index ignores them and an
upload must too. Each file is validated against the pain.001.001.03 XSD that sepaxml ships before
it is written; a file that fails is a bug and raises sepaxml.validation.ValidationError.

Exactly once: a transfer's EndToEndId is its payout id as 32 hex digits, and its InstrId
"<EndToEndId>-<attempt>". Before writing, the connector indexes the EndToEndIds of every outbox file
(under an flock, so two processes cannot both decide to write the same payout); a payout already in a
file is not written again, unless every file holding it was rejected by the bank (a rejected transfer
moved no money: a retry or new account details send it again, in a new file). MsgId =
"<YYYYMMDD>-<24 hex of sha256 over the new transfers' (EndToEndId, how many files already hold it)>",
33 characters: those pairs are never in two files, so the MsgId is unique without a counter; PmtInfId
= MsgId + "-1". provider_reference = "<MsgId>/<EndToEndId>". CreDtTm (UTC, without offset, as
sepaxml writes it) and ReqdExctnDt come from the injected clock.

Lookup (what the transfer processor asks after a crash, before every retry, and when polling): the
live file (no status yet, pending or settled) whichever attempt wrote it; when every file holding the
payout was rejected, the rejection of the request's own attempt, or None when that attempt has no
file yet, so that the processor submits the retry.

Status files: every `*.xml` below status_dir is read as a pain.002 (connectors/sepa_status.py lists
what is read); an unreadable one stops lookups with a ValueError naming it rather than being skipped.
`confirm_file` writes an operator's confirmation there in the same format.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import logging
import os
import re
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TypeVar

import sepaxml
import xmlschema
from sepaxml import SepaTransfer
from sepaxml.validation import ValidationError
from text_unidecode import unidecode

from connectors.base import Outcome, TransferRequest, TransferResult
from connectors.classification import failed
from connectors.sepa_status import (
    CreditTransfer, CreditTransferFile, StatusLine, current_status, end_to_end_id_of,
    read_credit_transfers, read_status_report, write_status_report,
)
from ledger.guards import InvariantViolation, require

SEPA_CURRENCY = "EUR"
MAX_AMOUNT_MINOR = 99_999_999_999  # EUR 999,999,999.99: the largest amount a SEPA credit transfer carries
MAX_TRANSFERS_PER_FILE = 10_000  # a larger batch is split into several files
LOCK_TIMEOUT_S = 10.0
logger = logging.getLogger("ledger.connectors.bank_transfer")

# IBAN length per country (SWIFT IBAN registry).
IBAN_LENGTHS: dict[str, int] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BI": 27,
    "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27, "DK": 18, "DO": 28,
    "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23,
    "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27,
    "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25,
    "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18,
    "NO": 15, "OM": 23, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33,
    "SA": 24, "SC": 31, "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}
_IBAN_SHAPE = re.compile(r"[A-Z]{2}[0-9]{2}[A-Z0-9]+")
_BIC = re.compile(r"[A-Z]{6}[A-Z2-9][A-NP-Z0-9]([A-Z0-9]{3})?")  # the pain.001 XSD's BICIdentifier
_NOT_SEPA_TEXT = re.compile(r"[^A-Za-z0-9/\-?:().,'+ ]+")  # the EPC's basic Latin character set

Clock = Callable[[], datetime]
Parsed = TypeVar("Parsed")


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


def iban_problem(iban: str) -> str:
    """Why `iban` (normalized: no spaces, upper case) is not a valid IBAN, or "" when it is."""
    if not _IBAN_SHAPE.fullmatch(iban):
        return f"{iban!r} is not an IBAN (two letters, two check digits, then letters and digits)"
    expected = IBAN_LENGTHS.get(iban[:2])
    if expected is None:
        return f"{iban[:2]} is not a country that issues IBANs"
    if len(iban) != expected:
        return f"a {iban[:2]} IBAN has {expected} characters, {iban!r} has {len(iban)}"
    if not 2 <= int(iban[2:4]) <= 98:
        return f"{iban!r} has check digits {iban[2:4]}, outside 02-98"
    digits = "".join(str(int(ch, 36)) for ch in iban[4:] + iban[:4])
    if int(digits) % 97 != 1:
        return f"{iban!r} fails the IBAN mod-97 check (a typo?)"
    return ""


def parse_destination(destination: str) -> tuple[str, str | None]:
    """(IBAN, BIC or None) from "IBAN" or "IBAN/BIC"; ValueError saying what is wrong."""
    iban_text, slash, bic_text = (destination or "").partition("/")
    iban = re.sub(r"\s+", "", iban_text).upper()
    problem = iban_problem(iban)
    if problem:
        raise ValueError(problem)
    if not slash:
        return iban, None
    bic = bic_text.strip().upper()
    if not _BIC.fullmatch(bic):
        raise ValueError(f"{bic_text!r} is not a BIC (8 or 11 characters: bank, country, location, branch)")
    return iban, bic


def _sepa_text(text: str, max_chars: int) -> str:
    return " ".join(_NOT_SEPA_TEXT.sub(" ", unidecode(text)).split())[:max_chars]


@dataclass(frozen=True)
class _Transfer:
    request: TransferRequest
    end_to_end_id: str
    iban: str
    bic: str | None
    creditor_name: str

    @property
    def instruction_id(self) -> str:
        return f"{self.end_to_end_id}-{self.request.attempt}"


class _PayoutBatchFile(SepaTransfer):
    """sepaxml's SepaTransfer with the MsgId, PmtInfId and creation time decided here (sepaxml would
    draw random ids and read the wall clock), and an InstrId per transfer (sepaxml writes none).
    _write_file reads the bytes back, so a sepaxml release that stopped calling these hooks would be
    caught before anything is written."""

    def __init__(self, config: dict[str, object], message_id: str, created_at: datetime,
                 instruction_ids: dict[str, str]) -> None:
        self._message_id = message_id
        self._created_at = created_at
        self._instruction_ids = instruction_ids  # end-to-end id -> InstrId (sepaxml writes none)
        super().__init__(config, schema="pain.001.001.03", clean=True)

    def _create_header(self) -> None:
        self.msg_id = self._message_id
        super()._create_header()
        self._xml.find("CstmrCdtTrfInitn/GrpHdr/CreDtTm").text = self._created_at.strftime("%Y-%m-%dT%H:%M:%S")

    def _finalize_batch(self) -> None:
        super()._finalize_batch()
        payment_ids = self._xml.findall("CstmrCdtTrfInitn/PmtInf/PmtInfId")
        require(len(payment_ids) == 1, "one execution date makes one PmtInf")
        payment_ids[0].text = f"{self._message_id}-1"
        for payment_id in self._xml.iter("PmtId"):
            instruction = ET.Element("InstrId")
            instruction.text = self._instruction_ids[payment_id.findtext("EndToEndId", "")]
            payment_id.insert(0, instruction)  # the XSD wants InstrId before EndToEndId


@dataclass(frozen=True)
class _Sent:
    """One transfer in one outbox file."""

    transfer: CreditTransfer
    message_id: str
    path: Path

    @property
    def reference(self) -> str:
        return f"{self.message_id}/{self.transfer.end_to_end_id}"

    @property
    def attempt(self) -> int:
        """The attempt that wrote it (InstrId "<EndToEndId>-<attempt>"), 0 when the file does not say."""
        prefix, _, number = self.transfer.instruction_id.rpartition("-")
        return int(number) if prefix == self.transfer.end_to_end_id and number.isdigit() else 0


class BankTransferConnector:
    name = "bank_transfer"

    def __init__(self, outbox_dir: str | os.PathLike[str], status_dir: str | os.PathLike[str], debtor_name: str,
                 debtor_iban: str, debtor_bic: str, clock: Clock | None = None,
                 lock_timeout_s: float = LOCK_TIMEOUT_S) -> None:
        self.outbox_dir = Path(outbox_dir)
        self.status_dir = Path(status_dir)
        self.outbox_dir.mkdir(parents=True, exist_ok=True)
        self.status_dir.mkdir(parents=True, exist_ok=True)
        self.debtor_name = _sepa_text(debtor_name, 70)
        if not self.debtor_name:
            raise ValueError(f"debtor name {debtor_name!r} has no characters a SEPA file can carry")
        # The debtor BIC may be empty: SEPA has not required one since 2016 (runtime.settings defaults to "").
        self.debtor_iban, self.debtor_bic = parse_destination(
            f"{debtor_iban}/{debtor_bic}" if debtor_bic.strip() else debtor_iban)
        self._clock = clock or _utc_now
        self._lock_timeout_s = lock_timeout_s
        # Parsed files by path, valid while (mtime_ns, size) is unchanged: outbox files never change.
        self._outbox_cache: dict[Path, tuple[tuple[int, int], CreditTransferFile]] = {}
        self._status_cache: dict[Path, tuple[tuple[int, int], list[StatusLine]]] = {}

    # ------------------------------------------------------------------------------------ protocol

    def submit(self, request: TransferRequest) -> TransferResult:
        return self.submit_batch([request])[0]

    def submit_batch(self, requests: Sequence[TransferRequest]) -> list[TransferResult]:
        """One pain.001 file for every valid request not already sent; results in request order."""
        results: list[TransferResult | None] = [None] * len(requests)
        prepared: list[tuple[int, _Transfer]] = []
        for position, request in enumerate(requests):
            outcome = self._prepare(request)
            if isinstance(outcome, TransferResult):
                results[position] = outcome
            else:
                prepared.append((position, outcome))
        if prepared:
            with self._outbox_lock():
                index = self._outbox_index()
                lines: list[StatusLine] | None = None
                to_write: dict[str, tuple[_Transfer, int]] = {}  # end-to-end id -> (transfer, files holding it)
                waiting: list[tuple[int, _Transfer]] = []
                for position, transfer in prepared:
                    sent = index.get(transfer.end_to_end_id, [])
                    if sent and transfer.end_to_end_id not in to_write:
                        lines = self._status_lines() if lines is None else lines
                        known = _resolve(transfer.end_to_end_id, sent, lines)
                        if known is not None and known.outcome is not Outcome.FAILED:
                            results[position] = _already_sent(known, sent, transfer)
                            continue
                    to_write.setdefault(transfer.end_to_end_id, (transfer, len({s.message_id for s in sent})))
                    waiting.append((position, transfer))
                written: dict[str, TransferResult] = {}
                batch = list(to_write.values())
                for start in range(0, len(batch), MAX_TRANSFERS_PER_FILE):
                    chunk = batch[start:start + MAX_TRANSFERS_PER_FILE]
                    path, message_id = self._write_file(chunk)
                    for transfer, _ in chunk:
                        written[transfer.end_to_end_id] = TransferResult(
                            Outcome.PENDING, provider_reference=f"{message_id}/{transfer.end_to_end_id}",
                            message=f"in {path.name}; the bank's status report settles it")
                for position, transfer in waiting:
                    results[position] = written[transfer.end_to_end_id]
        require(all(result is not None for result in results), "every bank transfer request has a result")
        return [result for result in results if result is not None]

    def lookup(self, request: TransferRequest) -> TransferResult | None:
        """What the bank knows of this payout: the file that is live (no status yet, pending or settled),
        whichever attempt wrote it; when every file holding it was rejected, the rejection of this
        request's attempt, or None when this attempt has no file yet (a retry: submit sends it)."""
        end_to_end_id = end_to_end_id_of(request.payout_id)
        return _resolve(end_to_end_id, self._outbox_index().get(end_to_end_id, []), self._status_lines(),
                        request.attempt)

    # ------------------------------------------------------------------------------------ operators

    def confirm_file(self, message_id: str, rejected: Mapping[str, str] | None = None) -> Path:
        """An operator's confirmation that the bank executed file `message_id` (every transfer ACSC,
        except `rejected`: payout or end-to-end id -> ISO reason code), written as a pain.002 into status_dir."""
        for sent in (s for entries in self._outbox_index().values() for s in entries):
            if sent.message_id == message_id:
                report = write_status_report(sent.path.read_bytes(), rejected, created_at=self._clock(),
                                             initiating_party="operator confirmation")
                report_id = read_status_report(report)[0].report_message_id
                path = self.status_dir / f"pain002-{report_id}.xml"
                _write_atomically(path, report)
                return path
        raise ValueError(f"no outbox file holds message {message_id!r}")

    # ------------------------------------------------------------------------------------ internals

    def _prepare(self, request: TransferRequest) -> _Transfer | TransferResult:
        amount = request.amount
        if amount.currency.code != SEPA_CURRENCY:
            return failed("invalid_currency", f"SEPA credit transfers are in EUR only, not {amount.currency.code}")
        if amount.amount_minor <= 0:
            return failed("invalid_amount", f"a transfer must be positive, not {amount}")
        if amount.amount_minor > MAX_AMOUNT_MINOR:
            return failed("invalid_amount", f"{amount} is above the SEPA maximum of EUR 999999999.99")
        try:
            iban, bic = parse_destination(request.destination)
        except ValueError as exc:
            return failed("invalid_account_number", f"destination {request.destination!r}: {exc}")
        name = _sepa_text(request.payee_id, 70)
        if not name:
            return failed("incorrect_account_holder_name",
                          f"payee id {request.payee_id!r} has no characters a SEPA creditor name can carry")
        try:
            end_to_end_id = end_to_end_id_of(request.payout_id)
        except ValueError as exc:  # payout ids are uuid5s decided by the ledger: anything else is a bug
            raise InvariantViolation(
                f"payout id {request.payout_id!r} is not a UUID: it cannot be an EndToEndId") from exc
        require(1 <= request.attempt <= 99, f"attempt {request.attempt} of {request.payout_id} is not in 1..99:"
                " InstrId = EndToEndId-attempt has at most 35 characters")
        return _Transfer(request, end_to_end_id, iban, bic, name)

    def _write_file(self, batch: list[tuple[_Transfer, int]]) -> tuple[Path, str]:
        now = self._clock()
        require(now.tzinfo is not None, "the connector's clock must return aware datetimes")
        now = now.astimezone(timezone.utc)
        digest = hashlib.sha256("\n".join(sorted(f"{t.end_to_end_id}:{held}" for t, held in batch)).encode())
        message_id = f"{now:%Y%m%d}-{digest.hexdigest()[:24]}"
        transfers = [transfer for transfer, _ in batch]
        raw = self._build(message_id, now, transfers)
        written = read_credit_transfers(raw)  # the bytes must say exactly what was decided
        require(written.message_id == message_id
                and [(t.end_to_end_id, t.instruction_id, t.amount, t.iban) for t in written.transfers]
                == [(t.end_to_end_id, t.instruction_id, t.request.amount, t.iban) for t in transfers],
                f"pain.001 {message_id} does not hold the transfers it was built from")
        path = self.outbox_dir / f"pain001-{message_id}.xml"
        require(not path.exists(), f"{path} exists: a MsgId was about to be reused")
        _write_atomically(path, raw)
        # one line per file: the file is the payment order an upload job takes to the bank
        logger.info("wrote %s: %d transfers", path.name, len(transfers), extra={"message_id": message_id})
        return path, message_id

    def _build(self, message_id: str, now: datetime, transfers: list[_Transfer]) -> bytes:
        config: dict[str, object] = {"name": self.debtor_name, "IBAN": self.debtor_iban, "batch": True,
                                     "currency": SEPA_CURRENCY}
        if self.debtor_bic:
            config["BIC"] = self.debtor_bic
        sepa = _PayoutBatchFile(config, message_id, now, {t.end_to_end_id: t.instruction_id for t in transfers})
        for transfer in transfers:
            payment = {"name": transfer.creditor_name, "IBAN": transfer.iban,
                       "amount": transfer.request.amount.amount_minor, "currency": SEPA_CURRENCY,
                       "execution_date": now.date(), "description": _remittance(transfer.request),
                       "endtoend_id": transfer.end_to_end_id}
            if transfer.bic:
                payment["BIC"] = transfer.bic
            sepa.add_payment(payment)
        raw = sepa.export(validate=False, pretty_print=True)
        _validate_pain001(raw)
        return raw

    def _outbox_index(self) -> dict[str, list[_Sent]]:
        """End-to-end id -> every outbox file holding it (a copy of the same MsgId counts once)."""
        index: dict[str, list[_Sent]] = {}
        seen: dict[str, CreditTransferFile] = {}
        for path in sorted(self.outbox_dir.rglob("pain001-*.xml")):
            parsed = _cached(self._outbox_cache, path, read_credit_transfers, "outbox file")
            if parsed.message_id in seen:
                require(seen[parsed.message_id] == parsed, f"two outbox files named {parsed.message_id} differ")
                continue
            seen[parsed.message_id] = parsed
            for transfer in parsed.transfers:
                index.setdefault(transfer.end_to_end_id, []).append(_Sent(transfer, parsed.message_id, path))
        return index

    def _status_lines(self) -> list[StatusLine]:
        lines: list[StatusLine] = []
        for path in sorted(self.status_dir.rglob("*.xml")):
            if not path.name.startswith("."):
                lines.extend(_cached(self._status_cache, path, read_status_report, "status report"))
        return lines

    @contextmanager
    def _outbox_lock(self) -> Iterator[None]:
        deadline = time.monotonic() + self._lock_timeout_s
        with open(self.outbox_dir / ".bank_transfer.lock", "a+b") as lock:
            while True:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise TimeoutError(f"another process holds {lock.name} for over {self._lock_timeout_s} s")
                    time.sleep(0.01)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


@functools.cache
def _pain001_schema() -> xmlschema.XMLSchema:
    return xmlschema.XMLSchema(str(Path(sepaxml.__file__).parent / "schemas" / "pain.001.001.03.xsd"))


def _validate_pain001(raw: bytes) -> None:
    """sepaxml's own check (export(validate=True)) against the XSD it ships, with the schema parsed once
    rather than on every call (0.1 s each). A file that fails is a bug: sepaxml's ValidationError."""
    try:
        _pain001_schema().validate(raw.decode())
    except xmlschema.XMLSchemaValidationError as exc:
        raise ValidationError(
            f"pain.001 does not validate against sepaxml's pain.001.001.03 XSD: {exc.reason}") from exc


def _remittance(request: TransferRequest) -> str:
    return f"Payout {request.payout_id}"


def _resolve(end_to_end_id: str, sent: list[_Sent], lines: list[StatusLine],
             attempt: int | None = None) -> TransferResult | None:
    """The payout's state across every file holding it (at most one of them may be unrejected); when all
    were rejected, the latest rejection (of `attempt`'s files only, when given: None if it has none)."""
    if not sent:  # a status for a file no longer in the outbox still tells the truth
        line = current_status(lines, end_to_end_id)
        return line.result(f"{line.original_message_id}/{end_to_end_id}") if line else None
    states = [(s, current_status(lines, end_to_end_id, s.message_id, s.transfer.payment_information_id))
              for s in sent]
    settled = [(s, line) for s, line in states if line is not None and line.outcome is Outcome.SETTLED]
    open_ = [(s, line) for s, line in states if line is None or line.outcome is Outcome.PENDING]
    require(len(settled) + len(open_) <= 1,
            f"payout {end_to_end_id} is live in several files ({', '.join(s.path.name for s, _ in settled + open_)}):"
            " it may be paid more than once; stop and reconcile with the bank")
    for s, line in settled + open_:
        if line is None:
            return TransferResult(Outcome.PENDING, s.reference, message=f"in {s.path.name}; no bank status yet")
        return line.result(s.reference)
    rejected = [(s, line) for s, line in states if line is not None and (attempt is None or s.attempt == attempt)]
    if not rejected:
        return None
    s, line = max(rejected, key=lambda pair: (pair[1].report_created_at, pair[1].report_message_id))
    return line.result(s.reference)


def _already_sent(known: TransferResult, sent: list[_Sent], transfer: _Transfer) -> TransferResult:
    """The answer for a payout already in a file: that file's reference, and any difference noted."""
    current = next(s for s in sent if s.reference == known.provider_reference)
    wanted = (transfer.request.amount, transfer.iban)
    if (current.transfer.amount, current.transfer.iban) == wanted:
        return known
    return TransferResult(known.outcome, known.provider_reference, message=(
        f"already sent in {current.path.name} as {current.transfer.amount} to {current.transfer.iban}; this"
        f" request ({transfer.request.amount} to {transfer.iban}) was not written. {known.message}"))


def _cached(cache: dict[Path, tuple[tuple[int, int], Parsed]], path: Path, read: Callable[[bytes], Parsed],
            what: str) -> Parsed:
    stat = path.stat()
    key = (stat.st_mtime_ns, stat.st_size)
    hit = cache.get(path)
    if hit is not None and hit[0] == key:
        return hit[1]
    try:
        parsed = read(path.read_bytes())
    except ValueError as exc:
        raise ValueError(f"{what} {path}: {exc}") from exc
    cache[path] = (key, parsed)
    return parsed


def _write_atomically(path: Path, data: bytes) -> None:
    """Whole or absent: a hidden temp file in the same directory, fsync, rename, fsync of the directory."""
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
