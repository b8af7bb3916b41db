"""The event contract as package data: avro/*.avsc (and avro/history/*.avsc, older writers).

schemas/avro/ stays at the top of the repository; this file makes it a package so that the wheel ships
the schemas and ledger/codec.py finds them with importlib.resources, installed or checked out.
"""
