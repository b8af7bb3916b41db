"""`ledger demo`: the whole product on the embedded stack, against sandbox providers, in about a minute.

data.py makes the payees and inputs (pure, seeded); sandboxes.py runs the providers with their
injected failures; processes.py starts and stops the real processors; tail.py follows the ledger;
operator.py plays the payout operator; drain.py waits for quiet; run.py puts it together.
"""
