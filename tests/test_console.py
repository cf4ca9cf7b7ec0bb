"""``nexus-ops console``'s launcher, without a browser: notebook, folder, config, safety."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import stat
import subprocess
import time
from pathlib import Path

import nbformat
import pytest
from conftest import ROOT, free_port, nexus_cli, private_env
from nbclient import NotebookClient

from nexus_ops.config import Settings, load_settings
from nexus_ops.console import (
    NOTEBOOK,
    RECORD,
    ConsoleKernelManager,
    ConsoleOptions,
    candidate_notebooks,
    check_console_bind,
    console_root,
    console_token,
    console_url,
    cull_interval,
    locate_notebook,
    plan_console,
    prepare_root,
    running_console,
    token_file,
    voila_config,
)
from nexus_ops.errors import NexusOpsError, PortInUse, SecurityError
from nexus_ops.process import identify, save_record
from nexus_ops.ui.figurewidget import ASSET, plotly_bundle

STRONG = "k7Qw9zLmP2xV4nB8rT6yU1iO3pA5sD0fGhJ"


def settings_in(tmp_path: Path, **extra: str) -> Settings:
    return load_settings({"NEXUS_HOME": str(tmp_path / "nexus"), **extra})


def test_the_notebook_is_one_thin_cell_without_outputs() -> None:
    path = ROOT / "notebooks" / NOTEBOOK
    assert locate_notebook() == path
    notebook = nbformat.read(path, as_version=4)
    (cell,) = notebook.cells
    assert cell.cell_type == "code" and cell.outputs == [] and cell.execution_count is None
    assert "from nexus_ops.ui import console" in cell.source and "def " not in cell.source
    assert notebook.metadata.kernelspec.name == "python3"


def test_an_installed_notebook_is_looked_for_under_share() -> None:
    assert any(p.parts[-3:] == ("nexus-ops", "notebooks", NOTEBOOK) for p in candidate_notebooks())
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"share/nexus-ops/notebooks" = ["notebooks/console.ipynb"]' in pyproject


def test_the_token_is_generated_once_and_kept_private(tmp_path: Path) -> None:
    settings = settings_in(tmp_path)
    first = console_token(settings, None)
    assert len(first) >= 32 and console_token(settings, None) == first
    path = token_file(settings)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert console_token(settings, " given ") == "given"
    with pytest.raises(NexusOpsError, match="--token is empty"):
        console_token(settings, "  ")


def test_a_remote_address_needs_permission_and_a_strong_token(tmp_path: Path) -> None:
    settings = settings_in(tmp_path)
    check_console_bind(settings, "127.0.0.1", "weak", allow_remote=False)
    with pytest.raises(SecurityError, match="not a loopback address"):
        check_console_bind(settings, "0.0.0.0", STRONG, allow_remote=False)
    check_console_bind(settings, "0.0.0.0", STRONG, allow_remote=True)
    with pytest.raises(SecurityError, match="console token"):
        check_console_bind(settings, "0.0.0.0", "weak", allow_remote=True)
    remote = settings_in(tmp_path, NEXUS_ALLOW_REMOTE="true")
    check_console_bind(remote, "0.0.0.0", STRONG, allow_remote=False)


def test_a_taken_port_is_refused_with_what_to_do(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        settings = settings_in(tmp_path, NEXUS_CONSOLE_PORT=str(port))
        with pytest.raises(PortInUse) as caught:
            plan_console(settings, ConsoleOptions())
    assert "--port" in str(caught.value.hint)


def test_a_port_held_by_another_program_is_named_with_its_pid(tmp_path: Path) -> None:
    env = private_env(tmp_path)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = nexus_cli({**env, "NEXUS_CONSOLE_PORT": str(port)}, "console", timeout=60)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"port {port}" in result.stderr and f"pid {os.getpid()}" in result.stderr
    assert f"NEXUS_CONSOLE_PORT (now {port})" in result.stderr
    assert not (Path(env["NEXUS_HOME"]) / "agent.pid").exists(), "no agent was started"


def test_a_console_is_known_by_its_record_and_the_port_it_holds(tmp_path: Path) -> None:
    """The recorded Voila holding the port is this home's console; a stale record is not."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        settings = settings_in(tmp_path, NEXUS_CONSOLE_PORT=str(port))
        prepare_root(settings)
        assert running_console(settings, ConsoleOptions()) is None  # no record
        save_record(console_root(settings) / RECORD, identify(os.getpid()))
        url = running_console(settings, ConsoleOptions())
        assert url == console_url("127.0.0.1", port, token_file(settings).read_text().strip())
        assert running_console(settings, ConsoleOptions(port=free_port())) is None
    assert running_console(settings, ConsoleOptions()) is None  # the port is free again


def test_voila_is_configured_locked_preheated_and_culling(tmp_path: Path) -> None:
    settings = settings_in(tmp_path, NEXUS_CONSOLE_CULL_TIMEOUT="120")
    config = voila_config(settings, ConsoleOptions(), "127.0.0.1", 8866, STRONG)
    assert config["Voila"]["token"] == STRONG and config["Voila"]["port_retries"] == 0
    assert config["Voila"]["base_url"] == "/console/"  # the same path as through the entry
    voila = config["VoilaConfiguration"]
    assert voila["preheat_kernel"] is True and voila["default_pool_size"] == 1
    assert "progressive_rendering" not in voila  # cannot be combined with pre-heating
    assert voila["file_allowlist"] == [re.escape(ASSET)]
    assert voila["multi_kernel_manager_class"] == "nexus_ops.console.ConsoleKernelManager"
    culling = config["MappingKernelManager"]
    assert culling["cull_idle_timeout"] == 120 and culling["cull_interval"] == 30
    assert cull_interval(settings_in(tmp_path), ConsoleOptions(cull_interval=2.0)) == 2.0
    assert console_url("0.0.0.0", 8866, "t") == "http://127.0.0.1:8866/console/?token=t"
    assert console_url("::", 8866, "t") == "http://[::1]:8866/console/?token=t"


def test_the_served_folder_holds_the_notebook_and_one_bundle(tmp_path: Path) -> None:
    settings = settings_in(tmp_path)
    root = prepare_root(settings)
    (root / "plotly-widget-0.0.1.js").write_text("old")
    root = prepare_root(settings)
    assert sorted(p.name for p in root.iterdir()) == sorted([NOTEBOOK, ASSET])
    assert (root / ASSET).stat().st_size == plotly_bundle().stat().st_size
    assert stat.S_IMODE(root.stat().st_mode) == 0o700


def test_pooled_kernels_are_never_culled() -> None:
    async def scenario() -> set[str]:
        async def ready(kernel_id: str) -> dict[str, str]:
            return {"kernel_id": kernel_id}

        async def failed() -> dict[str, str]:
            raise RuntimeError("kernel died")

        manager = ConsoleKernelManager()
        done = asyncio.ensure_future(ready("k1"))
        broken = asyncio.ensure_future(failed())
        pending = asyncio.get_running_loop().create_future()
        await asyncio.sleep(0)
        manager._pools = {"console.ipynb": [done, broken, pending]}  # type: ignore[attr-defined]
        found = manager.pooled_kernels()
        await manager.cull_kernel_if_idle("k1")  # a pooled kernel: returns without looking it up
        pending.cancel()
        return found

    assert asyncio.run(scenario()) == {"k1"}


def test_the_cli_refuses_a_remote_host_before_starting_anything(tmp_path: Path) -> None:
    env = private_env(tmp_path)
    result = nexus_cli(env, "console", "--host", "0.0.0.0", timeout=60)
    assert result.returncode == 1
    assert "not a loopback address" in result.stderr and "NEXUS_ALLOW_REMOTE" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (Path(env["NEXUS_HOME"]) / "agent.pid").exists(), "no agent was started"


def test_the_notebook_runs_in_a_plain_kernel_without_an_agent(tmp_path: Path) -> None:
    """What JupyterLab does: run the cell; the console shows, saying the agent is missing."""
    env = private_env(tmp_path)
    notebook = nbformat.read(ROOT / "notebooks" / NOTEBOOK, as_version=4)
    saved = dict(os.environ)
    try:
        os.environ.clear()
        os.environ.update(env)
        client = NotebookClient(
            notebook,
            timeout=120,
            kernel_name="python3",
            resources={"metadata": {"path": str(tmp_path)}},
        )
        client.execute()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    (output,) = notebook.cells[0].outputs
    assert output.output_type == "execute_result"
    assert "application/vnd.jupyter.widget-view+json" in output.data
    assert not any(o.output_type == "error" for o in notebook.cells[0].outputs)
    assert "Traceback" not in json.dumps(output.data)


def test_make_setup_installs_again_only_when_pyproject_changes(tmp_path: Path) -> None:
    """A second ``make console`` does not pay for pip (``make -n`` shows what would run)."""
    for name in ("Makefile", "pyproject.toml"):
        (tmp_path / name).write_bytes((ROOT / name).read_bytes())
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "python").touch()

    def planned() -> str:
        done = subprocess.run(
            ["make", "-n", "setup"], cwd=tmp_path, capture_output=True, text=True, check=True
        )
        return done.stdout

    assert "pip install" in planned()  # never installed
    (tmp_path / ".venv" / ".installed").touch()
    assert "pip install" not in planned()
    later = time.time() + 5
    os.utime(tmp_path / "pyproject.toml", (later, later))
    assert "pip install" in planned()
