"""The `ledger` command line (click): thin commands over runtime/, processors/ and projections/."""
