"""The local stack: the four services as child processes on one machine, each with its own SQLite database,
JSON logs in `<data_dir>/logs/<svc>.log` and spans in `<data_dir>/traces/<svc>.jsonl`.

Used by `lodestar up` and by the end-to-end tests:

    with Stack(tmp_path, ports={"profile": 0, "risk": 0, "campaign": 0, "gateway": 0}) as stack:
        stack.wait_serving()
        stack.addresses["gateway"]  # "127.0.0.1:<port>"

Start order follows the call graph: profile, risk, campaign (needs profile and risk), gateway (needs
campaign). A port of 0 means "any free port": the service writes the port it bound to its PORT_FILE, which is
read before the next service starts. Risk calls campaign and gateway only for later features; it gets their
*configured* ports, or no address at all (the service default) when those are 0, since they start after it.

Unless `delivery_sinks=False`, the stack also starts the local delivery stand-ins before the services: the
provider simulator (SMS, app push, WeChat; `services.campaign.channels.simulator`) and the SMTP sink
(`services.campaign.channels.smtp_sink`), each on a free port with its output in `<data_dir>/logs/`, and points
the campaign service's dispatcher at them (CAMPAIGN_PROVIDER_URL, CAMPAIGN_SMTP_HOST/PORT, call lists under
`<data_dir>/exports`), so that `make run`'s demo really delivers (docs/delivery.md). A variable set in the
caller's environment or extra_env wins.

Nothing printed here carries personal data: only service names, addresses, exit codes and the tails of the
services' own (already redacted) logs.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import secrets
import signal
import subprocess  # nosec B404 - starts our own services
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.platform.config import DEFAULT_PORTS

# Dependency order: each service starts after the ones it needs an address for.
START_ORDER: tuple[str, ...] = ("profile", "risk", "campaign", "gateway")
# Whose address each service is given.
DEPENDENCIES: dict[str, tuple[str, ...]] = {
    "profile": (),
    "risk": ("profile", "campaign", "gateway"),
    "campaign": ("profile", "risk"),
    "gateway": ("campaign",),
}
LOG_TAIL_LINES = 20
# Defaults for a local stack; the caller's environment and extra_env win over them.
LOCAL_DEFAULTS: dict[str, str] = {"DRAIN_SECONDS": "0", "SHUTDOWN_GRACE_SECONDS": "3", "LOG_LEVEL": "INFO"}
# Set by the stack itself for each service; extra_env may still override them.
_OWNED_VARIABLES = (
    "LISTEN_HOST",
    "GRPC_PORT",
    "PORT_FILE",
    "DATABASE_URL",
    "DATA_DIR",
    "OTEL_TRACES_EXPORTER",
    "LODESTAR_TRACE_FILE",
    "GATEWAY_ADMIN_TOKEN",
    "PROFILE_SERVICE_ADDR",
    "RISK_SERVICE_ADDR",
    "CAMPAIGN_SERVICE_ADDR",
    "GATEWAY_SERVICE_ADDR",
)


class StackError(RuntimeError):
    """A service could not be started or did not become ready; the message says which and why."""


def _service_env_name(service: str) -> str:
    return f"{service.upper()}_SERVICE_ADDR"


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last `lines` lines of a log file ("" when there is none)."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 64 * 1024))
            data = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


@dataclass
class _Process:
    service: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    log_handle: IO[bytes]


class Stack:
    def __init__(
        self,
        data_dir: Path | str,
        ports: Mapping[str, int] | None = None,
        extra_env: Mapping[str, str] | None = None,
        *,
        host: str = "127.0.0.1",
        python: str = sys.executable,
        delivery_sinks: bool = True,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        merged = dict(DEFAULT_PORTS)
        merged.update(ports or {})
        unknown = set(merged) - set(START_ORDER)
        if unknown:
            raise ValueError(f"unknown services in ports: {sorted(unknown)}")
        for service, port in merged.items():
            if not 0 <= int(port) <= 65535:
                raise ValueError(f"port of {service} must be between 0 and 65535, got {port}")
        self.ports: dict[str, int] = {s: int(p) for s, p in merged.items()}
        self.extra_env = dict(extra_env or {})
        self.host = host
        self.python = python
        self.admin_token = self.extra_env.get("GATEWAY_ADMIN_TOKEN") or secrets.token_urlsafe(32)
        # Filled in as each service binds: service -> "host:port".
        self.addresses: dict[str, str] = {}
        self._processes: dict[str, _Process] = {}
        self.delivery_sinks = delivery_sinks
        # The delivery stand-ins once started: "provider" -> "http://127.0.0.1:<port>", "smtp" -> "127.0.0.1:<port>".
        self.sink_addresses: dict[str, str] = {}
        self._sinks: dict[str, _Process] = {}

    # -- paths ---------------------------------------------------------------------------------------------

    def database_path(self, service: str) -> Path:
        return self.data_dir / f"{service}.db"

    def log_path(self, service: str) -> Path:
        return self.data_dir / "logs" / f"{service}.log"

    def trace_path(self, service: str) -> Path:
        return self.data_dir / "traces" / f"{service}.jsonl"

    def port_file(self, service: str) -> Path:
        return self.data_dir / "run" / f"{service}.port"

    @property
    def admin_token_file(self) -> Path:
        return self.data_dir / "run" / "admin-token"

    # -- lifecycle -----------------------------------------------------------------------------------------

    def _address_for(self, service: str) -> str | None:
        """The address another service should use for `service`: its bound one, else its configured port."""
        if service in self.addresses:
            return self.addresses[service]
        port = self.ports[service]
        return f"{self.host}:{port}" if port else None

    def environment(self, service: str) -> dict[str, str]:
        env = {**LOCAL_DEFAULTS, **os.environ}
        for name in _OWNED_VARIABLES:
            env.pop(name, None)
        env.update(
            {
                "LISTEN_HOST": self.host,
                "GRPC_PORT": str(self.ports[service]),
                "PORT_FILE": str(self.port_file(service)),
                "DATA_DIR": str(self.data_dir),
                "DATABASE_URL": f"sqlite+aiosqlite:///{self.database_path(service)}",
                "OTEL_TRACES_EXPORTER": "file",
                "LODESTAR_TRACE_FILE": str(self.trace_path(service)),
                "GATEWAY_ADMIN_TOKEN": self.admin_token,
                "PYTHONUNBUFFERED": "1",
            }
        )
        for dependency in DEPENDENCIES[service]:
            address = self._address_for(dependency)
            if address:
                env[_service_env_name(dependency)] = address
        if service == "campaign" and self.sink_addresses:
            smtp_host, _, smtp_port = self.sink_addresses["smtp"].rpartition(":")
            for name, value in (("CAMPAIGN_PROVIDER_URL", self.sink_addresses["provider"]),
                                ("CAMPAIGN_SMTP_HOST", smtp_host), ("CAMPAIGN_SMTP_PORT", smtp_port),
                                ("CAMPAIGN_CALL_LIST_DIR", str(self.data_dir / "exports"))):
                env.setdefault(name, value)
        env.update(self.extra_env)
        return env

    # -- the delivery stand-ins ----------------------------------------------------------------------------

    SINK_MODULES: dict[str, tuple[str, str]] = {
        "provider": ("services.campaign.channels.simulator", "simulator"),
        "smtp": ("services.campaign.channels.smtp_sink", "smtp_sink"),
    }

    def _start_sinks(self, deadline: float) -> None:
        """The provider simulator and the SMTP sink on free ports; their first output line names the address."""
        for name, (module, key) in self.SINK_MODULES.items():
            log_path = self.data_dir / "logs" / f"{key}.log"
            log_handle = log_path.open("wb")  # fresh: the address is read from the first line
            try:
                popen = subprocess.Popen(  # noqa: S603  # nosec B603 - our own interpreter and module, no shell
                    [self.python, "-m", module, "--port", "0"], env={**os.environ, "PYTHONUNBUFFERED": "1"},
                    stdin=subprocess.DEVNULL, stdout=log_handle, stderr=log_handle, start_new_session=True)
            except BaseException:
                log_handle.close()
                raise
            self._sinks[name] = _Process(key, popen, log_path, log_handle)
            while True:
                with contextlib.suppress(OSError, ValueError, KeyError, IndexError):
                    first = log_path.read_text(encoding="utf-8").splitlines()[0]
                    self.sink_addresses[name] = str(json.loads(first)[key])
                    break
                if popen.poll() is not None or time.monotonic() > deadline:
                    raise StackError(f"the {key} did not start; log: {log_path}\n{tail(log_path)}")
                time.sleep(0.05)

    def _stop_sinks(self) -> None:
        for process in self._sinks.values():
            if process.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.popen.send_signal(signal.SIGTERM)
        for process in self._sinks.values():
            try:
                process.popen.wait(5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    process.popen.kill()
                process.popen.wait()
            process.log_handle.close()
        self._sinks.clear()

    def start(self, timeout: float = 60.0) -> None:
        """Launches the four services in dependency order; returns once each has bound its port."""
        if self._processes:
            raise StackError("the stack is already started")
        for folder in ("logs", "traces", "run"):
            (self.data_dir / folder).mkdir(parents=True, exist_ok=True)
        self._write_admin_token()
        # A caller that exits without stop() (an uncaught exception, sys.exit) must not leave services behind.
        atexit.register(self.stop)
        deadline = time.monotonic() + timeout
        try:
            if self.delivery_sinks:
                self._start_sinks(deadline)
            for service in START_ORDER:
                self._launch(service)
                self.addresses[service] = f"{self.host}:{self._wait_port(service, deadline)}"
        except BaseException:
            self.stop()
            raise

    def _write_admin_token(self) -> None:
        path = self.admin_token_file
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(self.admin_token + "\n")

    def _launch(self, service: str) -> None:
        port_file = self.port_file(service)
        for stale in (port_file, Path(str(port_file) + ".tmp")):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
        log_path = self.log_path(service)
        log_handle = log_path.open("ab")
        try:
            popen = subprocess.Popen(  # noqa: S603  # nosec B603 - our own interpreter and module, no shell
                [self.python, "-m", f"services.{service}", "serve"],
                env=self.environment(service),
                stdin=subprocess.DEVNULL,
                stdout=log_handle,
                stderr=log_handle,
                # Ctrl-C in the terminal reaches only `lodestar up`, which stops the services in order.
                start_new_session=True,
            )
        except BaseException:
            log_handle.close()
            raise
        self._processes[service] = _Process(service, popen, log_path, log_handle)

    def _failure(self, service: str, what: str) -> StackError:
        process = self._processes.get(service)
        log_path = self.log_path(service)
        lines = tail(log_path)
        exit_note = ""
        if process is not None and process.popen.poll() is not None:
            exit_note = f" (exit code {process.popen.returncode})"
        text = f"{service} {what}{exit_note}; log: {log_path}"
        if lines:
            text += f"\n--- last lines of {log_path.name} ---\n{lines}"
        return StackError(text)

    def _check_alive(self, service: str) -> None:
        process = self._processes[service]
        if process.popen.poll() is not None:
            raise self._failure(service, "exited early")

    def _wait_port(self, service: str, deadline: float) -> int:
        port_file = self.port_file(service)
        while True:
            self._check_alive(service)
            with contextlib.suppress(FileNotFoundError, ValueError):
                port = int(port_file.read_text().strip())
                if port > 0:
                    return port
            if time.monotonic() > deadline:
                raise self._failure(service, "did not bind its port in time")
            time.sleep(0.05)

    def health(self, timeout: float = 2.0) -> dict[str, str]:
        """Each service's overall health status name (SERVING, NOT_SERVING, ...) or UNREACHABLE."""
        return {service: check_health(address, timeout) for service, address in self.addresses.items()}

    def wait_serving(self, timeout: float = 60.0) -> None:
        """Polls every service's standard health Check until all are SERVING."""
        if not self._processes:
            raise StackError("the stack is not started")
        deadline = time.monotonic() + timeout
        pending = [s for s in START_ORDER if s in self.addresses]
        last: dict[str, str] = {}
        while pending:
            for service in list(pending):
                self._check_alive(service)
                last[service] = check_health(self.addresses[service], timeout=1.0)
                if last[service] == "SERVING":
                    pending.remove(service)
            if not pending:
                return
            if time.monotonic() > deadline:
                service = pending[0]
                raise self._failure(service, f"is not SERVING after {timeout:.0f}s (health: {last[service]})")
            time.sleep(0.1)

    def running(self) -> dict[str, int | None]:
        """Each process's exit code, None while it runs."""
        return {service: p.popen.poll() for service, p in self._processes.items()}

    def first_exited(self) -> str | None:
        for service in START_ORDER:
            process = self._processes.get(service)
            if process is not None and process.popen.poll() is not None:
                return service
        return None

    def failure_report(self, service: str) -> str:
        return str(self._failure(service, "exited"))

    def stop(self, timeout: float = 20.0) -> dict[str, int | None]:
        """SIGTERM to every service (reverse start order), wait, SIGKILL stragglers. Returns exit codes."""
        atexit.unregister(self.stop)
        processes = [self._processes[s] for s in reversed(START_ORDER) if s in self._processes]
        for process in processes:
            if process.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        codes: dict[str, int | None] = {}
        for process in processes:
            try:
                codes[process.service] = process.popen.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    process.popen.kill()
                codes[process.service] = process.popen.wait()
            process.log_handle.close()
        self._processes.clear()
        self._stop_sinks()
        with contextlib.suppress(FileNotFoundError):
            self.admin_token_file.unlink()
        return codes

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def check_health(address: str, timeout: float = 2.0, service: str = "") -> str:
    """The status name of a standard grpc.health.v1 Check, or UNREACHABLE / a status code name on failure."""
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as error:
            code = error.code() if isinstance(error, grpc.Call) else None
            if code in (None, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                return "UNREACHABLE"
            return code.name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
