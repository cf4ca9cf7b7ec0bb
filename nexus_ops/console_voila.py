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
  without its requests to a CDN: nothing the page loads leaves the console);
- serves everything under its base URL, ``/console/`` (its login page too, which
  Voila itself leaves at ``/login``);
- answers a missing or wrong token with the console's own login page
  (:class:`ConsoleLoginHandler`): where the token is and the command that prints the
  console's URL, instead of Jupyter server's page about ``jupyter server list``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from jupyter_server.utils import url_path_join
from tornado import httputil, web
from tornado.escape import url_escape
from tornado.routing import Matcher, Rule
from traitlets import Bool, List, Unicode
from voila.app import Voila
from voila.voila_identity_provider import VoilaLoginHandler

from nexus_ops.redact import redact
from nexus_ops.security.tokens import (
    HOST_HINT,
    allowed_hosts,
    host_allowed,
    refused_host_message,
)

TEMPLATES = Path(__file__).with_name("templates")
LOGIN_PAGE = "nexus-login.html"  # in TEMPLATES / "voila"

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


def without_token(url: str) -> str:
    """``url`` without its ``token`` query parameter (the rest kept).

    >>> without_token("/voila/render?token=s3cret&x=1")
    '/voila/render?x=1'
    """
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "token"]
    return urlunsplit(parts._replace(query=urlencode(query)))


def carries_token(url: str) -> bool:
    return any(k == "token" for k, _ in parse_qsl(urlsplit(url).query, keep_blank_values=True))


class ConsoleLoginHandler(VoilaLoginHandler):  # type: ignore[misc]
    """The console's login page: what the console is, where its token is, what to run.

    The token typed into ``#password_input`` logs in as on Jupyter server's page. The
    page never holds a token: neither the one typed nor one of the link (``next``
    loses its ``token``); Jupyter's template namespace, which holds the console's own
    token, is not handed to the template.
    """

    def _render(self, message: dict[str, str] | None = None) -> None:
        app: ConsoleVoila = self.settings["voila"]
        target = self.get_argument("next", default=self.base_url)
        page = self.settings["voila_jinja2_env"].get_template(LOGIN_PAGE)
        self.write(
            page.render(
                base_url=self.base_url,
                next=url_escape(without_token(target)),
                xsrf_form_html=self.xsrf_form_html,
                state=self.login_state(target, failed=bool(message)),
                token_file=app.token_file,
                token_given=app.token_given,
            )
        )

    def login_state(self, target: str, failed: bool) -> str:
        """``missing`` (no token yet), ``empty`` (the form sent none) or ``wrong``."""
        if failed:
            return "wrong" if self.get_argument("password", default="") else "empty"
        return "wrong" if carries_token(target) else "missing"


class ConsoleVoila(Voila):  # type: ignore[misc]
    """Voila, with the Host guard in front of every route, masked logs, its login page."""

    allowed_hosts = List(Unicode(), config=True, help="Extra names accepted in Host.")
    token_file = Unicode(
        "", config=True, help="The token file the login page shows (empty: $NEXUS_HOME/...)."
    )
    token_given = Bool(False, config=True, help="The token was given with --token.")

    def initialize(self, argv: Any = None) -> None:
        super().initialize(argv)
        mask_logs(self.log, *(logging.getLogger(name) for name in LOGGERS))

    def init_settings(self) -> dict[str, Any]:
        settings: dict[str, Any] = super().init_settings()
        self.identity_provider.login_handler_class = ConsoleLoginHandler
        return settings

    def init_handlers(self) -> list[Any]:
        # Voila 0.5 adds the login and logout handlers at /login and /logout whatever its
        # base_url, while its pages send a visitor to base_url + /login: put them there.
        handlers: list[Any] = super().init_handlers()
        own = {path for path, _ in self.identity_provider.get_handlers()}
        return [
            (url_path_join(self.base_url, rule[0]), *rule[1:]) if rule[0] in own else rule
            for rule in handlers
        ]

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
