"""The real console (``nexus-ops console``: Voila, the agent, OpenCode) driven in real Chromium.

Screenshots of each panel go to test-artifacts/console/.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psutil
import pytest
from browser import (
    FIGURES_FILL_THEIR_BOXES,
    FIGURES_HAVE_DATA,
    FIGURES_STACK_IN_ONE_COLUMN,
    OVERFLOWING,
    shot,
)
from conftest import free_port, kill_everything_of, nexus_cli, private_env, wait_for
from playwright.sync_api import Browser, Page, expect
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from nexus_ops.client import AgentClient
from nexus_ops.config import Settings, load_settings
from nexus_ops.paths import Layout
from nexus_ops.ui.figurewidget import ASSET

pytestmark = [pytest.mark.browser, pytest.mark.opencode]

LOAD = 90_000  # ms: a loaded CI machine builds the first page slowly

# Every time series shows the last 15 minutes.
FIGURES_SHOW_15_MINUTES = """
() => [...document.querySelectorAll('.nx-timeseries')].every((f) => {
  const gd = f.classList.contains('js-plotly-plot') ? f : f.querySelector('.js-plotly-plot');
  const range = gd && gd.layout && gd.layout.xaxis && gd.layout.xaxis.range;
  if (!range) return false;
  const minutes = (Date.parse(range[1]) - Date.parse(range[0])) / 60000;
  return minutes > 14 && minutes < 16;
})
"""

# The elements of an executed notebook's page that run past its right edge or scroll.
# The legend names of every figure's lines (Plotly's trace names, as drawn).
LEGEND_NAMES = """
() => [...document.querySelectorAll('.nx-figure .legendtext')].map((e) => e.textContent)
"""

CUT_IN_THE_NOTEBOOK = """
(main) => [...main.querySelectorAll('*')].filter((e) =>
  e.getBoundingClientRect().right > innerWidth + 1
  || (e.scrollWidth > e.clientWidth + 1 && e.clientWidth > 0
      && getComputedStyle(e).overflowX !== 'visible')
).map((e) => `${e.tagName.toLowerCase()}.${e.className} "${e.textContent.slice(0, 30)}"`)
 .slice(0, 5)
"""


@dataclass
class Served:
    """A running ``nexus-ops console`` and what the tests need of it."""

    env: dict[str, str]
    settings: Settings
    process: subprocess.Popen[str]
    url: str
    output: list[str]

    @property
    def base(self) -> str:
        return self.url.split("/?", 1)[0]

    def voila(self) -> psutil.Process:
        children = psutil.Process(self.process.pid).children()
        return next(p for p in children if "voila" in " ".join(p.cmdline()))

    def kernels(self) -> list[psutil.Process]:
        found = []
        for child in self.voila().children():
            with contextlib.suppress(psutil.Error):
                if "ipykernel_launcher" in " ".join(child.cmdline()):
                    found.append(child)
        return found

    def client(self) -> AgentClient:
        return AgentClient.from_settings(self.settings, timeout=90.0)


def console_env(root: Path, opencode_bin: Path, **extra: str) -> dict[str, str]:
    return private_env(
        root,
        {
            "NEXUS_OPENCODE_BIN": str(opencode_bin),
            "NEXUS_CONSOLE_PORT": str(free_port()),
            "NEXUS_METRICS_INTERVAL": "1",
            "NEXUS_METRICS_FLUSH_INTERVAL": "1",
            "NEXUS_CONSOLE_REFRESH": "1",
            **extra,
        },
    )


def serve(
    env: dict[str, str], timeout: float = 120.0, command: tuple[str, ...] = ("console",)
) -> Served:
    """Start ``nexus-ops console`` (or ``command``) as an operator would; wait for the URL it prints."""
    process = subprocess.Popen(
        [sys.executable, "-m", "nexus_ops", *command],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    output: list[str] = []

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line)
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            if process.poll() is not None:
                pytest.fail(f"nexus-ops {command[0]} exited: {''.join(output)}")
            continue
        if line.startswith("console: "):
            url = line.split(" ", 1)[1].strip()
            return Served(env, load_settings(env), process, url, output)
    process.kill()
    pytest.fail(f"no console URL within {timeout:g} s: {''.join(output)}")


def interrupt(served: Served) -> int:
    """Ctrl-C, as in the terminal; the exit code."""
    served.process.send_signal(signal.SIGINT)
    return served.process.wait(timeout=60)


@pytest.fixture(scope="module")
def served(opencode_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    env = console_env(tmp_path_factory.mktemp("console"), opencode_bin)
    running = serve(env)
    yield running
    with contextlib.suppress(Exception):
        interrupt(running)
    kill_everything_of(env)


@pytest.fixture
def page(browser: Browser, served: Served) -> Iterator[Page]:
    page = open_console(browser, served.url)
    yield page
    page.close()


def open_console(browser: Browser, url: str) -> Page:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(url)
    page.wait_for_selector(".nx-console .nx-start", timeout=LOAD)
    return page


def tab(page: Page, title: str) -> None:
    page.locator(".nx-tabs .lm-TabBar-tab", has_text=title).click()


def text_of(page: Page, selector: str) -> str:
    return page.locator(selector).first.inner_text().strip()


def ensure_running(page: Page) -> None:
    state = page.locator(".nx-server-state")
    expect(state).not_to_have_text("unknown", timeout=30_000)
    if state.inner_text() != "running":
        page.locator("button.nx-start").click()
    expect(state).to_have_text("running", timeout=90_000)


# ---- the scenario of one operator ------------------------------------------------------


def test_start_shows_running_and_the_version(page: Page, served: Served) -> None:
    expect(page.locator(".nx-agent-state")).to_have_text("agent connected", timeout=30_000)
    expect(page.locator(".nx-server-state")).to_have_text("stopped", timeout=30_000)
    expect(page.locator(".nx-start-hint")).to_contain_text("Press Start")
    shot(page, "server-stopped")
    # The status stat says what the Server tab says (not the stored samples' DOWN).
    tab(page, "Metrics")
    expect(page.locator(".nx-stat-server-status")).to_contain_text("STOPPED", timeout=60_000)
    tab(page, "Server")
    page.locator("button.nx-start").click()
    expect(page.locator(".nx-server > .nx-banner")).to_contain_text(
        "Starting the server", timeout=10_000
    )
    expect(page.locator(".nx-server-state")).to_have_text("running", timeout=90_000)
    expect(page.locator(".nx-start-hint")).to_be_hidden()
    tab(page, "Metrics")
    expect(page.locator(".nx-stat-server-status")).to_contain_text("UP", timeout=10_000)
    tab(page, "Server")
    expect(page.locator(".nx-server-version")).to_have_text(re.compile(r"^\d+\.\d+\.\d+$"))
    with served.client() as client:
        status = client.status()
    assert text_of(page, ".nx-server-version") == status.version
    assert text_of(page, ".nx-server-pid") == str(status.pid)
    shot(page, "server-running")


def test_the_password_is_shown_only_on_request(page: Page, served: Served) -> None:
    ensure_running(page)
    password = Layout(served.settings.home).server_password_file.read_text().strip()
    assert password not in page.content()
    page.locator("button.nx-show-password").click()
    expect(page.locator(".nx-password-value")).to_have_text(password, timeout=10_000)
    assert page.locator(".nx-qr svg").count() == 1
    shot(page, "server-password")
    page.locator("button.nx-show-password").click()
    expect(page.locator(".nx-password-value")).to_have_count(0, timeout=10_000)
    assert password not in page.content()


def test_devices_tab_pairs_a_device_then_revokes_it(page: Page, served: Served) -> None:
    tab(page, "Devices")
    expect(page.locator(".nx-devices-view")).to_contain_text("No paired devices", timeout=30_000)
    page.locator("button.nx-pair").click()
    code = page.locator(".nx-pair-code")
    expect(code).to_have_text(re.compile(r"^[2-9A-HJ-NP-Z]{4}-[2-9A-HJ-NP-Z]{4}$"), timeout=30_000)
    assert page.locator(".nx-pair-qr svg").count() == 1
    # A phone pairs with the code, as through the entry.
    done = httpx.post(
        f"{served.settings.agent_base_url}/_nexus/pair",
        data={"code": code.inner_text(), "name": "test phone"},
        headers={"X-Forwarded-For": "203.0.113.7"},
        follow_redirects=False,
    )
    assert done.status_code == 303, done.text
    expect(page.locator(".nx-devices-table")).to_contain_text("test phone", timeout=30_000)
    expect(page.locator(".nx-devices-table")).to_contain_text("203.0.113.7")
    shot(page, "devices")
    page.locator("button.nx-revoke").click()
    expect(page.locator(".nx-devices-view")).to_contain_text("No paired devices", timeout=30_000)
    with served.client() as client:
        assert client.devices() == []


def test_runbooks_tab_runs_a_runbook_and_shows_any_run_in_full(page: Page, served: Served) -> None:
    with served.client() as client:  # a run made elsewhere, before the page ran one
        earlier = client.wait_run(client.start_run("restore", {}, who="cron").id, timeout=300)
    assert earlier.status == "succeeded", earlier.error
    tab(page, "Runbooks")
    panel = page.locator(".nx-runbooks")
    about = panel.locator(".nx-runbook-about")
    expect(about).to_contain_text("Application failure", timeout=30_000)  # the first, chosen
    expect(panel.locator("button.nx-runbook-run")).to_be_enabled()
    panel.locator(".nx-runbook-choice select").select_option("backup")
    expect(about).to_contain_text("Purpose. Show the state of the backups", timeout=30_000)
    panel.locator("button.nx-runbook-run").click()
    expect(panel.locator(".nx-banner")).to_contain_text(
        re.compile(r"backup finished: (un)?healthy: .*\(run \S+-backup-"), timeout=120_000
    )
    notebook = page.frame_locator("iframe.nx-run-notebook")
    expect(notebook.locator("h1").first).to_contain_text("Backup", timeout=30_000)
    expect(notebook.locator("main")).to_contain_text("would back up")
    expect(panel.locator(".nx-run-detail")).to_contain_text("api:console")
    read = notebook.locator("main").inner_text()
    assert "<p>" not in read and "<th>" not in read and "**" not in read, read[:500]
    shot(page, "runbooks-run")

    runs = panel.locator(".nx-run-choice select")
    picked = runs.locator("option", has_text="restore").inner_text()
    runs.select_option(label=picked)
    expect(panel.locator(".nx-run-detail")).to_contain_text(earlier.id, timeout=30_000)
    expect(notebook.locator("h1").first).to_contain_text("Restore", timeout=30_000)
    expect(panel.locator(".nx-run-detail")).to_contain_text("api:cron")

    page.set_viewport_size({"width": 412, "height": 915})  # a phone: the notebook wraps
    expect(notebook.locator("main")).to_contain_text("backup_id")
    cut = notebook.locator("main").evaluate(CUT_IN_THE_NOTEBOOK)
    assert not cut, f"cut off in the notebook on a phone: {cut}"


def test_every_figure_renders_with_data(page: Page) -> None:
    ensure_running(page)
    tab(page, "Metrics")
    page.locator(".nx-range button", has_text="15 min").click()
    page.wait_for_function(FIGURES_SHOW_15_MINUTES, timeout=60_000)
    page.wait_for_function(FIGURES_HAVE_DATA, timeout=90_000)
    expect(page.locator(".nx-stat-server-status")).to_contain_text("UP", timeout=30_000)
    # Plotly draws a figure 700 px wide; the console makes it fill its half of the page.
    page.wait_for_function(FIGURES_FILL_THEIR_BOXES, timeout=30_000)
    assert "1.79" not in text_of(page, ".nx-series-cpu"), "the time axis shows dates"
    names = page.evaluate(LEGEND_NAMES)
    assert "agent" in names and "p95 · health checks" in names, names
    raw = [n for n in names if any(c in n for c in ",=/{") or not n.strip()]
    assert not raw, f"legend names for machines, not people: {raw}"
    shot(page, "metrics")


def test_on_a_phone_the_figures_stack_and_nothing_is_cut_off(
    browser: Browser, served: Served
) -> None:
    phone = browser.new_page(viewport={"width": 412, "height": 915}, is_mobile=True)
    try:
        phone.goto(served.url)
        phone.wait_for_selector(".nx-console .nx-start", timeout=LOAD)
        ensure_running(phone)
        tab(phone, "Metrics")
        phone.wait_for_function(FIGURES_HAVE_DATA, timeout=90_000)
        phone.wait_for_function(FIGURES_STACK_IN_ONE_COLUMN, timeout=30_000)
        width = phone.evaluate("() => document.documentElement.scrollWidth")
        assert width <= 412, f"the page scrolls sideways ({width} px)"
        titles = phone.locator(".nx-tabs .lm-TabBar-tab .lm-TabBar-tabLabel")
        for label in titles.all():  # every tab's title shows whole
            assert label.evaluate("e => e.scrollWidth <= e.clientWidth"), label.inner_text()
        shot(phone, "metrics-phone")
    finally:
        phone.close()


def test_on_a_phone_every_tab_fits_and_nothing_leaves_the_machine(
    browser: Browser, served: Served
) -> None:
    phone = browser.new_page(viewport={"width": 412, "height": 915}, is_mobile=True)
    hosts: set[str] = set()  # of every request that goes on the network (not data:, blob:)
    phone.on("request", lambda request: hosts.add(urlsplit(request.url).netloc))
    try:
        phone.goto(served.url)
        phone.wait_for_selector(".nx-console .nx-start", timeout=LOAD)
        ensure_running(phone)
        phone.locator("button.nx-show-password").click()
        expect(phone.locator(".nx-password-value")).to_have_count(1, timeout=10_000)
        titles = phone.locator(".nx-tabs .lm-TabBar-tab .lm-TabBar-tabLabel").all_inner_texts()
        assert len(titles) >= 8, titles
        for title in titles:
            tab(phone, title)
            phone.wait_for_selector(".nx-panel:visible", timeout=30_000)
            with contextlib.suppress(PlaywrightTimeout):  # the panel's first data laid out
                phone.wait_for_function(f"() => ({OVERFLOWING})().length === 0", timeout=5_000)
            shot(phone, f"phone-{title.lower()}")
            found = phone.evaluate(OVERFLOWING)
            assert not found, f"{title} tab, cut or scrolling sideways: {found}"
        # The icons come from Voila's own FontAwesome, not a CDN.
        tab(phone, "Server")
        icon = phone.locator("button.nx-start i.fa")
        assert icon.evaluate("e => e.getBoundingClientRect().width") > 0, "no icon drawn"
        loaded = "() => [...document.fonts].some(f => f.family.includes('Font Awesome')"
        assert phone.evaluate(loaded + " && f.status === 'loaded')"), "FontAwesome not loaded"
        outside = {host for host in hosts if host and urlsplit(f"//{host}").hostname != "127.0.0.1"}
        assert not outside, f"the page asked other hosts: {sorted(outside)}"
    finally:
        phone.close()


def test_restart_asks_then_the_count_rises(page: Page) -> None:
    ensure_running(page)
    before = int(text_of(page, ".nx-server-restarts"))
    page.locator("button.nx-restart").click()
    confirm = page.locator(".nx-confirm")
    expect(confirm).to_be_visible()
    expect(confirm).to_contain_text("Restart the server?")
    shot(page, "server-confirm-restart")
    page.locator("button.nx-confirm-yes").click()
    expect(page.locator(".nx-server-restarts")).to_have_text(str(before + 1), timeout=90_000)
    expect(page.locator(".nx-server-state")).to_have_text("running", timeout=90_000)
    expect(confirm).to_be_hidden()


def test_kill_9_shows_the_crash_and_the_recovery(page: Page) -> None:
    ensure_running(page)
    pid = int(text_of(page, ".nx-server-pid"))
    restarts = int(text_of(page, ".nx-server-restarts"))
    os.kill(pid, signal.SIGKILL)
    expect(page.locator(".nx-server-last-exit")).to_contain_text(
        f"crash: pid {pid} exited with signal 9", timeout=60_000
    )
    expect(page.locator(".nx-server-restarts")).to_have_text(str(restarts + 1), timeout=60_000)
    expect(page.locator(".nx-server-state")).to_have_text("running", timeout=90_000)
    assert int(text_of(page, ".nx-server-pid")) != pid
    shot(page, "server-after-crash")
    tab(page, "Events")
    crash = page.locator(".nx-events-view tr.nx-event-crash", has_text=str(pid))
    expect(crash.first).to_contain_text("exit", timeout=30_000)
    expect(page.locator(".nx-events-view tr.nx-event-restart").first).to_contain_text("crash")
    shot(page, "events")
    tab(page, "Metrics")
    page.locator(".nx-range button", has_text="15 min").click()
    page.wait_for_function(
        "() => [...document.querySelectorAll('.nx-timeseries')].some(f => {"
        " const gd = f.classList.contains('js-plotly-plot') ? f : f.querySelector('.js-plotly-plot');"
        " return gd && gd.data && gd.data.some(t => t.name === 'restarts and crashes'"
        " && t.x && t.x.length > 0); })",
        timeout=60_000,
    )
    page.wait_for_function(FIGURES_SHOW_15_MINUTES, timeout=60_000)
    page.wait_for_function(FIGURES_FILL_THEIR_BOXES, timeout=30_000)
    shot(page, "metrics-after-crash")


def test_logs_follow_and_filter(page: Page) -> None:
    ensure_running(page)
    tab(page, "Logs")
    expect(page.locator(".nx-log")).to_contain_text("opencode server listening", timeout=30_000)
    page.locator(".nx-log-filter input").fill("listening")
    expect(page.locator(".nx-log")).not_to_contain_text("level=INFO", timeout=30_000)
    assert "listening" in text_of(page, ".nx-log")
    shot(page, "logs")


def test_environment_shows_the_profile_and_masks_secrets(page: Page, served: Served) -> None:
    tab(page, "Environment")
    expect(page.locator(".nx-env-profile-name")).to_have_text("development", timeout=30_000)
    expect(page.locator(".nx-env")).to_contain_text(str(served.settings.home))
    expect(page.locator(".nx-env-problems")).to_contain_text("No problems")
    token = Layout(served.settings.home).agent_token_file.read_text().strip()
    assert token not in page.content()
    shot(page, "environment")


def test_a_lost_agent_shows_and_the_console_recovers(page: Page, served: Served) -> None:
    ensure_running(page)
    stopped = nexus_cli(served.env, "agent", "stop")
    assert stopped.returncode == 0, stopped.stderr
    expect(page.locator(".nx-agent-state")).to_have_text("agent lost", timeout=30_000)
    banner = page.locator(".nx-server > .nx-banner")
    expect(banner).to_contain_text("The agent is not answering")
    expect(banner).to_contain_text("nexus-ops agent start")
    expect(page.locator(".nx-server-state")).to_have_text("unknown")
    assert page.locator("button.nx-start").is_disabled()
    shot(page, "agent-lost")
    started = nexus_cli(served.env, "agent", "start")
    assert started.returncode == 0, started.stderr
    expect(page.locator(".nx-agent-state")).to_have_text("agent connected", timeout=60_000)
    expect(page.locator(".nx-server-state")).to_have_text("running", timeout=60_000)
    expect(banner).to_be_hidden()
    shot(page, "agent-back")


# ---- the page's lock, kernels, and stopping ------------------------------------------------


def test_locked_page_culled_kernels_and_ctrl_c(
    browser: Browser, opencode_bin: Path, tmp_path: Path
) -> None:
    env = console_env(tmp_path, opencode_bin, NEXUS_CONSOLE_CULL_TIMEOUT="10")
    served = serve(env)
    try:
        token = Layout(served.settings.home).secrets.joinpath("console.token").read_text().strip()
        assert f"token={token}" in served.url
        wait_for(lambda: len(served.kernels()) == 1, 90, what="the pre-heated kernel")

        for url in (served.base + "/", served.base + "/?token=wrong"):
            refused = browser.new_page()
            refused.goto(url)
            expect(refused.locator("#password_input")).to_be_visible(timeout=30_000)
            assert refused.locator(".nx-console").count() == 0
            shot(refused, "refused-without-token")
            refused.close()
        assert httpx.get(served.base + "/", follow_redirects=False).status_code in (302, 403)
        assert len(served.kernels()) == 1, "a refused visit starts no kernel"
        # The one file served without the token is plotly's bundle; not Voila's config.
        assert httpx.head(served.base + f"/voila/files/{ASSET}").status_code == 200
        for secret in ("voila.json", "console.ipynb", "../secrets/console.token"):
            answer = httpx.get(served.base + f"/voila/files/{secret}")
            assert answer.status_code in (302, 403, 404) and token not in answer.text

        page = open_console(browser, served.url)
        expect(page.locator(".nx-agent-state")).to_have_text("agent connected", timeout=30_000)
        wait_for(lambda: len(served.kernels()) == 2, 90, what="the pool refilled")
        page.close()
        # The closed page's kernel stops refreshing, goes idle and is culled; the
        # pre-heated one waiting for the next visit is kept.
        wait_for(lambda: len(served.kernels()) == 1, 120, interval=1.0, what="the kernel culled")
        kernels = served.kernels()
        voila = served.voila()

        assert interrupt(served) == 0
        assert "stopping the console" in "".join(served.output)
        gone = psutil.wait_procs([voila, *kernels], timeout=30)[1]
        assert gone == [], f"left running: {gone}"
        with served.client() as client:
            assert client.health().status == "ok", "the agent keeps running"
    finally:
        if served.process.poll() is None:
            served.process.kill()
        kill_everything_of(env)


def test_usage_tab_shows_the_models_usage_per_day_and_the_busiest_sessions(
    browser: Browser, opencode_bin: Path, opencode_config: Path, tmp_path: Path
) -> None:
    from backup_helpers import install_config

    from nexus_ops.workload.config import write_provider_config
    from nexus_ops.workload.provider import ScriptedProvider
    from nexus_ops.workload.script import Reply, Script

    env = console_env(tmp_path, opencode_bin)
    install_config(opencode_config, env)
    with ScriptedProvider(Script(default=Reply(tokens=12))) as provider:
        write_provider_config(Path(env["HOME"]), provider.base_url, Path(env["XDG_CONFIG_HOME"]))
        ran = subprocess.run(  # usage from before the console and its agent started
            [str(opencode_bin), "run", "--model", "scripted/m1", "say hello"],
            env={**env, "PWD": env["HOME"]}, cwd=env["HOME"], capture_output=True, text=True,
            timeout=180, check=False,
        )  # fmt: skip
        assert ran.returncode == 0, ran.stderr[-2000:]
        running = serve(env)
        page = open_console(browser, running.url)
        try:
            ensure_running(page)
            tab(page, "Usage")
            models = page.locator(".nx-usage-models")
            expect(models).to_contain_text("scripted/m1", timeout=60_000)
            expect(page.locator(".nx-usage-state")).to_contain_text("live", timeout=60_000)
            with running.client() as client:
                usage = client.usage()
            [model] = usage["models"]
            assert f"{model['tokens']['input']:,.0f}" in models.inner_text()
            [session] = usage["sessions"]
            expect(page.locator(".nx-usage-sessions")).to_contain_text(f"{session['tokens']:,.0f}")
            bars = (
                "() => { const f = document.querySelector('.nx-usage-days .js-plotly-plot')"
                " || document.querySelector('.nx-usage-days');"
                " return f && f.data && f.data.length === 1 && f.data[0].y.length === 1; }"
            )
            page.wait_for_function(bars, timeout=30_000)
            shot(page, "usage")
        finally:
            page.close()
            with contextlib.suppress(Exception):
                interrupt(running)
            kill_everything_of(env)
