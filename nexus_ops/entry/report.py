"""What the entry is: on or off, its TLS, its certificate's expiry, where it listens.

``nexus-ops entry status`` and ``nexus-ops entry ca`` print these;
``nexus-ops security check`` grades them (:func:`nexus_ops.security.posture.entry`).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from nexus_ops.config import Settings
from nexus_ops.entry.tls import (
    EntryFiles,
    entry_bind,
    entry_names,
    fingerprint_of,
    not_after,
    pem_der,
    served_certificate,
    tls_mode,
)
from nexus_ops.errors import NexusOpsError
from nexus_ops.process import find_live, load_record

EXPIRY_WARNING = dt.timedelta(days=14)  # an own certificate this close to its end: warn


@dataclass(frozen=True)
class EntryState:
    """The entry as the settings and the files say, and what it serves now."""

    on: bool
    tls: str  # internal, own, off
    bind: str
    port: int
    names: list[str]
    pid: int | None
    expires: dt.datetime | None  # of the leaf served, else of the certificate file
    expiry_source: str  # "served", a file's path, or "" (nothing to read yet)

    @property
    def urls(self) -> list[str]:
        scheme = "http" if self.tls == "off" else "https"
        return [f"{scheme}://{_url_host(name)}:{self.port}/" for name in self.names]

    def lines(self) -> list[str]:
        lines = [
            f"entry: {'on' if self.on else 'off (NEXUS_ENTRY=on turns it on)'}",
            f"tls: {_TLS_SHOWN[self.tls]}",
            f"listens on: {self.bind}:{self.port}",
            f"caddy: {'running, pid ' + str(self.pid) if self.pid else 'not running'}",
        ]
        if self.expires is not None:
            lines.append(
                f"certificate expires: {self.expires:%Y-%m-%d %H:%M} UTC ({self.expiry_source})"
            )
        lines += [f"url: {url}" for url in self.urls]
        return lines


_TLS_SHOWN = {
    "internal": "on, certificates of the local CA (nexus-ops entry ca)",
    "own": "on, the certificate of NEXUS_ENTRY_CERT",
    "off": "off: only behind a proxy that terminates TLS",
}


def _url_host(name: str) -> str:
    return f"[{name}]" if ":" in name else name


def entry_state(settings: Settings) -> EntryState:
    files = EntryFiles.of(settings)
    record = load_record(files.pidfile)
    pid = record.pid if record is not None and find_live(record) is not None else None
    names = entry_names(settings)
    mode = tls_mode(settings)
    expires, source = _expiry(settings, files, names, mode, pid is not None)
    return EntryState(
        on=settings.entry,
        tls=mode,
        bind=entry_bind(settings),
        port=settings.entry_port,
        names=names,
        pid=pid,
        expires=expires,
        expiry_source=source,
    )


def _expiry(
    settings: Settings, files: EntryFiles, names: list[str], mode: str, running: bool
) -> tuple[dt.datetime | None, str]:
    if mode == "off":
        return None, ""
    if running:
        dial = "127.0.0.1" if entry_bind(settings) in ("0.0.0.0", "::") else entry_bind(settings)  # noqa: S104
        der = served_certificate(dial, settings.entry_port, names[0])
        if der is not None:
            return not_after(der), "served"
    path = settings.entry_cert if mode == "own" else files.leaf_cert(names[0])
    try:
        return not_after(pem_der(path)) if path else None, str(path)
    except (OSError, ValueError):
        return None, ""


@dataclass(frozen=True)
class RootCA:
    path: Path
    fingerprint: str
    expires: dt.datetime


def root_ca(settings: Settings) -> RootCA:
    """The local CA's root certificate, which devices trust; raise when there is none yet."""
    path = EntryFiles.of(settings).root_cert
    try:
        der = pem_der(path)
    except FileNotFoundError:
        raise NexusOpsError(
            f"the entry's local CA does not exist yet ({path})",
            hint="start the agent with NEXUS_ENTRY=on once: Caddy creates the CA at its first "
            "start (NEXUS_ENTRY_TLS=on, no NEXUS_ENTRY_CERT)",
        ) from None
    return RootCA(path, fingerprint_of(der), not_after(der))
