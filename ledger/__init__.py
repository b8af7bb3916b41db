"""The payout ledger's domain: money, events, hash chain and folds, as plain Python (no Kafka, no SQL)."""
