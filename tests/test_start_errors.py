"""Start errors are clear: a .env that is not UTF-8, a NEXUS_HOME that cannot be written."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import private_env

from nexus_ops.config import load_settings
from nexus_ops.errors import ConfigError
from nexus_ops.paths import Layout


def test_a_dotenv_that_is_not_utf8_is_named_with_its_line(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_bytes(b"NEXUS_LOG_LEVEL=INFO\n# caf\xe9 (latin-1)\nNEXUS_AGENT_PORT=1420\n")
    with pytest.raises(ConfigError) as caught:
        load_settings({}, directory=tmp_path)
    text = str(caught.value)
    assert f"{dotenv} is not UTF-8" in text and "offset 26 (line 2)" in text, text
    assert "byte 0xe9" in text and "save" in text and "UTF-8" in text


def test_the_cli_reports_a_bad_dotenv_without_a_traceback(tmp_path: Path) -> None:
    env = private_env(tmp_path / "env")
    (tmp_path / ".env.development").write_bytes(b"NEXUS_LOG_LEVEL=\xff\n")
    result = subprocess.run(
        [sys.executable, "-m", "nexus_ops", "agent", "start"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result
    assert ".env.development is not UTF-8" in result.stderr and "line 1" in result.stderr
    assert "Traceback" not in result.stderr


def read_only_run(home: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``nexus-ops *args`` with ``home`` bind-mounted read-only (a mount namespace of its own)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("unshare is not installed")
    script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" || exit 99; exec "$@"'
    argv = [unshare, "-rm", "sh", "-c", script, str(home), sys.executable, "-m", "nexus_ops"]
    result = subprocess.run(
        [*argv, *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    if result.returncode == 99:
        pytest.skip(f"cannot make a read-only mount here: {result.stderr.strip()}")
    return result


@pytest.mark.parametrize("prepared", [False, True], ids=["empty", "prepared"])
def test_agent_start_on_a_read_only_home_names_the_folder(tmp_path: Path, prepared: bool) -> None:
    env = private_env(tmp_path)
    home = Path(env["NEXUS_HOME"])
    if prepared:  # the folders of an earlier start exist; the disk became read-only since
        Layout(home).ensure()
    result = read_only_run(home, env, "agent", "start")
    assert result.returncode == 1, result
    assert f"NEXUS_HOME {home} cannot be used" in result.stderr, result.stderr
    assert "Read-only file system" in result.stderr and "writable" in result.stderr
    assert "Traceback" not in result.stderr
