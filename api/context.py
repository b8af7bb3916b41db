"""What every request handler needs: settings, connections, the operations, the caller's identity."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable

import sqlalchemy
from fastapi import Depends, HTTPException, Request

from api.auth import Principal, Role, TokenTable, bearer_token
from api.rate_limit import RateLimiter
from processors.operations import Operations
from runtime.database import make_engine
from runtime.settings import Settings


@dataclass
class ApiContext:
    settings: Settings
    bootstrap: str
    database_url: str
    tokens: TokenTable
    operations: Operations
    engine: sqlalchemy.Engine
    ingest_limiter: RateLimiter
    clock: Callable[[], datetime]
    _appender: object | None = None

    @property
    def appender(self):  # noqa: ANN201 - api.routes_ingest.Appender, made on first use
        if self._appender is None:
            from api.routes_ingest import Appender

            self._appender = Appender(self.bootstrap, self.settings.topic_incoming)
        return self._appender

    @classmethod
    def create(cls, settings: Settings, bootstrap: str, database_url: str,
               clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> "ApiContext":
        return cls(settings, bootstrap, database_url, TokenTable(settings.api_tokens),
                   Operations(settings, bootstrap, database_url, clock), make_engine(database_url, pool_size=8),
                   RateLimiter(settings.ingest_rate_per_s, settings.ingest_burst), clock)


def context(request: Request) -> ApiContext:
    return request.app.state.ledger


UNAUTHORIZED_HEADERS = {"WWW-Authenticate": 'Bearer realm="payout-ledger"'}


def principal(request: Request, ctx: ApiContext = Depends(context)) -> Principal:
    """The caller, from `Authorization: Bearer <token>` (or the operator page's cookie)."""
    token = bearer_token(request.headers.get("authorization")) or request.cookies.get("ledger_token")
    if token is None:
        raise HTTPException(401, "missing bearer token (Authorization: Bearer <token>)", UNAUTHORIZED_HEADERS)
    found = ctx.tokens.identify(token)
    if found is None:
        raise HTTPException(401, "unknown bearer token", UNAUTHORIZED_HEADERS)
    return found


def _needs(who: Principal, role: Role) -> Principal:
    if not who.may(role):
        raise HTTPException(403, f"{who.name} has the {who.role.value} role; this needs the {role.value} role "
                                 "(or operator)")
    return who


def reader(who: Principal = Depends(principal)) -> Principal:
    return _needs(who, Role.READ_ONLY)


def operator(who: Principal = Depends(principal)) -> Principal:
    return _needs(who, Role.OPERATOR)


def ingester(who: Principal = Depends(principal)) -> Principal:
    return _needs(who, Role.INGEST)
