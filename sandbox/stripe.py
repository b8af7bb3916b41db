"""A small, stateful, Stripe-API-compatible HTTP test double (stdlib only).

Drive the *real* ``stripe`` SDK against it::

    with StripeTestServer() as srv:
        acct = srv.create_account(balance=10_000)
        client = stripe.StripeClient(
            "sk_test_x", base_addresses={"api": srv.url}, max_network_retries=0
        )
        tr = client.v1.transfers.create(
            params={"amount": 100, "currency": "usd", "destination": acct},
            options={"idempotency_key": "payout-1"},
        )

Semantics implemented (mirroring Stripe where it matters for us):

* Auth: every ``/v1`` request needs ``Authorization: Bearer sk_test_...``,
  otherwise 401 ``invalid_request_error`` (SDK -> ``AuthenticationError``).
* Idempotency (POST only, like Stripe; the SDK only sends keys on POST):
  keys are scoped by (api key, Stripe-Account header, key).  The FIRST
  response that the endpoint produced once it started executing (any status
  code, including a 500 from an injected ``server_error`` or
  ``accepted_then_500`` fault, and business errors such as ``no_account``)
  is stored and replayed verbatim with header ``Idempotent-Replayed: true``.
  Real Stripe keeps such results (including 500s) for 24 hours; here they
  live until ``reset()``.
  NOT stored (so the key can be used again): 401, 429 (``rate_limit``
  fault), parameter-validation 400s (missing/invalid params - Stripe: "if
  incoming parameters failed validation ... no idempotent result is saved"),
  409 concurrent-use responses and ``drop`` / ``reset`` faults.
  Same key + different method/path/params -> 400 ``idempotency_error``.
  Same key while the first request is still executing -> 409
  ``idempotency_error`` code ``idempotency_key_in_use`` (SDK retries 409s).
  Keys longer than 255 chars -> 400 ``invalid_request_error``.
* Insufficient balance uses Stripe's real code ``balance_insufficient``
  (type ``invalid_request_error``, HTTP 400), not ``insufficient_funds``.
  An account's ``balance`` (if not None) is the amount still transferable to
  it; each successful transfer decrements it.
* Faults (``inject``) - matched on method + path prefix, consumed FIFO for
  the next ``times`` matching requests:
    - ``rate_limit``: 429 ``rate_limit_error`` + ``Retry-After``; checked
      before idempotency (like Stripe's rate limiter), never stored.
    - ``drop``: the connection is closed without any response; nothing is
      executed or stored.
    - ``reset``: the connection is reset (RST) without any response; nothing
      is executed or stored (a client sees ConnectionResetError).
    - ``accepted_then_drop``: the object is created and the response stored
      for the key, then the connection is closed without a response.
    - ``accepted_then_reset``: the same, then the connection is reset (RST).
    - ``slow``: after the idempotency key is locked, sleep ``delay_s`` then
      handle normally (the result is stored even if the client gave up).
    - ``server_error``: 500 ``api_error`` without executing; stored for the
      key (a replay returns the same 500).  Only consumed by requests that
      would actually execute (not by replays).
    - ``accepted_then_500``: executes (creates the object) then answers 500;
      the stored/replayed response is that 500 (what was sent).
  ``should_retry=True/False`` adds ``Stripe-Should-Retry`` to the fault
  response; the stripe SDK obeys that header before anything else.
* Transfers can be updated (``POST /v1/transfers/{id}``: description,
  metadata) and reversed (``POST /v1/transfers/{id}/reversals``: ``amount``
  defaults to what is not reversed yet; more than that is a 400); a reversal
  raises ``amount_reversed``, sets ``reversed`` once nothing is left, and
  gives the destination account's ``balance`` (if tracked) back.
  ``GET /v1/transfers/{id}/reversals[/{trr}]`` lists and reads them.
* Events: every transfer created, updated or reversed is recorded as the
  event Stripe would send (``transfer.created``, ``transfer.updated`` with
  ``previous_attributes``, ``transfer.reversed``; ``data.object`` is the
  transfer as it was then), in the order things happened: ``events()``.
  Nothing is delivered by the server itself; ``sign_webhook`` signs a
  payload (bytes exactly as given) for a client that delivers them.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Dict, List, Optional, Tuple

from sandbox.http_server import Answer, Fault, ThreadedTestHandler, ThreadedTestServer

FAULT_KINDS = (
    "rate_limit",
    "server_error",
    "slow",
    "drop",
    "reset",
    "accepted_then_500",
    "accepted_then_drop",
    "accepted_then_reset",
)
PAYOUT_STATUSES = ("pending", "in_transit", "paid", "failed", "canceled")
MAX_IDEMPOTENCY_KEY_LEN = 255

_ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def _new_id(prefix: str) -> str:
    """prefix + 24 random alphanumerics, from one draw (a choice per character cost ~60 us a request)."""
    number, chars = secrets.randbits(143), []  # 62 ** 24 > 2 ** 142
    for _ in range(24):
        number, digit = divmod(number, 62)
        chars.append(_ALNUM[digit])
    return prefix + "".join(chars)


class _ApiError(Exception):
    """An error response; ``store`` says whether idempotency may keep it."""

    def __init__(self, status: int, type_: str, message: str, code: Optional[str] = None,
                 param: Optional[str] = None, store: bool = True,
                 headers: Optional[Dict[str, str]] = None):
        super().__init__(message)
        self.status = status
        self.store = store
        self.headers = headers or {}
        err: Dict[str, Any] = {"type": type_, "message": message}
        if code:
            err["code"] = code
        if param:
            err["param"] = param
        self.body = {"error": err}


def _invalid(message, code=None, param=None, status=400, store=True):
    return _ApiError(status, "invalid_request_error", message, code, param, store)


def _param_error(message, param, code="parameter_invalid"):
    # Validation failures: never stored for idempotency (Stripe semantics).
    return _invalid(message, code=code, param=param, store=False)


def decode_form(body: str) -> Dict[str, Any]:
    """Decode Stripe-style nested form encoding (a[b][c]=v, a[0]=v)."""
    result: Dict[str, Any] = {}
    for key, value in urllib.parse.parse_qsl(body, keep_blank_values=True):
        m = re.match(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$", key)
        if not m:
            result[key] = value
            continue
        parts = [m.group(1)] + re.findall(r"\[([^\[\]]*)\]", m.group(2))
        node: Any = result
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, list):
                if part == "" or part.isdigit():
                    idx = len(node) if part == "" else int(part)
                    while len(node) <= idx:
                        node.append(None)
                    if last:
                        node[idx] = value
                    else:
                        if node[idx] is None:
                            node[idx] = [] if (parts[i + 1] == "" or parts[i + 1].isdigit()) else {}
                        node = node[idx]
                    continue
                break  # malformed mixture; ignore
            if last:
                node[part] = value
            else:
                nxt = parts[i + 1]
                if part not in node or not isinstance(node[part], (dict, list)):
                    node[part] = [] if (nxt == "" or nxt.isdigit()) else {}
                node = node[part]
    return result


class _Fault(Fault):
    def __init__(self, kind, path_prefix, method, times, retry_after_s, delay_s, should_retry, status):
        super().__init__(kind, path_prefix, method, times, retry_after_s, delay_s, status)
        self.should_retry = should_retry


class _Handler(ThreadedTestHandler):
    """Decodes Stripe's form (or JSON) bodies and answers like api.stripe.com."""

    test_server: StripeTestServer
    server_version = "stripe-test-double/1.0"
    json_indent = None  # compact: the C encoder (Stripe indents, which the SDK does not care about)

    def _answer(self, method: str, split: urllib.parse.SplitResult, raw: bytes) -> Answer:
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        if raw and ctype == "application/json":
            try:
                params = json.loads(raw)
            except ValueError:
                params = {}
        else:
            params = decode_form(raw.decode("utf-8"))
        query = decode_form(split.query)
        key = self.headers.get("Idempotency-Key")
        status, body, hdrs, action = self.test_server.handle(method, split.path, query, params, self.headers)
        if key and method == "POST":
            hdrs.setdefault("Idempotency-Key", key)
        return status, body, hdrs, action

    def _log_entry(self, method: str, path: str, status: int) -> Tuple[Any, ...]:
        return (method, path, self.headers.get("Idempotency-Key"), status)

    def _standard_headers(self) -> Dict[str, str]:
        return {"Request-Id": _new_id("req_"), "Stripe-Version": "2024-06-20"}

    def do_DELETE(self):
        self._dispatch("DELETE")


class StripeTestServer(ThreadedTestServer):
    """Stateful Stripe API double. See module docstring for semantics.

    ``requests_log()`` rows are (method, path, idempotency_key, status).
    """

    handler_class = _Handler
    thread_name = "stripe-test-server"
    fault_kinds = FAULT_KINDS

    # ---------------------------------------------------------------- state
    def _init_state(self):
        super()._init_state()
        self._accounts: Dict[str, Dict[str, Any]] = {}
        self._transfers: Dict[str, Dict[str, Any]] = {}
        self._payouts: Dict[str, Dict[str, Any]] = {}
        self._events: List[Dict[str, Any]] = []  # what Stripe would deliver, in the order it happened
        # scope -> {"fingerprint", "status", "body", "headers", "key"} or in-flight marker
        self._idem: Dict[Tuple[str, str, str], Dict[str, Any]] = {}

    # ------------------------------------------------------ control (Python)
    def create_account(self, account_id: Optional[str] = None, payouts_enabled: bool = True,
                       balance: Optional[int] = None, metadata: Optional[dict] = None) -> str:
        with self._lock:
            acct_id = account_id or _new_id("acct_")
            self._accounts[acct_id] = {
                "id": acct_id,
                "object": "account",
                "type": "express",
                "charges_enabled": True,
                "payouts_enabled": bool(payouts_enabled),
                "details_submitted": True,
                "country": "US",
                "default_currency": "usd",
                "metadata": dict(metadata or {}),
                "created": int(time.time()),
                "_balance": balance,
            }
            return acct_id

    def update_account(self, account_id: str, **changes) -> None:
        """Change payouts_enabled / balance / metadata of an existing account."""
        with self._lock:
            acct = self._accounts[account_id]
            if "balance" in changes:
                acct["_balance"] = changes.pop("balance")
            acct.update(changes)

    def account_balance(self, account_id: str) -> Optional[int]:
        with self._lock:
            return self._accounts[account_id]["_balance"]

    def inject(self, path_prefix: str = "/v1/", method: Optional[str] = "POST", kind: str = "server_error",
               times: int = 1, retry_after_s: float = 1, delay_s: float = 1.0,
               should_retry: Optional[bool] = None, status: Optional[int] = None) -> None:
        self._arm_fault(_Fault(kind, path_prefix, method, times, retry_after_s, delay_s, should_retry, status))

    def transfers(self) -> List[Dict[str, Any]]:
        with self._lock:
            return [json.loads(json.dumps(t)) for t in self._transfers.values()]

    def payouts(self) -> List[Dict[str, Any]]:
        with self._lock:
            return [json.loads(json.dumps(p)) for p in self._payouts.values()]

    def set_payout_status(self, payout_id: str, status: str, failure_code: Optional[str] = None,
                          failure_message: Optional[str] = None) -> Dict[str, Any]:
        if status not in PAYOUT_STATUSES:
            raise ValueError(f"bad payout status {status!r}")
        with self._lock:
            po = self._payouts[payout_id]
            po["status"] = status
            if status == "failed":
                po["failure_code"] = failure_code or "could_not_process"
                po["failure_message"] = failure_message or f"Payout failed: {po['failure_code']}"
            else:
                po["failure_code"] = None
                po["failure_message"] = None
            return json.loads(json.dumps(po))

    def events(self, type_prefix: str = "", object_id: Optional[str] = None) -> List[Dict[str, Any]]:
        """The events recorded so far, oldest first (optionally of a type prefix, about one object)."""
        with self._lock:
            return [json.loads(json.dumps(e)) for e in self._events if e["type"].startswith(type_prefix)
                    and (object_id is None or e["data"]["object"].get("id") == object_id)]

    def _record_event(self, type_: str, obj: Dict[str, Any], key: Optional[str],
                      previous: Optional[Dict[str, Any]] = None) -> None:
        """Called with the lock held, right after the change: the object as it is now."""
        data: Dict[str, Any] = {"object": self._public(obj)}
        if previous is not None:
            data["previous_attributes"] = previous
        self._events.append({
            "id": _new_id("evt_"), "object": "event", "api_version": "2024-06-20", "type": type_,
            "created": int(time.time()), "livemode": False, "pending_webhooks": 1,
            "request": {"id": _new_id("req_"), "idempotency_key": key}, "data": data})

    # ------------------------------------------------------------- webhooks
    @staticmethod
    def sign_webhook(payload: bytes | str, secret: str, timestamp: Optional[int] = None) -> str:
        """Stripe's header for this payload: an HMAC-SHA256 of "<t>.<payload>" over the bytes as given (a
        str is encoded as UTF-8), so a body that is not UTF-8 can be signed too."""
        raw = payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)
        ts = int(time.time()) if timestamp is None else int(timestamp)
        sig = hmac.new(secret.encode("utf-8"), b"%d." % ts + raw, hashlib.sha256).hexdigest()
        return f"t={ts},v1={sig}"

    @staticmethod
    def event(type: str, data_object: Dict[str, Any], created: Optional[int] = None,
              event_id: Optional[str] = None, account: Optional[str] = None) -> bytes:
        evt: Dict[str, Any] = {
            "id": event_id or _new_id("evt_"),
            "object": "event",
            "api_version": "2024-06-20",
            "type": type,
            "created": int(time.time()) if created is None else int(created),
            "livemode": False,
            "pending_webhooks": 1,
            "request": {"id": None, "idempotency_key": None},
            "data": {"object": data_object},
        }
        if account:
            evt["account"] = account
        return json.dumps(evt).encode("utf-8")

    @classmethod
    def send_webhook(cls, url: str, payload: bytes, secret: str, timestamp: Optional[int] = None,
                     timeout: float = 5.0) -> int:
        req = urllib.request.Request(
            url, data=payload, method="POST",
            headers={"Content-Type": "application/json; charset=utf-8",
                     "Stripe-Signature": cls.sign_webhook(payload, secret, timestamp),
                     "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status
        except urllib.error.HTTPError as e:
            return e.code

    # ------------------------------------------------------ request handling
    def handle(self, method: str, path: str, query: Dict[str, Any], params: Dict[str, Any],
               headers) -> Tuple[int, Dict[str, Any], Dict[str, str], Optional[str]]:
        """Returns (status, body, extra_headers, action) with action None/"drop"/"reset"."""
        key = headers.get("Idempotency-Key")
        auth = headers.get("Authorization") or ""
        api_key = auth[len("Bearer "):].strip() if auth.startswith("Bearer ") else ""
        if not api_key.startswith("sk_test_"):
            msg = ("You did not provide an API key." if not api_key else
                   f"Invalid API Key provided: {api_key[:8]}{'*' * max(0, len(api_key) - 8)}")
            return 401, _invalid(msg, status=401).body, {}, None

        fault = self._take_fault(method, path, ("rate_limit", "drop", "reset", "slow"))
        if fault and fault.kind == "rate_limit":
            hdrs = {"Retry-After": str(fault.retry_after_s)}
            if fault.should_retry is not None:
                hdrs["Stripe-Should-Retry"] = "true" if fault.should_retry else "false"
            body = {"error": {"type": "rate_limit_error", "code": "rate_limit",
                              "message": "Request rate limit exceeded. Learn more about rate limits here "
                                         "https://stripe.com/docs/rate-limits."}}
            return 429, body, hdrs, None
        if fault and fault.kind in ("drop", "reset"):
            return 0, {}, {}, fault.kind

        if method != "POST" or not key:
            if fault and fault.kind == "slow":
                time.sleep(fault.delay_s)
            return self._execute(method, path, query, params, headers, key) + (None,)

        if len(key) > MAX_IDEMPOTENCY_KEY_LEN:
            return 400, _invalid(
                f"Invalid idempotency key: keys must be at most {MAX_IDEMPOTENCY_KEY_LEN} characters long.",
                param="Idempotency-Key").body, {}, None

        scope = (api_key, headers.get("Stripe-Account") or "", key)
        fingerprint = json.dumps([method, path, params], sort_keys=True)
        with self._lock:
            rec = self._idem.get(scope)
            if rec is not None:
                if rec["fingerprint"] != fingerprint:
                    return 400, {"error": {
                        "type": "idempotency_error",
                        "message": "Keys for idempotent requests can only be used with the same parameters "
                                   "they were first used with. Try using a key other than "
                                   f"'{key}' if you meant to execute a different request."}}, {}, None
                if rec["status"] is None:
                    return 409, {"error": {
                        "type": "idempotency_error", "code": "idempotency_key_in_use",
                        "message": "There is currently another in-progress request using this Stripe "
                                   "token (probably a duplicate of this one). Please try again later."}}, {}, None
                hdrs = dict(rec["headers"])
                hdrs["Idempotent-Replayed"] = "true"
                return rec["status"], json.loads(rec["body"]), hdrs, None
            self._idem[scope] = {"fingerprint": fingerprint, "status": None}

        store = True
        action = None
        try:
            if fault and fault.kind == "slow":
                time.sleep(fault.delay_s)
            f2 = self._take_fault(method, path, ("server_error", "accepted_then_500", "accepted_then_drop",
                                                 "accepted_then_reset"))
            if f2 is not None and f2.kind == "server_error":
                status, body, hdrs = self._fault_500(f2)
            else:
                status, body, hdrs = self._execute(method, path, query, params, headers, key)
                if f2 is not None and status < 400 and f2.kind == "accepted_then_500":
                    status, body, hdrs = self._fault_500(f2)
                elif f2 is not None and status < 400 and f2.kind in ("accepted_then_drop", "accepted_then_reset"):
                    action = f2.kind.removeprefix("accepted_then_")
            store = hdrs.pop("_store", "1") == "1"
        except BaseException:
            with self._lock:
                self._idem.pop(scope, None)
            raise
        with self._lock:
            if store:
                stored_hdrs = {k: v for k, v in hdrs.items()}
                self._idem[scope] = {"fingerprint": fingerprint, "status": status,
                                     "body": json.dumps(body), "headers": stored_hdrs}
            else:
                self._idem.pop(scope, None)
        return status, body, hdrs, action

    @staticmethod
    def _fault_500(f: _Fault):
        hdrs = {}
        if f.should_retry is not None:
            hdrs["Stripe-Should-Retry"] = "true" if f.should_retry else "false"
        body = {"error": {"type": "api_error",
                          "message": "An unknown error occurred (injected by StripeTestServer)."}}
        return (f.status or 500), body, hdrs

    def _execute(self, method, path, query, params, headers, key):
        try:
            status, body = self._route(method, path, query, params, headers, key)
            return status, body, {}
        except _ApiError as e:
            hdrs = dict(e.headers)
            hdrs["_store"] = "1" if e.store else "0"
            return e.status, e.body, hdrs

    # --------------------------------------------------------------- routes
    def _route(self, method, path, query, params, headers, key):
        parts = [p for p in path.split("/") if p]
        if len(parts) >= 2 and parts[0] == "v1":
            res = parts[1]
            rest = parts[2:]
            if res == "transfers":
                if method == "POST" and not rest:
                    return 200, self._create_transfer(params, key)
                if method == "GET" and not rest:
                    return 200, self._list_transfers(query)
                if method == "GET" and len(rest) == 1:
                    return 200, self._get(self._transfers, rest[0], "transfer")
                if method == "POST" and len(rest) == 1:
                    return 200, self._update_transfer(rest[0], params, key)
                if method == "POST" and len(rest) == 2 and rest[1] == "reversals":
                    return 200, self._reverse_transfer(rest[0], params, key)
                if method == "GET" and len(rest) == 2 and rest[1] == "reversals":
                    return 200, self._get(self._transfers, rest[0], "transfer")["reversals"]
                if method == "GET" and len(rest) == 3 and rest[1] == "reversals":
                    for reversal in self._get(self._transfers, rest[0], "transfer")["reversals"]["data"]:
                        if reversal["id"] == rest[2]:
                            return 200, reversal
                    raise _invalid(f"No such transfer reversal: '{rest[2]}'", code="resource_missing", param="id",
                                   status=404)
            elif res == "payouts":
                if method == "POST" and not rest:
                    return 200, self._create_payout(params, headers, key)
                if method == "GET" and len(rest) == 1:
                    with self._lock:
                        po = self._payouts.get(rest[0])
                        # Payouts are only visible with the same Stripe-Account header (Stripe Connect).
                        if po is None or po["_account"] != (headers.get("Stripe-Account") or ""):
                            raise _invalid(f"No such payout: '{rest[0]}'", code="resource_missing",
                                           param="id", status=404)
                        return 200, self._public(po)
            elif res == "accounts":
                if method == "GET" and len(rest) == 1:
                    return 200, self._get(self._accounts, rest[0], "account")
            elif res == "balance" and method == "GET" and not rest:
                acct = headers.get("Stripe-Account")
                amount = 0
                if acct and acct in self._accounts:
                    amount = self._accounts[acct]["_balance"] or 0
                return 200, {"object": "balance", "livemode": False,
                             "available": [{"amount": amount, "currency": "usd"}],
                             "pending": [{"amount": 0, "currency": "usd"}]}
        raise _invalid(f"Unrecognized request URL ({method}: {path}). Please see https://stripe.com/docs "
                       "or we can help at https://support.stripe.com/.", status=404, store=False)

    def _get(self, table, obj_id, name):
        with self._lock:
            obj = table.get(obj_id)
            if obj is None:
                raise _invalid(f"No such {name}: '{obj_id}'", code="resource_missing", param="id",
                               status=404, store=True)
            return self._public(obj)

    @staticmethod
    def _check_known(params, allowed):
        for k in params:
            if k not in allowed:
                raise _param_error(f"Received unknown parameter: {k}", k, code="parameter_unknown")

    @staticmethod
    def _amount(params):
        if "amount" not in params:
            raise _param_error("Missing required param: amount.", "amount", code="parameter_missing")
        raw = params["amount"]
        if not isinstance(raw, str) or not re.fullmatch(r"\d+", raw):
            raise _param_error(f"Invalid integer: {raw}", "amount", code="parameter_invalid_integer")
        amount = int(raw)
        if amount <= 0:
            raise _param_error("This value must be greater than or equal to 1.", "amount",
                               code="parameter_invalid_integer")
        return amount

    @staticmethod
    def _currency(params):
        if "currency" not in params:
            raise _param_error("Missing required param: currency.", "currency", code="parameter_missing")
        cur = params["currency"]
        if not isinstance(cur, str) or not re.fullmatch(r"[a-z]{3}", cur):
            raise _param_error(f"Invalid currency: {cur}. Stripe currently supports these currencies: "
                               "usd, eur, gbp, ... (lowercase ISO codes)", "currency",
                               code="invalid_currency" if isinstance(cur, str) else "parameter_invalid")
        return cur

    @staticmethod
    def _metadata(params):
        md = params.get("metadata", {})
        if md == "":
            return {}
        if not isinstance(md, dict) or not all(isinstance(v, str) for v in md.values()):
            raise _param_error("Invalid object", "metadata")
        if len(md) > 50:
            raise _param_error("Metadata can have at most 50 keys.", "metadata")
        return dict(md)

    def _create_transfer(self, params, key):
        self._check_known(params, {"amount", "currency", "destination", "description", "transfer_group",
                                   "metadata", "source_transaction", "source_type", "expand"})
        amount = self._amount(params)
        currency = self._currency(params)
        metadata = self._metadata(params)
        dest = params.get("destination")
        if not dest:
            raise _param_error("Missing required param: destination.", "destination", code="parameter_missing")
        if not isinstance(dest, str) or not dest.startswith("acct_"):
            raise _param_error(f"Invalid destination: {dest}", "destination")
        with self._lock:
            acct = self._accounts.get(dest)
            if acct is None:
                raise _invalid(f"No such destination: '{dest}'", code="no_account", param="destination")
            if not acct["payouts_enabled"]:
                raise _invalid("Your destination account needs to have at least one of the following "
                               "capabilities enabled: transfers, crypto_transfers, legacy_payments",
                               code="account_invalid", param="destination")
            bal = acct["_balance"]
            if bal is not None and amount > bal:
                raise _invalid("You have insufficient available funds in your Stripe account. Try adding "
                               "funds directly to your available balance by creating Top-ups.",
                               code="balance_insufficient")
            if bal is not None:
                acct["_balance"] = bal - amount
            tr_id = _new_id("tr_")
            tr = {
                "id": tr_id,
                "object": "transfer",
                "amount": amount,
                "amount_reversed": 0,
                "balance_transaction": _new_id("txn_"),
                "created": int(time.time()),
                "currency": currency,
                "description": params.get("description") or None,
                "destination": dest,
                "destination_payment": _new_id("py_"),
                "livemode": False,
                "metadata": metadata,
                "reversals": {"object": "list", "data": [], "has_more": False, "total_count": 0,
                              "url": f"/v1/transfers/{tr_id}/reversals"},
                "reversed": False,
                "source_transaction": params.get("source_transaction") or None,
                "source_type": params.get("source_type") or "card",
                "transfer_group": params.get("transfer_group") or None,
            }
            self._transfers[tr_id] = tr
            self._note_creation(key)
            self._record_event("transfer.created", tr, key)
            return json.loads(json.dumps(tr))

    def _transfer(self, tr_id: str) -> Dict[str, Any]:
        tr = self._transfers.get(tr_id)
        if tr is None:
            raise _invalid(f"No such transfer: '{tr_id}'", code="resource_missing", param="id", status=404)
        return tr

    def _update_transfer(self, tr_id, params, key):
        self._check_known(params, {"description", "metadata", "expand"})
        metadata = self._metadata(params) if "metadata" in params else None
        with self._lock:
            tr = self._transfer(tr_id)
            previous: Dict[str, Any] = {}
            if "description" in params and (params["description"] or None) != tr["description"]:
                previous["description"] = tr["description"]
                tr["description"] = params["description"] or None
            if metadata is not None:
                merged = {k: v for k, v in {**tr["metadata"], **metadata}.items() if v != ""}  # "" unsets a key
                if merged != tr["metadata"]:
                    previous["metadata"] = dict(tr["metadata"])
                    tr["metadata"] = merged
            if previous:
                self._record_event("transfer.updated", tr, key, previous)
            return json.loads(json.dumps(tr))

    def _reverse_transfer(self, tr_id, params, key):
        self._check_known(params, {"amount", "description", "metadata", "refund_application_fee", "expand"})
        metadata = self._metadata(params)
        with self._lock:
            tr = self._transfer(tr_id)
            remaining = tr["amount"] - tr["amount_reversed"]
            amount = self._amount(params) if "amount" in params else remaining
            if remaining == 0:
                raise _invalid(f"Transfer {tr_id} has already been fully reversed.", param="amount")
            if amount > remaining:
                raise _invalid(f"Amount {amount} is greater than the unreversed amount of transfer {tr_id} "
                               f"({remaining}).", param="amount")
            reversal = {
                "id": _new_id("trr_"), "object": "transfer_reversal", "amount": amount,
                "balance_transaction": _new_id("txn_"), "created": int(time.time()), "currency": tr["currency"],
                "destination_payment_refund": _new_id("pyr_"), "metadata": metadata, "source_refund": None,
                "transfer": tr_id,
            }
            tr["amount_reversed"] += amount
            tr["reversed"] = tr["amount_reversed"] == tr["amount"]
            listing = tr["reversals"]
            listing["data"].insert(0, reversal)  # newest first, as Stripe lists them
            listing["total_count"] += 1
            acct = self._accounts.get(tr["destination"])
            if acct is not None and acct["_balance"] is not None:
                acct["_balance"] += amount  # the money comes back from the account
            self._note_creation(key)
            self._record_event("transfer.reversed", tr, key)
            return json.loads(json.dumps(reversal))

    def _list_transfers(self, query):
        limit = query.get("limit", "10")
        if not re.fullmatch(r"\d+", str(limit)) or not 1 <= int(limit) <= 100:
            raise _param_error("Invalid limit: must be an integer between 1 and 100.", "limit")
        limit = int(limit)
        with self._lock:
            items = list(reversed(list(self._transfers.values())))  # newest first (insertion order)
            if query.get("destination"):
                items = [t for t in items if t["destination"] == query["destination"]]
            if query.get("transfer_group"):
                items = [t for t in items if t["transfer_group"] == query["transfer_group"]]
            md = query.get("metadata")
            if isinstance(md, dict):  # extension: real Stripe does not filter transfers by metadata
                items = [t for t in items if all(t["metadata"].get(k) == v for k, v in md.items())]
            if query.get("starting_after"):
                ids = [t["id"] for t in items]
                if query["starting_after"] in ids:
                    items = items[ids.index(query["starting_after"]) + 1:]
            page = items[:limit]
            return {"object": "list", "url": "/v1/transfers", "has_more": len(items) > limit,
                    "data": [json.loads(json.dumps(t)) for t in page]}

    def _create_payout(self, params, headers, key):
        self._check_known(params, {"amount", "currency", "method", "description", "metadata",
                                   "statement_descriptor", "destination", "source_type", "expand"})
        amount = self._amount(params)
        currency = self._currency(params)
        metadata = self._metadata(params)
        method = params.get("method", "standard")
        if method not in ("standard", "instant"):
            raise _param_error("Invalid method: must be one of standard, instant", "method")
        acct_id = headers.get("Stripe-Account") or ""
        with self._lock:
            if acct_id:
                acct = self._accounts.get(acct_id)
                if acct is None:
                    raise _ApiError(403, "invalid_request_error",
                                    f"The provided key does not have access to account '{acct_id}' "
                                    "(or that account does not exist).", code="account_invalid")
                if not acct["payouts_enabled"]:
                    raise _invalid("Payouts are not enabled for this account.", code="account_invalid")
            now = int(time.time())
            po_id = _new_id("po_")
            po = {
                "id": po_id,
                "object": "payout",
                "amount": amount,
                "arrival_date": now + (0 if method == "instant" else 2 * 86400),
                "automatic": False,
                "balance_transaction": _new_id("txn_"),
                "created": now,
                "currency": currency,
                "description": params.get("description") or None,
                "destination": "ba_" + secrets.token_hex(12),
                "failure_code": None,
                "failure_message": None,
                "livemode": False,
                "metadata": metadata,
                "method": method,
                "source_type": params.get("source_type") or "card",
                "statement_descriptor": params.get("statement_descriptor") or None,
                "status": "pending",
                "type": "bank_account",
                "_account": acct_id,
            }
            self._payouts[po_id] = po
            self._note_creation(key)
            return self._public(po)

    # ---------------------------------------------------- HTTP control API
    def _control(self, method, parts, data):
        """/_test/ endpoints beyond reset and faults: accounts, payouts/{id}/status, state."""
        if method == "POST" and parts == ["accounts"]:
            return 200, {"id": self.create_account(**data)}
        if method == "POST" and len(parts) == 3 and parts[0] == "payouts" and parts[2] == "status":
            return 200, self._public(self.set_payout_status(parts[1], **data))
        if method == "GET" and parts == ["state"]:
            return 200, {"transfers": self.transfers(),
                         "payouts": [self._public(p) for p in self.payouts()],
                         "creations_by_key": self.creations_by_key(),
                         "requests": [list(r) for r in self.requests_log()]}
        return None
