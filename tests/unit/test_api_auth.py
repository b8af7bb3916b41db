"""Bearer tokens, roles and the ingestion rate limiter, without a server."""

from __future__ import annotations

import pytest

from api.auth import InvalidTokenConfig, Role, TokenTable, bearer_token
from api.rate_limit import RateLimiter

TOKENS = {"a" * 20: "operator:olga", "b" * 20: "read-only", "c" * 20: "ingest:shop"}


def test_tokens_identify_their_principal_and_roles_nest():
    table = TokenTable(TOKENS)
    olga, reader, shop = (table.identify(token) for token in TOKENS)
    assert (olga.role, olga.name) == (Role.OPERATOR, "olga")
    assert (reader.role, reader.name) == (Role.READ_ONLY, "read-only")  # no name: the role stands in
    assert all(olga.may(role) for role in Role)
    assert reader.may(Role.READ_ONLY) and not reader.may(Role.OPERATOR) and not reader.may(Role.INGEST)
    assert shop.may(Role.INGEST) and not shop.may(Role.READ_ONLY)
    assert table.identify("a" * 19) is None and table.identify("a" * 21) is None and table.identify("") is None


@pytest.mark.parametrize("tokens, message", [
    ({"short": "operator"}, "shorter than 16"),
    ({"d" * 20: "admin"}, "role 'admin'"),
    ({"d" * 20: ""}, "role ''"),
])
def test_unusable_token_entries_are_refused_with_the_reason(tokens, message):
    with pytest.raises(InvalidTokenConfig, match=message):
        TokenTable(tokens)


def test_only_the_bearer_scheme_is_read():
    assert bearer_token("Bearer abc") == "abc" and bearer_token("bearer  abc ") == "abc"
    assert bearer_token("Basic abc") is None and bearer_token("Bearer ") is None and bearer_token(None) is None


def test_the_rate_limiter_admits_a_burst_then_refuses_until_tokens_refill():
    now = [0.0]
    limiter = RateLimiter(rate_per_s=2.0, burst=3, monotonic=lambda: now[0])
    assert [limiter.admit("shop") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.admit("shop") == pytest.approx(0.5)  # one token comes back every 0.5 s
    assert limiter.admit("other") == 0.0  # buckets are per client
    now[0] += 0.5
    assert limiter.admit("shop") == 0.0 and limiter.admit("shop") > 0
