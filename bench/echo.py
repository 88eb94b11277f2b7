"""A bare grpc.aio echo server: the same-run baseline of the gRPC benchmarks (no interceptors, no database).

    python -m bench.echo [--host 127.0.0.1] [--port 0] [--port-file PATH]

It answers `/lodestar.bench.v1.EchoService/Echo` with the request bytes unchanged (raw bytes, no protobuf), so
what a benchmark measures against it is the cost of gRPC, the event loop and the load generator themselves.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

import grpc

SERVICE = "lodestar.bench.v1.EchoService"
METHOD = f"/{SERVICE}/Echo"


async def _echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return request


async def start_echo(host: str = "127.0.0.1", port: int = 0) -> tuple[grpc.aio.Server, int]:
    """An echo server started in the running loop; returns (server, bound port)."""
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, {"Echo": grpc.unary_unary_rpc_method_handler(_echo)}),)
    )
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    return server, bound


def echo_stub(channel: grpc.aio.Channel) -> grpc.aio.UnaryUnaryMultiCallable:
    """A callable sending raw bytes to the echo server."""
    return channel.unary_unary(METHOD)


def _write_port_file(path: str, port: int) -> None:
    tmp = Path(path + ".tmp")
    tmp.write_text(str(port))
    tmp.replace(path)  # atomic: a reader never sees a half-written port


async def _serve(host: str, port: int, port_file: str | None) -> None:
    server, bound = await start_echo(host, port)
    if port_file:
        _write_port_file(port_file, bound)
    print(f"echo listening on {host}:{bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(0.5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.echo", description="bare gRPC echo server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file", default=None)
    args = parser.parse_args(argv)
    asyncio.run(_serve(args.host, args.port, args.port_file))
    return 0


if __name__ == "__main__":
    sys.exit(main())
