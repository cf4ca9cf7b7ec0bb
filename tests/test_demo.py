"""``nexus-ops demo`` as a user starts it: a scripted model, a steady workload, the console
marked DEMO in real Chromium, and Ctrl-C that leaves nothing behind."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx
import psutil
import pytest
from browser import check_on_a_phone, shot
from conftest import free_port, kill_everything_of, private_env, processes_of, wait_for
from playwright.sync_api import Browser, expect
from test_console_e2e import LOAD, serve

from nexus_ops.client import AgentClient
from nexus_ops.config import load_settings
from nexus_ops.daemon import running_agent
from nexus_ops.demo import DemoFolders, check_home, demo_settings
from nexus_ops.errors import ConfigError
from nexus_ops.ui.app import read_password
from nexus_ops.workload.steady import check_load

pytestmark = [pytest.mark.browser, pytest.mark.opencode]


def total_sessions(client: AgentClient) -> float:
    """The sessions the agent last sampled, whatever their status."""
    values = [
        float(line.rsplit(" ", 1)[1])
        for line in client.metrics_text().splitlines()
        if line.startswith("opencode_sessions{")
    ]
    return sum(values)


def messages(base: str, auth: tuple[str, str]) -> list[dict[str, object]]:
    """Every message of every session of the demo's server."""
    found: list[dict[str, object]] = []
    for session in httpx.get(f"{base}/session", auth=auth, timeout=5).json():
        answer = httpx.get(f"{base}/session/{session['id']}/message", auth=auth, timeout=5)
        found += answer.json()
    return found


def user_prompts(found: list[dict[str, object]]) -> int:
    return sum(1 for m in found if m["info"]["role"] == "user")  # type: ignore[index]


def test_demo_shows_activity_labelled_demo_and_ctrl_c_stops_everything(
    browser: Browser, opencode_bin: Path, tmp_path: Path
) -> None:
    env = private_env(
        tmp_path,
        {
            "NEXUS_OPENCODE_BIN": str(opencode_bin),
            "NEXUS_CONSOLE_PORT": str(free_port()),
            "NEXUS_METRICS_INTERVAL": "1",
        },
    )
    home = tmp_path / "demo-home"
    demo_env = {**env, "NEXUS_HOME": str(home)}
    served = serve(env, command=("demo", "--home", str(home), "--interval", "2"))
    try:
        settings = load_settings(demo_env)
        folders = DemoFolders(home)
        # The demo's OpenCode has its own HOME and config, pointing at the scripted model.
        config = (folders.config / "opencode" / "opencode.json").read_text()
        assert '"model": "scripted/m1"' in config
        assert not (Path(env["XDG_CONFIG_HOME"]) / "opencode").exists(), "the user's config"
        # Reading each process's command line once, from a snapshot: a process that ends
        # meanwhile (a zombie on a loaded machine) has none and is skipped.
        server = next(p for p in psutil.process_iter(["cmdline"])
                      if "serve" in (p.info["cmdline"] or [])
                      and str(settings.opencode_port) in p.info["cmdline"])  # fmt: skip
        assert server.environ()["HOME"] == str(folders.home)
        assert server.environ()["XDG_DATA_HOME"] == str(folders.root / "data")

        client = AgentClient.from_settings(settings, timeout=30.0)
        wait_for(lambda: total_sessions(client) >= 2, 60, what="the agent sampling 2 sessions")
        auth = (settings.opencode_username, read_password(settings))
        base = settings.opencode_base_url
        first = user_prompts(messages(base, auth))
        wait_for(lambda: user_prompts(messages(base, auth)) >= first + 4, 120, 1.0, "more prompts")
        found = messages(base, auth)
        tools = [
            p
            for m in found
            for p in m["parts"]
            if p.get("type") == "tool"  # type: ignore[attr-defined]
        ]
        assert any(t["tool"] == "bash" for t in tools), "some prompts run a bash tool call"
        wait_for(
            lambda: any(m["info"].get("error") for m in messages(base, auth)),  # type: ignore[index]
            90,
            1.0,
            what="a prompt whose model failed",
        )

        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(served.url)
        page.wait_for_selector(".nx-console .nx-header", timeout=LOAD)
        expect(page.locator(".nx-header .nx-demo")).to_have_text("DEMO", timeout=30_000)
        expect(page.locator(".nx-agent-state")).to_have_text("agent connected", timeout=30_000)
        expect(page.locator(".nx-server-state")).to_have_text("running", timeout=30_000)
        shot(page, "demo")
        check_on_a_phone(page, "demo-412", ".nx-header .nx-demo")
        page.close()

        agent = running_agent(settings)
        assert agent is not None
        demo = psutil.Process(served.process.pid)
        watched = [demo, *demo.children(recursive=True), server, psutil.Process(agent.pid)]
        os.killpg(served.process.pid, signal.SIGINT)  # Ctrl-C in the demo's terminal
        assert served.process.wait(timeout=90) == 0
        assert "demo stopped" in "".join(served.output)
        left = psutil.wait_procs(watched, timeout=30)[1]
        assert left == [], f"left running: {left}"
        assert processes_of(demo_env) == [], "no process of the demo's NEXUS_HOME"
    finally:
        if served.process.poll() is None:
            served.process.kill()
        kill_everything_of(demo_env)
        kill_everything_of(env)


def test_the_demo_refuses_the_real_nexus_home(tmp_path: Path) -> None:
    real = tmp_path / "real"
    with pytest.raises(ConfigError, match="NEXUS_HOME of your real nexus-ops") as caught:
        check_home(real, {"NEXUS_HOME": str(real)})
    assert "--home" in (caught.value.hint or "")
    with pytest.raises(ConfigError, match="real nexus-ops"):
        check_home(Path("~/.local/share/nexus-ops"), {})
    assert check_home(tmp_path / "demo", {"NEXUS_HOME": str(real)}) == tmp_path / "demo"


def test_demo_settings_mark_the_demo_and_use_its_project(
    tmp_path: Path, opencode_bin: Path
) -> None:
    settings = demo_settings(tmp_path / "demo", {"NEXUS_OPENCODE_BIN": str(opencode_bin)})
    assert settings.demo is True
    assert settings.home == tmp_path / "demo"
    assert settings.opencode_workdir == DemoFolders(tmp_path / "demo").project


def test_a_load_that_cannot_run_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match=r"sessions=0 \(needs at least 1\)"):
        check_load(0, 5.0)
    with pytest.raises(ConfigError, match=r"interval=0 \(needs more than 0 seconds\)"):
        check_load(2, 0.0)
