"""The operator web page at /ui (server-rendered, no JavaScript): health, pause, alerts, payouts, retry buttons."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
from datetime import datetime, timezone
from typing import Any, Callable

import jinja2
import sqlalchemy
from confluent_kafka import KafkaException
from fastapi import APIRouter, Depends, Form, Path, Request
from fastapi.responses import FileResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from api import health
from api.auth import Principal, Role
from api.context import ApiContext, context
from api.routes_payouts import ID_PATTERN
from ledger.earnings import close_id
from ledger.package_data import package_dir
from processors.kafka_io import DeliveryFailed
from processors.operations import ActionResult, OperationRefused
from projections import queries
from projections.payout_controls import read_pause

router = APIRouter(include_in_schema=False)
log = logging.getLogger("ledger.api.page")

TEMPLATE_DIR = package_dir("api", "templates")  # package data of api, installed or checked out
STATIC_DIR = package_dir("api", "static")
TEMPLATES = Jinja2Templates(env=jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATE_DIR),
                                                   autoescape=True, undefined=jinja2.StrictUndefined))


def _utc(value: Any) -> str:
    """An ISO timestamp of the read models as 'YYYY-MM-DD HH:MM:SS UTC' (anything else as it is)."""
    try:
        return datetime.fromisoformat(str(value)).astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    except ValueError:
        return "" if value is None else str(value)


TEMPLATES.env.filters["utc"] = _utc
# The token lives in an HttpOnly, SameSite=Strict cookie (which api/context.principal also reads), so a
# cross-site post arrives without it; every form also carries csrf = HMAC(token, "ui-csrf") as the second
# line. The sign-in form has no token yet: it uses a random double-submit cookie instead.
TOKEN_COOKIE = "ledger_token"
FLASH_COOKIE = "ledger_flash"  # one minute, signed with the token: nobody else can put words on the page
FLASH_CHARS_MAX = 1000  # a cookie above ~4 KB is dropped by browsers
LOGIN_COOKIE = "ledger_login_csrf"
RETRY_WAIT_S = 10.0
ROWS_MAX = 50
# No script, no inline style, no framing, forms only to this origin.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def csrf_token(token: str) -> str:
    """The hidden `csrf` field of every form of a signed-in user: HMAC-SHA256(key=token, "ui-csrf") hex."""
    return hmac.new(token.encode(), b"ui-csrf", hashlib.sha256).hexdigest()


def _same(presented: str, expected: str) -> bool:
    return hmac.compare_digest(presented.encode(), expected.encode())


def _secure(response: Response) -> Response:
    response.headers.update(SECURITY_HEADERS)
    return response


def _cookie(response: Response, request: Request, name: str, value: str, path: str, max_age: int | None) -> None:
    response.set_cookie(name, value, max_age=max_age, path=path, httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")


def _render(request: Request, name: str, status: int = 200, **values: Any) -> Response:
    return _secure(TEMPLATES.TemplateResponse(request, name, values, status_code=status))


def _session(request: Request, ctx: ApiContext) -> tuple[str, Principal] | None:
    """The cookie's token and principal, when it may read (an ingest token may not see the page)."""
    token = request.cookies.get(TOKEN_COOKIE)
    who = ctx.tokens.identify(token) if token else None
    return (token, who) if token and who is not None and who.may(Role.READ_ONLY) else None


def _to_login() -> Response:
    response = _secure(RedirectResponse("/ui/login", status_code=303))
    response.delete_cookie(TOKEN_COOKIE, path="/")
    return response


# --- flash messages ----------------------------------------------------------------------------------


def _flash_cookie(token: str, kind: str, text: str) -> str:
    data = json.dumps({"kind": kind, "text": text[:FLASH_CHARS_MAX]}).encode()
    body = base64.urlsafe_b64encode(data).decode().rstrip("=")  # no '=': cookie values stay unquoted
    return body + "." + hmac.new(token.encode(), b"ui-flash" + body.encode(), hashlib.sha256).hexdigest()


def _read_flash(request: Request, token: str) -> dict[str, str] | None:
    body, _, signature = request.cookies.get(FLASH_COOKIE, "").partition(".")
    expected = hmac.new(token.encode(), b"ui-flash" + body.encode(), hashlib.sha256).hexdigest()
    if not body or not _same(signature, expected):
        return None
    try:
        found = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    except ValueError:
        return None
    return {"kind": str(found.get("kind", "info")), "text": str(found.get("text", ""))}


def _back_to_page(request: Request, token: str, kind: str, text: str) -> Response:
    response = _secure(RedirectResponse("/ui", status_code=303))
    _cookie(response, request, FLASH_COOKIE, _flash_cookie(token, kind, text), "/ui", 60)
    return response


# --- the page ----------------------------------------------------------------------------------------


def _attempt(read: Callable[[], Any]) -> tuple[Any, str]:
    """A section's data, or the reason it is unavailable: one broken source must not blank the page."""
    try:
        return read(), ""
    except sqlalchemy.exc.SQLAlchemyError as exc:
        log.warning("operator page: database read failed: %s", exc)
        return None, "the database is unavailable"


def _open_alerts(ctx: ApiContext) -> tuple[list[dict], str]:
    try:
        from projections import alert_store
    except ImportError:
        return [], "alerts unavailable (this build has no alert store)"
    found, error = _attempt(lambda: alert_store.list_alerts(ctx.database_url, status="open", limit=ROWS_MAX))
    return found or [], error and "alerts unavailable: " + error


def _retried(ctx: ApiContext, failed: list[dict]) -> dict[str, str]:
    """Failed payout id -> the payout its retry requested (the id is deterministic: request id retry:ID)."""
    wanted = {close_id(p["payee_id"], f"manual:retry:{p['payout_id']}", p["currency"]): p["payout_id"] for p in failed}
    if not wanted:
        return {}
    with ctx.engine.connect() as connection:
        found = connection.execute(sqlalchemy.text("SELECT payout_id FROM payouts WHERE payout_id = ANY(:ids)"),
                                   {"ids": list(wanted)}).scalars().all()
    return {wanted[new_id]: new_id for new_id in found}


def _page(request: Request, ctx: ApiContext, token: str, who: Principal, flash: dict[str, str] | None = None,
          status: int = 200) -> Response:
    ready, checks = health.readiness(ctx)
    pause, pause_error = _attempt(lambda: read_pause(ctx.database_url))
    alerts, alerts_error = _open_alerts(ctx)
    open_payouts, open_error = _attempt(lambda: queries.list_payouts(
        ctx.engine, statuses=list(queries.OPEN_STATUSES), limit=ROWS_MAX))
    failed, failed_error = _attempt(lambda: queries.list_payouts(ctx.engine, statuses=["failed"], limit=ROWS_MAX))
    counts, counts_error = _attempt(lambda: queries.payout_counts(ctx.engine))
    retried, _ = _attempt(lambda: _retried(ctx, failed[0] if failed else []))
    return _render(request, "page.html", status, who=who, operator=who.may(Role.OPERATOR), csrf=csrf_token(token),
                   flash=flash, ready=ready, checks=checks, pause=pause, pause_error=pause_error, alerts=alerts,
                   alerts_error=alerts_error, open_payouts=open_payouts or ([], 0), open_error=open_error,
                   failed=failed or ([], 0), failed_error=failed_error, counts=counts or {},
                   counts_error=counts_error, retried=retried or {}, rows_max=ROWS_MAX)


@router.get("/ui")
def page(request: Request, ctx: ApiContext = Depends(context)) -> Response:
    session = _session(request, ctx)
    if session is None:
        return _to_login()
    token, who = session
    flash = _read_flash(request, token)
    response = _page(request, ctx, token, who, flash)
    if FLASH_COOKIE in request.cookies:
        response.delete_cookie(FLASH_COOKIE, path="/ui")
    return response


@router.get("/ui/static/page.css")
def stylesheet() -> Response:
    return FileResponse(STATIC_DIR / "page.css", media_type="text/css", headers={"Cache-Control": "max-age=300"})


# --- signing in and out ------------------------------------------------------------------------------


def _login_form(request: Request, error: str = "", status: int = 200) -> Response:
    nonce = secrets.token_hex(16)
    response = _render(request, "login.html", status, csrf=nonce, error=error)
    _cookie(response, request, LOGIN_COOKIE, nonce, "/ui/login", 600)
    return response


@router.get("/ui/login")
def login_form(request: Request) -> Response:
    return _login_form(request)


@router.post("/ui/login")
def login(request: Request, token: str = Form(""), csrf: str = Form(""),
          ctx: ApiContext = Depends(context)) -> Response:
    if not csrf or not _same(csrf, request.cookies.get(LOGIN_COOKIE, "")):
        return _login_form(request, "The sign-in form expired or did not come from this page: try again.", 403)
    token = token.strip()
    who = ctx.tokens.identify(token) if token else None
    if who is None:
        return _login_form(request, "token: unknown (use a token from LEDGER_API_TOKENS).", 401)
    if not who.may(Role.READ_ONLY):
        return _login_form(request, f"token: {who.name} has the {who.role.value} role; the page needs the "
                                    "read-only or operator role.", 403)
    response = _secure(RedirectResponse("/ui", status_code=303))
    _cookie(response, request, TOKEN_COOKIE, token, "/", None)  # a browser-session cookie
    response.delete_cookie(LOGIN_COOKIE, path="/ui/login")
    return response


def _forbidden(request: Request, message: str) -> Response:
    return _render(request, "error.html", 403, message=message)


@router.post("/ui/logout")
def logout(request: Request, csrf: str = Form(""), ctx: ApiContext = Depends(context)) -> Response:
    session = _session(request, ctx)
    if session is not None and not _same(csrf, csrf_token(session[0])):
        return _forbidden(request, "csrf: missing or wrong; sign out from the page itself.")
    return _to_login()


# --- actions -----------------------------------------------------------------------------------------


def _acting(request: Request, ctx: ApiContext, csrf: str, what: str) -> tuple[str, Principal] | Response:
    """The signed-in operator, or the answer to give instead (sign in, 403 csrf, 403 role)."""
    session = _session(request, ctx)
    if session is None:
        return _to_login()
    token, who = session
    if not _same(csrf, csrf_token(token)):
        return _forbidden(request, "csrf: missing or wrong; use the buttons of the page itself.")
    if not who.may(Role.OPERATOR):
        return _page(request, ctx, token, who, {"kind": "error", "text": (
            f"{what} needs the operator role: {who.name} has the {who.role.value} role.")}, 403)
    return session


def _retry_message(payout_id: str, result: ActionResult) -> tuple[str, str]:
    if result.verdict == "refused":
        return "error", f"Retry of {payout_id} was refused by the ledger: {result.reason}"
    if result.verdict == "waiting":
        return "warning", (f"Retry of {payout_id} was sent but the ledger has not chained it yet (waiting): "
                           "reload in a moment; is `ledger sequencer` running?")
    if result.event_type == "PayoutRequested":
        again = f" ({result.reason})" if result.reason else ""
        return "ok", (f"Retry of {payout_id}: a new payout {result.payout_id} of {result.amount} was requested "
                      f"and chained in the ledger{again}.")
    return "ok", f"Retry of {payout_id}: its next attempt is due now (chained in the ledger)."


@router.post("/ui/payouts/{payout_id}/retry")
def retry(request: Request, payout_id: str = Path(..., pattern=ID_PATTERN), csrf: str = Form(""),
          ctx: ApiContext = Depends(context)) -> Response:
    acting = _acting(request, ctx, csrf, "Retrying a payout")
    if isinstance(acting, Response):
        return acting
    token, who = acting
    try:
        kind, text = _retry_message(payout_id, ctx.operations.retry(payout_id, who.name, RETRY_WAIT_S))
    except OperationRefused as exc:
        kind, text = "error", f"Retry of {payout_id} refused: {exc.reason}"
    except (DeliveryFailed, KafkaException) as exc:
        log.error("operator page: broker unavailable: %s", exc)
        kind, text = "error", f"Retry of {payout_id} not sent: the ledger's broker is unavailable ({exc})."
    return _back_to_page(request, token, kind, text)


def _alert_action(request: Request, ctx: ApiContext, alert_id: int, csrf: str, action: str) -> Response:
    acting = _acting(request, ctx, csrf, f"To {action} an alert")
    if isinstance(acting, Response):
        return acting
    token, who = acting
    try:
        from projections import alert_store
    except ImportError:
        return _back_to_page(request, token, "error", "Alerts are unavailable in this build.")
    try:
        getattr(alert_store, f"{action}_alert")(ctx.database_url, alert_id, who.name)
    except alert_store.AlertNotFound:
        return _back_to_page(request, token, "error", f"Alert {alert_id} does not exist.")
    except alert_store.AlertTransitionRefused as exc:
        return _back_to_page(request, token, "error", f"Alert {alert_id}: {exc.reason}")
    done = "acknowledged" if action == "acknowledge" else "resolved"
    return _back_to_page(request, token, "ok", f"Alert {alert_id} {done} by {who.name}.")


@router.post("/ui/alerts/{alert_id}/acknowledge")
def acknowledge(request: Request, alert_id: int, csrf: str = Form(""), ctx: ApiContext = Depends(context)) -> Response:
    return _alert_action(request, ctx, alert_id, csrf, "acknowledge")


@router.post("/ui/alerts/{alert_id}/resolve")
def resolve(request: Request, alert_id: int, csrf: str = Form(""), ctx: ApiContext = Depends(context)) -> Response:
    return _alert_action(request, ctx, alert_id, csrf, "resolve")
