"""Payout providers behind one protocol (connectors/base.py): Stripe, bank transfer, mobile money, manual."""
