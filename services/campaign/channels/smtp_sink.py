"""A local SMTP server that keeps what it receives (aiosmtpd): dev and tests.

``python -m services.campaign.channels.smtp_sink --port P`` prints one JSON line per message (Message-ID and
size only, never addresses). In tests: ``with SmtpSink() as sink: ... sink.messages``; ``sink.duplicates()``
lists the Message-IDs seen more than once, which is how a double send shows.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import threading
from collections import Counter
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller


@dataclass(frozen=True)
class ReceivedMail:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    message_id: str
    subject: str
    body: str
    raw: bytes


class _Handler:
    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: Any) -> str:
        if address.split("@")[-1].lower() in self.sink.reject_domains:
            return "550 5.1.1 mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        raw = envelope.original_content or envelope.content
        msg = message_from_bytes(raw, policy=policy.default)
        assert isinstance(msg, EmailMessage)
        part = msg.get_body(preferencelist=("plain",))
        body = part.get_content() if part is not None else ""
        mail = ReceivedMail(envelope.mail_from, tuple(envelope.rcpt_tos), str(msg.get("Message-ID", "")),
                            str(msg.get("Subject", "")), body, raw)
        with self.sink.lock:
            self.sink.messages.append(mail)
        if self.sink.echo:
            print(json.dumps({"message_id": mail.message_id, "bytes": len(raw)}), flush=True)
        return "250 Message accepted"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class SmtpSink:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, reject_domains: tuple[str, ...] = (),
                 echo: bool = False) -> None:
        self.host, self.port = host, port or free_port(host)
        self.reject_domains = {d.lower() for d in reject_domains}
        self.echo = echo
        self.messages: list[ReceivedMail] = []
        self.lock = threading.Lock()
        self._controller = Controller(_Handler(self), hostname=host, port=self.port)

    def start(self) -> SmtpSink:
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()

    def __enter__(self) -> SmtpSink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def duplicates(self) -> list[str]:
        with self.lock:
            counts = Counter(m.message_id for m in self.messages)
        return sorted(mid for mid, n in counts.items() if n > 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.campaign.channels.smtp_sink",
                                     description="Local SMTP sink that records every message")
    parser.add_argument("--port", type=int, default=8025)
    args = parser.parse_args(argv)
    sink = SmtpSink("127.0.0.1", args.port, echo=True).start()
    print(json.dumps({"smtp_sink": f"127.0.0.1:{sink.port}"}), flush=True)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    sink.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
