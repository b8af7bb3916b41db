"""Hostile input records for the soak: seeded, byte-exact, each one refused by the ledger's intake rules.

    from demo.hostile import STATEFUL_KINDS, expected_refusal, hostile_records
    records = hostile_records(seed=7, count=3000, now=now, valid_ids={"pay-1": {...valid payment...}})

Each `Hostile` is what the soak sends: `value` produced with `key` to payments.incoming (entrances
"incoming_json" and "incoming_avro"), or `value` as the body of POST /v1/payments ("api", one record per
body). `field` is the field the refusal must name ("" when the refusal is about the whole record: bytes
that do not decode). `expected_refusal` runs the same rules as the sequencer (processors.sequencer_input
.interpret, keys checked) or the API (parse_record on each record of the body) and returns the first
(field, reason) problem.

`ledger publish` files are two more entrances, made only when asked for (`entrances=PUBLISH`; the default
ENTRANCES and their bytes for a seed are unchanged): "publish", one line of a JSON Lines file (`value`
without its newline), and "publish_csv", one data row of a CSV file under CSV_HEADER, except the kind
"bad_csv_header", whose `value` is a whole file (a header the command refuses before reading a row, and one
valid row). Their rules are the command's own parsing (commands.publish jsonl_items / csv_items) and
parse_record; the command reports a refused line as "<field>: <reason>" (or "not valid JSON/CSV/UTF-8 ..."
for a line that does not parse: field ""). Publish-only kinds: "not_json_line", "csv_cell_count",
"bad_csv_header". Over-large lines are measured as compact JSON there, as at the API: they are refused for
the over-long field, not for whitespace.

Two kinds only the sequencer's state can refuse (STATEFUL_KINDS): a payment reusing the payment_id of a
valid payment the soak also sends, with other content, and a refund larger than its payment. The pure
rules accept them (expected_refusal returns None); the soak checks them against the dead-letter topic,
and must send them after the valid payment they name (a conflicting payment sent first would be
recorded, and the valid one refused).

Why plain `random.Random(seed)` and not hypothesis strategies: hypothesis draws through its engine
(shrinking, example database, health checks), `strategy.example()` is explicitly not reproducible,
and the bytes a strategy draws for a given seed change between hypothesis releases. A seeded
`random.Random` per run gives the same list, byte for byte, for a seed (on the same Python and library
versions), and each category's generator stays a few readable lines. Hypothesis is used in
tests/unit/test_soak_hostile.py instead, to fuzz this generator's parameters (seed, clock).

Future timestamps are at least a day ahead of `now`, so they stay refused for a soak shorter than that.
Not generated, because the rules accept them or no bytes can carry them: UTC offsets that are odd
but that Python's datetime.fromisoformat reads (+00:60, +01:99, +00:00:60, +01:00:00.5, +01:00:00:0,
" +01:00" with a space, +0100, +01), amounts above 2**63-1 in Avro (a long cannot hold them), and
over-large API records with only valid fields (measured as compact JSON, such a record stays under
RECORD_MAX_BYTES: the API's over-large records are refused for the over-long field that makes them so).
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from ledger.codec import EventCodec
from ledger.events import Event
from ledger.intake import (
    LONG_MAX, RECORD_MAX_BYTES, RECORD_READ_MAX_BYTES, IntakeLimits, IntakeRejected, json_size, parse_record,
)
from ledger.money import Money
from processors.sequencer_input import Rejected, interpret

ENTRANCES = ("incoming_json", "incoming_avro", "api")  # what hostile_records makes unless told otherwise
PUBLISH = ("publish", "publish_csv")  # lines of JSON Lines and CSV files for `ledger publish`
ALL_ENTRANCES = ENTRANCES + PUBLISH
# every field a record can have, in a fixed order: the header of the publish_csv entrance's files
CSV_HEADER = ("type", "payment_id", "refund_id", "adjustment_id", "payee_id", "amount_minor", "currency",
              "occurred_at", "services", "source", "reason", "kind", "name", "metadata")
# headers `ledger publish` refuses whole (empty or repeated column names): the file is refused, nothing sent
BAD_CSV_HEADERS = ("payment_id,payee_id,amount_minor,amount_minor,currency,occurred_at",
                   "payment_id,payee_id,,amount_minor,currency,occurred_at", "payment_id,payee_id,amount_minor,"
                   "currency,occurred_at,", ",,,", "payee_id,payee_id,payee_id")
# lines that are not a JSON object: field "" when they do not parse, "record" when they parse to another value
NOT_JSON_LINES = (("payment_id=1,amount_minor=100", ""), ("{'payment_id': 'p1'}", ""), ('{"a":1,}', ""),
                  ('{"a":1}{"b":2}', ""), ("[]", "record"), ("null", "record"),
                  ('"payment"', "record"), ("42", "record"), ("NaN", "record"), ("true", "record"))
CSV_INTEGER_TEXTS = ("abc", "1,000", " 100", "100 ", "0x10", "true", "+3", "\u0661\u0662", "1_000", "")
STATEFUL_KINDS = frozenset({"conflicting_id", "refund_too_large"})
LIMITS = IntakeLimits()
CURRENCIES = ("USD", "EUR", "GBP", "KES", "XOF", "JPY", "BHD")
OFFSETS = ("Z", "+00:00", "+05:30", "-07:00", "+09:00", "-03:30")
PAYEES = tuple(f"hzpayee-{n:02d}" for n in range(16))
# Timestamp texts the rules refuse (the year-1 and year-9999 ones cannot be expressed in UTC).
BAD_TIMESTAMPS = ("2026-02-30T10:00:00Z", "2026-13-01T00:00:00Z", "2026-11-22T25:00:00Z", "yesterday", "", "now",
                  "2026-11-22T10:00:00ZZ", "22/11/2026 10:00", "0001-01-01T00:00:00+01:00",
                  "9999-12-31T23:59:59-01:00", 1763805600, 1763805600.5, None, ["2026-11-22T10:00:00Z"])
BAD_OFFSETS = ("", "+24:00", "-24:00", "+25:00", " UTC", "UTC", "GMT", "+1", "+5:00", "z", "Z+01:00", "+01:00Z",
               "+99:99", "+23:99", "+01:00:00x5", "EST")
UNKNOWN_CURRENCIES = ("ABC", "XXX", "XAU", "XTS", "US", "USDT", "US DOLLARS", "", "€", "U$D", "123", "BTC")
INVALID_UTF8 = (b"\xff", b"\x80", b"\xfe", b"\xc0\xaf", b"\xe2\x82", b"\xf8\x88\x80\x80\x80")
SURROGATE_UTF8 = b"\xed\xa0\x80"  # json.loads reads it (surrogatepass) as "\ud800": refused as a bad id
FLOAT_TEXTS = ("1000.0", "10.5", "0.01", "1E3", "1e3", "1.5e2", "-0.0", "12.000", "1e400", "NaN", "Infinity")
_BY_PAYEE = object()  # _Gen.hostile's default key: the record's payee id


@dataclass(frozen=True)
class Hostile:
    kind: str  # the category, e.g. "float_amount"
    entrance: str  # "incoming_json" | "incoming_avro" | "api" | "publish" | "publish_csv"
    key: bytes | None  # the Kafka key (None for "api" and the publish entrances)
    value: bytes  # exact bytes for the topic; for "api" the JSON body; for publish a line (see the docstring)
    field: str  # the field the refusal must name; "" when it is about the whole record


@functools.lru_cache(maxsize=1)
def _codec() -> EventCodec:
    return EventCodec()  # default framing, no registry: what a fresh codec is; built once (schemas are parsed)


def _utc(now: datetime) -> datetime:
    """The clock as the ledger keeps it (its events' recorded_at is UTC)."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError(f"now must be timezone-aware, got {now!r}")
    return now.astimezone(timezone.utc)


def _iso(moment: datetime) -> str:
    return moment.isoformat()


def _json(record: dict, raw: dict[str, str] | None = None, *, api: bool = False) -> bytes:
    """Compact JSON of a record (for "api", a body holding it); `raw` puts text in place of a field's value
    as it is (1E3, NaN, a 5000-digit number, nesting deeper than json.dumps goes)."""
    record = {**record, **{name: f"@raw:{name}@" for name in raw or {}}}
    text = json.dumps({"records": [record]} if api else record, separators=(",", ":"), default=_iso)
    for name, value in (raw or {}).items():
        text = text.replace(json.dumps(f"@raw:{name}@"), value)
    return text.encode()


def _csv_row(record: dict, cells: dict[str, str] | None = None, header: tuple[str, ...] = CSV_HEADER) -> bytes:
    """A record as one CSV data row under `header` (integers as digits, metadata as JSON), with `cells` (texts
    written as they are) in place of fields' values; no line ending."""
    texts = {name: json.dumps(value, separators=(",", ":")) if isinstance(value, dict) else str(value)
             for name, value in record.items()}
    texts.update(cells or {})
    unknown = set(texts) - set(header)
    if unknown:
        raise AssertionError(f"no CSV column for {sorted(unknown)}")
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow([texts.get(name, "") for name in header])
    return buffer.getvalue().encode("utf-8", "surrogatepass")


def _replace_once(data: bytes, old: bytes, new: bytes) -> bytes:
    if data.count(old) != 1:
        raise AssertionError(f"{old!r} occurs {data.count(old)} times, expected once")
    return data.replace(old, new)


class _Gen:
    """The state of one run: the random source, the clock, ids that never repeat, the valid payments."""

    def __init__(self, seed: int, now: datetime, valid_ids: dict[str, dict] | None) -> None:
        self.rng, self.now, self.count = random.Random(seed), _utc(now), 0
        self.tag = f"{seed & 0xFFFFFFFF:08x}"
        self.valid = [(pid, self._plain(record)) for pid, record in sorted((valid_ids or {}).items())
                      if record.get("type", "payment") == "payment"]

    @staticmethod
    def _plain(record: dict) -> dict:
        return {name: _iso(value) if isinstance(value, datetime) else value for name, value in record.items()}

    def next_id(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}-{self.tag}-{self.count}"

    def past(self) -> str:
        moment = self.now - timedelta(seconds=self.rng.randint(60, 30 * 86400))
        offset = self.rng.choice(OFFSETS)
        if offset == "Z":
            return moment.astimezone(timezone.utc).replace(tzinfo=None).isoformat() + "Z"
        hours, minutes = int(offset[1:3]), int(offset[4:6])
        sign = -1 if offset[0] == "-" else 1
        return moment.astimezone(timezone(sign * timedelta(hours=hours, minutes=minutes))).isoformat()

    def amount(self, code: str) -> int:
        return self.rng.randint(1, LIMITS.max_amount(code).amount_minor)

    def record(self, types: tuple[str, ...] = ("payment", "payment", "payment", "refund", "adjustment")) -> dict:
        """A valid record of a hostile payee, with ids of its own (never one of the soak's valid ids)."""
        rng, kind, code = self.rng, self.rng.choice(types), self.rng.choice(CURRENCIES)
        record: dict[str, Any] = {"type": kind, "payee_id": rng.choice(PAYEES), "amount_minor": self.amount(code),
                                  "currency": code, "occurred_at": self.past()}
        if kind == "payment":
            record.update(payment_id=self.next_id("hzp"), services=rng.randint(0, 5), source="soak-hostile")
        elif kind == "refund":
            record.update(refund_id=self.next_id("hzr"), payment_id=self.next_id("hzp"), reason="hostile refund")
        else:
            record.update(adjustment_id=self.next_id("hza"), kind=rng.choice(["BONUS", "DEDUCTION"]), name="booth")
        if rng.random() < 0.5:
            record["metadata"] = {f"k{n}": f"v{rng.randint(0, 999)}" for n in range(rng.randint(1, 4))}
        return record

    def id_field(self, record: dict) -> str:
        return self.rng.choice([name for name in ("payee_id", "payment_id", "refund_id", "adjustment_id")
                                if name in record])

    def avro(self, record: dict, envelope: dict | None = None, payload: dict | None = None) -> bytes:
        """A valid record as an Avro event (single-object framing), with envelope/payload fields then changed."""
        event = parse_record(record, LIMITS, self.now)
        event = Event(dataclasses.replace(event.envelope, **(envelope or {})), {**event.payload, **(payload or {})})
        return _codec().encode(event)

    def hostile(self, kind: str, entrance: str, record: dict, field: str, *, raw: dict[str, str] | None = None,
                value: bytes | None = None, key: bytes | None | object = _BY_PAYEE) -> Hostile:
        """The Hostile for `record` at `entrance` (or the given bytes), keyed by its payee unless told otherwise."""
        if value is None:
            value = _json(record, raw, api=entrance == "api")
        if key is _BY_PAYEE:
            payee = record.get("payee_id")
            key = payee.encode() if isinstance(payee, str) else self.rng.choice(PAYEES).encode()
        keyless = entrance == "api" or entrance in PUBLISH
        return Hostile(kind, entrance, None if keyless else key, value, field)  # type: ignore[arg-type]

    def csv(self, kind: str, record: dict, field: str, cells: dict[str, str] | None = None,
            value: bytes | None = None) -> Hostile:
        """The publish_csv Hostile: `record` as a CSV row with `cells` in place (or the given bytes)."""
        return Hostile(kind, "publish_csv", None, _csv_row(record, cells) if value is None else value, field)


# --- categories: each builds one record refused at the entrance it is given ------------------------------


def _wrong_type(g: _Gen, entrance: str) -> Hostile:
    record = g.record()
    field, value = g.rng.choice([
        ("amount_minor", str(record["amount_minor"])), ("amount_minor", f"{record['amount_minor']}.00"),
        ("payee_id", [record["payee_id"]]), ("amount_minor", True), ("amount_minor", None),
        ("currency", 840), ("occurred_at", {"at": record["occurred_at"]}), ("metadata", "k=v"),
        ("metadata", ["k", "v"]), (g.id_field(record), 12345), ("payee_id", {"id": record["payee_id"]}),
    ])
    return g.hostile("wrong_type", entrance, {**record, field: value}, field)


def _float_amount(g: _Gen, entrance: str) -> Hostile:
    return g.hostile("float_amount", entrance, g.record(), "amount_minor",
                     raw={"amount_minor": g.rng.choice(FLOAT_TEXTS)})


def _huge_amount(g: _Gen, entrance: str) -> Hostile:
    record, rng = g.record(("payment",)), g.rng
    if entrance == "incoming_avro":  # a long cannot hold more than 2**63-1: above the per-record maximum
        ceiling = LIMITS.max_amount(record["currency"]).amount_minor
        amount = rng.choice([ceiling + 1, rng.randint(ceiling + 1, LONG_MAX), LONG_MAX])
        return g.hostile("huge_amount", entrance, record, "amount_minor",
                         value=g.avro(record, payload={"amount": Money.of(amount, record["currency"])}))
    if entrance in ("incoming_json", "publish") and rng.random() < 0.1:  # more digits than Python reads
        return g.hostile("huge_amount", entrance, record, "", raw={"amount_minor": "9" * rng.randint(4301, 6000)})
    huge = rng.choice([2**63, 2**64, 2**63 + rng.randint(1, 2**62), 10 ** rng.randint(19, 400)])
    return g.hostile("huge_amount", entrance, {**record, "amount_minor": huge}, "amount_minor")


def _nonpositive_amount(g: _Gen, entrance: str) -> Hostile:
    record, rng = g.record(("payment",)), g.rng
    amount = rng.choice([0, -1, -rng.randint(2, 10**6), -LONG_MAX - 1])
    if entrance == "incoming_avro":
        return g.hostile("nonpositive_amount", entrance, record, "amount_minor",
                         value=g.avro(record, payload={"amount": Money.of(amount, record["currency"])}))
    amount = rng.choice([amount, -(2**64)])
    return g.hostile("nonpositive_amount", entrance, {**record, "amount_minor": amount}, "amount_minor")


def _bad_currency(kind: str, choose: Callable[[_Gen, str], str]) -> Callable[[_Gen, str], Hostile]:
    def build(g: _Gen, entrance: str) -> Hostile:
        record = g.record(("payment",)) if entrance == "incoming_avro" else g.record()
        code = choose(g, record["currency"])
        if entrance == "incoming_avro":  # no Money holds it: written over the currency's bytes; the codec refuses
            value = g.avro(record)
            old = bytes([len(record["currency"]) * 2]) + record["currency"].encode()
            new = bytes([len(code.encode()) * 2]) + code.encode()
            return g.hostile(kind, entrance, record, "", value=_replace_once(value, old, new))
        return g.hostile(kind, entrance, {**record, "currency": code}, "currency")
    return build


_unknown_currency = _bad_currency("unknown_currency", lambda g, _: g.rng.choice(UNKNOWN_CURRENCIES))
_lowercase_currency = _bad_currency(
    "lowercase_currency", lambda g, code: g.rng.choice([code.lower(), code.capitalize(), code[:2] + code[2].lower()]))


def _bad_timestamp(g: _Gen, entrance: str) -> Hostile:
    rng = g.rng
    future = g.now + timedelta(days=1, seconds=rng.randint(0, 10 * 365 * 86400))
    if entrance == "incoming_avro":
        record = g.record(("payment",))
        return g.hostile("bad_timestamp", entrance, record, "occurred_at",
                         value=g.avro(record, envelope={"occurred_at": future.astimezone(timezone.utc)}))
    value = rng.choice([*BAD_TIMESTAMPS, future.isoformat()])
    return g.hostile("bad_timestamp", entrance, {**g.record(), "occurred_at": value}, "occurred_at")


def _bad_utc_offset(g: _Gen, entrance: str) -> Hostile:
    value = _bad_offset_text(g)
    return g.hostile("bad_utc_offset", entrance, {**g.record(), "occurred_at": value}, "occurred_at")


def _bad_offset_text(g: _Gen) -> str:
    local = (g.now - timedelta(seconds=g.rng.randint(60, 86400))).replace(tzinfo=None)
    return g.rng.choice([local.isoformat() + g.rng.choice(BAD_OFFSETS), local.date().isoformat(),
                         local.isoformat(timespec="microseconds")])


def _oversized_metadata(g: _Gen, entrance: str) -> Hostile:
    rng = g.rng
    if rng.random() < 0.5:
        metadata = {f"k{n}": "v" for n in range(rng.randint(LIMITS.metadata_max_keys + 1, 300))}
    else:
        metadata = {"note": "x" * rng.randint(LIMITS.metadata_max_bytes, 4 * LIMITS.metadata_max_bytes)}
    if entrance == "incoming_avro":
        record = g.record(("payment",))
        return g.hostile("oversized_metadata", entrance, record, "metadata", value=g.avro(record, payload={
            "metadata": metadata}))
    return g.hostile("oversized_metadata", entrance, {**g.record(), "metadata": metadata}, "metadata")


def _nested_metadata(g: _Gen, entrance: str) -> Hostile:
    rng, record, key = g.rng, g.record(), g.rng.choice(["deep", "k0", "a"])
    deep = entrance in ("incoming_json", "publish") and rng.random() < 0.15  # deeper than the JSON parser goes
    text = _nested_text(g, record, key, deep)
    return g.hostile("nested_metadata", entrance, record, "" if deep else f"metadata.{key}", raw={"metadata": text})


def _nested_text(g: _Gen, record: dict, key: str, deep: bool) -> str:
    """The record's metadata as JSON text with `key` holding arrays and objects nested 1-64 deep (or 3,000+)."""
    rng = g.rng
    shells = [rng.choice([('{"k":', "}"), ("[", "]")]) for _ in range(rng.randint(3000, 6000) if deep else
                                                                       rng.randint(1, 64))]
    nested = "".join(o for o, _ in shells) + '"v"' + "".join(c for _, c in reversed(shells))
    metadata = {name: json.dumps(value) for name, value in record.get("metadata", {}).items() if name != key}
    return "{" + "".join(f"{json.dumps(name)}:{value}," for name, value in metadata.items()) + f'"{key}":{nested}}}'


def _bad_id(kind: str, bad_bytes: Callable[[_Gen], bytes], escape: Callable[[_Gen], str]) -> Callable:
    """An id with bytes that are not valid in it: written over its bytes (JSON, Avro) or as a JSON escape."""
    def build(g: _Gen, entrance: str) -> Hostile:
        record = g.record(("payment",)) if entrance == "incoming_avro" else g.record()
        field = g.id_field(record)
        ident, key = record[field], record["payee_id"].encode()
        if entrance == "api" or (entrance == "incoming_json" and g.rng.random() < 0.3) or (
                entrance == "publish" and g.rng.random() < 0.5):  # valid JSON, a bad id
            at = g.rng.randrange(1, len(ident))
            return g.hostile(kind, entrance, {**record, field: ident[:at] + escape(g) + ident[at:]}, field, key=key)
        bad = bad_bytes(g)
        at = g.rng.randrange(1, len(ident) - len(bad) + 1)
        old = ident.encode()  # overwritten, not inserted: the Avro string's length stays right
        value = _replace_once(g.avro(record) if entrance == "incoming_avro" else _json(record),
                              old, old[:at] + bad + old[at + len(bad):])
        # What is refused: a NUL in Avro and an encoded surrogate in JSON decode, and are then a bad id; JSON
        # does not take a raw NUL, and neither takes other bytes that are not UTF-8: the whole record. A publish
        # line must be UTF-8 text first: an encoded surrogate refuses the whole line there.
        decodes = bad == b"\x00" if entrance == "incoming_avro" else (bad == SURROGATE_UTF8
                                                                       and entrance == "incoming_json")
        return g.hostile(kind, entrance, record, field if decodes else "", value=value, key=key)
    return build


_invalid_utf8_id = _bad_id("invalid_utf8_id", lambda g: g.rng.choice([*INVALID_UTF8, SURROGATE_UTF8]),
                           lambda g: g.rng.choice(["\ud800", "\udfff", "\udc80\ud800"]))
_nul_in_id = _bad_id("nul_in_id", lambda g: b"\x00", lambda g: g.rng.choice(["\x00", "\x00\x00", "\x00x"]))


def _valid_avro(g: _Gen) -> tuple[dict, bytes]:
    record = g.record(("payment",))
    return record, g.avro(record)


def _truncated_avro(g: _Gen, entrance: str) -> Hostile:
    record, value = _valid_avro(g)
    return g.hostile("truncated_avro", entrance, record, "", value=value[:g.rng.randrange(1, len(value))])


def _bitflipped_avro(g: _Gen, entrance: str) -> Hostile:
    """1-3 bits flipped; a flip that leaves a valid record (a letter of a free text) is drawn again, and so is
    one refused only for a timestamp a little in the future: judged by a clock ten years on, it is refused at
    any earlier one (only the future rule depends on the clock)."""
    record, value = _valid_avro(g)
    later = g.now + timedelta(days=3653)
    for _ in range(20):
        flipped = bytearray(value)
        for _ in range(g.rng.randint(1, 3)):
            flipped[g.rng.randrange(len(flipped))] ^= 1 << g.rng.randrange(8)
        hostile = g.hostile("bitflipped_avro", entrance, record, "", value=bytes(flipped))
        if expected_refusal(hostile, later) is not None:
            return hostile
    flipped[0] ^= 0x01  # the framing's magic byte: never readable
    return g.hostile("bitflipped_avro", entrance, record, "", value=bytes(flipped))


def _oversized_record(g: _Gen, entrance: str) -> Hostile:
    rng = g.rng
    unread = entrance != "api" and rng.random() < 0.08  # above what the sequencer reads at all
    size = (RECORD_READ_MAX_BYTES if unread else RECORD_MAX_BYTES) + rng.choice([1, rng.randint(2, 65_536)])
    if entrance == "incoming_json":  # valid fields, padded with whitespace: refused for its size alone
        record = g.record()
        compact = _json(record)
        pad = b"".join(rng.choice([b" ", b"\n", b"\t", b"\r\n"]) for _ in range(8)) * (size // 8 + 1)
        pad = pad[:size - len(compact)]
        where = rng.randrange(3)
        value = pad + compact if where == 0 else compact[:1] + pad + compact[1:] if where == 1 else compact + pad
        return g.hostile("oversized_record", entrance, record, "record", value=value)
    # As compact JSON every valid record is small: the size comes from a field past its own limit.
    record = g.record(("payment",))
    field = "source" if entrance == "incoming_avro" else rng.choice(["source", "padding", "metadata"])
    filler = "s" * size
    if entrance == "incoming_avro":
        return g.hostile("oversized_record", entrance, record, "record" if unread else "source",
                         value=g.avro(record, payload={"source": filler}))
    record[field] = {"note": filler} if field == "metadata" else filler
    # a publish line is measured as compact JSON (like an API record): one above the read limit is not parsed
    return g.hostile("oversized_record", entrance, record, "record" if unread and entrance == "publish" else field)


def _wrong_key(g: _Gen, entrance: str) -> Hostile:
    record = g.record(("payment",)) if entrance == "incoming_avro" else g.record()
    payee = record["payee_id"].encode()
    key = g.rng.choice([None, b"", g.rng.choice([p.encode() for p in PAYEES if p.encode() != payee]),
                        payee + b"\n", payee + b" ", payee.upper(), b"\xef\xbb\xbf" + payee, payee + b"\x00",
                        payee[:-1]])
    value = g.avro(record) if entrance == "incoming_avro" else None
    return g.hostile("wrong_key", entrance, record, "key", value=value, key=key)


def _conflicting_id(g: _Gen, entrance: str) -> Hostile:
    """The payment_id of one of the soak's valid payments, with other content (same payee: keyed right)."""
    record = _conflicting_record(g)
    value = g.avro(record) if entrance == "incoming_avro" else None
    return g.hostile("conflicting_id", entrance, record, "payment_id", value=value)


def _conflicting_record(g: _Gen) -> dict:
    _, valid = g.rng.choice(g.valid)
    record, rng, ceiling = dict(valid), g.rng, LIMITS.max_amount(valid["currency"]).amount_minor
    change = rng.randrange(3)
    if change == 0:
        step = rng.randint(1, 1000)
        amount = record["amount_minor"]
        record["amount_minor"] = amount + step if amount + step <= ceiling else max(1, amount - step)
        if record["amount_minor"] == amount:
            record["amount_minor"] = amount + 1
    elif change == 1:
        record["occurred_at"] = (datetime.fromisoformat(record["occurred_at"])
                                 - timedelta(seconds=rng.randint(1, 3600))).isoformat()
    else:
        record["source"] = f"conflict {record.get('source', '')}"[:256]
    if record == valid:  # a source of 256 characters that the change left as it was
        record["services"] = (record.get("services", 1) + 1) % 10_001
    return record


def _refund_too_large(g: _Gen, entrance: str) -> Hostile:
    """A refund of more than one of the soak's valid payments was (within the per-record maximum)."""
    record = _too_large_refund(g)
    value = g.avro(record) if entrance == "incoming_avro" else None
    return g.hostile("refund_too_large", entrance, record, "amount_minor", value=value)


def _too_large_refund(g: _Gen) -> dict:
    pid, valid = g.rng.choice(_refundable(g))
    ceiling = LIMITS.max_amount(valid["currency"]).amount_minor
    amount = valid["amount_minor"] + g.rng.choice([1, g.rng.randint(1, ceiling - valid["amount_minor"])])
    return {"type": "refund", "refund_id": g.next_id("hzr"), "payment_id": pid, "payee_id": valid["payee_id"],
            "amount_minor": amount, "currency": valid["currency"], "occurred_at": g.past(), "reason": "too large"}


def _refundable(g: _Gen) -> list[tuple[str, dict]]:
    return [(pid, record) for pid, record in g.valid
            if record["amount_minor"] < LIMITS.max_amount(record["currency"]).amount_minor]


# --- the publish entrances' own kinds, and CSV rows of the shared ones ---------------------------------


def _not_json_line(g: _Gen, entrance: str) -> Hostile:
    """A JSON Lines line that is not a JSON object: text that does not parse, or parses to another value."""
    record = g.record()
    compact = _json(record).decode()
    text, field = g.rng.choice([*NOT_JSON_LINES, (compact[:g.rng.randrange(1, len(compact))], ""),
                                (json.dumps([record], separators=(",", ":")), "record")])
    return Hostile("not_json_line", entrance, None, text.encode(), field)


def _csv_cell_count(g: _Gen, entrance: str) -> Hostile:
    """A valid record's row with a cell too few or too many."""
    row = next(csv.reader([_csv_row(g.record()).decode()]))
    row = row[:-g.rng.randint(1, 3)] if g.rng.random() < 0.5 else row + [""] * g.rng.randint(1, 3)
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow(row)
    return g.csv("csv_cell_count", {}, "record", value=buffer.getvalue().encode())


def _bad_csv_header(g: _Gen, entrance: str) -> Hostile:
    """A whole file: a header with an empty or repeated column name, then a valid row (never sent)."""
    header = g.rng.choice(BAD_CSV_HEADERS)
    return g.csv("bad_csv_header", {}, "header", value=header.encode() + b"\n" + _csv_row(g.record()))


def _csv_wrong_type(g: _Gen) -> Hostile:
    field, text = g.rng.choice([*(("amount_minor", text) for text in CSV_INTEGER_TEXTS),
                                *(("services", text) for text in CSV_INTEGER_TEXTS if text),
                                ("metadata", "k=v"), ("metadata", "[1,2]"), ("metadata", '"text"'), ("metadata", "null"),
                                ("metadata", "{bad"), ("metadata.k", '{"k":1}'), ("metadata.k", '{"k":["v"]}')])
    return g.csv("wrong_type", g.record(("payment",)), field, {field.split(".")[0]: text})


def _csv_float_amount(g: _Gen) -> Hostile:
    return g.csv("float_amount", g.record(), "amount_minor", {"amount_minor": g.rng.choice(FLOAT_TEXTS)})


def _csv_huge_amount(g: _Gen) -> Hostile:
    rng, record = g.rng, g.record(("payment",))
    ceiling = LIMITS.max_amount(record["currency"]).amount_minor
    text = rng.choice(["9" * rng.randint(41, 80), str(2**63), str(2**64), str(10 ** rng.randint(19, 39)),
                       str(ceiling + rng.randint(1, 10**6))])
    return g.csv("huge_amount", record, "amount_minor", {"amount_minor": text})


def _csv_nonpositive_amount(g: _Gen) -> Hostile:
    rng = g.rng
    text = rng.choice(["0", "-1", "-0", "00", str(-rng.randint(2, 10**6)), str(-(2**63))])
    return g.csv("nonpositive_amount", g.record(("payment",)), "amount_minor", {"amount_minor": text})


def _csv_currency(kind: str, choose: Callable[[_Gen, str], str]) -> Callable[[_Gen], Hostile]:
    def build(g: _Gen) -> Hostile:
        record = g.record()
        return g.csv(kind, record, "currency", {"currency": choose(g, record["currency"])})
    return build


def _csv_bad_timestamp(g: _Gen) -> Hostile:
    future = g.now + timedelta(days=1, seconds=g.rng.randint(0, 10 * 365 * 86400))
    text = g.rng.choice([*(value for value in BAD_TIMESTAMPS if isinstance(value, str)), future.isoformat()])
    return g.csv("bad_timestamp", g.record(), "occurred_at", {"occurred_at": text})


def _csv_bad_utc_offset(g: _Gen) -> Hostile:
    return g.csv("bad_utc_offset", g.record(), "occurred_at", {"occurred_at": _bad_offset_text(g)})


def _csv_oversized_metadata(g: _Gen) -> Hostile:
    rng = g.rng
    if rng.random() < 0.5:
        metadata = {f"k{n}": "v" for n in range(rng.randint(LIMITS.metadata_max_keys + 1, 300))}
    else:
        metadata = {"note": "x" * rng.randint(LIMITS.metadata_max_bytes, 4 * LIMITS.metadata_max_bytes)}
    return g.csv("oversized_metadata", {**g.record(), "metadata": metadata}, "metadata")


def _csv_nested_metadata(g: _Gen) -> Hostile:
    """Nested 1-64 deep: refused for the key; 3,000+ deep the cell is not readable JSON: for the column."""
    record, key = g.record(), g.rng.choice(["deep", "k0", "a"])
    deep = g.rng.random() < 0.15
    text = _nested_text(g, record, key, deep)
    return g.csv("nested_metadata", record, "metadata" if deep else f"metadata.{key}", {"metadata": text})


def _csv_bad_id(kind: str, bad_bytes: Callable[[_Gen], bytes]) -> Callable[[_Gen], Hostile]:
    """A NUL in an id cell is read (CSV takes it) and refused for the id; bytes that are not UTF-8 refuse the
    whole line."""
    def build(g: _Gen) -> Hostile:
        record = g.record()
        field = g.id_field(record)
        ident, bad = record[field], bad_bytes(g)
        at = g.rng.randrange(1, len(ident))
        if bad == b"\x00":
            return g.csv(kind, record, field, {field: ident[:at] + "\x00" + ident[at:]})
        old = ident.encode()
        value = _replace_once(_csv_row(record), old, old[:at] + bad + old[at + len(bad):])
        return g.csv(kind, record, "", value=value)
    return build


def _csv_oversized_record(g: _Gen) -> Hostile:
    """A source cell past its limit and past RECORD_MAX_BYTES; above the read limit, past what the CSV reader
    takes in a cell (131,072 characters): the line is not read."""
    rng = g.rng
    unread = rng.random() < 0.08
    size = (RECORD_READ_MAX_BYTES if unread else RECORD_MAX_BYTES) + rng.choice([1, rng.randint(2, 60_000)])
    return g.csv("oversized_record", g.record(("payment",)), "" if unread else "source", {"source": "s" * size})


def _csv_conflicting_id(g: _Gen) -> Hostile:
    return g.csv("conflicting_id", _conflicting_record(g), "payment_id")


def _csv_refund_too_large(g: _Gen) -> Hostile:
    return g.csv("refund_too_large", _too_large_refund(g), "amount_minor")


CSV_BUILDERS: dict[str, Callable[[_Gen], Hostile]] = {
    "wrong_type": _csv_wrong_type,
    "float_amount": _csv_float_amount,
    "huge_amount": _csv_huge_amount,
    "nonpositive_amount": _csv_nonpositive_amount,
    "unknown_currency": _csv_currency("unknown_currency", lambda g, _: g.rng.choice(UNKNOWN_CURRENCIES)),
    "lowercase_currency": _csv_currency(
        "lowercase_currency", lambda g, code: g.rng.choice([code.lower(), code.capitalize(), code[:2] + code[2].lower()])),
    "bad_timestamp": _csv_bad_timestamp,
    "bad_utc_offset": _csv_bad_utc_offset,
    "oversized_metadata": _csv_oversized_metadata,
    "nested_metadata": _csv_nested_metadata,
    "invalid_utf8_id": _csv_bad_id("invalid_utf8_id", lambda g: g.rng.choice([*INVALID_UTF8, SURROGATE_UTF8])),
    "nul_in_id": _csv_bad_id("nul_in_id", lambda g: b"\x00"),
    "oversized_record": _csv_oversized_record,
    "conflicting_id": _csv_conflicting_id,
    "refund_too_large": _csv_refund_too_large,
}


ALL = ENTRANCES + PUBLISH
JSON_API = ("incoming_json", "api", *PUBLISH)
INCOMING = ("incoming_json", "incoming_avro")
AVRO = ("incoming_avro",)
# kind -> (the entrances it is sent at, in turn, of those asked for; its builder; at publish_csv CSV_BUILDERS')
CATEGORIES: dict[str, tuple[tuple[str, ...], Callable[[_Gen, str], Hostile]]] = {
    "wrong_type": (JSON_API, _wrong_type),
    "float_amount": (JSON_API, _float_amount),
    "huge_amount": (ALL, _huge_amount),
    "nonpositive_amount": (ALL, _nonpositive_amount),
    "unknown_currency": (ALL, _unknown_currency),
    "lowercase_currency": (ALL, _lowercase_currency),
    "bad_timestamp": (ALL, _bad_timestamp),
    "bad_utc_offset": (JSON_API, _bad_utc_offset),
    "oversized_metadata": (ALL, _oversized_metadata),
    "nested_metadata": (JSON_API, _nested_metadata),
    "invalid_utf8_id": (ALL, _invalid_utf8_id),
    "nul_in_id": (ALL, _nul_in_id),
    "truncated_avro": (AVRO, _truncated_avro),
    "bitflipped_avro": (AVRO, _bitflipped_avro),
    "oversized_record": (ALL, _oversized_record),
    "wrong_key": (INCOMING, _wrong_key),
    "conflicting_id": (ALL, _conflicting_id),
    "refund_too_large": (ALL, _refund_too_large),
    "not_json_line": (("publish",), _not_json_line),
    "csv_cell_count": (("publish_csv",), _csv_cell_count),
    "bad_csv_header": (("publish_csv",), _bad_csv_header),
}


def entrances_of(kind: str, entrances: tuple[str, ...] = ENTRANCES) -> tuple[str, ...]:
    """The entrances a kind is sent at, in turn, among `entrances`."""
    return tuple(entrance for entrance in CATEGORIES[kind][0] if entrance in entrances)


def hostile_records(seed: int, count: int, now: datetime, valid_ids: dict[str, dict] | None = None,
                    entrances: tuple[str, ...] = ENTRANCES) -> list[Hostile]:
    """`count` hostile records, the same bytes for the same arguments; every category in turn, in a seeded order.

    `valid_ids` (payment_id -> the valid payment record the soak sends) is the material of the stateful
    kinds; without it (or without a payment below its currency's maximum, for refunds) they are left out.
    `entrances`: where the records go (ENTRANCES by default; PUBLISH for `ledger publish` files): each kind
    rotates through those of its entrances, kinds with none are left out.
    """
    unknown = set(entrances) - set(ALL_ENTRANCES)
    if unknown:
        raise ValueError(f"unknown entrances {sorted(unknown)}; known: {', '.join(ALL_ENTRANCES)}")
    g = _Gen(seed, now, valid_ids)
    kinds = [kind for kind in CATEGORIES if entrances_of(kind, entrances) and (
        kind not in STATEFUL_KINDS or (g.valid if kind == "conflicting_id" else _refundable(g)))]
    turn = {kind: g.rng.randrange(3) for kind in kinds}  # each kind rotates through its entrances
    records: list[Hostile] = []
    while len(records) < count:
        block = list(kinds)
        g.rng.shuffle(block)
        for kind in block[:count - len(records)]:
            at = entrances_of(kind, entrances)
            records.append(_build(g, kind, at[turn[kind] % len(at)]))
            turn[kind] += 1
    return records


def _build(g: _Gen, kind: str, entrance: str) -> Hostile:
    if entrance == "publish_csv" and kind in CSV_BUILDERS:
        return CSV_BUILDERS[kind](g)
    return CATEGORIES[kind][1](g, entrance)


def expected_refusal(record: Hostile, now: datetime) -> tuple[str, str] | None:
    """The first (field, reason) the entrance's rules give `record` at `now`; None if they accept it.

    Incoming records go through the sequencer's own judgement of raw bytes (interpret, key checked);
    a refusal of bytes that do not decode has field "". API bodies go through parse_record, record by
    record, as POST /v1/payments does. Publish lines go through `ledger publish`'s own reading of a file
    (publish_file_refusal). STATEFUL_KINDS records are accepted here (None): only the sequencer's state (or
    the ledger index `ledger publish` consults) refuses them.
    """
    now = _utc(now)
    if record.entrance in PUBLISH:
        return publish_file_refusal(publish_file(record), record.entrance, now)
    if record.entrance == "api":
        try:
            body = json.loads(record.value)
        except ValueError as exc:
            return "", f"not a JSON body: {exc}"
        for item in body["records"]:
            try:
                parse_record(item, LIMITS, now, size=json_size(item))
            except IntakeRejected as exc:
                return exc.problems[0]
        return None
    try:
        interpret(record.value, _codec(), LIMITS, now, record.key, check_key=True)
    except Rejected as exc:
        cause = exc.__context__  # raised `from None`: the IntakeRejected is still there, with its problems
        if isinstance(cause, IntakeRejected):
            return cause.problems[0]
        if exc.stage == "validate" and ": " in exc.reason:  # the key check: "key: ..."
            field, reason = exc.reason.split(": ", 1)
            return field, reason
        return "", exc.reason
    return None


def publish_file(record: Hostile) -> bytes:
    """A file of this publish record alone: the JSON line, or the CSV row under CSV_HEADER (a bad_csv_header
    record is a whole file already)."""
    if record.entrance == "publish":
        return record.value + b"\n"
    if record.kind == "bad_csv_header":
        return record.value + b"\n"
    return ",".join(CSV_HEADER).encode() + b"\n" + record.value + b"\n"


def publish_file_refusal(data: bytes, entrance: str, now: datetime) -> tuple[str, str] | None:
    """The first (field, reason) `ledger publish` gives the one record of a file (bytes as on disk), read the
    way the command reads it: ("header", ...) for a CSV header it refuses whole, ("", ...) for a line that does
    not parse. None when the rules accept the record (or the file holds no record)."""
    from commands.publish import BadHeader, csv_items, jsonl_items  # click and rich: only when asked

    read = jsonl_items if entrance == "publish" else csv_items
    try:
        items = list(read(io.BytesIO(data)))  # lines split as the command's binary file object splits them
    except BadHeader as exc:
        return "header", str(exc)
    for item in items:
        if item.error is not None:
            return named_reason(item.error)
        try:
            parse_record(item.record, LIMITS, _utc(now), size=json_size(item.record))
        except IntakeRejected as exc:
            return exc.problems[0]
    return None


def named_reason(reason: str) -> tuple[str, str]:
    """A reason as `ledger publish` reports it, "<field>: <reason>[; ...]", split at its first field; a line
    that did not parse ("not valid JSON/CSV/UTF-8 ...") names no field."""
    if reason.startswith("not valid "):
        return "", reason
    field, _, rest = reason.partition(": ")
    return field, rest


def names_field(reason: str, field: str) -> bool:
    """Whether a `ledger publish` reason ("<field>: <reason>; <field>: <reason>") names `field`."""
    return reason.startswith(f"{field}: ") or f"; {field}: " in reason
