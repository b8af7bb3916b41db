"""A small, stateful, Orange-Money-style cash-in API double (stdlib only), for tests and demos.

It serves the HTTP API documented in :mod:`connectors.mobile_money`::

    with MobileMoneyTestServer(complete_after_polls=1) as srv:
        connector = MobileMoneyConnector(srv.url, srv.client_id, srv.client_secret)
        connector.submit(request)           # -> PENDING
        connector.lookup(request)           # -> SETTLED (the first status poll completes it)

Semantics:

* OAuth2 client credentials: ``POST /oauth/v3/token`` (Basic auth, ``grant_type=client_credentials``)
  issues a bearer token living ``token_ttl_s`` seconds on the server's clock; ``expire_tokens()``
  expires every token issued so far (the next API call answers 401 ``TOKEN_EXPIRED``).
* ``POST /omcoreapis/1.0.2/cashin`` creates a transaction once per partnerTransactionId (201);
  the same id again answers the existing transaction (200) and creates nothing; the same id with
  another MSISDN or amount answers 409 ``PARTNER_TXN_CONFLICT``. ``amount.value`` must be a JSON
  *string* with at most the unit's decimals (a JSON number is 400 ``INVALID_AMOUNT``).
  Refusals (bad MSISDN, ``fail_msisdn(..., at="submit")``, ``set_limit``, ``set_balance``) create
  nothing, so the id stays free.
* A new transaction is PENDING, or SUCCESS at once when ``complete_after_polls == 0``. With
  ``complete_after_polls = N >= 1`` its N-th status GET completes it (SUCCESS, or FAILED with the
  code registered by ``fail_msisdn(..., at="completion")``); with None it stays PENDING until
  ``set_status``.
* ``GET /omcoreapis/1.0.2/cashin/{partnerTransactionId}``: the transaction, or 404
  ``TRANSACTION_NOT_FOUND``.
* Faults (``inject``), matched on method + path prefix, consumed FIFO for the next ``times``
  matching requests once ``after`` of them have passed (counted after authentication, so only
  calls the provider would serve count):
    - ``rate_limit``: 429 ``TOO_MANY_REQUESTS`` + ``Retry-After: retry_after_s``; nothing executed.
    - ``server_error``: ``status`` (500, or 503 ``SERVICE_UNAVAILABLE``); nothing executed.
    - ``unauthorized``: 401 ``INVALID_TOKEN`` whatever the token; nothing executed.
    - ``slow``: sleep ``delay_s``, then handle normally (the transaction is created even if the
      client gave up); ``wait_idle()`` waits for it.
    - ``drop``: close the connection without an answer; nothing executed.
    - ``reset``: reset the connection (RST) without an answer; nothing executed.
    - ``accepted_then_500`` / ``accepted_then_drop`` / ``accepted_then_reset``: execute (create), then
      answer 500 / close / reset.
* ``/_test/...``: the same controls over HTTP (JSON), so a processor in another process can be
  steered: POST reset, faults, fail_msisdn, config, balance, limit, expire_tokens,
  transactions/{id}/status; GET state.
"""

from __future__ import annotations

import base64
import json
import re
import time
import urllib.parse
from decimal import Decimal
from typing import Any, Callable, Dict, List, Optional, Tuple

from sandbox.http_server import Answer, Fault, ThreadedTestHandler, ThreadedTestServer

FAULT_KINDS = ("rate_limit", "server_error", "unauthorized", "slow", "drop", "reset", "accepted_then_500",
               "accepted_then_drop", "accepted_then_reset")
STATUSES = ("PENDING", "SUCCESS", "FAILED")
TOKEN_PATH = "/oauth/v3/token"
CASHIN_PATH = "/omcoreapis/1.0.2/cashin"
DEFAULT_FAILURE_CODE = "TRANSACTION_FAILED"

# The units the double pays in, with their decimals (ISO 4217 exponents).
UNIT_DECIMALS = {"XOF": 0, "XAF": 0, "GNF": 0, "CDF": 2, "USD": 2, "EUR": 2, "MGA": 2, "SLE": 2}
_MSISDN = re.compile(r"[1-9][0-9]{7,14}")
_PARTNER_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_VALUE = re.compile(r"[0-9]+(\.[0-9]+)?")


class _Refusal(Exception):
    def __init__(self, status: int, code: str, message: str, headers: Optional[Dict[str, str]] = None):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}

    def answer(self) -> Tuple[int, Dict[str, Any], Dict[str, str]]:
        return self.status, {"code": self.code, "message": self.message}, dict(self.headers)


class _Drop(Exception):
    """Close ("drop") or reset ("reset") the connection without an answer."""

    def __init__(self, action: str = "drop") -> None:
        super().__init__(action)
        self.action = action


class _Handler(ThreadedTestHandler):
    """Hands the raw body to the provider; answers compact JSON."""

    test_server: MobileMoneyTestServer
    server_version = "mobile-money-test-double/1.0"

    def _answer(self, method: str, split: urllib.parse.SplitResult, raw: bytes) -> Answer:
        return self.test_server.handle(method, split.path, self.headers, raw)


class MobileMoneyTestServer(ThreadedTestServer):
    """Stateful mobile-money provider double. See the module docstring for semantics.

    ``requests_log()`` rows are (method, path, status).
    """

    handler_class = _Handler
    thread_name = "mobile-money-test-server"
    fault_kinds = FAULT_KINDS

    def __init__(self, port: int = 0, host: str = "127.0.0.1", client_id: str = "ledger-client",
                 client_secret: str = "ledger-secret", token_ttl_s: float = 3600.0,
                 complete_after_polls: Optional[int] = None, clock: Callable[[], float] = time.monotonic):
        self.client_id, self.client_secret = client_id, client_secret
        self._defaults = {"token_ttl_s": float(token_ttl_s), "complete_after_polls": complete_after_polls}
        self._clock = clock
        super().__init__(port, host)  # calls _init_state, which reads the settings above

    def _init_state(self) -> None:
        super()._init_state()
        self.token_ttl_s: float = self._defaults["token_ttl_s"]
        self.complete_after_polls: Optional[int] = self._defaults["complete_after_polls"]
        self._tokens: Dict[str, float] = {}  # token -> expiry on self._clock
        self._tokens_issued = 0
        self._transactions: Dict[str, Dict[str, Any]] = {}  # partnerTransactionId -> transaction
        self._failing: Dict[str, Tuple[str, str]] = {}  # msisdn -> (provider code, "submit"|"completion")
        self._balances: Dict[str, Decimal] = {}  # unit -> partner balance (absent: unlimited)
        self._limits: Dict[str, Decimal] = {}  # unit -> largest single cash-in
        self._sequence = 0

    # ------------------------------------------------------ control (Python)
    def configure(self, complete_after_polls: Any = "unchanged", token_ttl_s: Optional[float] = None) -> None:
        with self._lock:
            if complete_after_polls != "unchanged":
                if complete_after_polls is not None and int(complete_after_polls) < 0:
                    raise ValueError("complete_after_polls must be None or >= 0")
                self.complete_after_polls = None if complete_after_polls is None else int(complete_after_polls)
            if token_ttl_s is not None:
                self.token_ttl_s = float(token_ttl_s)

    def inject(self, kind: str = "server_error", path_prefix: str = CASHIN_PATH, method: Optional[str] = "POST",
               times: int = 1, retry_after_s: float = 1, delay_s: float = 1.0, status: Optional[int] = None,
               after: int = 0) -> None:
        """Arm a fault for the next `times` matching requests, once `after` matching ones have passed."""
        self._arm_fault(Fault(kind, path_prefix, method, times, retry_after_s, float(delay_s), status, after))

    def fail_msisdn(self, msisdn: str, code: str, at: str = "submit") -> None:
        """Cash-ins to `msisdn` fail with provider `code`: refused at submission, or accepted then FAILED."""
        if at not in ("submit", "completion"):
            raise ValueError(f"at must be 'submit' or 'completion', got {at!r}")
        with self._lock:
            self._failing[msisdn] = (code, at)

    def set_balance(self, unit: str, value: Optional[str]) -> None:
        """The partner's balance in `unit` (a decimal string); None = unlimited. Each cash-in debits it."""
        with self._lock:
            if value is None:
                self._balances.pop(unit, None)
            else:
                self._balances[unit] = Decimal(str(value))

    def set_limit(self, unit: str, value: Optional[str]) -> None:
        """The largest single cash-in in `unit` (decimal string); None = no limit."""
        with self._lock:
            if value is None:
                self._limits.pop(unit, None)
            else:
                self._limits[unit] = Decimal(str(value))

    def balance(self, unit: str) -> Optional[str]:
        with self._lock:
            value = self._balances.get(unit)
            return None if value is None else str(value)

    def expire_tokens(self) -> None:
        """Every token issued so far is expired: the next API call with one answers 401."""
        with self._lock:
            for token in self._tokens:
                self._tokens[token] = float("-inf")

    def tokens_issued(self) -> int:
        with self._lock:
            return self._tokens_issued

    def set_status(self, partner_id: str, status: str, reason_code: Optional[str] = None) -> Dict[str, Any]:
        """Complete (or reopen) a transaction; FAILED carries provider `reason_code`."""
        if status not in STATUSES:
            raise ValueError(f"bad status {status!r}; expected one of {STATUSES}")
        with self._lock:
            transaction = self._transactions[partner_id]
            self._settle(transaction, status, reason_code)
            return self._public(transaction)

    def transactions(self) -> List[Dict[str, Any]]:
        with self._lock:
            return [self._public(t) for t in self._transactions.values()]

    def transaction(self, partner_id: str) -> Optional[Dict[str, Any]]:
        with self._lock:
            found = self._transactions.get(partner_id)
            return None if found is None else self._public(found)

    # ------------------------------------------------------ request handling
    def handle(self, method: str, path: str, headers: Any, raw: bytes
               ) -> Tuple[int, Dict[str, Any], Dict[str, str], Optional[str]]:
        """(status, body, headers, action); action "drop" closes the connection unanswered, "reset" resets it."""
        try:
            if path != TOKEN_PATH:
                self._authenticate(headers)
            self._faults_before(method, path)
            if path == TOKEN_PATH:
                return (*self._issue_token(method, headers, raw), None)
            status, body = self._route(method, path, raw)
            # Consumed only by a request that executed: a refusal (409, 422...) leaves the fault armed.
            after = self._take_fault(method, path, ("accepted_then_500", "accepted_then_drop", "accepted_then_reset"))
            if after is not None and after.kind in ("accepted_then_drop", "accepted_then_reset"):
                return 0, {}, {}, after.kind.removeprefix("accepted_then_")
            if after is not None:
                return 500, {"code": "INTERNAL_ERROR", "message": "injected after execution"}, {}, None
            return status, body, {}, None
        except _Refusal as refusal:
            return (*refusal.answer(), None)
        except _Drop as drop:
            return 0, {}, {}, drop.action

    def _faults_before(self, method: str, path: str) -> None:
        """Apply a fault that acts before execution: refuse, drop, or delay."""
        fault = self._take_fault(method, path, ("rate_limit", "server_error", "unauthorized", "slow", "drop", "reset"))
        if fault is None:
            return
        if fault.kind == "rate_limit":
            raise _Refusal(429, "TOO_MANY_REQUESTS", "rate limit exceeded",
                           {"Retry-After": f"{fault.retry_after_s:g}"})
        if fault.kind == "server_error":
            status = fault.status or 500
            raise _Refusal(status, "SERVICE_UNAVAILABLE" if status == 503 else "INTERNAL_ERROR", "injected")
        if fault.kind == "unauthorized":
            raise _Refusal(401, "INVALID_TOKEN", "injected: the token is not valid")
        if fault.kind in ("drop", "reset"):
            raise _Drop(fault.kind)
        time.sleep(fault.delay_s)  # slow: then handled normally, even if the client gave up meanwhile

    def _issue_token(self, method: str, headers: Any, raw: bytes) -> Tuple[int, Dict[str, Any], Dict[str, str]]:
        if method != "POST":
            raise _Refusal(405, "METHOD_NOT_ALLOWED", "POST only")
        expected = base64.b64encode(f"{self.client_id}:{self.client_secret}".encode()).decode("ascii")
        if (headers.get("Authorization") or "") != f"Basic {expected}":
            return 401, {"error": "invalid_client", "error_description": "client authentication failed"}, {}
        form = urllib.parse.parse_qs(raw.decode("utf-8", "replace"))
        if form.get("grant_type") != ["client_credentials"]:
            return 400, {"error": "unsupported_grant_type", "error_description": "client_credentials only"}, {}
        with self._lock:
            self._sequence += 1
            token = f"om-token-{self._sequence}-{time.time_ns()}"
            self._tokens[token] = self._clock() + self.token_ttl_s
            self._tokens_issued += 1
            ttl = self.token_ttl_s
        return 200, {"token_type": "Bearer", "access_token": token,
                     "expires_in": int(ttl) if ttl == int(ttl) else ttl}, {}

    def _authenticate(self, headers: Any) -> None:
        auth = headers.get("Authorization") or ""
        token = auth[len("Bearer "):] if auth.startswith("Bearer ") else ""
        with self._lock:
            expiry = self._tokens.get(token)
            if expiry is None:
                raise _Refusal(401, "INVALID_TOKEN", "missing or unknown access token")
            if self._clock() >= expiry:
                raise _Refusal(401, "TOKEN_EXPIRED", "the access token has expired")

    def _route(self, method: str, path: str, raw: bytes) -> Tuple[int, Dict[str, Any]]:
        if path == CASHIN_PATH and method == "POST":
            return self._create(raw)
        if path.startswith(CASHIN_PATH + "/") and method == "GET":
            return 200, self._poll(urllib.parse.unquote(path[len(CASHIN_PATH) + 1:]))
        raise _Refusal(404, "RESOURCE_NOT_FOUND", f"no route for {method} {path}")

    def _create(self, raw: bytes) -> Tuple[int, Dict[str, Any]]:
        try:
            params = json.loads(raw or b"{}")
        except ValueError:
            raise _Refusal(400, "INVALID_REQUEST", "the body is not JSON") from None
        if not isinstance(params, dict):
            raise _Refusal(400, "INVALID_REQUEST", "the body must be a JSON object")
        partner_id = params.get("partnerTransactionId")
        if not isinstance(partner_id, str) or not _PARTNER_ID.fullmatch(partner_id):
            raise _Refusal(400, "INVALID_REQUEST", "partnerTransactionId: 1-64 of [A-Za-z0-9._:-]")
        msisdn = params.get("customerMsisdn")
        if not isinstance(msisdn, str) or not _MSISDN.fullmatch(msisdn):
            raise _Refusal(400, "INVALID_MSISDN", f"customerMsisdn {msisdn!r} is not an MSISDN")
        value, unit = self._amount(params.get("amount"))
        with self._lock:
            existing = self._transactions.get(partner_id)
            if existing is not None:
                if existing["customerMsisdn"] != msisdn or Decimal(existing["amount"]["value"]) != value \
                        or existing["amount"]["unit"] != unit:
                    raise _Refusal(409, "PARTNER_TXN_CONFLICT",
                                   f"partnerTransactionId {partner_id} exists with another MSISDN or amount")
                return 200, self._public(existing)
            code, at = self._failing.get(msisdn, ("", ""))
            if at == "submit":
                raise _Refusal(422, code, f"cash-in to {msisdn} refused: {code}")
            limit = self._limits.get(unit)
            if limit is not None and value > limit:
                raise _Refusal(422, "AMOUNT_ABOVE_LIMIT", f"{value} {unit} is above the limit {limit} {unit}")
            balance = self._balances.get(unit)
            if balance is not None and value > balance:
                raise _Refusal(422, "PARTNER_BALANCE_INSUFFICIENT", f"partner balance {balance} {unit} is too low")
            if balance is not None:
                self._balances[unit] = balance - value
            self._sequence += 1
            transaction = {
                "txnid": f"CI{time.strftime('%y%m%d.%H%M')}.A{self._sequence:05d}",
                "partnerTransactionId": partner_id,
                "customerMsisdn": msisdn,
                "amount": {"value": params["amount"]["value"], "unit": unit},
                "reference": params.get("reference"),
                "description": params.get("description"),
                "status": "PENDING",
                "errorCode": None,
                "message": "cash-in initiated",
                "createdAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "_polls": 0,
            }
            self._transactions[partner_id] = transaction
            self._note_creation(partner_id)
            if self.complete_after_polls == 0:
                self._complete(transaction)
            return 201, self._public(transaction)

    @staticmethod
    def _amount(amount: Any) -> Tuple[Decimal, str]:
        if not isinstance(amount, dict):
            raise _Refusal(400, "INVALID_AMOUNT", "amount must be {value, unit}")
        unit, value = amount.get("unit"), amount.get("value")
        if unit not in UNIT_DECIMALS:
            raise _Refusal(400, "INVALID_CURRENCY", f"unit {unit!r} is not served")
        if not isinstance(value, str) or not _VALUE.fullmatch(value):
            raise _Refusal(400, "INVALID_AMOUNT", f"amount.value must be a decimal string, got {value!r}")
        decimals = len(value.split(".")[1]) if "." in value else 0
        if decimals > UNIT_DECIMALS[unit]:
            raise _Refusal(400, "INVALID_AMOUNT", f"{unit} has {UNIT_DECIMALS[unit]} decimals, got {value!r}")
        if Decimal(value) <= 0:
            raise _Refusal(400, "INVALID_AMOUNT", "amount.value must be positive")
        return Decimal(value), unit

    def _poll(self, partner_id: str) -> Dict[str, Any]:
        with self._lock:
            transaction = self._transactions.get(partner_id)
            if transaction is None:
                raise _Refusal(404, "TRANSACTION_NOT_FOUND", f"no transaction {partner_id}")
            if transaction["status"] == "PENDING" and self.complete_after_polls is not None:
                transaction["_polls"] += 1
                if transaction["_polls"] >= self.complete_after_polls:
                    self._complete(transaction)
            return self._public(transaction)

    def _complete(self, transaction: Dict[str, Any]) -> None:
        code, at = self._failing.get(transaction["customerMsisdn"], ("", ""))
        if at == "completion":
            self._settle(transaction, "FAILED", code)
        else:
            self._settle(transaction, "SUCCESS", None)

    @staticmethod
    def _settle(transaction: Dict[str, Any], status: str, code: Optional[str]) -> None:
        transaction["status"] = status
        transaction["errorCode"] = (code or DEFAULT_FAILURE_CODE) if status == "FAILED" else None
        transaction["message"] = {"SUCCESS": "cash-in successful", "PENDING": "cash-in initiated"}.get(
            status, f"cash-in failed: {transaction['errorCode']}")

    # ---------------------------------------------------- HTTP control API
    def _control(self, method: str, parts: List[str], data: Any) -> Optional[Tuple[int, Dict[str, Any]]]:
        """/_test/ endpoints beyond reset and faults."""
        if method == "POST" and parts == ["fail_msisdn"]:
            self.fail_msisdn(**data)
        elif method == "POST" and parts == ["config"]:
            self.configure(**data)
        elif method == "POST" and parts == ["balance"]:
            self.set_balance(**data)
        elif method == "POST" and parts == ["limit"]:
            self.set_limit(**data)
        elif method == "POST" and parts == ["expire_tokens"]:
            self.expire_tokens()
        elif method == "POST" and len(parts) == 3 and parts[0] == "transactions" and parts[2] == "status":
            return 200, self.set_status(urllib.parse.unquote(parts[1]), **data)
        elif method == "GET" and parts == ["state"]:
            return 200, {"transactions": self.transactions(), "creations_by_key": self.creations_by_key(),
                         "tokens_issued": self.tokens_issued(), "pending_faults": self.pending_faults(),
                         "requests": [list(r) for r in self.requests_log()]}
        else:
            return None
        return 200, {"ok": True}
