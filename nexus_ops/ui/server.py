"""The Server panel: state, version, pid, uptime, restarts; start, stop, restart; how to connect;
the last upgrade of OpenCode, with Upgrade and Rollback (:mod:`nexus_ops.ui.upgrade`).

The server's password is read only when an operator presses "Show password", so
it is in neither the notebook's outputs nor the page until then.

>>> # panel = ServerPanel(PanelContext(client=AgentClient.from_settings(settings)))
>>> # panel.refresh(); panel.widget
"""

from __future__ import annotations

from urllib.parse import urlsplit

import ipywidgets as widgets
import segno

from nexus_ops.errors import AgentUnavailable, NexusOpsError
from nexus_ops.metrics.catalogue import format_value
from nexus_ops.models import ActionResult, PendingRestart, ServerState, ServerStatus
from nexus_ops.opencode import client_commands
from nexus_ops.security.tokens import is_loopback
from nexus_ops.ui.base import Panel, PanelContext, table_html
from nexus_ops.ui.style import esc, light
from nexus_ops.ui.upgrade import UpgradePanel

HIDDEN = "&bull;" * 10
# What each action is called while it runs, and the question asked before it.
VERBS = {"start": "Starting", "stop": "Stopping", "restart": "Restarting"}
# What to do next, while the server is in a state that waits for an operator.
HINTS = {
    ServerState.STOPPED: "The server is stopped. Press <b>Start</b> to run it; clients "
    "connect once it is running.",
    ServerState.FATAL: "The server gave up restarting. The Logs and Events tabs say why; "
    "press <b>Start</b> to try again.",
}
QUESTIONS = {
    "stop": "Stop the server? Clients lose their connection until it is started again.",
    "restart": "Restart the server? Clients lose their connection for a few seconds.",
}


def qr_svg(text: str, scale: int = 3) -> str:
    """A QR code of ``text`` as inline SVG."""
    return str(segno.make(text, error="m").svg_inline(scale=scale))


class ServerPanel(Panel[ServerStatus]):
    """Status of the managed server and the controls of its life.

    >>> # ServerPanel(ctx).refresh() shows ctx.client.status(); press Start, Stop, Restart
    """

    title = "Server"
    interval = 2.0
    css = "nx-server"
    always = True

    def __init__(self, ctx: PanelContext) -> None:
        self.status: ServerStatus | None = None
        self.busy = False
        self.pending: str | None = None
        self._qr_text = ""
        self._shown_secret: str | None = None
        super().__init__(ctx)

    # ---- widgets -----------------------------------------------------------------------

    def build(self) -> widgets.Widget:
        self.details = widgets.HTML(self._details_html(None))
        self.details.add_class("nx-server-details")
        self.buttons = {
            "start": self._button("Start", "play", "success", "nx-start"),
            "stop": self._button("Stop", "stop", "danger", "nx-stop"),
            "restart": self._button("Restart", "refresh", "warning", "nx-restart"),
        }
        self.buttons["start"].on_click(self.guarded(lambda: self.act("start")))
        self.buttons["stop"].on_click(self.guarded(lambda: self.ask("stop")))
        self.buttons["restart"].on_click(self.guarded(lambda: self.ask("restart")))
        self.confirm = self._confirm_row()
        self.hint = widgets.HTML(layout=widgets.Layout(display="none"))
        self.hint.add_class("nx-start-hint")
        controls = widgets.HBox(list(self.buttons.values()))
        controls.add_class("nx-controls")
        left = widgets.VBox([self.details, self.hint, controls, self.confirm])
        left.layout = widgets.Layout(flex="1 1 60%", min_width="360px")
        right = self._connection_box()
        right.layout = widgets.Layout(flex="1 1 40%", min_width="280px", padding="0 0 0 24px")
        columns = widgets.HBox([left, right], layout=widgets.Layout(flex_flow="row wrap"))
        columns.add_class("nx-columns")
        self.upgrade = UpgradePanel(self.ctx)
        return widgets.VBox([columns, self.upgrade.widget])

    def _button(self, label: str, icon: str, style: str, css: str) -> widgets.Button:
        button = widgets.Button(description=label, icon=icon, button_style=style, disabled=True)
        button.add_class(css)
        return button

    def _confirm_row(self) -> widgets.HBox:
        self.question = widgets.HTML()
        yes = widgets.Button(description="Yes", button_style="danger")
        yes.add_class("nx-confirm-yes")
        no = widgets.Button(description="Cancel")
        no.add_class("nx-confirm-no")
        yes.on_click(self.guarded(self.confirmed))
        no.on_click(self.guarded(self.cancelled))
        row = widgets.HBox([self.question, yes, no], layout=widgets.Layout(display="none"))
        row.add_class("nx-confirm")
        return row

    def _connection_box(self) -> widgets.VBox:
        self.endpoint = widgets.HTML()
        self.endpoint.add_class("nx-url")
        self.password = widgets.HTML(f"Password: <code>{HIDDEN}</code>")
        self.password.add_class("nx-password")
        self.reveal = widgets.ToggleButton(
            description="Show password",
            icon="eye",
            value=False,
            layout=widgets.Layout(width="150px", flex="0 0 auto"),
        )
        self.reveal.add_class("nx-show-password")
        self.reveal.observe(self.guarded(self.toggle_password), names="value")
        self.qr = widgets.HTML()
        self.qr.add_class("nx-qr")
        self.qr_note = widgets.HTML(
            "Scan with a phone: the code holds the URL only; the client asks for the password."
        )
        self.qr_note.add_class("nx-muted")
        self.commands = widgets.HTML()
        self.commands.add_class("nx-commands")
        heading = widgets.HTML("<div class='nx-section'>Connect a client</div>")
        box = widgets.VBox(
            [
                heading,
                self.endpoint,
                widgets.HBox(
                    [self.password, self.reveal], layout=widgets.Layout(align_items="center")
                ),
                self.commands,
                self.qr,
                self.qr_note,
            ]
        )
        box.add_class("nx-connection")
        return box

    # ---- refresh -----------------------------------------------------------------------

    def fetch(self) -> ServerStatus:
        status = self.ctx.client.status()
        if self.upgrade.due():
            self.upgrade.refresh()
        return status

    def show(self, data: ServerStatus) -> None:
        self.status = data
        html = self._details_html(data)
        if html != self.details.value:
            self.details.value = html
        self._update_buttons()
        self._update_connection()

    def failed(self, error: NexusOpsError) -> None:
        """The agent stopped answering: the state is unknown, the controls are off."""
        if isinstance(error, AgentUnavailable):
            self.status = None
            self.details.value = self._details_html(None)
            self._update_buttons()

    def _details_html(self, status: ServerStatus | None) -> str:
        if status is None:
            head = f"{light('unknown')}<span class='nx-state-text nx-server-state'>unknown</span>"
            return f"<div class='nx-state'>{head}</div>"
        state = status.state.value
        desired = f" <span class='nx-muted'>(desired: {esc(status.desired)})</span>"
        head = f"{light(state)}<span class='nx-state-text nx-server-state'>{esc(state)}</span>"
        rows = [
            ("Version", "nx-server-version", status.version),
            ("PID", "nx-server-pid", status.pid),
            ("Port", "nx-server-port", status.port),
            ("Uptime", "nx-server-uptime", _uptime(status)),
            ("Restarts", "nx-server-restarts", status.restarts),
            ("Last exit", "nx-server-last-exit", status.last_exit),
        ]
        if status.last_error:
            rows.append(("Last error", "nx-server-last-error", status.last_error))
        if status.next_restart_in is not None:
            wait = format_value(status.next_restart_in, "seconds", 1)
            rows.append(("Next restart in", "nx-server-next", wait))
        if status.rss_bytes:
            rows.append(("Memory", "nx-server-memory", format_value(status.rss_bytes, "bytes", 1)))
        if status.busy_sessions:
            rows.append(("Busy sessions", "nx-server-busy", ", ".join(status.busy_sessions)))
        if status.pending_restart:
            rows.append(("Restart waiting", "nx-server-waiting", _waiting(status.pending_restart)))
        cells = [
            [esc(label), f"<span class='{css}'>{esc(value)}</span>"] for label, css, value in rows
        ]
        table = table_html(None, cells, "nx-details")
        return f"<div class='nx-state'>{head}{desired}</div>{table}"

    def _update_buttons(self) -> None:
        state = self.status.state if self.status else None
        known = state is not None and not self.busy
        wanted = {
            "start": known
            and state in (ServerState.STOPPED, ServerState.FATAL, ServerState.BACKOFF),
            "stop": known and state is not ServerState.STOPPED,
            "restart": known and state in (ServerState.RUNNING, ServerState.BACKOFF),
        }
        for verb, button in self.buttons.items():
            if button.disabled == wanted[verb]:
                button.disabled = not wanted[verb]
        self._update_hint(HINTS.get(state) if known and state is not None else None)

    def _update_hint(self, text: str | None) -> None:
        display = None if text else "none"
        if text and text != self.hint.value:
            self.hint.value = text
        if self.hint.layout.display != display:
            self.hint.layout.display = display

    def _update_connection(self) -> None:
        url, username = self._endpoint()
        if not url:
            return
        host = urlsplit(url).hostname or ""
        where = (
            "reachable from this machine only (or through an SSH tunnel)"
            if is_loopback(host)
            else "reachable from other machines"
        )
        endpoint = (
            f"URL: <code>{esc(url)}</code><br>Username: <code>{esc(username)}</code>"
            f"<br><span class='nx-muted'>{where}</span>"
        )
        if endpoint != self.endpoint.value:
            self.endpoint.value = endpoint
        commands = commands_html(client_commands(url, username, self._shown_secret))
        if commands != self.commands.value:
            self.commands.value = commands
        if url != self._qr_text:
            self._qr_text = url
            self.qr.value = qr_svg(url)

    def _endpoint(self) -> tuple[str, str]:
        if self.status is not None:
            return self.status.url, self.status.username
        settings = self.ctx.settings
        if settings is not None:
            return settings.opencode_base_url, settings.opencode_username
        return "", ""

    # ---- actions -----------------------------------------------------------------------

    def ask(self, verb: str) -> None:
        """Show the confirmation of a stop or restart."""
        self.pending = verb
        with self.ctx.lock, self.confirm.hold_sync():
            self.question.value = f"<b>{esc(QUESTIONS[verb])}</b>"
            self.confirm.children[1].description = f"Yes, {verb}"
            self.confirm.layout.display = None

    def confirmed(self) -> None:
        verb, self.pending = self.pending, None
        self.confirm.layout.display = "none"
        if verb is not None:
            self.act(verb)

    def cancelled(self) -> None:
        self.pending = None
        self.confirm.layout.display = "none"

    def act(self, verb: str) -> None:
        """Start, stop or restart the server in the background; the panel shows progress."""
        with self.ctx.lock:
            self.busy = True
            self._update_buttons()
            self.banner.note(f"{VERBS[verb]} the server ...", "busy")

        def work() -> None:
            try:
                result = self.run_action(verb)
                with self.ctx.lock:
                    self.busy = False
                    self.report(result)
            finally:
                self.busy = False
                self.refresh()

        self.in_background(work)

    def run_action(self, verb: str) -> ActionResult:
        client = self.ctx.client
        if verb == "start":
            return client.start(wait=True)
        if verb == "restart":
            return client.restart(wait=True)
        return client.stop()

    def report(self, result: ActionResult) -> None:
        if result.ok:
            self.banner.note(result.message, "ok", ttl=20.0)
        else:
            self.banner.note(f"{result.message} (see the Logs and Events tabs for why)", "error")
        self.show(result.status)

    def toggle_password(self, change: object = None) -> None:
        """Show the server's password (read from its secret file now), or hide it again."""
        if self.reveal.value:
            try:
                secret = self.ctx.secret()
            except Exception:
                self.reveal.value = False
                raise
            self._shown_secret = secret
            self.password.value = f"Password: <code class='nx-password-value'>{esc(secret)}</code>"
            self.reveal.description = "Hide password"
        else:
            self._shown_secret = None
            self.password.value = f"Password: <code>{HIDDEN}</code>"
            self.reveal.description = "Show password"
        with self.ctx.lock:
            self._update_connection()


def commands_html(commands: list[tuple[str, str]]) -> str:
    """The commands that connect each kind of client, one labelled line each."""
    lines = "".join(
        f"<div><span class='nx-muted'>{esc(what)}</span><br><code>{esc(command)}</code></div>"
        for what, command in commands
    )
    return f"<div class='nx-section'>Commands</div>{lines}"


def _waiting(pending: PendingRestart) -> str:
    """What a waiting restart waits for, how long so far, and how long at most."""
    waited = format_value(pending.waiting_seconds, "seconds", 1)
    left = format_value(pending.timeout_in, "seconds", 1)
    return (
        f"{pending.reason} restart waits for {', '.join(pending.sessions)} "
        f"({waited} so far; restarts anyway in {left})"
    )


def _uptime(status: ServerStatus) -> str:
    if status.state is not ServerState.RUNNING:
        return "-"
    return format_value(status.uptime_seconds, "duration")
