"""A live restore killed half-way (kill -9) is settled by the next agent: rolled back
before the swap, finished after it, leftovers removed, desired state put back."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from backup_helpers import install_config, make_opencode_tree, tree_digest
from conftest import RunningAgent, start_agent, wait_for
from test_recovery_real import OpenCode

from nexus_ops.backup.restore_state import (
    RECORD_NAME,
    RestoreRecord,
    Swap,
    load_record,
    settle,
)
from nexus_ops.errors import NexusOpsError

# ---- settling, on real folders, at every point of a swap -------------------------------


def staged_swap(root: Path) -> tuple[Swap, dict[str, str], dict[str, str]]:
    old = make_opencode_tree(root / "old", sessions=2).data_dir
    new = make_opencode_tree(root / "new", sessions=5).data_dir
    (old / "node_modules").mkdir()
    (old / "node_modules" / "cache.js").write_text("cached")
    live, staged = root / "opencode", root / ".opencode.data.restore-b1"
    old.rename(live)
    new.rename(staged)
    swap = Swap(live=live, staged=staged, aside=root / ".opencode.data.pre-restore-b1")
    return swap, tree_digest(live), tree_digest(staged)


def interrupted_swap(swap: Swap, renames: int) -> None:
    """What :meth:`Swap.swap` had done when the process was killed after ``renames``."""
    if renames >= 1:
        swap.live.rename(swap.aside)
    if renames >= 2:
        swap.staged.rename(swap.live)
    if renames >= 3:
        (swap.aside / "node_modules").rename(swap.live / "node_modules")


@pytest.mark.parametrize("renames", [0, 1, 2, 3])
def test_an_interrupted_swap_is_rolled_back_to_the_old_folder(tmp_path: Path, renames: int) -> None:
    swap, old, _ = staged_swap(tmp_path)
    interrupted_swap(swap, renames)
    record = RestoreRecord(backup_id="b1", parts=["data"], swaps=[swap], step="swapping")
    settled = settle(record, None)
    assert settled.action == "rolled back"
    assert tree_digest(swap.live) == old
    assert (swap.live / "node_modules" / "cache.js").read_text() == "cached"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new", "old", "opencode"]


def test_a_restore_interrupted_after_the_swap_is_finished(tmp_path: Path) -> None:
    swap, _, new = staged_swap(tmp_path)
    interrupted_swap(swap, 2)  # killed before the caches were carried over
    record = RestoreRecord(backup_id="b1", parts=["data"], swaps=[swap], step="starting")
    settled = settle(record, None)
    assert settled.action == "finished"
    assert tree_digest(swap.live) == new
    assert (swap.live / "node_modules" / "cache.js").read_text() == "cached"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new", "old", "opencode"]


def test_a_folder_that_did_not_exist_is_removed_again_by_a_roll_back(tmp_path: Path) -> None:
    swap, _, _ = staged_swap(tmp_path)
    swap.live.rename(tmp_path / "elsewhere")
    swap = swap.model_copy(update={"live_existed": False})
    swap.staged.rename(swap.live)
    settle(RestoreRecord(backup_id="b1", parts=["data"], swaps=[swap], step="swapping"), None)
    assert not swap.live.exists() and not swap.staged.exists()


# ---- kill -9 of a real agent during a real restore ---------------------------------------


@pytest.fixture
def loaded(nexus_env: dict[str, str], opencode_config: Path) -> Iterator[RunningAgent]:
    """An agent whose healthy server holds sessions and a 32 MB incompressible snapshot."""
    install_config(opencode_config, nexus_env)
    running = start_agent(nexus_env)
    assert running.client.start().ok
    snapshot = Path(nexus_env["XDG_DATA_HOME"]) / "opencode" / "snapshot"
    snapshot.mkdir(parents=True, exist_ok=True)
    (snapshot / "pack.bin").write_bytes(os.urandom(32 << 20))  # makes each step last a while
    yield running
    running.client.close()


def restore_in_background(agent: RunningAgent, backup_id: str) -> None:
    def call() -> None:
        with contextlib.suppress(NexusOpsError):  # the agent is killed under it
            agent.client.restore_backup(backup_id, parts=["data"])

    threading.Thread(target=call, daemon=True).start()


def leftovers(env: dict[str, str]) -> list[str]:
    data_home = Path(env["XDG_DATA_HOME"])
    backups = Path(env["NEXUS_HOME"]) / "backups"
    found = [p.name for p in data_home.iterdir() if p.name != "opencode"]
    found += [p.name for p in backups.iterdir() if p.name.startswith(".") and p.name != ".lock"]
    return found


@pytest.mark.opencode
@pytest.mark.parametrize(("step", "action"), [("keeping", "rolled back"), ("starting", "finished")])
def test_an_agent_killed_during_a_restore_is_settled_by_the_next_one(
    loaded: RunningAgent, step: str, action: str
) -> None:
    oc = OpenCode(loaded.env)
    at_backup = {oc.new_session()}
    backup = loaded.client.create_backup()
    after = at_backup | {oc.new_session()}  # only in the live data, not in the backup
    record = Path(loaded.env["NEXUS_HOME"]) / "backups" / RECORD_NAME
    restore_in_background(loaded, backup.id)
    wait_for(
        lambda: json.loads(record.read_bytes())["step"] == step, timeout=120, interval=0.01,
        what=f"the restore to reach the {step!r} step",
    )  # fmt: skip
    loaded.proc.send_signal(signal.SIGKILL)
    loaded.proc.wait(timeout=20)
    assert leftovers(loaded.env), "nothing was left to settle: the kill came too late"

    again = start_agent(loaded.env)
    try:
        assert load_record(record.parent) is None
        assert leftovers(loaded.env) == []
        wait_for(lambda: again.client.status().healthy, timeout=90, what="the server to run")
        assert again.client.status().desired == "running"
        assert oc.sessions() == (after if action == "rolled back" else at_backup)
        events = again.client.events(kinds=["restore_interrupted"])
        assert [e.details["action"] for e in events] == [action]
        assert events[0].details["step"] == step and backup.id in events[0].message
    finally:
        again.client.close()
        again.stop()
