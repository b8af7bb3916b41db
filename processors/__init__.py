"""Kafka-facing processes and their building blocks: they read, call the pure domain, write."""
