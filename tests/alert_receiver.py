"""A real webhook receiver for the alert tests: a threaded http.server on 127.0.0.1."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class Receiver:
    """What the server answered (``statuses``, then ``final`` forever) and what it received."""

    url: str = ""
    statuses: list[int] = field(default_factory=list)
    final: int = 200
    delay: float = 0.0
    hang: bool = False
    location: str = ""
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    closing: threading.Event = field(default_factory=threading.Event)

    def next_status(self) -> int:
        with self.lock:
            return self.statuses.pop(0) if self.statuses else self.final

    def alerts(self, status: str | None = None) -> list[tuple[str, str]]:
        """(alertname, status) of every notification received (answered or not)."""
        with self.lock:
            found = [
                (alert["labels"]["alertname"], alert["status"])
                for r in self.received
                for alert in r.body["alerts"]
            ]
        return [f for f in found if status is None or f[1] == status]


@contextmanager
def receiver(
    statuses: list[int] | None = None,
    final: int = 200,
    delay: float = 0.0,
    userinfo: str = "",
    hang: bool = False,
    location: str = "",
) -> Iterator[Receiver]:
    """Serve a receiver on a free loopback port until the block ends.

    ``delay`` seconds pass before each answer; with ``hang`` no answer ever comes
    (the request is read and recorded, then held open until the block ends);
    ``location`` is sent as the ``Location`` header of every answer (a redirect).
    """
    state = Receiver(
        statuses=list(statuses or []), final=final, delay=delay, hang=hang, location=location
    )

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length) or b"{}")
            with state.lock:
                state.received.append(Received(self.path, dict(self.headers), body))
            if state.hang:
                state.closing.wait()
                return
            if state.delay:
                time.sleep(state.delay)
            code = state.next_status()
            self.send_response(code)
            self.send_header("Content-Length", "2")
            if state.location:
                self.send_header("Location", state.location)
            self.end_headers()
            self.wfile.write(b"{}")

        do_GET = do_POST  # a redirected POST may come back as a GET: record it too

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    auth = f"{userinfo}@" if userinfo else ""
    state.url = f"http://{auth}127.0.0.1:{server.server_address[1]}/hook"
    try:
        yield state
    finally:
        state.closing.set()
        server.shutdown()
        server.server_close()
