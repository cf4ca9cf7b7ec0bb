"""Runbook parameters are data: what papermill injects never runs as code.

A runbook of string parameters is run for real, through the CLI and through the
agent's API, with values written to break out of the injected cell; each must come
back, character for character, as the value the notebook sees, or be refused with
a clear error, and the marker file that every payload tries to create never appears.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import nbformat
import pytest
from conftest import RunningAgent, nexus_cli, start_agent
from test_runbooks import write_notebook

from nexus_ops.paths import Layout


def payloads(marker: Path) -> list[str]:
    touch = f"import os; os.system('touch {marker}')"
    return [
        f'"; {touch}; "',
        f"'; {touch}; '",
        f"__import__('os').system('touch {marker}')",
        f"x\n{touch}\n",
        f"\r\n{touch}  # ",
        "{{ " + touch + " }}",
        "\\",
        f"\\'; {touch} #\\",
        f'"""\n{touch}\n"""',
        f"'''\n{touch}\n'''",
        "ünïcødé ✓ 🚀 \u202e",
        "None",
        '{"a": 1}',
        "x" * 20000,
    ]


@pytest.fixture
def books(tmp_path: Path) -> Path:
    folder = tmp_path / "books"
    folder.mkdir()
    names = [f"p{i}" for i in range(len(payloads(tmp_path)))]
    declared = "\n".join(f"{name}: str = ''  # any text" for name in names)
    write_notebook(
        folder,
        "echo",
        "dry_run: bool = True  # only look\n" + declared,
        f"import json\nprint(json.dumps([{', '.join(names)}]))",
        "from nexus_ops.recovery import Check, record_verdict\n"
        "verdict = record_verdict('echo', [Check(name='n', ok=True, summary='read')], "
        "dry_run=dry_run)",
    )
    return folder


def seen(notebook: dict[str, Any]) -> list[str]:
    """What the notebook's echo cell printed: the values as the kernel had them."""
    read = nbformat.reads(json.dumps(notebook), as_version=4)  # sources may be lists of lines
    cell = next(c for c in read.cells if "json.dumps" in c.source)
    text = "".join(o["text"] for o in cell["outputs"] if o.get("name") == "stdout")
    found: list[str] = json.loads(text)
    return found


def test_hostile_parameters_through_the_cli_arrive_as_plain_text(
    nexus_env: dict[str, str], books: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    given = payloads(marker)
    args = [arg for i, text in enumerate(given) for arg in ("-p", f"p{i}", text)]
    env = {**nexus_env, "NEXUS_RUNBOOKS_DIR": str(books)}
    done = nexus_cli(env, "runbook", "run", "echo", *args, "--json", timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads(done.stdout)
    assert record["status"] == "succeeded", record["error"]
    assert record["parameters"] == {"dry_run": True} | {f"p{i}": t for i, t in enumerate(given)}
    assert seen(json.loads(Path(record["notebook"]).read_text())) == given
    assert not marker.exists()


@pytest.fixture
def agent_with_books(nexus_env: dict[str, str], books: Path) -> Iterator[RunningAgent]:
    running = start_agent({**nexus_env, "NEXUS_RUNBOOKS_DIR": str(books)})
    yield running
    running.client.close()
    running.stop()


def test_hostile_parameters_through_the_api_arrive_as_data_or_are_refused(
    agent_with_books: RunningAgent, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    client = agent_with_books.client
    token = Layout(agent_with_books.settings.home).agent_token_file.read_text().strip()
    url = f"{client.base_url}/api/v1/runbooks/echo/runs"
    for wrong, shown in [(None, "None"), ({"a": 1}, "{'a': 1}"), (["x"], "['x']"), (1, "1")]:
        refused = httpx.post(
            url,
            json={"parameters": {"p0": wrong}},
            headers={"Authorization": f"Bearer {token}"},
            timeout=60,
        )
        assert refused.status_code == 400, wrong
        body = refused.json()
        assert f"parameter 'p0' expects str, got {shown}" in body["error"]
        assert "p0 (str)" in body["hint"] and "Traceback" not in refused.text
    assert client.runs() == []
    given = payloads(marker)
    started = client.start_run("echo", {f"p{i}": t for i, t in enumerate(given)})
    record = client.wait_run(started.id, timeout=300)
    assert record.status == "succeeded", record.error
    assert seen(client.run_notebook(record.id)) == given
    assert not marker.exists()
