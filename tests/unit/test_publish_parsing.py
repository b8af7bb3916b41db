"""`ledger publish` without a broker: reading JSON Lines and CSV into numbered records, and the command's
own decisions (usage errors, summaries, an unacknowledged delivery) with the broker side faked."""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone

import click
import pytest
from click.testing import CliRunner

from commands import publish as publish_module
from commands.publish import BadHeader, Item, csv_items, csv_record, detect_format, jsonl_items, strict_int
from ledger.intake import IntakeLimits, IntakeRejected, parse_record
from ledger.ledger_index import LedgerIndex
from processors.kafka_io import DeliveryFailed

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc)
HEADER = ["type", "payment_id", "refund_id", "payee_id", "amount_minor", "currency", "occurred_at",
          "services", "source", "reason", "metadata"]


def row(**cells: str) -> list[str]:
    return [cells.get(name, "") for name in HEADER]


def payment_line(payment_id: str, amount: object = 1000) -> str:
    return json.dumps({"payment_id": payment_id, "payee_id": "payee-1", "amount_minor": amount,
                       "currency": "USD", "occurred_at": "2026-11-20T10:00:00+00:00"})


# --- strict integers in CSV cells ---------------------------------------------------------------

@pytest.mark.parametrize(("cell", "expected"), [("1", 1), ("1050", 1050), ("-5", -5), ("007", 7)])
def test_strict_int_accepts_plain_digits_with_an_optional_minus(cell, expected):
    assert strict_int("amount_minor", cell) == expected


@pytest.mark.parametrize("cell", ["10.5", "10.50", "1e3", " 12", "12 ", "", "+5", "1_000", "0x10", "12\n",
                                  "--1", "-", "\u0661\u0662", "1,000", "9" * 5000])
def test_strict_int_rejects_everything_else_naming_the_field(cell):
    with pytest.raises(IntakeRejected, match=re.escape(f"amount_minor: {cell!r} is not an integer number of minor units")):
        strict_int("amount_minor", cell)


@pytest.mark.parametrize("cell", ["1.0", "2e1", " 3"])
def test_a_bad_services_cell_is_named(cell):
    with pytest.raises(IntakeRejected, match=re.escape(f"services: {cell!r} is not an integer")):
        csv_record(HEADER, row(payment_id="p1", amount_minor="100", services=cell))


def test_every_bad_integer_cell_of_a_row_is_reported():
    with pytest.raises(IntakeRejected) as caught:
        csv_record(HEADER, row(payment_id="p1", amount_minor="10.50", services="x"))
    assert caught.value.problems == [("amount_minor", "'10.50' is not an integer number of minor units"),
                                     ("services", "'x' is not an integer")]
    assert str(caught.value) == ("amount_minor: '10.50' is not an integer number of minor units; "
                                 "services: 'x' is not an integer")


def test_integer_cells_become_ints():
    record = csv_record(HEADER, row(payment_id="p1", amount_minor="1050", services="3"))
    assert record["amount_minor"] == 1050 and type(record["amount_minor"]) is int
    assert record["services"] == 3


# --- metadata column, empty cells, row shape ----------------------------------------------------

def test_metadata_column_holds_a_json_object():
    record = csv_record(HEADER, row(payment_id="p1", metadata='{"order": "o-17", "channel": "app"}'))
    assert record["metadata"] == {"order": "o-17", "channel": "app"}


@pytest.mark.parametrize(("cell", "reason"), [
    ('{"order": ', "metadata: not valid JSON"),
    ("order=o-17", "metadata: not valid JSON"),
    ('["o-17"]', "metadata: must be a JSON object, got list"),
    ('"o-17"', "metadata: must be a JSON object, got str"),
    ("17", "metadata: must be a JSON object, got int"),
    ("null", "metadata: must be a JSON object, got NoneType"),
])
def test_metadata_that_is_not_a_json_object_is_rejected(cell, reason):
    with pytest.raises(IntakeRejected, match=re.escape(reason)):
        csv_record(HEADER, row(payment_id="p1", metadata=cell))


def test_empty_cells_are_fields_not_given_so_a_refund_row_in_a_mixed_file_is_valid():
    cells = row(type="refund", payment_id="p1", refund_id="r1", payee_id="payee-1", amount_minor="250",
                currency="USD", occurred_at="2026-11-20T10:00:00+00:00")
    record = csv_record(HEADER, cells)
    assert record == {"type": "refund", "payment_id": "p1", "refund_id": "r1", "payee_id": "payee-1",
                      "amount_minor": 250, "currency": "USD", "occurred_at": "2026-11-20T10:00:00+00:00"}
    event = parse_record(record, IntakeLimits(), NOW)  # services/source columns would be unknown to a refund
    assert event.event_type == "PaymentRefunded" and event.payload["reason"] == ""


def test_empty_required_cell_is_reported_as_missing_by_the_intake_rules():
    record = csv_record(HEADER, row(payment_id="p1", payee_id="payee-1", currency="USD",
                                    occurred_at="2026-11-20T10:00:00+00:00"))
    assert "amount_minor" not in record
    with pytest.raises(IntakeRejected, match="amount_minor: is required"):
        parse_record(record, IntakeLimits(), NOW)


def test_a_row_with_the_wrong_number_of_cells_is_rejected():
    with pytest.raises(IntakeRejected, match="record: has 3 cells but the header has 11 columns"):
        csv_record(HEADER, ["payment", "p1", ""])


# --- JSON Lines ---------------------------------------------------------------------------------

def test_jsonl_skips_blank_lines_and_numbers_physical_lines():
    text = f"{payment_line('p1')}\n\n   \n{payment_line('p2')}\r\n\n{payment_line('p3')}"
    items = list(jsonl_items(text.encode().splitlines(keepends=True)))
    assert [(item.line, item.record["payment_id"]) for item in items] == [(1, "p1"), (4, "p2"), (6, "p3")]
    assert all(item.error is None for item in items)


def test_jsonl_keeps_json_types_as_given():
    (item,) = jsonl_items([payment_line("p1", 10.5)])
    assert item.record["amount_minor"] == 10.5 and isinstance(item.record["amount_minor"], float)


def test_jsonl_bad_lines_become_errors_and_reading_goes_on():
    lines = [payment_line("p1") + "\n", '{"payment_id": "p2",\n', "\n", b"\xff\xfe{}\n", "[1, 2]\n",
             payment_line("p3") + "\n"]
    items = list(jsonl_items([line if isinstance(line, bytes) else line.encode() for line in lines]))
    assert [item.line for item in items] == [1, 2, 4, 5, 6]
    assert items[1].error.startswith("not valid JSON: ") and "column" in items[1].error
    assert items[2] == Item(4, error="not valid UTF-8 text")
    assert items[3].record == [1, 2]  # not an object: parse_record rejects it, as for every other way in
    assert items[4].record["payment_id"] == "p3"


def test_jsonl_byte_order_mark_is_ignored():
    (item,) = jsonl_items(["\ufeff" + payment_line("p1")])
    assert item.record["payment_id"] == "p1"


# --- CSV line numbering ---------------------------------------------------------------------------

def test_csv_header_is_line_one_and_rows_are_numbered_by_their_first_physical_line():
    text = (",".join(HEADER) + "\r\n"
            "payment,p1,,payee-1,100,USD,2026-11-20T10:00:00+00:00,,,,\r\n"
            "\r\n"
            ",,,,,,,,,,\r\n"
            'payment,p2,,payee-1,200,USD,2026-11-20T10:00:00+00:00,,,,"{""note"": ""two"",\r\n ""lines"": ""yes""}"\r\n'
            "payment,p3,,payee-1,10.5,USD,2026-11-20T10:00:00+00:00,,,,\r\n"
            "payment,p4,,payee-1,400,USD,2026-11-20T10:00:00+00:00,,,,\r\n")
    items = list(csv_items(text.encode().splitlines(keepends=True)))
    assert [item.line for item in items] == [2, 5, 7, 8]
    assert items[0].record["payment_id"] == "p1"
    assert items[1].record["metadata"] == {"note": "two", "lines": "yes"}
    assert items[2].error == "amount_minor: '10.5' is not an integer number of minor units"
    assert items[3].record["payment_id"] == "p4"


def test_csv_row_that_is_not_utf8_is_rejected_alone():
    lines = [",".join(HEADER).encode() + b"\n", b"payment,p\xff1,,payee-1,100,USD,x,,,,\n",
             b"payment,p2,,payee-1,100,USD,x,,,,\n"]
    items = list(csv_items(lines))
    assert items[0] == Item(2, error="not valid UTF-8 text")
    assert items[1].line == 3 and items[1].record["payment_id"] == "p2"


def test_csv_reader_errors_reject_that_row_and_reading_goes_on():
    lines = ["payment_id,amount_minor\n", "p1," + "x" * 200_000 + "\n", "p2,5\n", "p3,\r7\n", "p4,6\n"]
    items = list(csv_items(lines))
    assert [item.line for item in items] == [2, 3, 4, 5]
    assert items[0].error == "not valid CSV: field larger than field limit (131072)"
    assert items[1].record == {"payment_id": "p2", "amount_minor": 5}
    assert items[2].error.startswith("not valid CSV: new-line character seen in unquoted field")
    assert items[3].record == {"payment_id": "p4", "amount_minor": 6}


def test_csv_header_with_bom_and_padded_names_is_read():
    (item,) = csv_items(["\ufeffpayment_id , amount_minor\n", "p1,100\n"])
    assert item == Item(2, {"payment_id": "p1", "amount_minor": 100})


@pytest.mark.parametrize("header", ["payment_id,amount_minor,payment_id\n", "payment_id,,currency\n", "\n"])
def test_csv_header_needs_distinct_non_empty_names(header):
    with pytest.raises(BadHeader, match="line 1: the header needs distinct, non-empty column names"):
        list(csv_items([header, "p1,100,USD\n"]))


def test_empty_csv_has_no_records():
    assert list(csv_items([])) == []


# --- format detection ---------------------------------------------------------------------------

@pytest.mark.parametrize(("path", "given", "expected"), [
    ("in.jsonl", None, "jsonl"), ("in.NDJSON", None, "jsonl"), ("dir.v2/in.json", None, "jsonl"),
    ("in.csv", None, "csv"), ("in.txt", "csv", "csv"), ("in.csv", "jsonl", "jsonl"), ("-", "csv", "csv"),
])
def test_format_comes_from_the_option_or_the_extension(path, given, expected):
    assert detect_format(path, given) == expected


def test_unknown_extension_without_format_is_a_usage_error():
    with pytest.raises(click.UsageError, match=r"cannot tell the format of 'in\.txt'.*--format jsonl"):
        detect_format("in.txt", None)


def test_stdin_needs_a_format():
    with pytest.raises(click.UsageError, match=r"reading stdin \(-\) needs --format"):
        detect_format("-", None)


# --- the command, with the broker side faked ------------------------------------------------------

class FakeClient:
    """LedgerClient's validate/send/flush with the real intake rules and no broker."""

    flush_error: Exception | None = None
    sent: list = []

    def __init__(self, bootstrap, settings, *, codec):
        self.limits = settings.intake_limits()
        FakeClient.sent = []

    def __enter__(self):
        return self

    def __exit__(self, *_):
        pass

    def validate(self, record):
        return parse_record(record, self.limits, NOW)

    def send(self, event):
        FakeClient.sent.append(event)
        return event.envelope.event_id

    def flush(self):
        if FakeClient.flush_error is not None:
            raise FakeClient.flush_error


@pytest.fixture
def fake_broker(monkeypatch, tmp_path):
    monkeypatch.setattr(publish_module, "connections", lambda settings: ("fake:9092", "postgresql://fake/db"))
    monkeypatch.setattr(publish_module, "open_index", lambda bootstrap, topic, url, codec, **_: LedgerIndex(codec.encode))
    monkeypatch.setattr(publish_module, "LedgerClient", FakeClient)
    monkeypatch.setattr(FakeClient, "flush_error", None)
    monkeypatch.setenv("LEDGER_DATA_DIR", str(tmp_path / "data"))
    return FakeClient


def test_cli_unknown_extension_exits_2(tmp_path):
    path = tmp_path / "payments.txt"
    path.write_text(payment_line("p1") + "\n")
    result = CliRunner().invoke(publish_module.publish, [str(path)])
    assert result.exit_code == 2
    assert "cannot tell the format" in result.output


def test_cli_missing_file_exits_2(tmp_path):
    result = CliRunner().invoke(publish_module.publish, [str(tmp_path / "absent.jsonl")])
    assert result.exit_code == 2
    assert "does not exist" in result.output


def test_unacknowledged_delivery_exits_1_and_claims_no_acceptance(fake_broker, tmp_path):
    path = tmp_path / "payments.jsonl"
    path.write_text(payment_line("p1") + "\n" + payment_line("p2") + "\n")
    fake_broker.flush_error = DeliveryFailed("1 of 2 records acknowledged, 1 still queued, errors: []")
    result = CliRunner().invoke(publish_module.publish, [str(path), "--json"])
    assert result.exit_code == 1
    assert len(fake_broker.sent) == 2
    assert "did not acknowledge every record" in result.stderr and "1 of 2 records acknowledged" in result.stderr
    assert '"accepted"' not in result.stdout


def test_human_summary_shows_twenty_errors_and_json_lists_all(fake_broker, tmp_path):
    lines = [payment_line(f"p{index}", 10.5) for index in range(25)] + [payment_line("good")]
    path = tmp_path / "payments.jsonl"
    path.write_text("\n".join(lines) + "\n")

    human = CliRunner().invoke(publish_module.publish, [str(path)])
    assert human.exit_code == 1
    assert "1 accepted, 0 duplicates, 25 rejected" in human.stdout
    assert "line 20: amount_minor: must be an integer" in human.stdout
    assert "line 21:" not in human.stdout and "and 5 more" in human.stdout

    as_json = CliRunner().invoke(publish_module.publish, [str(path), "--json"])
    summary = json.loads(as_json.stdout)
    assert set(summary) == {"accepted", "duplicates", "rejected", "errors"}
    assert (summary["accepted"], summary["duplicates"], summary["rejected"]) == (1, 0, 25)
    assert [error["line"] for error in summary["errors"]] == list(range(1, 26))
    assert [event.payload["payment_id"] for event in fake_broker.sent] == ["good"]


def test_an_unhashable_type_is_rejected_and_the_file_goes_on(fake_broker, tmp_path):
    path = tmp_path / "payments.jsonl"
    path.write_text('{"type": ["payment"]}\n' + payment_line("p1") + "\n")
    result = CliRunner().invoke(publish_module.publish, [str(path), "--json"])
    summary = json.loads(result.stdout)
    assert (summary["accepted"], summary["rejected"]) == (1, 1)
    assert summary["errors"][0]["line"] == 1 and summary["errors"][0]["reason"].startswith("type: ")


def test_bad_csv_header_exits_1_before_sending(fake_broker, tmp_path):
    path = tmp_path / "payments.csv"
    path.write_text("payment_id,payment_id\np1,p2\n")
    result = CliRunner().invoke(publish_module.publish, [str(path)])
    assert result.exit_code == 1
    assert "distinct, non-empty column names" in result.stderr
    assert fake_broker.sent == []

