"""Invariant checks that survive `python -O` (a bare assert does not)."""

from __future__ import annotations


class InvariantViolation(AssertionError):
    """A condition the ledger relies on does not hold: stop rather than continue in a wrong state."""


def require(condition: object, message: str) -> None:
    """Raise InvariantViolation with `message` unless `condition` is truthy."""
    if not condition:
        raise InvariantViolation(message)
