"""The payout providers configured by settings: Stripe, bank transfer, mobile money (each when set up), manual
(always), and the limits of each one's lane in the transfer processor.

A lane's limits, first found wins: LEDGER_PROVIDER_LIMITS for that provider, then LEDGER_PROVIDER_CONCURRENCY /
LEDGER_PROVIDER_RATE_PER_S for every provider, then the provider's own default (Stripe: its documented rate
limit for the key's mode, connectors/stripe_connector.LANE_DEFAULTS), then 4 calls in flight and 20 requests
a second. Concurrency caps throughput at concurrency / provider latency; the rate caps it at rate_per_s.
"""

from __future__ import annotations

from dataclasses import dataclass

from connectors.base import Connector
from connectors.manual import ManualConnector
from runtime.settings import Settings

DEFAULT_CONCURRENCY = 4
DEFAULT_RATE_PER_S = 20.0
WINDOW_MIN = 200
WINDOW_PER_CALL = 8  # attempts recorded ahead per call in flight: covers the sequencer's chaining delay


@dataclass(frozen=True)
class LaneLimits:
    concurrency: int  # calls in flight at once
    rate_per_s: float  # provider requests started per second
    window: int  # attempts recorded and not answered yet

    def shared_by(self, members: int) -> "LaneLimits":
        """This instance's part when `members` instances share the provider (each rounded down, at least 1)."""
        if members <= 1:
            return self
        return LaneLimits(max(1, self.concurrency // members), self.rate_per_s / members,
                          max(1, self.window // members))

    def describe(self) -> str:
        return f"{self.concurrency} calls in flight, {self.rate_per_s:g} requests/s, {self.window} attempts ahead"


def lane_limits(settings: Settings, connector: Connector) -> LaneLimits:
    own = settings.provider_limits.get(connector.name, {})
    concurrency = int(own.get("concurrency") or settings.provider_concurrency
                      or getattr(connector, "default_concurrency", DEFAULT_CONCURRENCY))
    rate = float(own.get("rate_per_s") or settings.provider_rate_per_s
                 or getattr(connector, "default_rate_per_s", DEFAULT_RATE_PER_S))
    window = settings.provider_window or max(WINDOW_MIN, WINDOW_PER_CALL * concurrency)
    return LaneLimits(concurrency, rate, window)


def bank_dirs(settings: Settings) -> tuple:
    outbox = settings.bank_outbox_dir or settings.data_dir / "bank" / "outbox"
    status = settings.bank_status_dir or settings.data_dir / "bank" / "status"
    return outbox, status


def build_connectors(settings: Settings) -> dict[str, Connector]:
    connectors: dict[str, Connector] = {"manual": ManualConnector()}
    if settings.stripe_api_key:
        from connectors.stripe_connector import StripeConnector

        connectors["stripe"] = StripeConnector(settings.stripe_api_key, settings.stripe_api_base,
                                               settings.stripe_timeout_s)
    if settings.mobile_money_url:
        from connectors.mobile_money import MobileMoneyConnector

        connectors["mobile_money"] = MobileMoneyConnector(
            settings.mobile_money_url, settings.mobile_money_client_id, settings.mobile_money_client_secret,
            timeout_s=settings.mobile_money_timeout_s)
    if settings.bank_debtor_iban:
        from connectors.bank_transfer import BankTransferConnector

        outbox, status = bank_dirs(settings)
        outbox.mkdir(parents=True, exist_ok=True)
        status.mkdir(parents=True, exist_ok=True)
        connectors["bank_transfer"] = BankTransferConnector(
            outbox, status, settings.bank_debtor_name, settings.bank_debtor_iban, settings.bank_debtor_bic)
    return connectors
