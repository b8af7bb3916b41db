"""Benchmark `ledger publish`: a seeded 100,000-line JSON Lines file through the real command.

Generates valid payments (several payees and currencies) with a few hundred bad lines, exact
duplicates and conflicting duplicates mixed in, runs `ledger publish FILE --json` with the current
LEDGER_* environment (or the embedded stack of `ledger up`), checks the counts and the rejected line
numbers against what was generated, and prints the elapsed time and records per second.

    .venv/bin/python bench/publish_100k.py [--lines 100000] [--seed 7] [--keep FILE]

Payment ids carry a fresh run id (or --run-id), so a second run does not meet the first one's
records in the ledger; everything else follows from the seed. Exit 0 when the counts match.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

LEDGER = str(Path(sys.executable).with_name("ledger"))
CURRENCIES = ("USD", "EUR", "GBP", "JPY", "XOF", "BHD")
ZONES = (timezone.utc, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-4)))


def _payment(rng: random.Random, run_id: str, index: int, now: datetime) -> dict:
    payee = rng.randrange(60)
    when = (now - timedelta(seconds=rng.randrange(30 * 86_400))).astimezone(rng.choice(ZONES))
    stamp = when.isoformat(timespec="seconds")
    if rng.random() < 0.3:
        stamp = stamp.replace("+00:00", "Z")
    record = {"payment_id": f"{run_id}-p{index}", "payee_id": f"bench-payee-{payee}",
              "amount_minor": rng.randint(100, 40_000), "currency": CURRENCIES[payee % len(CURRENCIES)],
              "occurred_at": stamp, "services": rng.randint(1, 3), "source": "bench"}
    if rng.random() < 0.2:
        record["metadata"] = {"order": f"o-{index}"}
    return record


BAD = (
    lambda r: json.dumps({**r, "amount_minor": r["amount_minor"] + 0.5}),          # float
    lambda r: json.dumps({**r, "currency": r["currency"].lower()}),                # lower-case currency
    lambda r: json.dumps({**r, "occurred_at": r["occurred_at"][:19]}),             # no offset
    lambda r: json.dumps({k: v for k, v in r.items() if k != "payee_id"}),         # no payee
    lambda r: json.dumps({**r, "amount_minor": str(r["amount_minor"])}),           # string amount
    lambda r: json.dumps(r)[:-7],                                                  # truncated: not JSON
)


def generate(path: Path, lines: int, seed: int, run_id: str) -> dict[str, object]:
    """Write the file; return the expected counts and the line numbers that must be rejected."""
    rng = random.Random(seed)
    now = datetime.now(timezone.utc) - timedelta(minutes=1)
    accepted: list[dict] = []
    expected = {"accepted": 0, "duplicates": 0, "rejected": 0}
    rejected_lines: list[int] = []
    with path.open("w") as out:
        for line in range(1, lines + 1):
            roll = rng.random()
            if accepted and roll < 0.003:                              # exact duplicate of an earlier line
                out.write(json.dumps(rng.choice(accepted)) + "\n")
                expected["duplicates"] += 1
                continue
            record = _payment(rng, run_id, line, now)
            if accepted and roll < 0.004:                              # same payment id, other amount
                record = {**rng.choice(accepted)}
                record["amount_minor"] += 1
                out.write(json.dumps(record) + "\n")
            elif roll < 0.007:                                         # malformed in one of several ways
                out.write(rng.choice(BAD)(record) + "\n")
            else:
                out.write(json.dumps(record) + "\n")
                accepted.append(record)
                expected["accepted"] += 1
                continue
            expected["rejected"] += 1
            rejected_lines.append(line)
    return {**expected, "rejected_lines": rejected_lines}


def _child_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--run-id", default=None, help="prefix of payment ids (default: fresh)")
    parser.add_argument("--keep", type=Path, default=None, help="write the input file here and keep it")
    args = parser.parse_args()
    run_id = args.run_id or f"bench-{uuid.uuid4().hex[:8]}"

    with tempfile.TemporaryDirectory() as tmp:
        path = args.keep or Path(tmp) / "payments.jsonl"
        started = time.monotonic()
        expected = generate(path, args.lines, args.seed, run_id)
        print(f"generated {args.lines} lines ({path.stat().st_size / 1e6:.1f} MB) in "
              f"{time.monotonic() - started:.2f} s: {expected['accepted']} valid, {expected['duplicates']} "
              f"duplicates, {expected['rejected']} bad or conflicting (seed {args.seed}, run {run_id})")

        started, cpu = time.monotonic(), _child_cpu_s()
        result = subprocess.run([LEDGER, "publish", str(path), "--json"], capture_output=True, text=True)
        elapsed, cpu = time.monotonic() - started, _child_cpu_s() - cpu

    if result.returncode not in (0, 1) or not result.stdout.strip():
        print(f"ledger publish exited {result.returncode}:\n{result.stderr}", file=sys.stderr)
        return 2
    summary = json.loads(result.stdout)
    got = {key: summary[key] for key in ("accepted", "duplicates", "rejected")}
    want = {key: expected[key] for key in got}
    lines_ok = [error["line"] for error in summary["errors"]] == expected["rejected_lines"]
    print(f"ledger publish: {elapsed:.2f} s, {args.lines / elapsed:,.0f} records/s, "
          f"{cpu:.2f} s CPU in the command (the machine may be shared: CPU time is the steadier figure), "
          f"exit {result.returncode}")
    print(f"counts: {got} (expected {want}); rejected line numbers {'match' if lines_ok else 'DIFFER'}")
    return 0 if got == want and lines_ok and result.returncode == (1 if want["rejected"] else 0) else 1


if __name__ == "__main__":
    sys.exit(main())
