"""Schema evolution: a field added with a default, read across versions in both directions.

Each test works on copies of the real schemas/avro directory: v1 is it unchanged; v2 adds
PaymentCompleted.channel (string, default "unknown") with "version": 2 and keeps v1 in history/.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from hypothesis import given, settings
from hypothesis import strategies as st

from event_factory import make_event, make_payload
from ledger.codec import DEFAULT_SCHEMA_DIR, ConfluentFraming, EventCodec, SchemaSet, UndecodableEvent
from ledger.currencies import all_currencies
from ledger.events import Event
from ledger.money import Money

CHANNEL = {"name": "channel", "type": "string", "default": "unknown", "doc": "where the customer paid"}


def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def _write(path: Path, definition: dict[str, Any]) -> None:
    path.write_text(json.dumps(definition, indent=2), encoding="utf-8")


def v2_definition(field: dict[str, Any] = CHANNEL) -> dict[str, Any]:
    definition = _read(DEFAULT_SCHEMA_DIR / "PaymentCompleted.avsc")
    definition["fields"].append(field)
    definition["version"] = 2
    return definition


def make_schema_dir(root: Path, name: str, *, v2_field: dict[str, Any] | None = None) -> Path:
    """A copy of schemas/avro; with v2_field, PaymentCompleted is v2 and v1 moves to history/."""
    target = root / name
    shutil.copytree(DEFAULT_SCHEMA_DIR, target)
    if v2_field is not None:
        (target / "history").mkdir(exist_ok=True)
        shutil.copy(target / "PaymentCompleted.avsc", target / "history" / "PaymentCompleted.v1.avsc")
        _write(target / "PaymentCompleted.avsc", v2_definition(v2_field))
    return target


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("schemas")
    return {"v1": make_schema_dir(root, "v1"), "v2": make_schema_dir(root, "v2", v2_field=CHANNEL)}


@pytest.fixture(scope="module")
def v1_codec(dirs: dict[str, Path]) -> EventCodec:
    """Reads and writes v1; knows nothing of v2."""
    return EventCodec(SchemaSet.from_directory(dirs["v1"]))


@pytest.fixture(scope="module")
def v2_codec(dirs: dict[str, Path]) -> EventCodec:
    """Reads and writes v2; knows v1 as an older writer (history/)."""
    return EventCodec(SchemaSet.from_directory(dirs["v2"]))


@pytest.fixture(scope="module")
def v1_reader_knowing_v2(dirs: dict[str, Path]) -> EventCodec:
    """Still on v1, but has been told about the v2 writer schema (current=False)."""
    schemas = SchemaSet.from_directory(dirs["v1"])
    schemas.add(v2_definition(), current=False)
    return EventCodec(schemas)


def v1_event(**overrides: Any) -> Event:
    return make_event("PaymentCompleted", **overrides)


def v2_event(channel: str = "app", **overrides: Any) -> Event:
    return make_event("PaymentCompleted", channel=channel, **overrides)


# --- the two schema sets are what the tests think they are ---------------------------------


def test_v2_set_has_v2_current_and_v1_in_history(v1_codec: EventCodec, v2_codec: EventCodec) -> None:
    v1 = v1_codec.schemas.current("PaymentCompleted")
    v2 = v2_codec.schemas.current("PaymentCompleted")
    assert (v1.version, v2.version) == (1, 2)
    assert v1.fingerprint != v2.fingerprint
    assert [f["name"] for f in v2.definition["fields"]][-1] == "channel"
    assert "version" not in v2.definition  # not an Avro attribute: it must not reach the schema
    assert v2_codec.schemas.by_fingerprint(v1.fingerprint) is not None
    assert v2_codec.schemas.by_fingerprint(v1.fingerprint).version == 1
    assert v1_codec.schemas.by_fingerprint(v2.fingerprint) is None
    # Only PaymentCompleted changed.
    assert v1_codec.schemas.current("PaymentRefunded").fingerprint == v2_codec.schemas.current("PaymentRefunded").fingerprint


def test_v2_round_trips_with_its_own_header_and_version(v2_codec: EventCodec) -> None:
    event = v2_event("kiosk")
    data = v2_codec.encode(event)
    assert data[2:10] == v2_codec.schemas.current("PaymentCompleted").fingerprint
    decoded = v2_codec.decode(data)
    assert decoded.payload["channel"] == "kiosk"
    assert decoded.envelope.schema_version == 2


def test_v2_writer_fills_the_default_when_channel_is_not_given(v2_codec: EventCodec) -> None:
    decoded = v2_codec.decode(v2_codec.encode(v1_event()))
    assert decoded.payload["channel"] == "unknown"


# --- (a) old writer, new reader -----------------------------------------------------------------


def test_old_writer_new_reader_gets_the_default(v1_codec: EventCodec, v2_codec: EventCodec) -> None:
    event = v1_event()
    data = v1_codec.encode(event)
    assert data[2:10] == v1_codec.schemas.current("PaymentCompleted").fingerprint
    decoded = v2_codec.decode(data)
    assert decoded.payload["channel"] == "unknown"
    assert {k: v for k, v in decoded.payload.items() if k != "channel"} == dict(event.payload)
    assert decoded.envelope.schema_version == 1  # what the writer used
    assert decoded.envelope == event.envelope


# --- (b) new writer, old reader -----------------------------------------------------------------


def test_new_writer_old_reader_drops_the_new_field(v2_codec: EventCodec, v1_reader_knowing_v2: EventCodec) -> None:
    data = v2_codec.encode(v2_event("app"))
    decoded = v1_reader_knowing_v2.decode(data)
    assert "channel" not in decoded.payload
    assert dict(decoded.payload) == dict(v1_event().payload)
    assert decoded.envelope.schema_version == 2
    assert decoded.envelope == dataclasses.replace(v1_event().envelope, schema_version=2)


@settings(max_examples=100, deadline=None)
@given(
    channel=st.text(max_size=20),
    amount_minor=st.integers(min_value=-(2**63), max_value=2**63 - 1),
    code=st.sampled_from(all_currencies()).map(lambda cur: cur.code),
)
def test_both_directions_for_any_values(
    v1_codec: EventCodec,
    v2_codec: EventCodec,
    v1_reader_knowing_v2: EventCodec,
    channel: str,
    amount_minor: int,
    code: str,
) -> None:
    amount = Money.of(amount_minor, code)
    old = v1_event(amount=amount)
    new = v2_event(channel, amount=amount)
    assert v1_reader_knowing_v2.decode(v2_codec.encode(new)) == Event(
        dataclasses.replace(new.envelope, schema_version=2), old.payload
    )
    assert v2_codec.decode(v1_codec.encode(old)) == Event(old.envelope, {**old.payload, "channel": "unknown"})


# --- (c) a reader that does not know the writer -------------------------------------------------


def test_reader_without_the_writer_schema_names_the_fingerprint(v1_codec: EventCodec, v2_codec: EventCodec) -> None:
    data = v2_codec.encode(v2_event())
    fingerprint = v2_codec.schemas.current("PaymentCompleted").fingerprint.hex()
    assert data[2:10].hex() == fingerprint
    with pytest.raises(UndecodableEvent, match=f"unknown writer schema fingerprint {fingerprint}") as info:
        v1_codec.decode(data)
    assert info.value.raw == data


def test_new_reader_without_history_cannot_read_old_events(dirs: dict[str, Path], v1_codec: EventCodec) -> None:
    schemas = SchemaSet(SchemaSet.from_directory(dirs["v2"])._shared)  # noqa: SLF001
    for path in sorted(dirs["v2"].glob("*.avsc")):
        definition = _read(path)
        if definition.get("namespace") == "payout_ledger.events":
            schemas.add(definition, current=True)
    data = v1_codec.encode(v1_event())
    fingerprint = data[2:10].hex()
    with pytest.raises(UndecodableEvent, match=f"unknown writer schema fingerprint {fingerprint}"):
        EventCodec(schemas).decode(data)


def test_added_field_without_default_cannot_read_old_events(tmp_path: Path, v1_codec: EventCodec) -> None:
    strict = make_schema_dir(tmp_path, "strict", v2_field={"name": "channel", "type": "string"})
    reader = EventCodec(SchemaSet.from_directory(strict))
    data = v1_codec.encode(v1_event())
    with pytest.raises(UndecodableEvent, match=r"corrupt PaymentCompleted body: .*channel") as info:
        reader.decode(data)
    assert info.value.raw == data


# --- (d) Confluent framing: the reader learns the writer schema from the registry --------------


def test_confluent_new_writer_old_reader_via_registry(dirs: dict[str, Path]) -> None:
    client = SchemaRegistryClient.new_client({"url": "mock://test"})
    writer = EventCodec(SchemaSet.from_directory(dirs["v2"]), ConfluentFraming(client))
    reader = EventCodec(SchemaSet.from_directory(dirs["v1"]), ConfluentFraming(client))
    v2_fingerprint = writer.schemas.current("PaymentCompleted").fingerprint
    assert reader.schemas.by_fingerprint(v2_fingerprint) is None

    data = writer.encode(v2_event("app"))
    assert data[:1] == b"\x00"
    schema_id = int.from_bytes(data[1:5], "big")
    assert "channel" in client.get_schema(schema_id).schema_str

    decoded = reader.decode(data)
    assert "channel" not in decoded.payload
    assert dict(decoded.payload) == dict(v1_event().payload)
    assert decoded.envelope.schema_version == 2
    assert reader.schemas.by_fingerprint(v2_fingerprint) is not None  # learnt from the registry
    assert reader.schemas.current("PaymentCompleted").version == 1  # but still reads as v1


def test_confluent_old_writer_new_reader_via_registry(dirs: dict[str, Path]) -> None:
    client = SchemaRegistryClient.new_client({"url": "mock://test"})
    writer = EventCodec(SchemaSet.from_directory(dirs["v1"]), ConfluentFraming(client))
    reader = EventCodec(SchemaSet.from_directory(dirs["v2"]), ConfluentFraming(client))
    decoded = reader.decode(writer.encode(v1_event()))
    assert decoded.payload["channel"] == "unknown"
    assert decoded.envelope.schema_version == 1


def test_confluent_both_versions_get_distinct_ids(dirs: dict[str, Path]) -> None:
    client = SchemaRegistryClient.new_client({"url": "mock://test"})
    old = EventCodec(SchemaSet.from_directory(dirs["v1"]), ConfluentFraming(client)).encode(v1_event())
    new = EventCodec(SchemaSet.from_directory(dirs["v2"]), ConfluentFraming(client)).encode(v2_event())
    assert old[1:5] != new[1:5]
    reader = EventCodec(SchemaSet.from_directory(dirs["v1"]), ConfluentFraming(client))
    assert reader.decode(old) == v1_event()
    assert "channel" not in reader.decode(new).payload


def test_payload_factory_matches_v1_fields(v1_codec: EventCodec) -> None:
    names = [f["name"] for f in v1_codec.schemas.current("PaymentCompleted").definition["fields"]][1:]
    assert list(make_payload("PaymentCompleted")) == names
