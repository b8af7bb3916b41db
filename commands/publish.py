"""`ledger publish FILE`: send payments, refunds and adjustments from a JSON Lines or CSV file.

Every record passes the intake rules (ledger.intake.parse_record) and the ledger index (dedupe by
business id, refund limits), replayed once from ledger.events and extended with the file's own
accepted records; accepted ones go to payments.incoming through LedgerClient. A bad line never
stops the file. The parsing helpers below are pure: they need no broker.
"""

from __future__ import annotations

import csv
import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Iterable, Iterator, NamedTuple

import click
from rich.markup import escape
from rich.progress import Progress

from commands.output import console, emit_json, fail
from ledger.codec import EventCodec
from ledger.intake import IntakeRejected
from processors.kafka_io import DeliveryFailed
from processors.ledger_client import LedgerClient
from processors.ledger_replay import CorruptLedger, open_index
from runtime.settings import Settings
from runtime.stack import connections

EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv"}
INTEGER_FIELDS = {"amount_minor": "an integer number of minor units", "services": "an integer"}
STRICT_INTEGER = re.compile(r"-?[0-9]+")
SHOWN_ERRORS = 20


class BadHeader(ValueError):
    """A CSV header that cannot be used (empty or repeated column names)."""


class Item(NamedTuple):
    """One input record: its 1-based physical line, and either the record's fields or why it is unreadable."""

    line: int
    record: dict[str, Any] | None = None
    error: str | None = None


def detect_format(path: str, given: str | None) -> str:
    """jsonl or csv: --format if given, else the file's extension; click.UsageError (exit 2) otherwise."""
    if given:
        return given
    if path == "-":
        raise click.UsageError("reading stdin (-) needs --format jsonl or --format csv")
    found = EXTENSIONS.get(Path(path).suffix.lower())
    if found is None:
        raise click.UsageError(f"cannot tell the format of {path!r} from its extension "
                               f"(known: {', '.join(EXTENSIONS)}): pass --format jsonl or --format csv")
    return found


def strict_int(name: str, cell: str) -> int:
    """A CSV cell as an integer: ASCII digits with an optional leading '-', nothing else (no spaces, no '.')."""
    if STRICT_INTEGER.fullmatch(cell) and len(cell) <= 40:  # far above any limit; int() refuses > 4300 digits
        return int(cell)
    raise IntakeRejected([(name, f"{cell!r} is not {INTEGER_FIELDS.get(name, 'an integer')}")])


def csv_record(header: list[str], row: list[str]) -> dict[str, Any]:
    """A CSV row as an intake record: empty cells are fields not given, integers and metadata converted."""
    if len(row) != len(header):
        raise IntakeRejected([("record", f"has {len(row)} cells but the header has {len(header)} columns")])
    record: dict[str, Any] = {}
    problems: list[tuple[str, str]] = []
    for name, cell in zip(header, row):
        if cell == "":
            continue
        if name in INTEGER_FIELDS:
            try:
                record[name] = strict_int(name, cell)
            except IntakeRejected as exc:
                problems.extend(exc.problems)
        elif name == "metadata":
            try:
                record[name] = json.loads(cell)
                if not isinstance(record[name], dict):
                    problems.append((name, f"must be a JSON object, got {type(record[name]).__name__}"))
            except (ValueError, RecursionError) as exc:
                problems.append((name, f"not valid JSON: {getattr(exc, 'msg', exc)}"))
        else:
            record[name] = cell
    if problems:
        raise IntakeRejected(problems)
    return record


def _decoded(lines: Iterable[bytes | str], bad: set[int]) -> Iterator[str]:
    """Lines as text; numbers of lines that are not UTF-8 go into `bad` (their text is a stand-in)."""
    for number, line in enumerate(lines, 1):
        line = line.encode() if isinstance(line, str) else line
        try:
            yield line.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError:
            bad.add(number)
            yield line.decode("utf-8", "replace")


def jsonl_items(lines: Iterable[bytes | str]) -> Iterator[Item]:
    """One Item per non-blank line; blank lines are skipped but still counted in line numbers."""
    bad: set[int] = set()
    for number, text in enumerate(_decoded(lines, bad), 1):
        if number in bad:
            yield Item(number, error="not valid UTF-8 text")
        elif text.strip():
            try:
                yield Item(number, json.loads(text.rstrip("\r\n")))
            except (ValueError, RecursionError) as exc:
                where = f" (column {exc.colno})" if isinstance(exc, json.JSONDecodeError) else ""
                yield Item(number, error=f"not valid JSON: {getattr(exc, 'msg', exc)}{where}")


def csv_items(lines: Iterable[bytes | str]) -> Iterator[Item]:
    """One Item per data row, numbered by the row's first physical line (the header is line 1).

    Raises BadHeader for a header with empty or repeated column names; rows of only empty cells are skipped.
    """
    bad: set[int] = set()
    reader = csv.reader(_decoded(lines, bad))
    header: list[str] | None = None
    last = 0
    while True:
        try:
            row: list[str] | None = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:  # e.g. a field above csv's size limit; the reader goes on with the next line
            row, error = None, f"not valid CSV: {exc}"
        first, last = last + 1, reader.line_num
        if row is None:
            yield Item(first, error=error)
        elif header is None:
            header = [name.strip() for name in row]
            if not header or "" in header or len(set(header)) != len(header):
                raise BadHeader(f"line {first}: the header needs distinct, non-empty column names, got {row!r}")
        elif bad.intersection(range(first, last + 1)):
            yield Item(first, error="not valid UTF-8 text")
        elif any(cell.strip() for cell in row):
            try:
                yield Item(first, csv_record(header, row))
            except IntakeRejected as exc:
                yield Item(first, error=str(exc))


def _lines(stream: Any, progress: Progress, task: Any) -> Iterator[bytes]:
    for line in stream:
        progress.advance(task, len(line))
        yield line


JUDGE_CHUNK = 500  # records validated, then judged together (one duplicate lookup)


@click.command(short_help="Publish payments, refunds and adjustments from a file.")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, readable=True, allow_dash=True))
@click.option("--format", "file_format", type=click.Choice(["jsonl", "csv"]),
              help="Input format (default: from the extension; required for stdin).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def publish(file: str, file_format: str | None, as_json: bool) -> None:
    """Validate, deduplicate and publish the records of FILE (JSON Lines or CSV; - for stdin)."""
    file_format = detect_format(file, file_format)
    settings = Settings()
    bootstrap, database_url = connections(settings)
    codec = EventCodec()
    try:  # the sequencer's checkpoint and tables, plus the tail: not the whole history
        index = open_index(bootstrap, settings.topic_events, database_url, codec, dlq_topic=settings.topic_dlq)
    except CorruptLedger as exc:
        fail(f"cannot check for duplicates: {exc}")
    counts = {"accepted": 0, "duplicates": 0, "rejected": 0}
    errors: list[dict[str, Any]] = []

    def reject(line: int, reason: str) -> None:
        counts["rejected"] += 1
        errors.append({"line": line, "reason": reason})

    stream = sys.stdin.buffer if file == "-" else open(file, "rb")
    total = os.fstat(stream.fileno()).st_size if file != "-" else None
    with stream, LedgerClient(bootstrap, settings, codec=codec) as client, \
            Progress(console=console, disable=as_json or not console.is_terminal, transient=True) as progress:
        task = progress.add_task(f"publishing {file}", total=total)
        items = (jsonl_items if file_format == "jsonl" else csv_items)(_lines(stream, progress, task))
        def judge(chunk: list[tuple[int, Any]]) -> None:
            index.prefetch(event for _, event in chunk)  # one lookup per chunk, not per record
            for line, event in chunk:
                verdict = index.verdict(event)
                if verdict.status == "duplicate":
                    counts["duplicates"] += 1
                elif verdict.status == "reject":
                    reject(line, verdict.reason)
                else:
                    client.send(event)
                    index.admit(event)
                    counts["accepted"] += 1

        try:
            chunk: list[tuple[int, Any]] = []
            for item in items:
                if item.error is not None:
                    reject(item.line, item.error)
                    continue
                try:
                    chunk.append((item.line, client.validate(item.record)))
                except IntakeRejected as exc:
                    reject(item.line, str(exc))
                    continue
                if len(chunk) >= JUDGE_CHUNK:
                    judge(chunk)
                    chunk = []
            judge(chunk)
        except BadHeader as exc:  # raised before the first row: nothing was sent
            fail(f"{file}: {exc}")
        try:
            client.flush()
        except DeliveryFailed as exc:
            fail(f"the broker did not acknowledge every record ({exc}); {counts['accepted']} records were sent "
                 "but none is reported as accepted; publishing the file again is safe: "
                 "event ids follow from payment, refund and adjustment ids")

    errors.sort(key=lambda error: error["line"])  # a chunk's verdicts come after the parse errors read meanwhile
    if as_json:
        emit_json({**counts, "errors": errors})
    else:
        console.print(f"{counts['accepted']} accepted, {counts['duplicates']} duplicates, "
                      f"{counts['rejected']} rejected", highlight=False)
        for error in errors[:SHOWN_ERRORS]:
            console.print(f"  line {error['line']}: {escape(error['reason'])}", highlight=False)
        if len(errors) > SHOWN_ERRORS:
            console.print(f"  ... and {len(errors) - SHOWN_ERRORS} more (--json lists them all)")
    if counts["rejected"]:
        sys.exit(1)
