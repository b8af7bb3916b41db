"""Mobile-money (Orange Money style) provider test double: see :mod:`tests.mobile_money_server.server`."""

from .server import FAULT_KINDS, STATUSES, MobileMoneyTestServer

__all__ = ["MobileMoneyTestServer", "FAULT_KINDS", "STATUSES"]
