"""The operations HTTP API (`ledger api`): FastAPI over the same actions as the CLI."""
