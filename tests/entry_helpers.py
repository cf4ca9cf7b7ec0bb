"""A small stand-in for the agent's ``/entry/check``: the entry's answers for one cookie.

It answers as the agent does (see docs/remote-access.md): 200 with the device and
OpenCode's Basic credentials for the cookie ``nexus_device=GOOD``; otherwise a 302
to the pairing page for a browser, a 401 with a JSON error for anything else.
"""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote

GOOD = "good-device-session"
DEVICE = "device-1"


class AuthServer:
    """The stand-in, on 127.0.0.1; ``seen`` keeps the headers of every check."""

    def __init__(self, password: str) -> None:
        self.password = password
        self.seen: list[dict[str, str]] = []
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def dial(self) -> str:
        return f"127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> AuthServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.seen.append({k.lower(): v for k, v in self.headers.items()})
                if self.path != "/entry/check":
                    self.send_response(404)
                    self.end_headers()
                    return
                cookies = self.headers.get("Cookie", "")
                if f"nexus_device={GOOD}" in cookies.replace(" ", "").split(";"):
                    basic = base64.b64encode(f"opencode:{server.password}".encode()).decode()
                    self.send_response(200)
                    self.send_header("X-Nexus-Device", DEVICE)
                    self.send_header("Authorization", f"Basic {basic}")
                    self.end_headers()
                    return
                uri = self.headers.get("X-Forwarded-Uri", "/")
                if "text/html" in self.headers.get("Accept", ""):
                    self.send_response(302)
                    self.send_header("Location", f"/_nexus/pair?next={quote(uri, safe='')}")
                    self.end_headers()
                    return
                body = json.dumps({"error": "no device session", "hint": "pair this device"})
                self.send_response(401)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler
