"""One runbook run read back in full, as the agent recorded it: `nexus-ops runbook show-run`
(text, ``--html``) and ``GET /api/v1/runs/{id}/html``, against a real agent and a real run."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import RunningAgent, kill_everything_of, nexus_cli, private_env, start_agent

from nexus_ops.paths import Layout
from nexus_ops.store.runs import RunRecord

UNKNOWN = "20260101T000000Z-backup-0000"


@pytest.fixture(scope="module")
def agent_run(
    opencode_bin: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RunningAgent, RunRecord]]:
    """A real agent and one finished dry run of the backup runbook that it made."""
    env = private_env(tmp_path_factory.mktemp("runs"), {"NEXUS_OPENCODE_BIN": str(opencode_bin)})
    running = start_agent(env)
    try:
        started = running.client.start_run("backup", {}, who="tester")
        done = running.client.wait_run(started.id, timeout=300)
        assert done.status == "succeeded", done.error
        yield running, done
    finally:
        running.client.close()
        running.stop()
        kill_everything_of(env)


def visible_text(page: str) -> str:
    """What a reader of the page sees: the text of its body, tags gone, entities decoded."""
    body = re.sub(r"<style.*?</style>", " ", page.split("<main>", 1)[-1], flags=re.S)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", "", body)).split())


def assert_readable_notebook(page: str, run: RunRecord) -> None:
    """The executed notebook: its prose and outputs rendered, no script, no tag shown as text."""
    assert not re.search(r"<script", page, re.I), re.findall(r"<script[^>]*>", page, re.I)
    text = visible_text(page)
    assert "recovery.backup_status" in text  # a cell's source
    assert "there is no backup yet" in text  # its output
    assert "would back up 0 entries" in text
    assert run.verdict is not None and str(run.verdict["summary"]) in text  # the verdict
    assert "<h1" in page and "<table" in page and "<strong>backups: ERROR</strong>" in page
    shown_tags = re.findall(r"</?(?:p|h\d|table|thead|tbody|tr|th|td|strong)\b[^<]*>", text)
    assert not shown_tags, f"HTML shown as text: {shown_tags[:5]}"
    assert "**" not in text, "markdown shown raw"


def test_show_run_prints_the_run_and_writes_its_notebook_as_html(
    agent_run: tuple[RunningAgent, RunRecord], tmp_path: Path
) -> None:
    running, run = agent_run
    shown = nexus_cli(running.env, "runbook", "show-run", run.id)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].startswith(f"run {run.id}: backup succeeded (")
    assert "by api:tester" in lines[1] and "dry_run=True" in lines[2]
    assert "backup: UNHEALTHY (dry run)" in shown.stdout
    assert "[error] backups: there is no backup yet" in shown.stdout
    assert f"notebook: {run.notebook}" in shown.stdout

    page = tmp_path / "run.html"
    written = nexus_cli(running.env, "runbook", "show-run", run.id, "--html", str(page))
    assert written.returncode == 0, written.stderr
    assert f"html: {page}" in written.stdout
    assert_readable_notebook(page.read_text(encoding="utf-8"), run)


def test_show_run_of_an_unknown_id_says_so_and_where_the_runs_are(
    agent_run: tuple[RunningAgent, RunRecord], tmp_path: Path
) -> None:
    running, _ = agent_run
    for extra in ([], ["--html", str(tmp_path / "x.html")]):
        refused = nexus_cli(running.env, "runbook", "show-run", UNKNOWN, *extra)
        assert refused.returncode != 0 and refused.stdout == ""
        assert f"there is no run {UNKNOWN!r}" in refused.stderr
        assert "`nexus-ops runbook runs`" in refused.stderr
        assert "Traceback" not in refused.stderr
    assert not (tmp_path / "x.html").exists()


def test_the_api_serves_a_run_as_one_readable_page_without_scripts(
    agent_run: tuple[RunningAgent, RunRecord],
) -> None:
    running, run = agent_run
    base = f"http://127.0.0.1:{running.settings.agent_port}/api/v1/runs"
    token = Layout(running.settings.home).agent_token_file.read_text().strip()
    headers = {"Authorization": f"Bearer {token}"}
    answer = httpx.get(f"{base}/{run.id}/html", headers=headers)
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in answer.headers["content-security-policy"]
    assert_readable_notebook(answer.text, run)

    missing = httpx.get(f"{base}/{UNKNOWN}/html", headers=headers)
    assert missing.status_code == 404, missing.text
    assert missing.json() == {
        "error": f"there is no run {UNKNOWN!r}",
        "hint": "`nexus-ops runbook runs` lists the recent runs",
    }
