"""schemas/avro is the contract: it must agree with ledger.events and keep the ledger's rules.

These read the .avsc files as plain JSON, so they hold whatever the codec does with them.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Iterator

import pytest

from ledger.codec import DEFAULT_SCHEMA_DIR, SchemaSet
from ledger.events import EVENT_TYPES, Envelope

SCHEMA_DIR = DEFAULT_SCHEMA_DIR
SHARED = {"Money", "Envelope", "DeductionLine"}
MONEY_NAMES = {"amount", "gross", "fee", "net", "payee_share", "carry_over", "minimum_payout", "balance"}
TIMESTAMP_NAMES = {"period_start", "period_end"}  # plus every field ending in _at
ALL_FILES = sorted(SCHEMA_DIR.glob("*.avsc")) + sorted(SCHEMA_DIR.glob("history/*.avsc"))


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def event_schema(event_type: str) -> dict[str, Any]:
    return load(SCHEMA_DIR / f"{event_type}.avsc")


def records(node: Any) -> Iterator[dict[str, Any]]:
    """Every record definition inside a schema, nested ones (DeductionLine) included."""
    if isinstance(node, dict):
        if node.get("type") in ("record", "error"):
            yield node
        for value in node.values():
            yield from records(value)
    elif isinstance(node, list):
        for item in node:
            yield from records(item)


def fields(node: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    """(record name, field) for every field of every record in node."""
    for record in records(node):
        for field in record["fields"]:
            yield record["name"], field


def type_names(node: Any) -> Iterator[str]:
    """Every type name a schema mentions (primitives and named references)."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, list):
        for item in node:
            yield from type_names(item)
    elif isinstance(node, dict):
        for key in ("type", "items", "values"):
            if key in node:
                yield from type_names(node[key])
        for field in node.get("fields", ()):
            yield from type_names(field)


def logical_types(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if "logicalType" in node:
            yield node["logicalType"]
        for value in node.values():
            yield from logical_types(value)
    elif isinstance(node, list):
        for item in node:
            yield from logical_types(item)


def non_null(field_type: Any) -> list[Any]:
    branches = field_type if isinstance(field_type, list) else [field_type]
    return [branch for branch in branches if branch != "null"]


# --- the contract with ledger.events --------------------------------------------------------


def test_event_schema_files_are_exactly_the_event_types() -> None:
    names = {path.stem for path in SCHEMA_DIR.glob("*.avsc")} - SHARED
    assert names == set(EVENT_TYPES)
    assert len(EVENT_TYPES) == len(set(EVENT_TYPES)) == 13


def test_shared_types_are_named_in_the_payout_ledger_namespace() -> None:
    for name in SHARED:
        schema = load(SCHEMA_DIR / f"{name}.avsc")
        assert (schema["type"], schema["name"], schema["namespace"]) == ("record", name, "payout_ledger")


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_event_record_name_matches_file_and_namespace(event_type: str) -> None:
    schema = event_schema(event_type)
    assert (schema["type"], schema["name"], schema["namespace"]) == ("record", event_type, "payout_ledger.events")
    assert schema.get("doc"), f"{event_type} has no doc"


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_first_field_is_the_envelope(event_type: str) -> None:
    first = event_schema(event_type)["fields"][0]
    assert (first["name"], first["type"]) == ("envelope", "payout_ledger.Envelope")
    assert [f["name"] for f in event_schema(event_type)["fields"]].count("envelope") == 1


def test_envelope_dataclass_matches_envelope_avsc_in_order() -> None:
    schema_fields = [f["name"] for f in load(SCHEMA_DIR / "Envelope.avsc")["fields"]]
    assert [f.name for f in dataclasses.fields(Envelope)] == schema_fields


def test_envelope_optional_fields_are_nullable_with_null_default() -> None:
    optional = {f.name for f in dataclasses.fields(Envelope) if f.default is None}
    for field in load(SCHEMA_DIR / "Envelope.avsc")["fields"]:
        nullable = isinstance(field["type"], list) and field["type"][0] == "null"
        assert nullable == (field["name"] in optional), field["name"]
        if nullable:
            assert "default" in field and field["default"] is None, field["name"]


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_field_names_are_unique_per_record(event_type: str) -> None:
    for record in records(event_schema(event_type)):
        names = [f["name"] for f in record["fields"]]
        assert len(names) == len(set(names)), record["name"]


# --- money is always Money, never a float ----------------------------------------------------


def test_money_is_integer_minor_units_with_code_and_exponent() -> None:
    schema = load(SCHEMA_DIR / "Money.avsc")
    assert [(f["name"], f["type"]) for f in schema["fields"]] == [
        ("amount_minor", "long"),
        ("currency", "string"),
        ("exponent", "int"),
    ]


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: str(p.relative_to(SCHEMA_DIR)))
def test_every_money_like_field_is_money(path: Path) -> None:
    found = []
    for record, field in fields(load(path)):
        if field["name"] in MONEY_NAMES:
            found.append(field["name"])
            branches = non_null(field["type"])
            assert branches == ["payout_ledger.Money"], f"{record}.{field['name']} is {field['type']!r}"
            if isinstance(field["type"], list):
                assert field["type"][0] == "null" and field.get("default", "missing") is None
    assert found or path.stem in SHARED | {"PayoutCancelled", "PayoutRetryScheduled", "PayeeHoldSet"}


def test_money_fields_found_where_expected() -> None:
    where = {
        event_type: sorted(
            f"{record}.{field['name']}"
            for record, field in fields(event_schema(event_type))
            if "payout_ledger.Money" in non_null(field["type"])
        )
        for event_type in EVENT_TYPES
    }
    assert where["PayoutRequested"] == sorted(
        [
            "PayoutRequested.gross",
            "PayoutRequested.payee_share",
            "PayoutRequested.fee",
            "PayoutRequested.carry_over",
            "PayoutRequested.net",
        ]
    )
    assert where["PayeeScheduleSet"] == ["PayeeScheduleSet.minimum_payout"]
    assert where["PayoutCancelled"] == where["PayoutRetryScheduled"] == []
    # Every field that holds Money carries a money-like name, so the name rule above covers all.
    for event_type, entries in where.items():
        assert {entry.split(".")[1] for entry in entries} <= MONEY_NAMES, event_type


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: str(p.relative_to(SCHEMA_DIR)))
def test_no_schema_uses_float_or_double(path: Path) -> None:
    used = set(type_names(load(path)))
    assert not used & {"float", "double"}, f"{path.name} uses {sorted(used & {'float', 'double'})}"
    assert "string" in used or path.stem == "Money"  # the walk does see the types


# --- timestamps ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: str(p.relative_to(SCHEMA_DIR)))
def test_every_timestamp_is_long_timestamp_micros(path: Path) -> None:
    schema = load(path)
    assert set(logical_types(schema)) <= {"timestamp-micros"}
    for record, field in fields(schema):
        if field["name"].endswith("_at") or field["name"] in TIMESTAMP_NAMES:
            assert field["type"] == {"type": "long", "logicalType": "timestamp-micros"}, f"{record}.{field['name']}"


def test_timestamp_fields_found_where_expected() -> None:
    found = sorted(
        f"{record}.{field['name']}"
        for path in [SCHEMA_DIR / "Envelope.avsc", *(SCHEMA_DIR / f"{t}.avsc" for t in EVENT_TYPES)]
        for record, field in fields(load(path))
        if "timestamp-micros" in set(logical_types(field))
    )
    assert found == sorted(
        [
            "Envelope.occurred_at",
            "Envelope.recorded_at",
            "PayoutRequested.period_start",
            "PayoutRequested.period_end",
            "BalanceCarried.period_start",
            "BalanceCarried.period_end",
            "PayoutRetryScheduled.due_at",
        ]
    )


# --- the directory loads --------------------------------------------------------------------


def test_schema_directory_loads_every_event_type() -> None:
    schemas = SchemaSet.from_directory(SCHEMA_DIR)
    assert schemas.event_types() == sorted(EVENT_TYPES)
    for event_type in EVENT_TYPES:
        known = schemas.current(event_type)
        assert known.name == event_type
        assert known.definition["fields"][0]["type"]["name"] == "Envelope"  # inlined at first use
