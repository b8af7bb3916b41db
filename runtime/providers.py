"""The payout providers configured by settings: Stripe, bank transfer, mobile money (each when set up), manual (always)."""

from __future__ import annotations

from connectors.base import Connector
from connectors.manual import ManualConnector
from runtime.settings import Settings


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
