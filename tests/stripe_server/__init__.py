"""Stripe API test double: see :mod:`tests.stripe_server.server`."""

from .server import FAULT_KINDS, StripeTestServer, decode_form

__all__ = ["StripeTestServer", "FAULT_KINDS", "decode_form"]
