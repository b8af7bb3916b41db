"""Bearer tokens with roles, compared in constant time.

LEDGER_API_TOKENS maps each token to its role, optionally with a name for the audit trail:
{"<token>": "operator:alice", "<token>": "read-only:grafana"}. An operator may do everything a
read-only token may; an ingest token may only record payments. Tokens are compared as SHA-256 digests with hmac.compare_digest against every
configured token (no early exit), so neither a token's length nor its prefix leaks through timing.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from enum import Enum


class Role(str, Enum):
    READ_ONLY = "read-only"  # everything that reads
    OPERATOR = "operator"  # everything
    INGEST = "ingest"  # upstream services: POST /v1/payments only


class InvalidTokenConfig(ValueError):
    """LEDGER_API_TOKENS holds an entry that cannot be used."""


TOKEN_LENGTH_MIN = 16


@dataclass(frozen=True)
class Principal:
    role: Role
    name: str

    def may(self, needed: Role) -> bool:
        return self.role is Role.OPERATOR or self.role is needed


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class TokenTable:
    def __init__(self, tokens: dict[str, str]) -> None:
        self._entries: list[tuple[bytes, Principal]] = []
        for number, (token, value) in enumerate(sorted(tokens.items()), 1):
            if len(token) < TOKEN_LENGTH_MIN:
                raise InvalidTokenConfig(f"LEDGER_API_TOKENS: token {number} is shorter than {TOKEN_LENGTH_MIN} "
                                         "characters (make one with `ledger api token`)")
            role_text, _, name = value.partition(":")
            try:
                role = Role(role_text.strip())
            except ValueError:
                raise InvalidTokenConfig(f"LEDGER_API_TOKENS: token {number} has role {role_text!r}; "
                                         f"expected {' or '.join(r.value for r in Role)}") from None
            self._entries.append((_digest(token), Principal(role, name.strip() or role.value)))

    def __len__(self) -> int:
        return len(self._entries)

    def identify(self, token: str) -> Principal | None:
        """The principal of a presented token, or None; every entry is compared, whatever matches."""
        presented = _digest(token)
        found = None
        for digest, principal in self._entries:
            if hmac.compare_digest(presented, digest):
                found = principal
        return found


def bearer_token(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def new_token() -> str:
    return secrets.token_urlsafe(32)
