"""`pytest --nbval-lax runbooks/`: every runbook runs with its defaults, offline, no agent.

Run in a subprocess with a private HOME and NEXUS_HOME, as CI runs it, so that the
defaults are shown to be safe (nothing is written) and to end in a verdict.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import private_env

ROOT = Path(__file__).resolve().parent.parent


def test_every_runbook_passes_nbval_with_its_defaults(tmp_path: Path) -> None:
    env = private_env(tmp_path)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--nbval-lax",
            "-p",
            "no:cacheprovider",
            "-q",
            "--rootdir",
            str(ROOT / "runbooks"),
            str(ROOT / "runbooks"),
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "failed" not in done.stdout
    # The defaults are dry runs: no backup, no run record, no database appeared.
    nexus = Path(env["NEXUS_HOME"])
    assert not (nexus / "backups").exists() or not any((nexus / "backups").iterdir())
    assert not (nexus / "nexus.db").exists()
