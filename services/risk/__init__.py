"""Risk service: is this contact allowed, safe and fair? Screening of offers, and the consent ledger.

handlers.py (gRPC, validation, proto <-> domain) -> service.py (use cases, transactions) -> db.py (models,
repositories, unit of work); rules.py holds the pure screening rules and config.py the risk-specific settings.
app.py wires it into the shared server; `python -m services.risk`.
"""
