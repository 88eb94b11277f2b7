"""The shared platform every Lodestar service is built on.

One place for: server bootstrap and lifecycle (`server`), typed settings (`config`), JSON logs (`logs`),
PII masking (`masking`), OpenTelemetry (`telemetry`), domain errors and their gRPC mapping (`errors`),
interceptors (`interceptors`), database, unit of work and migrations (`db`, `migrations`), idempotency keys
(`idempotency`), page tokens (`pagination`), request validation (`validation`) and clients of other services
(`clients`).
"""
