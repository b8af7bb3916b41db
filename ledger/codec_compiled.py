"""Per-schema compiled versions of the codec's checks and conversions (ledger/codec.py).

The codec's generic walkers (_check_payload, _from_wire) interpret the schema for every event: a
dictionary lookup and a branch per field, and an f-string path per field even when nothing is wrong.
These compile each schema once into nested closures that do only the work the schema asks for.

compile_check(schema) returns a predicate: True means the full check (_check_payload) passes; False
means it may not, and the codec then runs the full check, which names the field and the reason. So the
error messages are the full check's, unchanged, and the fast one never needs a message of its own.

compile_from_wire(schema, money) returns the _from_wire conversion for that reader schema: Money
records become Money (through the codec's own `money` function and its errors), and the result is
read-only already (records and maps inside as MappingProxyType, arrays as tuples), as ledger/events.py
keeps an Event's payload: an Event built from it copies nothing.
"""

from __future__ import annotations

from datetime import datetime
from types import MappingProxyType
from typing import Any, Callable

_PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}
MONEY_TYPE = "payout_ledger.Money"
_RANGES = {"int": (-(2**31), 2**31 - 1), "long": (-(2**63), 2**63 - 1)}

Check = Callable[[Any], bool]
Convert = Callable[[Any], Any]


def _full_name(name: str, namespace: str | None) -> str:
    return name if "." in name or not namespace else f"{namespace}.{name}"


def _primitive(kind: str, logical: str | None = None) -> Check:
    if logical in ("timestamp-micros", "timestamp-millis"):
        return lambda value: isinstance(value, datetime) and value.tzinfo is not None
    if kind in _RANGES:
        low, high = _RANGES[kind]
        return lambda value: type(value) is int and low <= value <= high  # noqa: E721 - bool is refused too
    if kind == "string":
        return lambda value: isinstance(value, str)
    if kind == "boolean":
        return lambda value: isinstance(value, bool)
    if kind == "null":
        return lambda value: value is None
    return lambda value: False  # float, double, bytes: the ledger's schemas use none; the full check says so


def _money_check(value: Any) -> bool:
    from ledger.money import Money  # the codec's own import order: money is a leaf

    if not isinstance(value, Money):
        return False
    amount = value.amount_minor
    return type(amount) is int and -(2**63) <= amount <= 2**63 - 1  # noqa: E721


def compile_check(schema: Any, named: dict[str, Check] | None = None) -> Check:
    """A predicate for values of `schema` (see the module): True only where _check_payload passes."""
    named = {} if named is None else named
    if isinstance(schema, str):
        if schema in _PRIMITIVES:
            return _primitive(schema)
        if schema == MONEY_TYPE:
            return _money_check
        return lambda value: named[schema](value) if schema in named else True
    if isinstance(schema, list):
        nullable = "null" in schema
        branches = [branch for branch in schema if branch != "null"]
        inner = compile_check(branches[0], named) if len(branches) == 1 else None

        def union(value: Any) -> bool:
            if value is None:
                return nullable
            return inner is None or inner(value)
        return union
    kind = schema.get("type")
    if kind == "record":
        full = _full_name(schema["name"], schema.get("namespace"))
        if full == MONEY_TYPE:
            named.setdefault(full, _money_check)
            return _money_check
        fields: list[tuple[str, Check, bool]] = []

        def record(value: Any) -> bool:
            if not isinstance(value, dict) and not hasattr(value, "keys"):
                return False
            if not names.issuperset(value.keys()):
                return False
            for name, check, has_default in fields:
                if name in value:
                    if not check(value[name]):
                        return False
                elif not has_default:
                    return False
            return True
        named.setdefault(full, record)
        names = frozenset(field["name"] for field in schema["fields"])
        fields.extend((field["name"], compile_check(field["type"], named), "default" in field)
                      for field in schema["fields"])
        return record
    if kind == "enum":
        symbols = frozenset(schema["symbols"])

        def enum(value: Any) -> bool:
            try:
                return value in symbols
            except TypeError:  # unhashable: not a symbol
                return False
        named.setdefault(_full_name(schema["name"], schema.get("namespace")), enum)
        return enum
    if kind == "array":
        item = compile_check(schema["items"], named)
        return lambda value: isinstance(value, (list, tuple)) and all(item(element) for element in value)
    if kind == "map":
        item = compile_check(schema["values"], named)
        return lambda value: hasattr(value, "items") and all(
            isinstance(key, str) and item(element) for key, element in value.items())
    if isinstance(kind, (dict, list)):
        return compile_check(kind, named)
    if isinstance(kind, str) and kind in _PRIMITIVES:
        return _primitive(kind, schema.get("logicalType"))
    return lambda value: True  # the full check has no rule for it either


def _identity(value: Any) -> Any:
    return value


def compile_from_wire(schema: Any, money: Convert) -> Convert:
    """The codec's _from_wire for `schema`, compiled, with its result already read-only as an Event keeps its
    payload (ledger/events.py _frozen): the top record a dict, records and maps inside it MappingProxyType,
    arrays tuples. So an Event built from it has nothing left to copy."""
    named: dict[str, Convert] = {}
    top = _compile_convert(schema, money, named, top=True)
    return top or _identity


def _compile_convert(schema: Any, money: Convert, named: dict[str, Convert], top: bool = False) -> Convert | None:
    """None: values of this schema pass through unchanged (immutable already)."""
    if isinstance(schema, str):
        if schema == MONEY_TYPE:
            return lambda value: None if value is None else money(value)
        if schema in named:
            return lambda value: None if value is None else named[schema](value)
        return None
    if isinstance(schema, list):
        branches = [branch for branch in schema if branch != "null"]
        if len(branches) != 1:
            return None
        inner = _compile_convert(branches[0], money, named)
        return None if inner is None else (lambda value: None if value is None else inner(value))
    kind = schema.get("type")
    if kind == "record":
        full = _full_name(schema["name"], schema.get("namespace"))
        if full == MONEY_TYPE:
            named.setdefault(full, money)
            return lambda value: None if value is None else money(value)
        names = [field["name"] for field in schema["fields"]]
        converts: list[tuple[str, Convert]] = []
        wrap = dict if top else MappingProxyType

        def record(value: Any) -> Any:
            if value is None:
                return None
            out = {name: value.get(name) for name in names}
            for name, convert in converts:
                out[name] = convert(out[name])
            return wrap(out)
        named.setdefault(full, record)
        for field in schema["fields"]:
            convert = _compile_convert(field["type"], money, named)
            if convert is not None:
                converts.append((field["name"], convert))
        return record
    if kind in ("enum", "fixed"):
        return None
    if kind == "array":
        item = _compile_convert(schema["items"], money, named) or _identity
        return lambda value: None if value is None else tuple(item(v) for v in value)
    if kind == "map":
        item = _compile_convert(schema["values"], money, named)
        if item is None:
            return lambda value: None if value is None else MappingProxyType(dict(value))
        return lambda value: None if value is None else MappingProxyType({key: item(v) for key, v in value.items()})
    if isinstance(kind, (dict, list)):
        return _compile_convert(kind, money, named, top)
    return None


def compile_to_wire(schema: Any) -> Convert:
    """The codec's _to_wire for the payload of a record of `schema` (its fields but the envelope), compiled:
    Money becomes its wire record, mappings dicts and sequences lists, field by field as the schema says.
    Used only on values that passed the check, so every value has its schema's shape."""
    named: dict[str, Convert | None] = {}
    fields = [(field["name"], _compile_wire(field["type"], named)) for field in schema["fields"]
              if field["name"] != "envelope"]
    converting = [(name, convert) for name, convert in fields if convert is not None]

    def payload(value: Any) -> dict[str, Any]:
        out = dict(value)
        for name, convert in converting:
            if name in out:
                out[name] = convert(out[name])
        return out
    return payload


def _money_to_wire(value: Any) -> Any:
    if value is None:
        return None
    return {"amount_minor": value.amount_minor, "currency": value.currency.code, "exponent": value.currency.exponent}


def _compile_wire(schema: Any, named: dict[str, Convert | None]) -> Convert | None:
    """None: values of this schema are written as they are."""
    if isinstance(schema, str):
        if schema == MONEY_TYPE:
            return _money_to_wire
        if schema in named:
            return lambda value: None if value is None else (named[schema] or _identity)(value)
        return None
    if isinstance(schema, list):
        branches = [branch for branch in schema if branch != "null"]
        if len(branches) != 1:
            return None
        return _compile_wire(branches[0], named)  # every converter here passes None through
    kind = schema.get("type")
    if kind == "record":
        full = _full_name(schema["name"], schema.get("namespace"))
        if full == MONEY_TYPE:
            named.setdefault(full, _money_to_wire)
            return _money_to_wire
        fields: list[tuple[str, Convert]] = []

        def record(value: Any) -> Any:
            if value is None:
                return None
            out = dict(value)
            for name, convert in fields:
                if name in out:
                    out[name] = convert(out[name])
            return out
        named.setdefault(full, record)
        fields.extend((field["name"], convert) for field in schema["fields"]
                      if (convert := _compile_wire(field["type"], named)) is not None)
        return record
    if kind == "array":
        item = _compile_wire(schema["items"], named) or _identity
        return lambda value: None if value is None else [item(element) for element in value]
    if kind == "map":
        item = _compile_wire(schema["values"], named) or _identity
        return lambda value: None if value is None else {key: item(element) for key, element in value.items()}
    if isinstance(kind, (dict, list)):
        return _compile_wire(kind, named)
    return None
