"""Hostile input through the soak's other entrances, and genuine Stripe webhooks redelivered out of order.

    api = send_api("http://127.0.0.1:8080", token, [r for r in records if r.entrance == "api"])
    published = publish_hostile(env, hostile_records(seed, 200, now, valid, entrances=PUBLISH), workdir)
    hooks = send_webhooks_hostile(webhook_url, secret, seed, targets=stripe.transfers()[:5])
    failures = check_nothing_appended(bootstrap, events_topic, commands_topic, hooks["webhooks_event_ids"])
    redelivered = reverse_and_redeliver(stripe, webhook_url, secret, seed, settled_stripe_payout_ids, k=6)
    failures += check_redelivered(bootstrap, events_topic, redelivered)

Every sender returns counts, up to EXAMPLES examples of each failure kind, and "<prefix>_failures": the
failures as sentences (empty when the entrance held). The same seed gives the same records and deliveries
(webhook signatures also depend on the clock, which is an argument).

- The HTTP API (POST /v1/payments): a 2xx for a hostile record is an acceptance; a 4xx must name the
  record's field (problems[].field or the error text). A record of a STATEFUL_KIND passes the API (only the
  sequencer's state refuses it): its 2xx is counted as forwarded, with its business id, not as a failure.
  Connection errors (the soak kills the API) and 503s are retried until a per-record deadline; a 429 waits
  its Retry-After (bounded).
- `ledger publish` files: the real command in a subprocess; every line of the file must be in its report,
  refused, naming the field (stateful kinds: refused for any reason); a CSV file with a header the command
  refuses whole must fail naming the header, with nothing accepted.
- The Stripe webhook endpoint: forged, stale and future signatures, missing and malformed Stripe-Signature
  headers, bodies that are not JSON, not UTF-8 or not an event, oversized bodies (413), events naming a payout
  the ledger does not know, and replays of a delivery. Each must be answered 4xx (a replay: 4xx, or 2xx when
  the endpoint restarted in between and forgot it) and must append nothing: check_nothing_appended looks for
  the ledger event id each delivery could become in ledger.commands and ledger.events.
- Out of order: K settled Stripe payouts, some reversed in full through the Stripe sandbox's API (some in
  two steps, a partial reversal first), then their genuine events (transfer.created, transfer.updated,
  transfer.reversed) delivered newest first, duplicated, interleaved, each signed anew. check_redelivered:
  each reversed payout failed exactly once ("transfer_reversed"), the others still settled.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import time
from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import httpx

from connectors.stripe_webhooks import DEFAULT_TOLERANCE_S, ledger_event_id
from demo.hostile import CSV_HEADER, STATEFUL_KINDS, Hostile, names_field
from demo.processes import LEDGER
from ledger.codec import EventCodec, UndecodableEvent
from ledger.payouts import PayoutBook
from processors.kafka_io import read_topic
from processors.webhook_app import BODY_BYTES_MAX
from sandbox.stripe import StripeTestServer

EXAMPLES = 20  # examples kept of each failure kind
ANSWER_DEADLINE_S = 60.0  # per request: how long connection errors and 503s are retried
RETRY_AFTER_MAX_S = 5.0  # the longest Retry-After honoured at once
DRAIN_BYTES_MAX = 4 * BODY_BYTES_MAX  # the endpoint reads an oversized body up to this, then answers 413
WEBHOOK_KINDS = ("forged_signature", "stale_timestamp", "future_timestamp", "missing_signature",
                 "malformed_signature", "not_json_body", "invalid_utf8_body", "not_an_event", "oversized_body",
                 "unknown_payout", "replay")
IGNORED_TYPES = ("transfer.created", "transfer.updated", "charge.succeeded", "payout.created", "balance.available")


class _Tally:
    """Counts by name and up to EXAMPLES examples of each failure kind, as one flat dict with a prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix, self.counts, self.examples = prefix, Counter(), {}

    def count(self, name: str, example: str | None = None, n: int = 1) -> None:
        self.counts[name] += n
        if example is not None:
            kept = self.examples.setdefault(name, [])
            if len(kept) < EXAMPLES:
                kept.append(example)

    def result(self, names: Sequence[str], failures: Mapping[str, str]) -> dict[str, Any]:
        """Every count in `names` (0 when never counted), examples, and `failures` (count name -> sentence)
        as "<prefix>_failures" for the counts above 0."""
        out: dict[str, Any] = {f"{self.prefix}_{name}": self.counts[name] for name in names}
        out.update({f"{self.prefix}_{name}_examples": kept for name, kept in self.examples.items()})
        out[f"{self.prefix}_failures"] = [
            f"{self.counts[name]} {sentence}" + (f": {self.examples[name][:3]}" if self.examples.get(name) else "")
            for name, sentence in failures.items() if self.counts[name]]
        return out


# --- the HTTP API -------------------------------------------------------------------------------------


@dataclass
class _Answer:
    status: int | None  # None: no answer before the deadline
    body: Any = None
    text: str = ""
    retries: int = 0


def _post(client: httpx.Client, url: str, content: bytes, headers: dict[str, str], deadline_s: float,
          retry_after_max_s: float = RETRY_AFTER_MAX_S) -> _Answer:
    """POST until answered: connection errors, 429 and 503 are tried again (Retry-After, bounded) until the
    deadline; any other answer is returned."""
    deadline, answer, pause = time.monotonic() + deadline_s, _Answer(None), 0.2
    while True:
        try:
            response = client.post(url, content=content, headers=headers)
        except httpx.TransportError as exc:
            answer.text = f"{type(exc).__name__}: {exc}"
            wait_s, pause = pause, min(pause * 2, 2.0)
        else:
            answer.status, answer.text = response.status_code, response.text
            try:
                answer.body = response.json()
            except ValueError:
                answer.body = None
            if response.status_code not in (429, 503):
                return answer
            wait_s = _retry_after(response.headers.get("Retry-After"), retry_after_max_s)
        if time.monotonic() + wait_s > deadline:
            answer.status = None  # still refused connections, 429 or 503: unanswered (the text says which)
            return answer
        answer.retries += 1
        time.sleep(wait_s)  # the server asked to wait, or is restarting: bounded by the deadline


def _retry_after(value: str | None, most_s: float) -> float:
    try:
        return min(max(float(value or 1), 0.05), most_s)
    except ValueError:
        return min(1.0, most_s)


def _names_field(answer: _Answer, name: str) -> bool:
    """Whether a 4xx answer names the field: in problems[].field, or in its error text."""
    body = answer.body if isinstance(answer.body, dict) else {}
    problems = body.get("problems") if isinstance(body.get("problems"), list) else []
    fields = {str(problem.get("field", "")) for problem in problems if isinstance(problem, dict)}
    return name in fields or any(found.endswith(f".{name}") for found in fields) or name in str(body.get("error", ""))


def _business_id(record: Hostile) -> str:
    try:
        (item,) = json.loads(record.value)["records"]
        return str(item.get("refund_id") or item.get("adjustment_id") or item.get("payment_id"))
    except (ValueError, KeyError, TypeError):
        return ""


def send_api(url: str, token: str, records: Iterable[Hostile], *, deadline_s: float = ANSWER_DEADLINE_S,
             retry_after_max_s: float = RETRY_AFTER_MAX_S, timeout_s: float = 30.0) -> dict[str, Any]:
    """POST each "api" record's body to `url`/v1/payments with `token` (role ingest or operator); other
    entrances' records are left out. Keys: api_sent, api_refused, api_accepted, api_reason_without_field,
    api_unanswered, api_server_errors, api_forwarded (stateful kinds the API passed, ids in
    api_forwarded_ids), api_retries, api_failures, and *_examples."""
    tally, forwarded = _Tally("api"), []
    target = url.rstrip("/") + "/v1/payments"
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    with httpx.Client(timeout=timeout_s) as client:
        for record in (record for record in records if record.entrance == "api"):
            tally.count("sent")
            answer = _post(client, target, record.value, headers, deadline_s, retry_after_max_s)
            tally.count("retries", n=answer.retries)
            _judge_api(tally, record, answer, forwarded)
    result = tally.result(
        ("sent", "refused", "accepted", "reason_without_field", "unanswered", "server_errors", "forwarded",
         "retries"),
        {"accepted": "hostile API records accepted (2xx)",
         "reason_without_field": "hostile API records refused without naming their field",
         "unanswered": "hostile API records never answered (connection errors, 429 or 503 past the deadline)",
         "server_errors": "hostile API records answered with a server error"})
    return {**result, "api_forwarded_ids": forwarded}


def _judge_api(tally: _Tally, record: Hostile, answer: _Answer, forwarded: list[str]) -> None:
    shown = f"{record.kind}: {answer.status} {answer.text[:120]}"
    if answer.status is None:
        tally.count("unanswered", f"{record.kind}: {answer.text[:120]}")
    elif 200 <= answer.status < 300 and record.kind in STATEFUL_KINDS:
        tally.count("forwarded")  # only the sequencer's state refuses it (it must reach the dead-letter topic)
        forwarded.append(_business_id(record))
    elif 200 <= answer.status < 300:
        tally.count("accepted", f"{record.kind}: {record.value[:120]!r}")
    elif 400 <= answer.status < 500:
        tally.count("refused")
        if record.field and not _names_field(answer, record.field):
            tally.count("reason_without_field", f"{record.kind} (field {record.field}): {shown}")
    else:
        tally.count("server_errors", shown)


# --- `ledger publish` files ---------------------------------------------------------------------------


@dataclass
class _PublishFile:
    path: Path
    lines: dict[int, Hostile] = field(default_factory=dict)  # line number -> the record on it
    whole: Hostile | None = None  # a file refused as a whole (a bad CSV header)


def _write_files(records: list[Hostile], workdir: Path) -> list[_PublishFile]:
    """One JSON Lines file, one CSV file under CSV_HEADER, and a file of each bad-header record."""
    workdir.mkdir(parents=True, exist_ok=True)
    jsonl = _PublishFile(workdir / "hostile.jsonl")
    table = _PublishFile(workdir / "hostile.csv")
    files: list[_PublishFile] = []
    for record in records:
        if record.entrance == "publish":
            jsonl.lines[len(jsonl.lines) + 1] = record
        elif record.kind == "bad_csv_header":
            files.append(_PublishFile(workdir / f"whole-{len(files) + 1}.csv", whole=record))
            files[-1].path.write_bytes(record.value + b"\n")
        else:
            table.lines[len(table.lines) + 2] = record  # line 1 is the header
    if jsonl.lines:
        jsonl.path.write_bytes(b"".join(record.value + b"\n" for record in jsonl.lines.values()))
        files.insert(0, jsonl)
    if table.lines:
        table.path.write_bytes(",".join(CSV_HEADER).encode() + b"\n"
                               + b"".join(record.value + b"\n" for record in table.lines.values()))
        files.insert(1 if jsonl.lines else 0, table)
    return files


def _run_publish(env: Mapping[str, str], path: Path, ledger: str, deadline_s: float,
                 bad_header: bool) -> tuple[subprocess.CompletedProcess[str] | None, dict | None, int, str]:
    """`ledger publish PATH --json` until it gives a report (or, for a bad header, refuses the header): a run that
    fails otherwise (the broker or database restarting under it) is tried again until the deadline. Publishing
    again is safe: a hostile line is never sent. Returns (the last run, its report, runs, why it failed)."""
    deadline, runs, why = time.monotonic() + deadline_s, 0, ""
    run: subprocess.CompletedProcess[str] | None = None
    while True:
        runs += 1
        try:
            run = subprocess.run([ledger, "publish", str(path), "--json"], env={**os.environ, **env},
                                 capture_output=True, text=True, timeout=max(1.0, deadline - time.monotonic()),
                                 stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return run, None, runs, f"timed out after {deadline_s:.0f} s"
        report = _report(run.stdout)
        if report is not None or (bad_header and "header" in run.stderr):
            return run, report, runs, ""
        why = f"exit {run.returncode}: {run.stderr.strip()[-300:]}"
        if time.monotonic() + 2.0 > deadline:
            return run, None, runs, why
        time.sleep(2.0)  # the stack is restarting under it: bounded by the deadline


def _report(stdout: str) -> dict | None:
    try:
        report = json.loads(stdout)
    except ValueError:
        return None
    return report if isinstance(report, dict) and {"accepted", "rejected", "errors"} <= set(report) else None


def publish_hostile(env: Mapping[str, str], records: Iterable[Hostile], workdir: Path, *, ledger: str = LEDGER,
                    deadline_s: float = 300.0) -> dict[str, Any]:
    """Write the "publish" and "publish_csv" records (others are left out) as files in `workdir`, run the real
    `ledger publish FILE --json` on each with `env` (LEDGER_* settings, over this process's environment) and
    judge its report: every line refused, naming the field. Keys: publish_sent, publish_files, publish_runs,
    publish_refused, publish_accepted, publish_not_refused, publish_reason_without_field, publish_errors,
    publish_failures, and *_examples."""
    tally = _Tally("publish")
    records = [record for record in records if record.entrance in ("publish", "publish_csv")]
    for entry in _write_files(records, workdir):
        tally.count("files")
        tally.count("sent", n=1 if entry.whole else len(entry.lines))
        run, report, runs, why = _run_publish(env, entry.path, ledger, deadline_s, entry.whole is not None)
        tally.count("runs", n=runs)
        if why:
            tally.count("errors", f"{entry.path.name}: {why}")
        elif entry.whole is not None:
            _judge_whole(tally, entry, run, report)
        else:
            _judge_lines(tally, entry, report or {})
    return tally.result(
        ("sent", "files", "runs", "refused", "accepted", "not_refused", "reason_without_field", "errors"),
        {"accepted": "hostile publish records accepted",
         "not_refused": "hostile publish lines not reported refused",
         "reason_without_field": "hostile publish lines refused without naming their field",
         "errors": "publish runs without a report"})


def _judge_lines(tally: _Tally, entry: _PublishFile, report: dict) -> None:
    reasons = {error.get("line"): str(error.get("reason", "")) for error in report.get("errors", [])
               if isinstance(error, dict)}
    if report.get("accepted"):
        tally.count("accepted", f"{entry.path.name}: {report['accepted']} accepted", n=int(report["accepted"]))
    for line, record in entry.lines.items():
        where = f"{entry.path.name}:{line} {record.kind}"
        if line not in reasons:
            tally.count("not_refused", f"{where}: {record.value[:100]!r}")
            continue
        tally.count("refused")
        if record.field and record.kind not in STATEFUL_KINDS and not names_field(reasons[line], record.field):
            tally.count("reason_without_field", f"{where} (field {record.field}): {reasons[line][:120]}")


def _judge_whole(tally: _Tally, entry: _PublishFile, run: subprocess.CompletedProcess[str] | None,
                 report: dict | None) -> None:
    """A file the command must refuse as a whole, naming the header: a report means it read the file."""
    where = f"{entry.path.name} {entry.whole.kind if entry.whole else ''}"
    if report is not None and report.get("accepted"):
        tally.count("accepted", f"{where}: {report['accepted']} accepted", n=int(report["accepted"]))
    elif report is not None or run is None or run.returncode == 0:
        tally.count("not_refused", f"{where}: exit {None if run is None else run.returncode}, report {report}")
    else:
        tally.count("refused")  # exit 1 and "header" on stderr (_run_publish waits for nothing else)


# --- the Stripe webhook endpoint: hostile deliveries ----------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    kind: str  # one of WEBHOOK_KINDS, or "genuine" (the first of a replayed pair, and the redelivered events)
    body: bytes
    header: str | None  # the Stripe-Signature header; None: none sent
    expect: str  # "4xx", "413", "2xx", "replay" (4xx; 2xx after a restart of the endpoint), or "dead_letter"
    # (a genuine signature on a payout the ledger never requested: the endpoint cannot tell it from a payout it
    # has not projected yet, so it may append it; the sequencer must refuse it into the dead-letter topic)
    event_id: str = ""  # the Stripe event id in the body, when it has one
    ledger_event_id: str = ""  # the ledger event id it would become (connectors.stripe_webhooks)


def _sign(body: bytes, secret: str, timestamp: int) -> str:
    return StripeTestServer.sign_webhook(body, secret, timestamp)


class _Hooks:
    """Draws one run's deliveries: the random source, the clock, ids that never repeat, the payouts named."""

    def __init__(self, seed: int, secret: str, now: int, targets: Sequence[dict], tolerance_s: int,
                 body_bytes_max: int) -> None:
        self.rng, self.secret, self.now, self.count = random.Random(seed ^ 0x5712), secret, now, 0
        self.tag = f"{seed & 0xFFFFFFFF:08x}"
        self.targets, self.tolerance_s, self.body_bytes_max = list(targets), tolerance_s, body_bytes_max

    def next_id(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}hz{self.tag}x{self.count:06d}"

    def transfer(self, unknown: bool = False) -> dict:
        """A transfer reversed in full: one of the targets (settled payouts), or one naming no known payout."""
        if self.targets and not unknown:
            found = dict(self.rng.choice(self.targets))
        else:
            amount = self.rng.randint(1, 5_000_000)
            found = {"id": self.next_id("tr_"), "object": "transfer", "amount": amount, "currency": "usd",
                     "metadata": {"payout_id": self.next_id("hzpo-"), "payee_id": f"hzpayee-{self.rng.randrange(16):02d}"}}
        return {**found, "amount_reversed": found["amount"], "reversed": True}

    def payout(self, status: str) -> dict:
        """A Stripe payout naming no known ledger payout."""
        return {"id": self.next_id("po_"), "object": "payout", "amount": self.rng.randint(1, 5_000_000),
                "currency": "usd", "status": status, "failure_code": "account_closed" if status == "failed" else None,
                "metadata": {"payout_id": self.next_id("hzpo-"), "payee_id": f"hzpayee-{self.rng.randrange(16):02d}"}}

    def event(self, type_: str, obj: dict, **extra: Any) -> tuple[bytes, str]:
        event_id = self.next_id("evt_")
        created = self.now - self.rng.randint(1, 3600)
        event = {"id": event_id, "object": "event", "api_version": "2024-06-20", "type": type_, "created": created,
                 "livemode": False, "pending_webhooks": 1, "request": {"id": None, "idempotency_key": None},
                 "data": {"object": obj}, **extra}
        return json.dumps(event, separators=(",", ":")).encode(), event_id

    def harmful(self) -> tuple[bytes, str]:
        """An event that would fail a payout if it were taken."""
        return self.event("transfer.reversed", self.transfer())

    def fresh(self) -> int:
        return self.now - self.rng.randint(0, 30)

    def delivery(self, kind: str, body: bytes, header: str | None, expect: str = "4xx", event_id: str = "") -> Delivery:
        return Delivery(kind, body, header, expect, event_id, ledger_event_id(event_id) if event_id else "")


def _forged_signature(h: _Hooks) -> list[Delivery]:
    body, event_id = h.harmful()
    other = f"whsec_{h.rng.getrandbits(128):032x}"
    return [h.delivery("forged_signature", body, _sign(body, other, h.fresh()), event_id=event_id)]


def _stale_timestamp(h: _Hooks) -> list[Delivery]:
    body, event_id = h.harmful()
    timestamp = h.now - h.tolerance_s - h.rng.choice([60, h.rng.randint(61, 30 * 86400)])
    return [h.delivery("stale_timestamp", body, _sign(body, h.secret, timestamp), event_id=event_id)]


def _future_timestamp(h: _Hooks) -> list[Delivery]:
    body, event_id = h.harmful()
    # at least an hour ahead: still in the future however long the delivery is retried
    timestamp = h.now + h.tolerance_s + h.rng.choice([3600, h.rng.randint(3601, 30 * 86400)])
    return [h.delivery("future_timestamp", body, _sign(body, h.secret, timestamp), event_id=event_id)]


def _missing_signature(h: _Hooks) -> list[Delivery]:
    body, event_id = h.harmful()
    return [h.delivery("missing_signature", body, h.rng.choice([None, ""]), event_id=event_id)]


def _malformed_signature(h: _Hooks) -> list[Delivery]:
    body, event_id = h.harmful()
    t = h.fresh()
    good = _sign(body, h.secret, t).split("v1=", 1)[1]
    header = h.rng.choice([
        "garbage", f"t={t}", f"v1={good}", f"t=abc,v1={good}", f"t={t},t={t},v1={good}", f"t={t},v1={good.upper()}",
        f"t={t},v1=", f"t={t},v0={good}", f"t={t} v1={good}", f"t={t},v1={good[:-1]}", f"t={t},=x,v1={good}",
        f"t={t}," + ",".join(f"v1={good}" for _ in range(17)), f"t={t},v1={good}," + "x" * 9000,
        f"t=-{t},v1={good}", f"t={t}.5,v1={good}"])
    return [h.delivery("malformed_signature", body, header, event_id=event_id)]


def _not_json_body(h: _Hooks) -> list[Delivery]:
    body, _ = h.harmful()
    bad = h.rng.choice([body[:h.rng.randrange(1, len(body))], b"payout.paid", b"", b"{", body + b"}",
                        body.replace(b'"', b"'"), b"\xef\xbb\xbf\xef\xbb\xbf" + body])
    return [h.delivery("not_json_body", bad, _sign(bad, h.secret, h.fresh()))]


def _invalid_utf8_body(h: _Hooks) -> list[Delivery]:
    body, event_id = h.harmful()
    at = body.index(b'"type"') + 1  # inside the key: the text stays JSON-shaped, the bytes are not UTF-8
    bad = body[:at] + h.rng.choice([b"\xff", b"\x80", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80"]) + body[at:]
    return [h.delivery("invalid_utf8_body", bad, _sign(bad, h.secret, h.fresh()), event_id=event_id)]


def _not_an_event(h: _Hooks) -> list[Delivery]:
    body, event_id = h.harmful()
    event = json.loads(body)
    broken = h.rng.choice([
        [event], {**event, "object": "charge"}, {k: v for k, v in event.items() if k != "id"}, {**event, "id": 12},
        {**event, "type": ""}, {**event, "created": str(event["created"])}, {**event, "created": -1},
        {**event, "created": True}, {**event, "data": {}}, {**event, "data": {"object": "tr_1"}}, "event", None])
    bad = json.dumps(broken, separators=(",", ":")).encode()
    return [h.delivery("not_an_event", bad, _sign(bad, h.secret, h.fresh()), event_id=event_id)]


def _oversized_body(h: _Hooks) -> list[Delivery]:
    """A signed, harmful event padded past the endpoint's limit (below what it drains: it answers 413)."""
    transfer = h.transfer()
    size = h.rng.randint(h.body_bytes_max + 1, DRAIN_BYTES_MAX - 4096)  # the rest of the event is < 4 KiB
    body, event_id = h.event("transfer.reversed", {**transfer, "description": "x" * size})
    return [h.delivery("oversized_body", body, _sign(body, h.secret, h.fresh()), "413", event_id)]


def _unknown_payout(h: _Hooks) -> list[Delivery]:
    """Genuinely signed, naming a payout (and payee) this ledger never requested: refused by the sequencer."""
    kind = h.rng.choice(["payout.paid", "payout.failed", "transfer.reversed"])
    obj = h.transfer(unknown=True) if kind == "transfer.reversed" else h.payout(kind.split(".")[1])
    body, event_id = h.event(kind, obj)
    return [h.delivery("unknown_payout", body, _sign(body, h.secret, h.fresh()), "dead_letter", event_id)]


def _replay(h: _Hooks) -> list[Delivery]:
    """A genuine delivery of an event the ledger ignores, then the same bytes and header again."""
    obj = dict(h.rng.choice(h.targets)) if h.targets else h.transfer(unknown=True)
    kind = h.rng.choice([*IGNORED_TYPES, "transfer.reversed"])
    if kind == "transfer.reversed":  # reversed in part: the ledger waits for the full reversal
        obj = {**obj, "amount_reversed": obj["amount"] - 1, "reversed": False}
    body, event_id = h.event(kind, obj)
    header = _sign(body, h.secret, h.fresh())
    return [h.delivery("genuine", body, header, "2xx", event_id),
            h.delivery("replay", body, header, "replay", event_id)]


_WEBHOOK_BUILDERS: dict[str, Callable[[_Hooks], list[Delivery]]] = {
    "forged_signature": _forged_signature, "stale_timestamp": _stale_timestamp,
    "future_timestamp": _future_timestamp, "missing_signature": _missing_signature,
    "malformed_signature": _malformed_signature, "not_json_body": _not_json_body,
    "invalid_utf8_body": _invalid_utf8_body, "not_an_event": _not_an_event, "oversized_body": _oversized_body,
    "unknown_payout": _unknown_payout, "replay": _replay,
}


def hostile_deliveries(seed: int, secret: str, now: int, count: int, *, targets: Sequence[dict] = (),
                       kinds: Sequence[str] = WEBHOOK_KINDS, tolerance_s: int = DEFAULT_TOLERANCE_S,
                       body_bytes_max: int = BODY_BYTES_MAX) -> list[Delivery]:
    """`count` hostile webhook deliveries (a replay adds its genuine first delivery before it), every kind in
    turn in a seeded order, signed relative to `now` (unix seconds). `targets`: Stripe transfer objects of
    settled payouts, which the harmful events name (as reversed in full); without them, made-up ones."""
    return list(_deliveries(seed, secret, lambda: now, count, targets, kinds, tolerance_s, body_bytes_max))


def _deliveries(seed: int, secret: str, clock: Callable[[], float], count: int, targets: Sequence[dict],
                kinds: Sequence[str], tolerance_s: int, body_bytes_max: int) -> Iterator[Delivery]:
    """The deliveries, each kind's drawn when it is its turn with the clock as it is then: the content is the
    seed's whatever the clock (the draws do not depend on it), the timestamps stay fresh however slowly they go."""
    unknown = set(kinds) - set(WEBHOOK_KINDS)
    if unknown:
        raise ValueError(f"unknown webhook kinds {sorted(unknown)}; known: {', '.join(WEBHOOK_KINDS)}")
    h = _Hooks(seed, secret, int(clock()), targets, tolerance_s, body_bytes_max)
    made = 0
    while made < count:
        block = list(kinds)
        h.rng.shuffle(block)
        for kind in block[:count - made]:
            h.now = int(clock())
            yield from _WEBHOOK_BUILDERS[kind](h)
            made += 1


def send_webhooks_hostile(url: str, secret: str, seed: int, count: int = 2 * len(WEBHOOK_KINDS), *,
                          targets: Sequence[dict] = (), kinds: Sequence[str] = WEBHOOK_KINDS,
                          now: int | None = None, deadline_s: float = ANSWER_DEADLINE_S,
                          client: httpx.Client | None = None) -> dict[str, Any]:
    """Send the seed's hostile deliveries to the endpoint at `url` (…/webhooks/stripe), each kind's signed just
    before it is sent (or all at `now`: then they are hostile_deliveries(seed, secret, now, ...)), and judge
    each answer: see send_deliveries."""
    clock = time.time if now is None else (lambda: now)
    deliveries = _deliveries(seed, secret, clock, count, targets, kinds, DEFAULT_TOLERANCE_S, BODY_BYTES_MAX)
    return send_deliveries(url, deliveries, deadline_s=deadline_s, client=client)


def send_deliveries(url: str, deliveries: Iterable[Delivery], *, deadline_s: float = ANSWER_DEADLINE_S,
                    client: httpx.Client | None = None) -> dict[str, Any]:
    """POST each delivery to `url` (retrying connection errors until the deadline) and judge its answer against
    its `expect`. Keys: webhooks_sent, webhooks_refused, webhooks_accepted, webhooks_wrong_status,
    webhooks_unanswered, webhooks_genuine_refused, webhooks_replays_after_restart, webhooks_failures,
    *_examples, and webhooks_event_ids (ledger event id -> kind: what check_nothing_appended looks for)."""
    tally, sent = _Tally("webhooks"), []
    with (httpx.Client(timeout=30.0) if client is None else nullcontext(client)) as http:
        for delivery in deliveries:
            tally.count("sent")
            sent.append(delivery)
            answer = _deliver(http, url, delivery, deadline_s)
            _judge_delivery(tally, delivery, answer)
    result = tally.result(
        ("sent", "refused", "accepted", "wrong_status", "unanswered", "genuine_refused", "replays_after_restart",
         "left_to_the_sequencer"),
        {"accepted": "hostile webhook deliveries accepted (2xx)",
         "wrong_status": "hostile webhook deliveries answered with another status than expected",
         "unanswered": "webhook deliveries never answered",
         "genuine_refused": "genuine webhook deliveries (the first of a replayed pair) not answered 2xx"})
    ids = {d.ledger_event_id: d.kind for d in sent if d.ledger_event_id and d.kind != "genuine"}
    return {**result, "webhooks_event_ids": ids}


def _deliver(client: httpx.Client, url: str, delivery: Delivery, deadline_s: float) -> _Answer:
    headers = {"Content-Type": "application/json; charset=utf-8", "User-Agent": "Stripe/1.0 (soak)"}
    if delivery.header is not None:
        headers["Stripe-Signature"] = delivery.header
    return _post(client, url, delivery.body, headers, deadline_s)


def _judge_delivery(tally: _Tally, delivery: Delivery, answer: _Answer) -> None:
    shown = f"{delivery.kind}: {answer.status} {answer.text[:120]}"
    status = answer.status
    if status is None:
        tally.count("unanswered", f"{delivery.kind}: {answer.text[:120]}")
    elif delivery.expect == "2xx":
        # a retry after a lost answer meets the replay guard: the first attempt was received
        if not (200 <= status < 300 or (answer.retries and status == 400 and "replayed" in answer.text)):
            tally.count("genuine_refused", shown)
    elif 200 <= status < 300 and delivery.expect == "replay":
        tally.count("replays_after_restart")  # not a failure if nothing new was appended (the ledger's check)
    elif 200 <= status < 300 and delivery.expect == "dead_letter":
        tally.count("left_to_the_sequencer")  # not a failure if it is not chained (the ledger's check)
    elif 200 <= status < 300:
        tally.count("accepted", shown)
    elif (delivery.expect == "413" and status != 413) or not 400 <= status < 500:
        tally.count("wrong_status", shown)
    else:
        tally.count("refused")


def check_nothing_appended(bootstrap: str, events_topic: str, commands_topic: str, event_ids: Mapping[str, str],
                           timeout_s: float = 120.0) -> list[str]:
    """Failures for every hostile delivery (ledger event id -> kind) found in ledger.commands or ledger.events
    (an "unknown_payout" only in ledger.events: the endpoint may append it for the sequencer to refuse)."""
    if not event_ids:
        return []
    codec, failures = EventCodec(), []
    for topic in (commands_topic, events_topic):
        for record in read_topic(bootstrap, topic, timeout_s):
            try:
                event = codec.decode(record.value or b"")
            except UndecodableEvent:
                continue
            kind = event_ids.get(event.envelope.event_id)
            if kind == "unknown_payout" and topic == commands_topic:
                continue
            if kind is not None:
                failures.append(f"a hostile webhook delivery ({kind}) was appended to {topic}: {event.event_type} "
                                f"for payout {event.payload.get('payout_id')} of {event.payee_id}")
    return failures


# --- the Stripe webhook endpoint: genuine events redelivered out of order ------------------------------


def _until_done(call: Callable[[int], Any], done: Callable[[], bool], what: str, attempts: int = 8) -> None:
    """Call the sandbox's API until it answers, or `done` shows the call took effect although its answer was
    lost: faults the soak armed on /v1/transfers (500s, 429s, resets) may still be waiting."""
    import stripe as stripe_sdk

    for attempt in range(1, attempts + 1):
        try:
            call(attempt)
            return
        except stripe_sdk.StripeError:
            if done():
                return
            time.sleep(0.5)  # bounded by the attempts
    raise RuntimeError(f"the Stripe sandbox did not {what} in {attempts} attempts")


def _reverse(client: Any, stripe: StripeTestServer, transfer_id: str, amount: int, key: str) -> None:
    """Reverse `amount` of a transfer through the sandbox's API; a new idempotency key per attempt (a 500
    is kept under its key), after checking the transfer, so nothing is reversed twice."""
    before = _transfer(stripe, transfer_id)["amount_reversed"]
    _until_done(lambda attempt: client.v1.transfers.reversals.create(
        transfer_id, params={"amount": amount}, options={"idempotency_key": f"{key}:{attempt}"}),
        lambda: _transfer(stripe, transfer_id)["amount_reversed"] >= before + amount,
        f"reverse {amount} of {transfer_id}")


def _describe(client: Any, stripe: StripeTestServer, transfer_id: str, description: str) -> None:
    _until_done(lambda _: client.v1.transfers.update(transfer_id, params={"description": description}),
                lambda: _transfer(stripe, transfer_id)["description"] == description, f"update {transfer_id}")


def _transfer(stripe: StripeTestServer, transfer_id: str) -> dict:
    return next(transfer for transfer in stripe.transfers() if transfer["id"] == transfer_id)


def _redelivery_order(rng: random.Random, events: dict[str, list[dict]]) -> list[dict]:
    """Each transfer's events newest first, some twice or three times (the copies later), the transfers
    interleaved at random while keeping each one's order."""
    queues = []
    for chronological in events.values():
        queue = list(reversed(chronological))
        for event in chronological:
            for _ in range(rng.choice([0, 1, 1, 2])):
                queue.insert(rng.randint(queue.index(event) + 1, len(queue)), event)
        queues.append(queue)
    order: list[dict] = []
    while any(queues):
        queue = rng.choice([queue for queue in queues if queue])
        order.append(queue.pop(0))
    return order


def reverse_and_redeliver(stripe: StripeTestServer, url: str, secret: str, seed: int, payout_ids: Iterable[str],
                          k: int, *, reverse_share: float = 0.5, api_key: str = "sk_test_ledger_soak",
                          deadline_s: float = ANSWER_DEADLINE_S) -> dict[str, Any]:
    """Take K of these settled payouts that have a Stripe transfer, reverse some in full (half of those in two
    steps) through the sandbox's API, describe each (transfer.updated), then deliver every transfer's genuine
    events to the endpoint at `url`, out of order and duplicated, each delivery signed anew with `secret`.
    Returns what was sent (redelivery_*), redelivery_failures (answers other than 2xx), and
    redelivery_expected: payout id -> "failed" (reversed) or "settled" (for check_redelivered)."""
    import stripe as stripe_sdk

    rng = random.Random(seed ^ 0x0DE1)
    by_payout = {t["transfer_group"]: t for t in stripe.transfers()
                 if not t["reversed"] and t["metadata"].get("payout_id") == t["transfer_group"]}
    chosen = rng.sample(sorted(set(payout_ids) & set(by_payout)), min(k, len(set(payout_ids) & set(by_payout))))
    reversed_ids = set(rng.sample(chosen, round(len(chosen) * reverse_share))) if chosen else set()
    client = stripe_sdk.StripeClient(api_key, base_addresses={"api": stripe.url}, max_network_retries=0)
    two_steps = []
    for payout_id in chosen:
        transfer = by_payout[payout_id]
        _describe(client, stripe, transfer["id"], f"soak: payout {payout_id}")
        if payout_id in reversed_ids:
            first = rng.randint(1, transfer["amount"] - 1) if transfer["amount"] > 1 and rng.random() < 0.5 else 0
            if first:
                two_steps.append(payout_id)  # a partial reversal first: its transfer.reversed changes nothing
            for n, amount in enumerate(a for a in (first, transfer["amount"] - first) if a):
                _reverse(client, stripe, transfer["id"], amount, f"soak-reversal-{payout_id}-{n}")
    events = {payout_id: stripe.events(object_id=by_payout[payout_id]["id"]) for payout_id in chosen}
    result = redeliver(url, secret, seed, events, deadline_s=deadline_s)
    return {**result, "redelivery_payouts": sorted(chosen), "redelivery_reversed": sorted(reversed_ids),
            "redelivery_reversed_in_two_steps": sorted(two_steps),
            "redelivery_transfers": {payout_id: by_payout[payout_id]["id"] for payout_id in sorted(chosen)},
            "redelivery_expected": {pid: "failed" if pid in reversed_ids else "settled" for pid in sorted(chosen)}}


def redeliver(url: str, secret: str, seed: int, events: Mapping[str, list[dict]], *, now: int | None = None,
              deadline_s: float = ANSWER_DEADLINE_S) -> dict[str, Any]:
    """Deliver each payout's Stripe events (oldest first in `events`) to the endpoint at `url`: newest first,
    duplicated, the payouts interleaved (_redelivery_order), each delivery signed anew with `secret` at `now`
    less its attempt number (Stripe signs each retry anew). Every answer must be 2xx. Keys: redelivery_events
    (distinct), redelivery_sent, redelivery_sent_<type>, redelivery_refused, redelivery_failures."""
    order = _redelivery_order(random.Random(seed ^ 0x0DE2), events)
    tally = _Tally("redelivery")
    bodies = {event["id"]: json.dumps(event).encode() for event in order}  # Stripe sends an event's bytes again
    attempts: Counter = Counter()
    now = int(time.time()) if now is None else now
    with httpx.Client(timeout=30.0) as http:
        for event in order:
            attempts[event["id"]] += 1
            delivery = Delivery("genuine", bodies[event["id"]],
                                _sign(bodies[event["id"]], secret, now - attempts[event["id"]]), "2xx", event["id"])
            tally.count("sent")
            tally.count(f"sent_{event['type']}")
            answer = _deliver(http, url, delivery, deadline_s)
            if answer.status is None or not 200 <= answer.status < 300:
                tally.count("refused", f"{event['type']} {event['id']}: {answer.status} {answer.text[:120]}")
    tally.count("events", n=len(bodies))  # distinct events; "sent" counts their deliveries
    names = ("events", "sent", "refused", *sorted(name for name in tally.counts if name.startswith("sent_")))
    return tally.result(names, {"refused": "genuine redelivered webhooks not answered 2xx"})


def check_redelivered(bootstrap: str, events_topic: str, redelivered: Mapping[str, Any], wait_s: float = 60.0,
                      poll_s: float = 1.0) -> list[str]:
    """Failures unless each reversed payout failed exactly once ("transfer_reversed") and the others are still
    settled with no failure. Waits (bounded) for the reversals to be chained; call it once the ledger is quiet
    (every command chained), so a duplicate chained later cannot be missed."""
    expected: Mapping[str, str] = redelivered["redelivery_expected"]
    deadline = time.monotonic() + wait_s
    while True:
        book, failed = _payout_outcomes(bootstrap, events_topic, set(expected))
        done = all(failed.get(pid) for pid, status in expected.items() if status == "failed")
        if done or time.monotonic() > deadline:
            break
        time.sleep(poll_s)  # the sequencer chains the appended commands: bounded by the deadline
    failures = []
    for payout_id, status in expected.items():
        payout, reasons = book.get(payout_id), failed.get(payout_id, [])
        now_status = payout.status.value if payout is not None else "unknown"
        if status == "failed" and (reasons != ["transfer_reversed"] or now_status != "failed" or not payout.reversed):
            failures.append(f"reversed payout {payout_id} is {now_status} with final failures {reasons}, expected "
                            "one failure 'transfer_reversed'")
        elif status == "settled" and (reasons or now_status != "settled"):
            failures.append(f"payout {payout_id} (not reversed) is {now_status} with final failures {reasons}")
    return failures


def _payout_outcomes(bootstrap: str, topic: str, payout_ids: set[str]) -> tuple[PayoutBook, dict[str, list[str]]]:
    """The payouts' fold, and the reason codes of their final PayoutFailed events, in ledger order."""
    codec, book, failed = EventCodec(), PayoutBook(), {}
    for record in read_topic(bootstrap, topic, 120.0):
        event = codec.decode(record.value or b"")
        if event.payload.get("payout_id") not in payout_ids:
            continue
        book.apply(event)
        if event.event_type == "PayoutFailed" and not event.payload["retryable"]:
            failed.setdefault(event.payload["payout_id"], []).append(event.payload["reason_code"])
    return book, failed
