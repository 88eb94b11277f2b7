"""Gateway service: the partner door (partners, API keys, pseudonymous customer refs, the partner API).

handlers.py (gRPC: authentication metadata, validation, proto <-> domain, audit log) -> service.py (use cases,
transactions, partner-facing error translation) -> db.py (models, repositories, unit of work); auth.py holds
the credential and pseudonym primitives, clients.py the typed campaign client. app.py wires it into the shared
server; `python -m services.gateway`.
"""
