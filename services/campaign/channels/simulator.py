"""A local stand-in for an SMS / push / WeChat-style provider: ``python -m services.campaign.channels.simulator
--port P [--fail-rate R] [--timeout-rate R] [--latency-ms MS] [--seed S]``.

An asyncio HTTP/1.1 server on 127.0.0.1 (one request per connection). It

* accepts ``POST /v1/messages/{sms|app_push|wechat}`` with a JSON body and an ``Idempotency-Key`` header:
  400 ``IDEMPOTENCY_KEY_MISSING`` / ``INVALID_JSON`` / ``RECIPIENT_MISSING``, 404 for another channel,
  202 ``{"message_id": ...}`` otherwise;
* deduplicates by Idempotency-Key: a repeated key gets the first (non-5xx) response again, and the message is
  recorded once. Injected 5xx and timeouts are not remembered, so a retry after one goes through;
* injects failures: ``fail_next`` (the next N requests get 503, deterministic for tests), ``fail_rate`` (a
  random share gets 503), ``timeout_rate`` (a random share is held for ``hang_seconds`` and then dropped), and
  ``latency_ms`` added to every request;
* reports: ``GET /v1/received`` (what it accepted, in order), ``GET /v1/stats`` (requests, per key attempts,
  injected failures), ``POST /v1/control`` (change the injection settings), ``POST /v1/reset``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import random
import signal
from dataclasses import asdict, dataclass, field
from typing import Any

log = logging.getLogger(__name__)

CHANNELS = ("sms", "app_push", "wechat")
REASONS = {200: "OK", 202: "Accepted", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           413: "Payload Too Large", 503: "Service Unavailable"}
MAX_BODY = 1 << 20


@dataclass
class Faults:
    fail_rate: float = 0.0
    fail_next: int = 0
    timeout_rate: float = 0.0
    latency_ms: float = 0.0
    hang_seconds: float = 30.0
    status: int = 503  # what an injected failure answers


@dataclass
class Stats:
    requests: int = 0
    injected_failures: int = 0
    injected_timeouts: int = 0
    duplicates: int = 0
    attempts_by_key: dict[str, int] = field(default_factory=dict)


class ProviderSimulator:
    def __init__(self, faults: Faults | None = None, *, seed: int | None = None) -> None:
        self.faults = faults or Faults()
        self.stats = Stats()
        self.received: list[dict[str, Any]] = []
        self._responses: dict[str, tuple[int, dict[str, Any]]] = {}
        self._rng = random.Random(seed)  # noqa: S311  # nosec B311 - fault injection, not security
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._lock = asyncio.Lock()
        self.port = 0

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        self._server = await asyncio.start_server(self._handle, host, port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._tasks):  # requests held by an injected timeout
                task.cancel()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def reset(self) -> None:
        self.stats = Stats()
        self.received.clear()
        self._responses.clear()

    # --- HTTP plumbing ---------------------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        try:
            request_line = await reader.readline()
            parts = request_line.decode("latin-1").split()
            if len(parts) != 3:
                return
            method, path, _ = parts
            headers: dict[str, str] = {}
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b"\n", b""):
                    break
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0") or 0)
            if length > MAX_BODY:
                await self._write(writer, 413, {"error": "PAYLOAD_TOO_LARGE"})
                return
            body = await reader.readexactly(length) if length else b""
            outcome = await self.handle(method, path, headers, body)
            if outcome is None:  # an injected timeout: hold the connection, then drop it without a reply
                await asyncio.sleep(self.faults.hang_seconds)
                return
            await self._write(writer, *outcome)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            return
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    @staticmethod
    async def _write(writer: asyncio.StreamWriter, status: int, doc: Any) -> None:
        payload = json.dumps(doc).encode()
        head = (f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n")
        writer.write(head.encode("latin-1") + payload)
        await writer.drain()

    # --- behaviour ------------------------------------------------------------------------------------------

    async def handle(self, method: str, path: str, headers: dict[str, str],
                     body: bytes) -> tuple[int, Any] | None:
        """One request -> (status, JSON document), or None for "never answer" (an injected timeout)."""
        if path == "/v1/received" and method == "GET":
            return 200, {"messages": self.received}
        if path == "/v1/stats" and method == "GET":
            return 200, asdict(self.stats)
        if path == "/v1/reset" and method == "POST":
            self.reset()
            return 200, {}
        if path == "/v1/control" and method == "POST":
            try:
                changes = json.loads(body or b"{}")
                for key, value in changes.items():
                    if not hasattr(self.faults, key):
                        return 400, {"error": "UNKNOWN_SETTING", "setting": key}
                    setattr(self.faults, key, type(getattr(self.faults, key))(value))
            except (ValueError, TypeError, AttributeError):
                return 400, {"error": "INVALID_JSON"}
            return 200, asdict(self.faults)
        if not path.startswith("/v1/messages/"):
            return 404, {"error": "NOT_FOUND"}
        if method != "POST":
            return 405, {"error": "METHOD_NOT_ALLOWED"}
        channel = path.removeprefix("/v1/messages/")
        if channel not in CHANNELS:
            return 404, {"error": "UNKNOWN_CHANNEL"}
        return await self._message(channel, headers, body)

    async def _message(self, channel: str, headers: dict[str, str], body: bytes) -> tuple[int, Any] | None:
        self.stats.requests += 1
        key = headers.get("idempotency-key", "")
        if key:
            self.stats.attempts_by_key[key] = self.stats.attempts_by_key.get(key, 0) + 1
        if self.faults.latency_ms:
            await asyncio.sleep(self.faults.latency_ms / 1000)
        async with self._lock:
            if key and key in self._responses:
                self.stats.duplicates += 1
                return self._responses[key]
            if self.faults.fail_next > 0:
                self.faults.fail_next -= 1
                self.stats.injected_failures += 1
                return self.faults.status, {"error": "INJECTED_FAILURE"}
            if self.faults.timeout_rate and self._rng.random() < self.faults.timeout_rate:
                self.stats.injected_timeouts += 1
                return None
            if self.faults.fail_rate and self._rng.random() < self.faults.fail_rate:
                self.stats.injected_failures += 1
                return self.faults.status, {"error": "INJECTED_FAILURE"}
            if not key:
                return 400, {"error": "IDEMPOTENCY_KEY_MISSING"}
            try:
                doc = json.loads(body)
            except ValueError:
                doc = None
            if not isinstance(doc, dict):
                outcome: tuple[int, Any] = (400, {"error": "INVALID_JSON"})
            elif not str(doc.get("to", "")).strip():
                outcome = (400, {"error": "RECIPIENT_MISSING"})
            else:
                message_id = f"sim-{len(self.received) + 1:06d}"
                self.received.append({"message_id": message_id, "channel": channel, "idempotency_key": key,
                                      "payload": doc})
                outcome = (202, {"message_id": message_id, "status": "queued"})
            self._responses[key] = outcome  # 4xx and 2xx are final: a repeat gets the same answer
            return outcome


async def _serve(args: argparse.Namespace) -> None:
    sim = ProviderSimulator(Faults(fail_rate=args.fail_rate, timeout_rate=args.timeout_rate,
                                   latency_ms=args.latency_ms, hang_seconds=args.hang_seconds), seed=args.seed)
    port = await sim.start("127.0.0.1", args.port)
    print(json.dumps({"simulator": f"http://127.0.0.1:{port}"}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await sim.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.campaign.channels.simulator",
                                     description="Local SMS / push / WeChat-style provider simulator")
    parser.add_argument("--port", type=int, default=8099, help="port on 127.0.0.1 (0: any free port)")
    parser.add_argument("--fail-rate", type=float, default=0.0, help="share of requests answered 503")
    parser.add_argument("--timeout-rate", type=float, default=0.0, help="share of requests never answered")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="delay added to every request")
    parser.add_argument("--hang-seconds", type=float, default=30.0, help="how long an unanswered request hangs")
    parser.add_argument("--seed", type=int, default=None, help="seed of the failure injection")
    asyncio.run(_serve(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
