"""Profile service: the customer 360 (customers and their attributes; later events, features, tags, segments).

handlers.py (gRPC, validation, proto <-> domain) -> service.py (use cases, transactions) -> db.py (models,
repository, unit of work). app.py wires it into the shared server; `python -m services.profile`.
"""
