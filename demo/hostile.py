"""Hostile input records for the soak: seeded, byte-exact, each one refused by the ledger's intake rules.

    from demo.hostile import STATEFUL_KINDS, expected_refusal, hostile_records
    records = hostile_records(seed=7, count=3000, now=now, valid_ids={"pay-1": {...valid payment...}})

Each `Hostile` is what the soak sends: `value` produced with `key` to payments.incoming (entrances
"incoming_json" and "incoming_avro"), or `value` as the body of POST /v1/payments ("api", one record per
body). `field` is the field the refusal must name ("" when the refusal is about the whole record: bytes
that do not decode). `expected_refusal` runs the same rules as the sequencer (processors.sequencer_input
.interpret, keys checked) or the API (parse_record on each record of the body) and returns the first
(field, reason) problem.

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

import dataclasses
import functools
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

ENTRANCES = ("incoming_json", "incoming_avro", "api")
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
    entrance: str  # "incoming_json" | "incoming_avro" | "api"
    key: bytes | None  # the Kafka key (None for "api")
    value: bytes  # exact bytes for the topic; for "api" the JSON body
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
        return Hostile(kind, entrance, None if entrance == "api" else key, value, field)  # type: ignore[arg-type]


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
    if entrance == "incoming_json" and rng.random() < 0.1:  # more digits than Python reads: undecodable
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
    local = (g.now - timedelta(seconds=g.rng.randint(60, 86400))).replace(tzinfo=None)
    value = g.rng.choice([local.isoformat() + g.rng.choice(BAD_OFFSETS), local.date().isoformat(),
                          local.isoformat(timespec="microseconds")])
    return g.hostile("bad_utc_offset", entrance, {**g.record(), "occurred_at": value}, "occurred_at")


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
    deep = entrance == "incoming_json" and rng.random() < 0.15  # deeper than the JSON parser goes: undecodable
    shells = [rng.choice([('{"k":', "}"), ("[", "]")]) for _ in range(rng.randint(3000, 6000) if deep else
                                                                       rng.randint(1, 64))]
    nested = "".join(o for o, _ in shells) + '"v"' + "".join(c for _, c in reversed(shells))
    metadata = {name: json.dumps(value) for name, value in record.get("metadata", {}).items() if name != key}
    text = "{" + "".join(f"{json.dumps(name)}:{value}," for name, value in metadata.items()) + f'"{key}":{nested}}}'
    return g.hostile("nested_metadata", entrance, record, "" if deep else f"metadata.{key}", raw={"metadata": text})


def _bad_id(kind: str, bad_bytes: Callable[[_Gen], bytes], escape: Callable[[_Gen], str]) -> Callable:
    """An id with bytes that are not valid in it: written over its bytes (JSON, Avro) or as a JSON escape."""
    def build(g: _Gen, entrance: str) -> Hostile:
        record = g.record(("payment",)) if entrance == "incoming_avro" else g.record()
        field = g.id_field(record)
        ident, key = record[field], record["payee_id"].encode()
        if entrance == "api" or (entrance == "incoming_json" and g.rng.random() < 0.3):  # valid JSON, a bad id
            at = g.rng.randrange(1, len(ident))
            return g.hostile(kind, entrance, {**record, field: ident[:at] + escape(g) + ident[at:]}, field, key=key)
        bad = bad_bytes(g)
        at = g.rng.randrange(1, len(ident) - len(bad) + 1)
        old = ident.encode()  # overwritten, not inserted: the Avro string's length stays right
        value = _replace_once(g.avro(record) if entrance == "incoming_avro" else _json(record),
                              old, old[:at] + bad + old[at + len(bad):])
        # What is refused: a NUL in Avro and an encoded surrogate in JSON decode, and are then a bad id; JSON
        # does not take a raw NUL, and neither takes other bytes that are not UTF-8: the whole record.
        decodes = bad == b"\x00" if entrance == "incoming_avro" else bad == SURROGATE_UTF8
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
    return g.hostile("oversized_record", entrance, record, field)


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
    value = g.avro(record) if entrance == "incoming_avro" else None
    return g.hostile("conflicting_id", entrance, record, "payment_id", value=value)


def _refund_too_large(g: _Gen, entrance: str) -> Hostile:
    """A refund of more than one of the soak's valid payments was (within the per-record maximum)."""
    pid, valid = g.rng.choice(_refundable(g))
    ceiling = LIMITS.max_amount(valid["currency"]).amount_minor
    amount = valid["amount_minor"] + g.rng.choice([1, g.rng.randint(1, ceiling - valid["amount_minor"])])
    record = {"type": "refund", "refund_id": g.next_id("hzr"), "payment_id": pid, "payee_id": valid["payee_id"],
              "amount_minor": amount, "currency": valid["currency"], "occurred_at": g.past(), "reason": "too large"}
    value = g.avro(record) if entrance == "incoming_avro" else None
    return g.hostile("refund_too_large", entrance, record, "amount_minor", value=value)


def _refundable(g: _Gen) -> list[tuple[str, dict]]:
    return [(pid, record) for pid, record in g.valid
            if record["amount_minor"] < LIMITS.max_amount(record["currency"]).amount_minor]


ALL = ENTRANCES
JSON_API = ("incoming_json", "api")
INCOMING = ("incoming_json", "incoming_avro")
AVRO = ("incoming_avro",)
# kind -> (the entrances it is sent at, in turn; its builder)
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
}


def hostile_records(seed: int, count: int, now: datetime, valid_ids: dict[str, dict] | None = None) -> list[Hostile]:
    """`count` hostile records, the same bytes for the same arguments; every category in turn, in a seeded order.

    `valid_ids` (payment_id -> the valid payment record the soak sends) is the material of the stateful
    kinds; without it (or without a payment below its currency's maximum, for refunds) they are left out.
    """
    g = _Gen(seed, now, valid_ids)
    kinds = [kind for kind in CATEGORIES
             if kind not in STATEFUL_KINDS or (g.valid if kind == "conflicting_id" else _refundable(g))]
    turn = {kind: g.rng.randrange(3) for kind in kinds}  # each kind rotates through its entrances
    records: list[Hostile] = []
    while len(records) < count:
        block = list(kinds)
        g.rng.shuffle(block)
        for kind in block[:count - len(records)]:
            entrances, build = CATEGORIES[kind]
            records.append(build(g, entrances[turn[kind] % len(entrances)]))
            turn[kind] += 1
    return records


def expected_refusal(record: Hostile, now: datetime) -> tuple[str, str] | None:
    """The first (field, reason) the entrance's rules give `record` at `now`; None if they accept it.

    Incoming records go through the sequencer's own judgement of raw bytes (interpret, key checked);
    a refusal of bytes that do not decode has field "". API bodies go through parse_record, record by
    record, as POST /v1/payments does. STATEFUL_KINDS records are accepted here (None): only the
    sequencer's state refuses them.
    """
    now = _utc(now)
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
