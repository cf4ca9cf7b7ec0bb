"""notebooks/metrics.ipynb runs top to bottom (nbval) against a fresh real agent."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import RunningAgent, wait_for

pytestmark = pytest.mark.opencode

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "metrics.ipynb"


def test_notebook_is_committed_without_outputs() -> None:
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    assert code and all(not c["outputs"] and c["execution_count"] is None for c in code)
    assert not any("def " in "".join(c["source"]) for c in code)


def test_notebook_runs_on_a_fresh_agent(agent: RunningAgent, tmp_path: Path) -> None:
    wait_for(lambda: agent.client.metric_names(), timeout=30, what="the first samples")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--nbval-lax",
            "-p",
            "no:cacheprovider",
            "-q",
            f"--rootdir={tmp_path}",
            str(NOTEBOOK),
        ],
        env=agent.env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-2000:]
    code_cells = sum(c["cell_type"] == "code" for c in json.loads(NOTEBOOK.read_text())["cells"])
    assert f"{code_cells} passed" in done.stdout
