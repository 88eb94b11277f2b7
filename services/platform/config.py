"""Typed settings, read once from the environment; a missing or malformed value fails fast at start-up."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

# The well-known local ports; each is overridable with GRPC_PORT (own) or <DEP>_SERVICE_ADDR (others).
DEFAULT_PORTS: dict[str, int] = {"gateway": 50050, "profile": 50051, "campaign": 50052, "risk": 50053}


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


def env_str(env: Mapping[str, str], name: str, default: str | None = None) -> str:
    value = env.get(name, "").strip()
    if value:
        return value
    if default is None:
        raise ConfigError(f"environment variable {name} is required")
    return default


def env_int(env: Mapping[str, str], name: str, default: int, *, minimum: int = 0, maximum: int = 65535) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if not minimum <= value <= maximum:
        raise ConfigError(f"{name} must be between {minimum} and {maximum}, got {value}")
    return value


def env_float(env: Mapping[str, str], name: str, default: float, *, minimum: float = 0.0) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


def env_bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


# TLS_CLIENT_AUTH values. grpcio's Python API can only not request a client certificate or request *and require*
# one (verified against TLS_CLIENT_CA_FILE): "optional" (request, don't require) cannot be offered on one port.
TLS_CLIENT_AUTH_NONE = "none"
TLS_CLIENT_AUTH_REQUIRED = "required"


@dataclass(frozen=True)
class TlsSettings:
    """Server TLS: the certificate chain and key files, and optionally the CA that signs client certificates."""

    cert_file: str
    key_file: str
    client_ca_file: str | None = None
    client_auth: str = TLS_CLIENT_AUTH_NONE

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> TlsSettings | None:
        """None when TLS_CERT_FILE and TLS_KEY_FILE are both unset (plain, insecure listener)."""
        cert, key = env.get("TLS_CERT_FILE", "").strip(), env.get("TLS_KEY_FILE", "").strip()
        ca = env.get("TLS_CLIENT_CA_FILE", "").strip() or None
        auth = env.get("TLS_CLIENT_AUTH", "").strip().lower()
        if not cert and not key:
            if ca or auth:
                raise ConfigError("TLS_CLIENT_CA_FILE and TLS_CLIENT_AUTH need TLS_CERT_FILE and TLS_KEY_FILE")
            return None
        if not cert or not key:
            raise ConfigError("TLS_CERT_FILE and TLS_KEY_FILE must be set together")
        if not auth:
            auth = TLS_CLIENT_AUTH_REQUIRED if ca else TLS_CLIENT_AUTH_NONE
        if auth == "optional":
            raise ConfigError("TLS_CLIENT_AUTH=optional is not supported: grpcio can only require a client "
                              "certificate or not request one; use required or none")
        if auth not in {TLS_CLIENT_AUTH_NONE, TLS_CLIENT_AUTH_REQUIRED}:
            raise ConfigError(f"TLS_CLIENT_AUTH must be none or required, got {auth!r}")
        if auth == TLS_CLIENT_AUTH_REQUIRED and not ca:
            raise ConfigError("TLS_CLIENT_AUTH=required needs TLS_CLIENT_CA_FILE")
        if auth == TLS_CLIENT_AUTH_NONE and ca:
            raise ConfigError("TLS_CLIENT_CA_FILE is set but TLS_CLIENT_AUTH=none would never use it")
        for name, path in (("TLS_CERT_FILE", cert), ("TLS_KEY_FILE", key), ("TLS_CLIENT_CA_FILE", ca)):
            if path is not None and not Path(path).is_file():
                raise ConfigError(f"{name} is not a readable file: {path}")
        return cls(cert_file=cert, key_file=key, client_ca_file=ca, client_auth=auth)


def dependency_env_name(service: str) -> str:
    return f"{service.upper()}_SERVICE_ADDR"


@dataclass(frozen=True)
class ServiceSettings:
    """What every service needs to start. Service-specific values live in `extra`."""

    service_name: str
    listen_host: str
    grpc_port: int
    database_url: str
    auto_migrate: bool
    log_level: str
    drain_seconds: float
    shutdown_grace_seconds: float
    # When set, the bound port is written here once the server listens (lets tests and `make run` use port 0).
    port_file: str | None
    # Addresses of the services this one calls, by service name.
    dependencies: dict[str, str] = field(default_factory=dict)
    extra: dict[str, str] = field(default_factory=dict)
    # None: a plain (insecure) listener, as before.
    tls: TlsSettings | None = None

    @property
    def listen_address(self) -> str:
        return f"{self.listen_host}:{self.grpc_port}"

    @classmethod
    def from_env(
        cls,
        service_name: str,
        *,
        dependencies: Sequence[str] = (),
        extra: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> ServiceSettings:
        env = os.environ if env is None else env
        data_dir = Path(env_str(env, "DATA_DIR", "var/data"))
        default_db = f"sqlite+aiosqlite:///{data_dir / (service_name + '.db')}"
        deps = {
            dep: env_str(env, dependency_env_name(dep), f"127.0.0.1:{DEFAULT_PORTS[dep]}") for dep in dependencies
        }
        log_level = env_str(env, "LOG_LEVEL", "INFO").upper()
        if log_level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ConfigError(f"LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, got {log_level!r}")
        return cls(
            service_name=service_name,
            listen_host=env_str(env, "LISTEN_HOST", "127.0.0.1"),
            grpc_port=env_int(env, "GRPC_PORT", DEFAULT_PORTS[service_name]),
            database_url=env_str(env, "DATABASE_URL", default_db),
            auto_migrate=env_bool(env, "AUTO_MIGRATE", True),
            log_level=log_level,
            drain_seconds=env_float(env, "DRAIN_SECONDS", 2.0),
            shutdown_grace_seconds=env_float(env, "SHUTDOWN_GRACE_SECONDS", 10.0),
            port_file=env.get("PORT_FILE") or None,
            dependencies=deps,
            extra={name: env[name] for name in extra if env.get(name)},
            tls=TlsSettings.from_env(env),
        )
