"""Local stand-ins for the payout providers, used by `ledger demo`, the benchmark and the tests.

Nothing real can be reached from the development machines, so the real `stripe` SDK and the real
connectors talk HTTP to these servers instead: sandbox/stripe.py (Stripe's API with its
idempotency rules and injectable faults), sandbox/mobile_money.py (an Orange-Money-style API) and
sandbox/bank.py (a bank answering pain.001 files with pain.002 status reports).
"""
