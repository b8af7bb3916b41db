"""Mobile money (Orange Money style): a cash-in to the payee's wallet, idempotent by the attempt's key.

The provider's HTTP API, as this connector speaks it (sandbox/mobile_money.py imitates it):

* ``POST /oauth/v3/token`` with ``Authorization: Basic base64(client_id:client_secret)`` and the
  form body ``grant_type=client_credentials`` answers ``200 {"token_type": "Bearer",
  "access_token": "...", "expires_in": <seconds>}``; bad credentials answer ``401
  {"error": "invalid_client"}``. Every other call sends ``Authorization: Bearer <access_token>``.
  The token is fetched when there is none, when its ``expires_in`` has (nearly) run out, and once
  after a 401 (``INVALID_TOKEN`` / ``TOKEN_EXPIRED``); a second 401 is ``authentication_failed``.
* ``POST /omcoreapis/1.0.2/cashin`` with JSON ``{"partnerTransactionId": <idempotency key>,
  "customerMsisdn": "2250701020304", "amount": {"value": "24000", "unit": "XOF"}, "reference":
  <payee id>, "description": ...}``. ``amount.value`` is the exact major-unit decimal *string*
  (``Money.to_major_string``: XOF "24000", USD "123.45"), never a JSON number. Answers ``201``
  (created) or ``200`` (that partnerTransactionId exists already: nothing is created, the existing
  transaction comes back) with the transaction ``{"txnid": "CI...", "partnerTransactionId",
  "customerMsisdn", "amount", "status": "PENDING" | "SUCCESS" | "FAILED", "errorCode",
  "message", ...}``. The provider is idempotent on partnerTransactionId: the same id with another
  amount or MSISDN is ``409 {"code": "PARTNER_TXN_CONFLICT"}``.
* ``GET /omcoreapis/1.0.2/cashin/{partnerTransactionId}`` answers that transaction, or ``404
  {"code": "TRANSACTION_NOT_FOUND"}`` when the provider never created it. Cheap, no side effect.
* Refusals create no transaction, so the id stays free for a retry (after a top-up, say):
  ``400`` INVALID_REQUEST / INVALID_MSISDN / INVALID_AMOUNT / INVALID_CURRENCY, ``422``
  SUBSCRIBER_NOT_FOUND / ACCOUNT_BARRED / ACCOUNT_CLOSED / AMOUNT_ABOVE_LIMIT /
  PARTNER_BALANCE_INSUFFICIENT, ``429`` TOO_MANY_REQUESTS with ``Retry-After: <seconds>``,
  ``500`` INTERNAL_ERROR, ``503`` SERVICE_UNAVAILABLE. Error bodies are ``{"code", "message"}``.
  A transaction accepted as PENDING may end FAILED later, with its ``errorCode``; that id is then
  spent (a resubmission returns the failed transaction): a retry comes with its own key (below).

Keys: partnerTransactionId is ``request.idempotency_key`` (connectors/base.py): the payout id on the
first attempt, ``<payout id>:<n>`` on the n-th, so a retry is not answered with an earlier attempt's
stored failure. ``lookup`` therefore asks for the current attempt's key first (one GET: the cheap
path of the processor's polling of pending transfers) and, unless that one is pending or paid, for
the earlier attempts' keys too: money moving under any of them is reported (PENDING or SETTLED, with
that transaction's txnid), so a retry never pays twice. Earlier attempts that failed are history:
the answer is then the current attempt's own (its FAILED transaction, or None when never seen).

Mapping to TransferResult: SUCCESS is SETTLED, PENDING is PENDING, FAILED and refusals are FAILED
with the ledger's reason code (PROVIDER_CODES; an unknown code is ``declined``, permanent, with the
provider's code in the message). A timeout or a dropped connection after the request was sent is
FAILED ``timeout`` / ``connection_error`` (retryable): the transfer may exist, so the caller asks
``lookup`` with the same payout id before paying again. Plain http.client, one connection per call,
so the connector is safe to share between threads; only the token is shared, behind a lock.
"""

from __future__ import annotations

import base64
import dataclasses
import http.client
import json
import logging
import re
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

from connectors.base import Outcome, TransferRequest, TransferResult, attempt_key
from connectors.classification import failed
from ledger.guards import require
from ledger.money import InvalidAmount, Money

logger = logging.getLogger("ledger.connectors.mobile_money")

TOKEN_PATH = "/oauth/v3/token"
CASHIN_PATH = "/omcoreapis/1.0.2/cashin"

# E.164: a country code (no leading 0) and at most 15 digits in all; a leading '+' is allowed and
# dropped. Anything else (blanks, dashes, a local 0-prefixed number) is refused before any call.
_MSISDN = re.compile(r"\+?([1-9][0-9]{7,14})")

PROVIDER_CODES: dict[str, str] = {
    "INVALID_MSISDN": "invalid_account_number",
    "SUBSCRIBER_NOT_FOUND": "invalid_account_number",
    "ACCOUNT_BARRED": "account_frozen",
    "ACCOUNT_CLOSED": "account_closed",
    "AMOUNT_ABOVE_LIMIT": "invalid_amount",
    "INVALID_AMOUNT": "invalid_amount",
    "INVALID_CURRENCY": "invalid_currency",
    "PARTNER_BALANCE_INSUFFICIENT": "balance_insufficient",
    "PARTNER_TXN_CONFLICT": "idempotency_conflict",
    "TOO_MANY_REQUESTS": "rate_limited",
    "INTERNAL_ERROR": "provider_error",
    "SERVICE_UNAVAILABLE": "provider_unavailable",
    "INVALID_TOKEN": "authentication_failed",
    "TOKEN_EXPIRED": "authentication_failed",
}
UNKNOWN_PROVIDER_CODE = "declined"

# Refresh a token this long before the provider says it expires (at most a tenth of its life), so
# a request never leaves with a token that dies in flight.
_TOKEN_MARGIN_S_MAX = 60.0


def normalized_msisdn(destination: str) -> str | None:
    """The wallet's MSISDN as the provider wants it (digits only), or None when it is malformed."""
    match = _MSISDN.fullmatch(destination or "")
    return match.group(1) if match else None


def reason_for(provider_code: str) -> str:
    return PROVIDER_CODES.get(provider_code, UNKNOWN_PROVIDER_CODE)


@dataclasses.dataclass(frozen=True)
class _Answer:
    status: int
    body: dict[str, Any]
    retry_after_s: float | None


class _Stop(Exception):
    """A call ended before an answer could be read (network, token): carries the result to return."""

    def __init__(self, result: TransferResult) -> None:
        super().__init__(result.reason_code)
        self.result = result


def _retry_after_seconds(value: str | None) -> float | None:
    try:
        seconds = float(value) if value is not None else None
    except ValueError:  # an HTTP-date: the processor's own backoff applies
        return None
    return seconds if seconds is not None and seconds >= 0 else None


class MobileMoneyConnector:
    name = "mobile_money"

    def __init__(self, base_url: str, client_id: str, client_secret: str, timeout_s: float = 30.0,
                 *, clock: Callable[[], float] = time.monotonic) -> None:
        parts = urllib.parse.urlsplit(base_url)
        require(parts.scheme in ("http", "https") and bool(parts.hostname),
                f"base_url must be http(s)://host[:port], got {base_url!r}")
        require(timeout_s > 0, f"timeout_s must be > 0, got {timeout_s}")
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port
        self._prefix = parts.path.rstrip("/")
        self._basic = base64.b64encode(f"{client_id}:{client_secret}".encode()).decode("ascii")
        self._timeout_s = timeout_s
        self._clock = clock
        self._token_lock = threading.Lock()
        self._token: str | None = None
        self._token_expires_at = 0.0

    # ------------------------------------------------------------------ protocol
    def submit(self, request: TransferRequest) -> TransferResult:
        msisdn = normalized_msisdn(request.destination)
        if msisdn is None:
            return failed("invalid_account_number", f"{request.destination!r} is not an MSISDN (E.164 digits)")
        if request.amount.amount_minor <= 0:
            return failed("invalid_amount", f"a transfer must be positive, got {request.amount}")
        body = {
            "partnerTransactionId": request.idempotency_key,
            "customerMsisdn": msisdn,
            "amount": {"value": request.amount.to_major_string(), "unit": request.amount.currency.code},
            "reference": request.payee_id,
            "description": f"payout {request.payout_id}",
        }
        logger.debug("cash-in of %s to %s (partnerTransactionId %s)", request.amount, msisdn, request.idempotency_key)
        try:
            answer = self._call("POST", CASHIN_PATH, body)
        except _Stop as stop:
            logger.warning("cash-in stopped (%s): %s", stop.result.reason_code, stop.result.message)
            return stop.result
        if answer.status in (200, 201):
            return self._transaction_result(request, request.idempotency_key, msisdn, answer.body)
        return self._refusal(answer)

    def lookup(self, request: TransferRequest) -> TransferResult | None:
        own: TransferResult | None = None
        for attempt in range(max(request.attempt, 1), 0, -1):  # the current attempt first
            key = attempt_key(request.payout_id, attempt)
            try:
                found = self._status(request, key)
            except _Stop as stop:  # not an answer: never report "unseen" on a guess
                return stop.result
            if found is not None and (found.outcome is not Outcome.FAILED
                                      or found.reason_code == "idempotency_conflict"):
                return found
            if attempt == max(request.attempt, 1):
                own = found
        return own

    def _status(self, request: TransferRequest, key: str) -> TransferResult | None:
        """The provider's transaction under `key` as a result; None when it has none (raises _Stop otherwise)."""
        answer = self._call("GET", f"{CASHIN_PATH}/{urllib.parse.quote(key, safe=':')}", None)
        if answer.status == 404 and answer.body.get("code") == "TRANSACTION_NOT_FOUND":
            return None
        if answer.status == 200:
            return self._transaction_result(request, key, normalized_msisdn(request.destination), answer.body)
        raise _Stop(self._refusal(answer))

    # ------------------------------------------------------------------ answers
    def _transaction_result(self, request: TransferRequest, key: str, msisdn: str | None,
                            transaction: dict[str, Any]) -> TransferResult:
        txnid = str(transaction.get("txnid") or "")
        mismatch = self._mismatch(request, key, msisdn, transaction)
        if mismatch:
            return failed("idempotency_conflict", f"the provider's {key} {mismatch}")
        status = transaction.get("status")
        if status == "SUCCESS":
            return TransferResult(Outcome.SETTLED, provider_reference=txnid)
        if status in ("PENDING", "INITIATED"):
            return TransferResult(Outcome.PENDING, provider_reference=txnid)
        if status == "FAILED":
            code = str(transaction.get("errorCode") or "")
            result = failed(reason_for(code), f"{code}: {transaction.get('message') or 'transaction failed'}")
            return dataclasses.replace(result, provider_reference=txnid)
        return failed("provider_error", f"unrecognised transaction status {status!r}")

    @staticmethod
    def _mismatch(request: TransferRequest, key: str, msisdn: str | None, transaction: dict[str, Any]) -> str:
        """What differs between the provider's transaction and this payout ('' when they agree)."""
        if transaction.get("partnerTransactionId") != key:
            return f"answer is for partnerTransactionId {transaction.get('partnerTransactionId')!r}"
        amount = transaction.get("amount") or {}
        try:
            provider_amount = Money.from_major(str(amount.get("value")), str(amount.get("unit")))
        except (InvalidAmount, ValueError):
            return f"has an unreadable amount {amount!r}"
        if provider_amount != request.amount:
            return f"is for {provider_amount}, not {request.amount}"
        if msisdn is not None and transaction.get("customerMsisdn") != msisdn:
            return f"is to {transaction.get('customerMsisdn')!r}, not {msisdn!r}"
        return ""

    @staticmethod
    def _refusal(answer: _Answer) -> TransferResult:
        code = str(answer.body.get("code") or answer.body.get("error") or "")
        detail = answer.body.get("message") or answer.body.get("error_description") or ""
        message = f"HTTP {answer.status} {code}: {detail}"
        if answer.status == 429:
            return failed("rate_limited", message, answer.retry_after_s)
        if answer.status == 503:
            return failed("provider_unavailable", message, answer.retry_after_s)
        if answer.status >= 500:
            return failed("provider_error", message)
        if answer.status == 401:
            return failed("authentication_failed", message)
        if answer.status == 409:
            return failed("idempotency_conflict", message)
        return failed(reason_for(code), message)

    # ------------------------------------------------------------------ HTTP
    def _call(self, method: str, path: str, body: dict[str, Any] | None) -> _Answer:
        """One API call with a valid token; on a 401, one fresh token and one more try."""
        token = self._current_token()
        answer = self._send(method, path, body, {"Authorization": f"Bearer {token}"})
        if answer.status != 401:
            return answer
        # A 401 means the call was not executed, so repeating it (POST included) is safe.
        logger.info("token refused (HTTP 401): fetching a new one and calling again")
        token = self._refresh_token(rejected=token)
        return self._send(method, path, body, {"Authorization": f"Bearer {token}"})

    def _current_token(self) -> str:
        with self._token_lock:
            if self._token is not None and self._clock() < self._token_expires_at:
                return self._token
            return self._fetch_token_locked()

    def _refresh_token(self, rejected: str) -> str:
        with self._token_lock:
            if self._token is not None and self._token != rejected and self._clock() < self._token_expires_at:
                return self._token  # another thread refreshed it meanwhile
            return self._fetch_token_locked()

    def _fetch_token_locked(self) -> str:
        self._token = None
        answer = self._send("POST", TOKEN_PATH, None, {
            "Authorization": f"Basic {self._basic}",
            "Content-Type": "application/x-www-form-urlencoded",
        }, raw=b"grant_type=client_credentials")
        if answer.status != 200:
            raise _Stop(self._refusal(answer) if answer.status != 401 else failed(
                "authentication_failed", f"token refused: {answer.body.get('error') or answer.status}"))
        token = answer.body.get("access_token")
        if not isinstance(token, str) or not token:
            raise _Stop(failed("provider_error", "token answer without access_token"))
        expires_in = answer.body.get("expires_in")
        if isinstance(expires_in, (int, float)) and not isinstance(expires_in, bool) and expires_in > 0:
            self._token_expires_at = self._clock() + expires_in - min(_TOKEN_MARGIN_S_MAX, expires_in / 10)
        else:  # no lifetime given: use it until the provider answers 401
            self._token_expires_at = float("inf")
        self._token = token
        return token

    def _send(self, method: str, path: str, body: dict[str, Any] | None, headers: dict[str, str],
              raw: bytes | None = None) -> _Answer:
        payload = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        all_headers = {"Accept": "application/json", **headers}
        if body is not None:
            all_headers["Content-Type"] = "application/json"
        connection_class = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        connection = connection_class(self._host, self._port, timeout=self._timeout_s)
        try:
            connection.request(method, self._prefix + path, body=payload, headers=all_headers)
            response = connection.getresponse()
            data = response.read()
            retry_after = response.getheader("Retry-After")
        except TimeoutError as exc:  # socket.timeout is TimeoutError
            raise _Stop(failed("timeout", f"{method} {path}: no answer within {self._timeout_s} s ({exc})")) from exc
        except (OSError, http.client.HTTPException) as exc:
            raise _Stop(failed("connection_error", f"{method} {path}: {type(exc).__name__}: {exc}")) from exc
        finally:
            connection.close()
        try:
            parsed = json.loads(data) if data else {}
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
            if response.status < 400:  # accepted or not, unreadable: only a lookup can tell
                raise _Stop(failed("provider_error", f"{method} {path}: HTTP {response.status} with a non-JSON body"))
            parsed = {}
        return _Answer(response.status, parsed, _retry_after_seconds(retry_after))
