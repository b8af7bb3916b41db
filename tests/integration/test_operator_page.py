"""The operator page (/ui) on the real stack, driven by Debian's chromium: sign in, health, alerts, retry.

The browser is /usr/bin/chromium through Playwright (no browser download). When it is missing the test
fails and says how to install it: .ci/run installs it before `make test`.
"""

from __future__ import annotations

import os
import secrets
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx
import pytest
import sqlalchemy
import uvicorn

from api.app import make_api
from api.page import csrf_token
from ledger.earnings import close_id
from processors.operations import Operations
from projections import queries
from projections.payout_controls import set_pause
from projections.projector import Projector
from runtime.database import make_engine
from runtime.processes import free_port
from runtime.settings import Settings
from tests.integration.transfer_helpers import (book_of, processor_running, request_payouts, running,
                                                sequencer_running, wait_until)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOT = Path(__file__).resolve().parents[2] / "test-artifacts" / "operator-page.png"
OPERATOR_TOKEN = secrets.token_urlsafe(24)  # 32 characters
READ_ONLY_TOKEN = secrets.token_urlsafe(24)
INGEST_TOKEN = secrets.token_urlsafe(24)
HOSTILE_SUMMARY = "failure rate 50% <script>document.title='pwned'</script>"


def with_tokens(settings: Settings) -> Settings:
    tokens = {OPERATOR_TOKEN: "operator:olga", READ_ONLY_TOKEN: "read-only:rita", INGEST_TOKEN: "ingest:shop"}
    return settings.model_copy(update={"api_tokens": tokens})


def chromium() -> str:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: the operator page test needs Debian's chromium. Install it with "
                    "`sudo apt-get update && sudo apt-get install -y --no-install-recommends chromium` "
                    "(.ci/run does this before `make test`).")
    return CHROMIUM


@contextmanager
def serving(settings: Settings) -> Iterator[str]:
    """make_api(...) under uvicorn in a thread on a free port; yields its base URL."""
    app = make_api(settings, settings.kafka_bootstrap, settings.database_url)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        try:
            return httpx.get(base + "/health", timeout=1.0).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(answers, 20, "the API to answer /health")
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        app.state.ledger.engine.dispose()
        assert not thread.is_alive(), "uvicorn did not stop within 15 s"


def projector_running(settings: Settings):
    return running(Projector(settings, settings.kafka_bootstrap, settings.database_url, log=lambda line: None))


def add_alert(database_url: str) -> int:
    engine = make_engine(database_url)
    try:
        with engine.begin() as connection:
            return connection.execute(sqlalchemy.text(
                "INSERT INTO alerts (rule, key, severity, status, summary, value, threshold, fired_at, "
                "last_evaluated_at) VALUES ('failure_rate', '', 'critical', 'firing', :summary, 0.5, 0.2, now(), "
                "now()) RETURNING id"), {"summary": HOSTILE_SUMMARY}).scalar_one()
    finally:
        engine.dispose()


def alert_row(database_url: str, alert_id: int) -> dict:
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            return dict(connection.execute(sqlalchemy.text("SELECT status, acknowledged_by FROM alerts WHERE id = :id"),
                                           {"id": alert_id}).mappings().one())
    finally:
        engine.dispose()


def sign_in(page, base: str, token: str):  # noqa: ANN001, ANN201 - playwright Page, Response
    page.goto(base + "/ui")
    assert page.url == base + "/ui/login", "an anonymous visit goes to the sign-in form"
    page.fill("#token", token)
    with page.expect_navigation() as navigation:
        page.click("form[action='/ui/login'] button")
    return navigation.value


def test_operator_signs_in_sees_health_and_retries_a_failed_payout_in_chromium(settings, capsys):
    from playwright.sync_api import sync_playwright

    executable = chromium()
    settings = with_tokens(settings)
    requested = {e.payee_id: e.payload["payout_id"] for e in request_payouts(
        settings, {name: ("manual", "") for name in ("p-1", "p-2")})}
    failed_id, open_id = requested["p-1"], requested["p-2"]
    retry_id = close_id("p-1", f"manual:retry:{failed_id}", "USD")
    alert_id = add_alert(settings.database_url)
    engine = make_engine(settings.database_url)
    with sequencer_running(settings), projector_running(settings):
        with processor_running(settings):
            wait_until(lambda: {p.status.value for p in book_of(settings).payouts.values()} == {"at_provider"}, 30,
                       "manual payouts at their provider")
        failing = Operations(settings, settings.kafka_bootstrap, settings.database_url).fail(
            failed_id, "account_closed", "closed", wait_s=15)
        assert failing.verdict == "chained", failing
        wait_until(lambda: (queries.get_payout(engine, failed_id) or {}).get("status") == "failed", 30,
                   "the projector to write the failed payout")
        amount = book_of(settings).get(failed_id).amount
        shown_amount = f"{amount.to_major_string()} {amount.currency.code}"

        with serving(settings) as base, sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page()
                refused = sign_in(page, base, "x" * 32)
                assert refused.status == 401 and "token: unknown" in page.text_content("#login-error")

                # a read-only user sees the failed payout, no Retry button, and a forged retry is refused
                assert sign_in(page, base, READ_ONLY_TOKEN).status == 200 and page.url == base + "/ui"
                row = page.locator(f"#payout-{failed_id}")
                assert "retry needs the operator role" in row.inner_text()
                assert row.locator("button").count() == 0
                csrf = page.get_attribute("form[action='/ui/logout'] input[name=csrf]", "value")
                with page.expect_navigation() as navigation:
                    page.evaluate("""([action, csrf]) => { const form = document.createElement('form');
                        form.method = 'post'; form.action = action; const field = document.createElement('input');
                        field.type = 'hidden'; field.name = 'csrf'; field.value = csrf; form.appendChild(field);
                        document.body.appendChild(form); form.submit(); }""",
                                  [f"/ui/payouts/{failed_id}/retry", csrf])
                assert navigation.value.status == 403
                assert "needs the operator role: rita has the read-only role" in page.text_content("#flash")
                assert book_of(settings).get(retry_id) is None, "a read-only user's retry reached the ledger"
                with page.expect_navigation():
                    page.click("form[action='/ui/logout'] button")
                assert page.url == base + "/ui/login"

                # the operator
                page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
                assert sign_in(page, base, OPERATOR_TOKEN).status == 200
                cookie = next(c for c in page.context.cookies() if c["name"] == "ledger_token")
                assert (cookie["httpOnly"], cookie["sameSite"], cookie["path"]) == (True, "Strict", "/")
                assert page.text_content("#who") == "olga"
                health = page.inner_text("#health")
                assert page.text_content("#readiness") == "ready", health
                assert "broker" in health and "database" in health and "projector" in health
                assert "Running" in page.inner_text("#pause")
                failed_row = page.inner_text(f"#payout-{failed_id}")
                assert shown_amount in failed_row and "account_closed" in failed_row and "closed" in failed_row
                assert "at_provider" in page.inner_text(f"#payout-{open_id}")
                assert page.text_content("#counts [data-status=failed]") == "1"

                # alerts are escaped, and acknowledged from their button
                assert HOSTILE_SUMMARY in page.inner_text(f"#alert-{alert_id}")
                assert page.locator("#alerts script").count() == 0 and page.title() != "pwned"
                with page.expect_navigation():
                    page.click(f"#alert-{alert_id} button:has-text('Acknowledge')")
                assert f"Alert {alert_id} acknowledged by olga" in page.text_content("#flash")
                assert alert_row(settings.database_url, alert_id) == {"status": "acknowledged",
                                                                      "acknowledged_by": "olga"}

                with page.expect_navigation():
                    page.click(f"#payout-{failed_id} button:has-text('Retry')")
                assert page.url == base + "/ui"
                flash = page.text_content("#flash")
                assert f"a new payout {retry_id} of {shown_amount} was requested" in flash, flash

                # the ledger, not only the page: the retry's payout is chained, for the same money
                retried = book_of(settings).get(retry_id)
                assert retried is not None and retried.payee_id == "p-1" and retried.amount == amount
                assert retried.status.value == "requested"

                def page_shows_retry() -> bool:
                    page.reload()
                    return f"retried as {retry_id}" in page.inner_text(f"#payout-{failed_id}")

                wait_until(page_shows_retry, 30, "the page to show the retry's payout")
                assert page.locator(f"#payout-{retry_id}").count() == 1  # among the open payouts
                SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(SCREENSHOT), full_page=True)
            finally:
                browser.close()
    engine.dispose()
    data = SCREENSHOT.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, len(data)
    with capsys.disabled():  # shown in CI output even when the test passes
        print(f"\noperator page screenshot: {SCREENSHOT} ({len(data)} bytes)")


def login_nonce(form: httpx.Response) -> str:
    return form.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]


def test_posts_without_a_valid_csrf_field_are_refused(settings):
    settings = with_tokens(settings)
    with serving(settings) as base, httpx.Client(base_url=base) as client:
        assert client.get("/ui").headers["location"] == "/ui/login"
        assert set(client.get("/ready").json()["checks"]) == {"broker", "database", "projector"}  # unchanged
        nonce = login_nonce(client.get("/ui/login"))
        assert client.cookies.get("ledger_login_csrf") == nonce
        forged = client.post("/ui/login", data={"token": OPERATOR_TOKEN, "csrf": "forged"})
        assert forged.status_code == 403 and "ledger_token" not in client.cookies
        nonce = login_nonce(forged)  # every form it renders has a fresh nonce
        signed_in = client.post("/ui/login", data={"token": OPERATOR_TOKEN, "csrf": nonce})
        assert signed_in.status_code == 303 and signed_in.headers["location"] == "/ui"
        set_cookie = signed_in.headers["set-cookie"].lower()
        assert "httponly" in set_cookie and "samesite=strict" in set_cookie and "path=/" in set_cookie
        assert client.get("/ui").status_code == 200
        set_pause(settings.database_url, True, "bank holiday <b>", "ops")
        paused = client.get("/ui")
        assert "Paused" in paused.text and "by ops: bank holiday &lt;b&gt;" in paused.text
        assert "default-src 'none'" in paused.headers["content-security-policy"]

        for data in ({}, {"csrf": ""}, {"csrf": csrf_token(READ_ONLY_TOKEN)}, {"csrf": "0" * 64}):
            refused = client.post("/ui/payouts/no-such-payout/retry", data=data)
            assert refused.status_code == 403 and "csrf: missing or wrong" in refused.text, (data, refused.text)
            assert client.post("/ui/alerts/1/acknowledge", data=data).status_code == 403
            assert client.post("/ui/logout", data=data).status_code == 403
        # the same post with the right field gets through the check: the ledger answers, on the page
        passed = client.post("/ui/payouts/no-such-payout/retry", data={"csrf": csrf_token(OPERATOR_TOKEN)})
        assert passed.status_code == 303 and passed.headers["location"] == "/ui"
        assert "no-such-payout&#39; is not in the ledger" in client.get("/ui").text
        assert "is not in the ledger" not in client.get("/ui").text, "a flash message is shown once"
        out = client.post("/ui/logout", data={"csrf": csrf_token(OPERATOR_TOKEN)})
        assert out.status_code == 303 and out.headers["location"] == "/ui/login"
        assert client.get("/ui").status_code == 303

        # an ingest token may not sign in, nor see the page with a cookie set by hand
        nonce = login_nonce(client.get("/ui/login"))
        ingest = client.post("/ui/login", data={"token": INGEST_TOKEN, "csrf": nonce})
        assert ingest.status_code == 403 and "has the ingest role" in ingest.text
        client.cookies.set("ledger_token", INGEST_TOKEN)
        assert client.get("/ui").headers["location"] == "/ui/login"
        assert client.post("/ui/payouts/x/retry", data={"csrf": csrf_token(INGEST_TOKEN)}).status_code == 303
