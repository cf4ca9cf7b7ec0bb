"""The console's Voila process: Voila with a ``Host`` guard and logs without the token.

``nexus-ops console`` runs ``python -m nexus_ops.console_voila`` in
``$NEXUS_HOME/console/``, where ``voila.json`` configures it (see
:func:`nexus_ops.console.voila_config`). Beyond Voila it

- refuses (403, with what to do) every request whose ``Host`` is not a name of the
  console (loopback, the bind address, ``NEXUS_ALLOWED_HOSTS``), static files
  included: a page of another site that rebinds its DNS name to 127.0.0.1 reads
  nothing (jupyter_server's own check, ``allow_remote_access``, covers only its
  handlers, not Voila's static files, and refuses every non-loopback address);
- masks secrets (``?token=...``) in every log line it writes, so that
  ``logs/console.log`` (and a backup of it) never holds the console token;
- renders the page with ``nexus_ops/templates/voila/`` first (Voila's lab template
  without its requests to a CDN: nothing the page loads leaves the console).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from tornado import httputil, web
from tornado.routing import Matcher, Rule
from traitlets import List, Unicode
from voila.app import Voila

from nexus_ops.redact import redact
from nexus_ops.security.tokens import (
    HOST_HINT,
    allowed_hosts,
    host_allowed,
    refused_host_message,
)

TEMPLATES = Path(__file__).with_name("templates")

# The loggers whose records reach console.log (tornado's own log only to themselves).
LOGGERS = ("", "tornado.access", "tornado.application", "tornado.general", "Voila")


class RedactSecrets(logging.Filter):
    """Rewrites a record's message with its secrets masked (``?token=``, credentials)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = redact(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


def mask_logs(*loggers: logging.Logger) -> None:
    """Put :class:`RedactSecrets` on the loggers and on every handler they have."""
    secrets = RedactSecrets()
    for logger in loggers:
        logger.addFilter(secrets)
        for handler in logger.handlers:
            handler.addFilter(secrets)


class RefusedHost(Matcher):
    """Matches the requests whose ``Host`` header is not one of the console's names."""

    def __init__(self, bind: str, names: list[str]) -> None:
        self.bind = bind
        self.allowed = allowed_hosts(bind, names)

    def match(self, request: httputil.HTTPServerRequest) -> dict[str, Any] | None:
        if host_allowed(request.headers.get("Host"), self.bind, self.allowed):
            return None
        return {}


class RefusedHostHandler(web.RequestHandler):
    """403 with the reason and what to do, for every method."""

    def prepare(self) -> None:
        header = self.request.headers.get("Host")
        self.set_status(403)
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(f"403 Forbidden: {refused_host_message(header)}; {HOST_HINT}\n")


class ConsoleVoila(Voila):  # type: ignore[misc]
    """Voila, with the Host guard in front of every route and masked logs."""

    allowed_hosts = List(Unicode(), config=True, help="Extra names accepted in Host.")

    def initialize(self, argv: Any = None) -> None:
        super().initialize(argv)
        mask_logs(self.log, *(logging.getLogger(name) for name in LOGGERS))

    def setup_template_dirs(self) -> None:
        super().setup_template_dirs()
        self.template_paths.insert(0, str(TEMPLATES / "voila"))

    def listen(self) -> None:
        router = self.app.default_router
        rule = Rule(RefusedHost(self.ip, list(self.allowed_hosts)), RefusedHostHandler)
        router.rules.insert(0, router.process_rule(rule))
        super().listen()


if __name__ == "__main__":
    ConsoleVoila.launch_instance()
