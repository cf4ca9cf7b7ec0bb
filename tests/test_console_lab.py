"""The same console in JupyterLab: the notebook's one cell run in a real JupyterLab, in
real Chromium, against a real agent and OpenCode server."""

from __future__ import annotations

import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from browser import FIGURES_FILL_THEIR_BOXES, FIGURES_HAVE_DATA, shot
from conftest import ROOT, free_port, kill_everything_of, nexus_cli, private_env, wait_for
from playwright.sync_api import Browser, expect

pytestmark = [pytest.mark.browser, pytest.mark.opencode]


@pytest.fixture
def lab(opencode_bin: Path, tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """A running agent and server, and JupyterLab serving a copy of the console notebook."""
    env = private_env(
        tmp_path,
        {"NEXUS_OPENCODE_BIN": str(opencode_bin), "NEXUS_METRICS_INTERVAL": "1"},
    )
    started = nexus_cli(env, "server", "start")
    assert started.returncode == 0, started.stdout + started.stderr
    work = tmp_path / "lab"
    work.mkdir()
    shutil.copy(ROOT / "notebooks" / "console.ipynb", work)
    port, token = free_port(), secrets.token_urlsafe(24)
    with (tmp_path / "jupyterlab.log").open("wb") as log:
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jupyterlab",
                "--no-browser",
                "--ip=127.0.0.1",
                f"--port={port}",
                f"--IdentityProvider.token={token}",
                f"--ServerApp.root_dir={work}",
                "--allow-root",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(f"{base}/api/status?token={token}"), 60, what="JupyterLab")
        yield f"{base}/lab/tree/console.ipynb?token={token}", env
    finally:
        server.terminate()
        server.wait(timeout=30)
        kill_everything_of(env)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_the_console_runs_in_jupyterlab(browser: Browser, lab: tuple[str, dict[str, str]]) -> None:
    url, _env = lab
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        page.goto(url)
        page.wait_for_selector(".jp-Notebook .jp-Cell .cm-content", timeout=90_000)
        # The kernel is up and idle (the status bar says so) before the cell runs.
        expect(page.locator("#jp-main-statusbar")).to_contain_text("Idle", timeout=90_000)
        page.locator(".jp-Cell .cm-content").first.click()
        page.keyboard.press("Shift+Enter")
        page.wait_for_selector(".nx-console .nx-start", timeout=90_000)
        expect(page.locator(".nx-agent-state")).to_have_text("agent connected", timeout=30_000)
        expect(page.locator(".nx-server-state")).to_have_text("running", timeout=60_000)
        page.locator(".nx-tabs .lm-TabBar-tab", has_text="Metrics").click()
        page.wait_for_function(FIGURES_HAVE_DATA, timeout=90_000)
        # JupyterLab's output is narrower than a Voila page: the figures still fit it.
        page.wait_for_function(FIGURES_FILL_THEIR_BOXES, timeout=30_000)
        shot(page, "jupyterlab")
    except Exception:
        shot(page, "jupyterlab-failed")
        raise
    finally:
        page.close()
