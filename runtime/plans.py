"""Loads the commission plans and fees: the built-ins, replaced or extended by LEDGER_PLANS_FILE (TOML)."""

from __future__ import annotations

import tomllib
from pathlib import Path

from ledger.commission import BUILTIN_CONFIG, InvalidPlan, PlanBook, load_plan_book, merge_config
from runtime.settings import Settings


def plan_book(settings: Settings) -> PlanBook:
    if settings.plans_file is None:
        return load_plan_book(BUILTIN_CONFIG)
    return load_plan_book(merge_config(BUILTIN_CONFIG, read_plans_file(settings.plans_file)))


def read_plans_file(path: Path) -> dict:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except OSError as exc:
        raise InvalidPlan(f"cannot read plans file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise InvalidPlan(f"plans file {path} is not valid TOML: {exc}") from None
