"""`ledger quote` as a user runs it: exact JSON for the worked examples, clear errors."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.integration.cli_env import LEDGER, clean_env


def quote(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([LEDGER, "quote", *args], env=clean_env(**env), capture_output=True, text=True, timeout=60)


def test_tiered_and_flat_plan_examples():
    tiered = quote("--plan", "tiered-services", "--currency", "USD", "--gross", "100000", "--services", "60",
                     "--deduction", "booth_rent=5000", "--method", "stripe_standard", "--json")
    assert json.loads(tiered.stdout) == {"gross": 100000, "rate_bp": 7200, "payee_share": 72000,
                                           "deductions": 5000, "fee": 275, "net": 66725}
    flat = quote("--plan", "flat-80", "--currency", "XOF", "--gross", "30000", "--method", "mobile_money", "--json")
    assert json.loads(flat.stdout)["net"] == 24000


def test_a_plans_file_is_used(tmp_path):
    plans = tmp_path / "plans.toml"
    plans.write_text('[plans.flat-90]\nbase_rate_bp = 9000\n\n[fees.manual]\npercent_bp = 0\nfixed_major = "1.00"\n')
    result = quote("--plan", "flat-90", "--currency", "EUR", "--gross", "1000", "--json", LEDGER_PLANS_FILE=str(plans))
    assert json.loads(result.stdout) == {"gross": 1000, "rate_bp": 9000, "payee_share": 900, "deductions": 0,
                                         "fee": 100, "net": 800}


@pytest.mark.parametrize(("args", "code", "message"), [
    (("--plan", "gold", "--currency", "USD", "--gross", "1"), 1, "unknown commission plan 'gold'"),
    (("--plan", "flat-80", "--currency", "usd", "--gross", "1"), 1, "did you mean 'USD'"),
    (("--plan", "flat-80", "--currency", "USD", "--gross", "-5"), 1, "--gross must not be negative"),
    (("--plan", "flat-80", "--currency", "USD", "--gross", "1", "--deduction", "rent=1.5"), 2, "NAME=MINOR"),
    (("--plan", "flat-80", "--currency", "USD", "--gross", "1", "--method", "paypal"), 1, "unknown payout method"),
])
def test_bad_input_fails_clearly(args, code, message):
    result = quote(*args)
    assert result.returncode == code
    assert message in result.stderr.replace("\n", " ") and "Traceback" not in result.stderr


def test_a_broken_plans_file_is_named(tmp_path):
    plans = tmp_path / "plans.toml"
    plans.write_text("[plans.x\n")
    result = quote("--plan", "x", "--currency", "USD", "--gross", "1", LEDGER_PLANS_FILE=str(plans))
    assert result.returncode == 1 and "is not valid TOML" in result.stderr.replace("\n", " ")
