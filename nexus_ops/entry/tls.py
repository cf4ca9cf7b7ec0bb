"""The entry's TLS: its host names, the local CA's files, the operator's own certificate.

Caddy's ``internal`` issuer (its pki app) creates a root CA once, under the entry's
data folder, and an intermediate that signs a short-lived leaf for each name of the
entry; Caddy renews the leaves before they expire by itself. Devices trust the
root (``nexus-ops entry ca`` prints its path and fingerprint).

>>> fingerprint_of(b"x")[:11]
'2D:71:16:42'
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import socket
import ssl
import stat
from dataclasses import dataclass
from pathlib import Path

from nexus_ops.config import Settings
from nexus_ops.errors import ConfigError
from nexus_ops.paths import Layout
from nexus_ops.process import host_addresses

CA_NAME = "local"  # the pki app's default authority, the one `tls internal` uses


@dataclass(frozen=True)
class EntryFiles:
    """Where the entry's files live under ``$NEXUS_HOME/entry/``.

    >>> EntryFiles(Path("/nx/entry")).root_cert
    PosixPath('/nx/entry/data/caddy/pki/authorities/local/root.crt')
    """

    folder: Path

    @classmethod
    def of(cls, settings: Settings) -> EntryFiles:
        return cls(Layout(settings.home).entry)

    @property
    def config(self) -> Path:
        return self.folder / "caddy.json"

    @property
    def data(self) -> Path:
        """Caddy's XDG_DATA_HOME: it keeps ``caddy/`` (CA, certificates) in it."""
        return self.folder / "data"

    @property
    def xdg_config(self) -> Path:
        return self.folder / "config"

    @property
    def pidfile(self) -> Path:
        return self.folder / "caddy.pid"

    @property
    def authority(self) -> Path:
        return self.data / "caddy" / "pki" / "authorities" / CA_NAME

    @property
    def root_cert(self) -> Path:
        return self.authority / "root.crt"

    @property
    def ca_keys(self) -> list[Path]:
        return [self.authority / "root.key", self.authority / "intermediate.key"]

    def leaf_cert(self, name: str) -> Path:
        return self.data / "caddy" / "certificates" / CA_NAME / name / f"{name}.crt"


def entry_names(settings: Settings) -> list[str]:
    """NEXUS_ENTRY_HOSTS, or this host's name, localhost, 127.0.0.1 and its addresses."""
    given = [name for name in settings.entry_hosts.split(",") if name]
    if given:
        return given
    names = [socket.gethostname(), "localhost", "127.0.0.1", *host_addresses()]
    return list(dict.fromkeys(name for name in names if name))


def tls_mode(settings: Settings) -> str:
    """``internal`` (the local CA), ``own`` (NEXUS_ENTRY_CERT) or ``off`` (behind a proxy)."""
    if settings.entry_tls == "off":
        return "off"
    return "own" if settings.entry_cert is not None else "internal"


def entry_bind(settings: Settings) -> str:
    """NEXUS_ENTRY_BIND, else every interface (loopback only when TLS is off)."""
    if settings.entry_bind is not None:
        return settings.entry_bind
    return "127.0.0.1" if settings.entry_tls == "off" else "0.0.0.0"  # noqa: S104


def check_tls_settings(settings: Settings) -> None:
    """Refuse an incomplete pair, unreadable files, or a key that others can read."""
    cert, key = settings.entry_cert, settings.entry_key
    if cert is None and key is None:
        return
    if settings.entry_tls == "off":
        raise ConfigError(
            "NEXUS_ENTRY_CERT/NEXUS_ENTRY_KEY are set with NEXUS_ENTRY_TLS=off",
            hint="a certificate is only served with TLS on: drop them, or set NEXUS_ENTRY_TLS=on",
        )
    if cert is None or key is None:
        given, missing = ("NEXUS_ENTRY_CERT", "NEXUS_ENTRY_KEY")
        if cert is None:
            given, missing = missing, given
        raise ConfigError(
            f"{given} is set but {missing} is not",
            hint="the entry's own certificate needs both files: set both, or neither "
            "(then the local CA's certificate is served)",
        )
    for variable, path in (("NEXUS_ENTRY_CERT", cert), ("NEXUS_ENTRY_KEY", key)):
        _check_pem(variable, path)
    mode = stat.S_IMODE(key.stat().st_mode)
    if mode & 0o077:
        raise ConfigError(
            f"NEXUS_ENTRY_KEY={key} can be read by other users (mode {mode:04o})",
            hint=f"run `chmod 600 {key}` (a private key is for this user alone)",
        )


def _check_pem(variable: str, path: Path) -> None:
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not a PEM text file"
        raise ConfigError(
            f"{variable}={path} cannot be read: {reason}",
            hint=f"point {variable} at a PEM file readable by this user",
        ) from exc
    if "-----BEGIN " not in text:
        raise ConfigError(
            f"{variable}={path} is not a PEM file (no -----BEGIN line)",
            hint="give the certificate chain and its key in PEM form (what certbot writes)",
        )


def fix_ca_key_modes(files: EntryFiles) -> list[str]:
    """Make the CA's keys 0600 where they are not; what was changed, as lines to show."""
    fixed = []
    for key in files.ca_keys:
        with contextlib.suppress(FileNotFoundError):
            mode = stat.S_IMODE(key.stat().st_mode)
            if mode != 0o600:
                key.chmod(0o600)
                fixed.append(f"{key}: mode {mode:04o} made 0600")
    return fixed


def fingerprint_of(der: bytes) -> str:
    """SHA-256 fingerprint, as browsers and phones show it (colon-separated hex)."""
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def pem_der(path: Path) -> bytes:
    """The first certificate of a PEM file, as DER."""
    text = path.read_text(encoding="ascii")
    begin = text.index("-----BEGIN CERTIFICATE-----")
    end = text.index("-----END CERTIFICATE-----", begin) + len("-----END CERTIFICATE-----")
    return ssl.PEM_cert_to_DER_cert(text[begin:end])


def not_after(der: bytes) -> dt.datetime:
    """When a DER certificate expires (its validity's notAfter), in UTC."""
    certificate = _children(der)[0][1]  # Certificate: tbsCertificate, algorithm, signature
    tbs = _children(_children(certificate)[0][1])
    fields = tbs[1:] if tbs[0][0] == 0xA0 else tbs  # skip the explicit [0] version
    validity = _children(fields[3][1])  # serial, signature, issuer, validity
    tag, value = validity[1]
    text = value.decode("ascii")
    form = "%y%m%d%H%M%SZ" if tag == 0x17 else "%Y%m%d%H%M%SZ"  # UTCTime or GeneralizedTime
    return dt.datetime.strptime(text, form).replace(tzinfo=dt.UTC)


def _children(data: bytes) -> list[tuple[int, bytes]]:
    """(tag, content) of each DER element in ``data`` (definite lengths only)."""
    found, at = [], 0
    while at < len(data):
        tag, size = data[at], data[at + 1]
        at += 2
        if size & 0x80:
            count = size & 0x7F
            size = int.from_bytes(data[at : at + count], "big")
            at += count
        found.append((tag, data[at : at + size]))
        at += size
    return found


def served_certificate(host: str, port: int, name: str, timeout: float = 2.0) -> bytes | None:
    """The leaf (DER) the entry serves to ``name``; None when it does not answer TLS."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # only read: expiry is reported, not trusted
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=name) as tls,
        ):
            return tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError):
        return None
