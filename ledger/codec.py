"""Avro codec for ledger events: schemas/avro/ is the contract, bytes are standard Avro.

Writes each event as Avro single-object encoding (0xC3 0x01, the 8-byte little-endian CRC-64-AVRO
fingerprint of the writer schema, then the Avro body), or with Confluent framing (0x00, 4-byte
schema id) when a schema registry is configured. Reads either framing, for any writer schema it
knows, resolving to the reader's current schema. Anything it cannot read raises UndecodableEvent.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, fields
from datetime import datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterable, Protocol

import fastavro
import fastavro.schema

from ledger.codec_compiled import compile_check, compile_from_wire, compile_to_wire
from ledger.currencies import UnknownCurrency, currency
from ledger.events import EVENT_TYPES, Envelope, Event
from ledger.guards import require
from ledger.money import Money
from ledger.package_data import package_dir

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
CONFLUENT_MAGIC = b"\x00"
NAMESPACE = "payout_ledger"
MONEY_TYPE = f"{NAMESPACE}.Money"
DEFAULT_SCHEMA_DIR = package_dir("schemas", "avro")  # the `schemas` package: a checkout or an installed wheel
_PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}
_ENVELOPE_FIELDS = tuple(field.name for field in fields(Envelope))
require(_ENVELOPE_FIELDS == ("event_id", "event_type", "schema_version", "occurred_at", "recorded_at", "payee_id",
                             "correlation_id", "causation_id", "sequence", "previous_hash"),
        "EventCodec.encode lists the envelope's fields: update it with ledger.events.Envelope")


class UndecodableEvent(Exception):
    """These bytes are not an event this process can read; `reason` says why, `raw` keeps them."""

    def __init__(self, reason: str, raw: bytes = b"") -> None:
        super().__init__(reason)
        self.reason = reason
        self.raw = bytes(raw)


class EventEncodingError(ValueError):
    """An event does not fit its schema; the message names the field."""


@dataclass(frozen=True)
class KnownSchema:
    """One version of one event's schema, expanded so it stands alone."""

    name: str  # the event type, e.g. PaymentCompleted
    version: int
    definition: dict[str, Any]
    parsed: Any
    canonical: str
    fingerprint: bytes  # 8 bytes, little-endian CRC-64-AVRO
    fast: Any = None  # the same schema parsed with fastavro's write hint: no re-parse on each call
    check: Any = None  # compiled yes/no check of a value (ledger/codec_compiled.py); on a no, _check_payload
    from_wire: Any = None  # compiled _from_wire for this schema as the reader
    to_wire: Any = None  # compiled _to_wire of a checked payload of this schema

    @property
    def full_name(self) -> str:
        return f"{self.definition.get('namespace', '')}.{self.name}".lstrip(".")


def _full_name(name: str, namespace: str | None) -> str:
    return name if "." in name or not namespace else f"{namespace}.{name}"


def _expand(node: Any, named: dict[str, Any], defined: set[str], namespace: str | None) -> Any:
    """Inline shared named types (Money, Envelope) at their first use, as Avro requires."""
    if isinstance(node, str):
        if node in _PRIMITIVES:
            return node
        full = _full_name(node, namespace)
        if full not in defined and full in named:
            return _expand(named[full], named, defined, namespace)
        return full
    if isinstance(node, list):
        return [_expand(branch, named, defined, namespace) for branch in node]
    if not isinstance(node, dict):
        return node
    kind = node.get("type")
    out = dict(node)
    if kind in ("record", "enum", "fixed", "error"):
        own_namespace = node.get("namespace", namespace)
        full = _full_name(node["name"], own_namespace)
        defined.add(full)
        if "." not in node["name"] and own_namespace:
            out["namespace"] = own_namespace
        if kind in ("record", "error"):
            out["fields"] = [
                {**f, "type": _expand(f["type"], named, defined, own_namespace)} for f in node["fields"]
            ]
        return out
    if kind == "array":
        out["items"] = _expand(node["items"], named, defined, namespace)
    elif kind == "map":
        out["values"] = _expand(node["values"], named, defined, namespace)
    elif isinstance(kind, (dict, list)) or (isinstance(kind, str) and kind not in _PRIMITIVES):
        out["type"] = _expand(kind, named, defined, namespace)
    return out


def build_known_schema(definition: dict[str, Any], shared: dict[str, Any]) -> KnownSchema:
    """Expand, parse and fingerprint one event schema definition."""
    expanded = _expand(definition, shared, set(), definition.get("namespace"))
    version = int(expanded.pop("version", 1))
    parsed = fastavro.schema.parse_schema(expanded, _write_hint=False)
    canonical = fastavro.schema.to_parsing_canonical_form(parsed)
    fingerprint = bytes.fromhex(fastavro.schema.fingerprint(canonical, "CRC-64-AVRO"))
    require(len(fingerprint) == 8, "CRC-64-AVRO fingerprints are 8 bytes")
    fast = fastavro.schema.parse_schema(expanded)
    return KnownSchema(expanded["name"].split(".")[-1], version, expanded, parsed, canonical, fingerprint, fast,
                       compile_check(expanded), compile_from_wire(expanded, _money_from_wire),
                       compile_to_wire(expanded))


def _load_json(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as handle:
        return json.load(handle)


class SchemaSet:
    """Every event schema this process knows: the current version of each type and older writers."""

    def __init__(self, shared: dict[str, Any]) -> None:
        self._shared = shared
        self._current: dict[str, KnownSchema] = {}
        self._by_fingerprint: dict[bytes, KnownSchema] = {}

    @classmethod
    def from_directory(cls, directory: Path = DEFAULT_SCHEMA_DIR) -> "SchemaSet":
        """Load schemas/avro: shared types, the current event schemas, and history/ (older writers)."""
        shared: dict[str, Any] = {}
        events: list[dict[str, Any]] = []
        for path in sorted(directory.glob("*.avsc")):
            definition = _load_json(path)
            if definition["name"] in EVENT_TYPES:
                events.append(definition)
            else:
                shared[_full_name(definition["name"], definition.get("namespace"))] = definition
        schema_set = cls(shared)
        for definition in events:
            schema_set.add(definition, current=True)
        history = directory / "history"
        for path in sorted(history.glob("*.avsc")) if history.is_dir() else ():
            schema_set.add(_load_json(path), current=False)
        missing = set(EVENT_TYPES) - set(schema_set._current)
        require(not missing, f"schemas/avro has no schema for {sorted(missing)}")
        return schema_set

    def add(self, definition: dict[str, Any], *, current: bool) -> KnownSchema:
        """Learn a schema; with current=True it becomes the reader schema for its event type."""
        known = build_known_schema(definition, self._shared)
        self._by_fingerprint.setdefault(known.fingerprint, known)
        if current:
            self._current[known.name] = known
        return known

    def current(self, event_type: str) -> KnownSchema:
        try:
            return self._current[event_type]
        except KeyError:
            raise UndecodableEvent(f"unknown event type {event_type!r}") from None

    def by_fingerprint(self, fingerprint: bytes) -> KnownSchema | None:
        return self._by_fingerprint.get(fingerprint)

    def event_types(self) -> list[str]:
        return sorted(self._current)


class Framing(Protocol):
    """How the writer schema is named in front of the Avro body."""

    def prefix(self, known: KnownSchema) -> bytes: ...


class SingleObjectFraming:
    """Avro single-object encoding: the writer schema travels as its fingerprint."""

    def prefix(self, known: KnownSchema) -> bytes:
        return SINGLE_OBJECT_MAGIC + known.fingerprint


class ConfluentFraming:
    """Confluent wire format: magic 0 and the registry's 4-byte schema id; subjects by record name."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._ids: dict[bytes, int] = {}

    def prefix(self, known: KnownSchema) -> bytes:
        schema_id = self._ids.get(known.fingerprint)
        if schema_id is None:
            from confluent_kafka.schema_registry import Schema  # only where a registry is configured

            schema_id = self._client.register_schema(known.full_name, Schema(json.dumps(known.definition), "AVRO"))
            self._ids[known.fingerprint] = schema_id
        return CONFLUENT_MAGIC + int(schema_id).to_bytes(4, "big")

    def writer_schema(self, schema_id: int, schema_set: SchemaSet) -> KnownSchema:
        registered = self._client.get_schema(schema_id)
        known = schema_set.add(json.loads(registered.schema_str), current=False)
        self._ids.setdefault(known.fingerprint, schema_id)
        return known


_RANGES = {"int": (-(2**31), 2**31 - 1), "long": (-(2**63), 2**63 - 1)}


def _check_primitive(value: Any, kind: str, path: str, logical: str | None = None) -> None:
    if logical in ("timestamp-micros", "timestamp-millis"):
        if not isinstance(value, datetime) or value.tzinfo is None:
            raise EventEncodingError(f"{path} is {value!r}, expected a timezone-aware datetime")
        return
    if kind in _RANGES:
        if isinstance(value, bool) or not isinstance(value, int):
            raise EventEncodingError(f"{path} is {value!r} ({type(value).__name__}), expected an integer ({kind})")
        low, high = _RANGES[kind]
        if not low <= value <= high:
            raise EventEncodingError(f"{path} is {value}, outside the Avro {kind} range")
    elif kind == "string" and not isinstance(value, str):
        raise EventEncodingError(f"{path} is {value!r} ({type(value).__name__}), expected a string")
    elif kind == "boolean" and not isinstance(value, bool):
        raise EventEncodingError(f"{path} is {value!r} ({type(value).__name__}), expected a boolean")
    elif kind == "null" and value is not None:
        raise EventEncodingError(f"{path} is {value!r}, expected null")
    elif kind in ("float", "double", "bytes"):
        raise EventEncodingError(f"{path}: the ledger's schemas use no {kind} fields")


def _check_payload(value: Any, schema: Any, path: str, named: dict[str, Any]) -> None:
    """Check a value against its schema before writing, naming the field by its path.

    Stricter than fastavro's writer: unknown and missing fields, Money not given as Money,
    integers out of range and naive timestamps are refused instead of dropped or coerced.
    """
    if isinstance(schema, str):
        if schema in _PRIMITIVES:
            _check_primitive(value, schema, path)
        elif schema == MONEY_TYPE:
            if not isinstance(value, Money):
                got = "a mapping" if hasattr(value, "keys") else type(value).__name__
                raise EventEncodingError(f"{path} must be a ledger.money.Money, got {got}")
            _check_primitive(value.amount_minor, "long", f"{path}.amount_minor")
        elif schema in named:
            _check_payload(value, named[schema], path, named)
        return
    if isinstance(schema, list):
        if value is None:
            if "null" not in schema:
                raise EventEncodingError(f"{path} is missing (None)")
            return
        branches = [branch for branch in schema if branch != "null"]
        if len(branches) == 1:
            _check_payload(value, branches[0], path, named)
        return
    kind = schema.get("type")
    if kind == "record":
        full = _full_name(schema["name"], schema.get("namespace"))
        named.setdefault(full, schema)
        if full == MONEY_TYPE:
            _check_payload(value, MONEY_TYPE, path, named)
            return
        if not hasattr(value, "keys"):
            raise EventEncodingError(f"{path} must be a record (mapping), got {type(value).__name__}")
        fields = {field["name"]: field for field in schema["fields"]}
        unknown = sorted(set(value.keys()) - set(fields))
        if unknown:
            raise EventEncodingError(f"{path} has unknown field(s) {', '.join(unknown)}")
        for name, field in fields.items():
            if name in value:
                _check_payload(value[name], field["type"], f"{path}.{name}", named)
            elif "default" not in field:
                raise EventEncodingError(f"{path}.{name} is missing")
    elif kind == "enum":
        named.setdefault(_full_name(schema["name"], schema.get("namespace")), schema)
        if value not in schema["symbols"]:
            raise EventEncodingError(f"{path} is {value!r}, expected one of {', '.join(schema['symbols'])}")
    elif kind == "array":
        if not isinstance(value, (list, tuple)):
            raise EventEncodingError(f"{path} is {type(value).__name__}, expected a list")
        for index, item in enumerate(value):
            _check_payload(item, schema["items"], f"{path}[{index}]", named)
    elif kind == "map":
        if not hasattr(value, "items"):
            raise EventEncodingError(f"{path} is {type(value).__name__}, expected a mapping")
        for key, item in value.items():
            if not isinstance(key, str):
                raise EventEncodingError(f"{path} has key {key!r}, map keys must be strings")
            _check_payload(item, schema["values"], f"{path}[{key!r}]", named)
    elif isinstance(kind, (dict, list)):
        _check_payload(value, kind, path, named)
    elif isinstance(kind, str) and kind in _PRIMITIVES:
        _check_primitive(value, kind, path, schema.get("logicalType"))


# _to_wire and _from_wire are the generic definitions; the codec runs their compiled forms
# (ledger/codec_compiled.py), and tests/unit/test_codec_compiled.py checks the two agree.
def _to_wire(value: Any) -> Any:
    if isinstance(value, Money):
        return {
            "amount_minor": value.amount_minor,
            "currency": value.currency.code,
            "exponent": value.currency.exponent,
        }
    if isinstance(value, dict) or hasattr(value, "items"):
        return {key: _to_wire(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_wire(item) for item in value]
    return value


def _money_from_wire(record: dict[str, Any]) -> Money:
    code = record["currency"]
    try:
        known = currency(code)
    except UnknownCurrency as exc:
        raise UndecodableEvent(f"amount has an unknown currency: {exc}") from None
    if known.exponent != record["exponent"]:
        raise UndecodableEvent(
            f"{code} has exponent {known.exponent} in this ledger but the event says {record['exponent']}"
        )
    return Money(record["amount_minor"], known)


def _from_wire(value: Any, schema: Any, named: dict[str, Any]) -> Any:
    """Turn fastavro's plain values into domain values (Money), guided by the reader schema."""
    if value is None:
        return None
    if isinstance(schema, str):
        if schema == MONEY_TYPE:
            return _money_from_wire(value)
        return _from_wire(value, named[schema], named) if schema in named else value
    if isinstance(schema, list):
        branches = [branch for branch in schema if branch != "null"]
        return _from_wire(value, branches[0], named) if len(branches) == 1 else value
    kind = schema.get("type")
    if kind == "record":
        full = _full_name(schema["name"], schema.get("namespace"))
        named.setdefault(full, schema)
        if full == MONEY_TYPE:
            return _money_from_wire(value)
        return {f["name"]: _from_wire(value.get(f["name"]), f["type"], named) for f in schema["fields"]}
    if kind in ("enum", "fixed"):
        named.setdefault(_full_name(schema["name"], schema.get("namespace")), schema)
        return value
    if kind == "array":
        return [_from_wire(item, schema["items"], named) for item in value]
    if kind == "map":
        return {key: _from_wire(item, schema["values"], named) for key, item in value.items()}
    if isinstance(kind, (dict, list)):
        return _from_wire(value, kind, named)
    return value


class EventCodec:
    """Encodes Events to bytes and back, with schema evolution by Avro schema resolution."""

    def __init__(self, schemas: SchemaSet | None = None, framing: Framing | None = None) -> None:
        self.schemas = schemas or SchemaSet.from_directory()
        self.framing: Framing = framing or SingleObjectFraming()

    def encode(self, event: Event) -> bytes:
        try:
            known = self.schemas.current(event.event_type)
        except UndecodableEvent as exc:
            raise EventEncodingError(f"cannot encode {event.event_type}: {exc.reason}") from None
        source = event.envelope
        envelope = {"event_id": source.event_id, "event_type": source.event_type, "schema_version": known.version,
                    "occurred_at": source.occurred_at, "recorded_at": source.recorded_at,
                    "payee_id": source.payee_id, "correlation_id": source.correlation_id,
                    "causation_id": source.causation_id, "sequence": source.sequence,
                    "previous_hash": source.previous_hash}
        checked = {"envelope": envelope, **event.payload}
        if not known.check(checked):  # the compiled check said no: the full one names the field and the reason
            _check_payload(checked, known.definition, event.event_type, {})
        record = {"envelope": envelope, **known.to_wire(event.payload)}
        body = io.BytesIO()
        fastavro.schemaless_writer(body, known.fast, record)
        return self.framing.prefix(known) + body.getvalue()

    def _writer_schema(self, data: bytes) -> tuple[KnownSchema, int]:
        if data[:2] == SINGLE_OBJECT_MAGIC:
            if len(data) < 10:
                raise UndecodableEvent(f"single-object header is {len(data)} bytes, needs 10", data)
            known = self.schemas.by_fingerprint(data[2:10])
            if known is None:
                raise UndecodableEvent(f"unknown writer schema fingerprint {data[2:10].hex()}", data)
            return known, 10
        if data[:1] == CONFLUENT_MAGIC:
            if not isinstance(self.framing, ConfluentFraming):
                raise UndecodableEvent("Confluent-framed bytes but no schema registry is configured", data)
            if len(data) < 5:
                raise UndecodableEvent(f"Confluent header is {len(data)} bytes, needs 5", data)
            try:
                return self.framing.writer_schema(int.from_bytes(data[1:5], "big"), self.schemas), 5
            except UndecodableEvent:
                raise
            except Exception as exc:  # the registry said no: unknown id, unreachable, bad schema
                raise UndecodableEvent(f"schema id lookup failed: {exc}", data) from None
        raise UndecodableEvent(f"not an Avro event: starts with {data[:2].hex() or 'nothing'}", data)

    def decode(self, data: bytes) -> Event:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise UndecodableEvent(f"expected bytes, got {type(data).__name__}")
        data = bytes(data)
        writer, offset = self._writer_schema(data)
        body = io.BytesIO(data[offset:])
        try:
            reader = self.schemas.current(writer.name)
            if reader is writer:  # written with the current schema: nothing to resolve
                record = fastavro.schemaless_reader(body, reader.fast, None)
            else:
                record = fastavro.schemaless_reader(body, writer.parsed, reader.parsed)
            if body.tell() != len(data) - offset:
                raise UndecodableEvent(f"{len(data) - offset - body.tell()} trailing bytes after the event", data)
            values = reader.from_wire(record)
            envelope_fields = values.pop("envelope")
            envelope = Envelope(**envelope_fields)
            if envelope.event_type != writer.name:
                raise UndecodableEvent(
                    f"envelope says {envelope.event_type!r} but the schema is {writer.name!r}", data
                )
            return Event(envelope, MappingProxyType(values))  # read-only already: Event copies nothing
        except UndecodableEvent as exc:
            exc.raw = data
            raise
        except Exception as exc:  # every way a body can be corrupt ends here, as one exception type
            raise UndecodableEvent(f"corrupt {writer.name} body: {type(exc).__name__}: {exc}", data) from None


def encoded_schemas(codec: EventCodec) -> Iterable[KnownSchema]:
    """The current schema of every event type (for docs and registry pre-registration)."""
    return (codec.schemas.current(name) for name in codec.schemas.event_types())
