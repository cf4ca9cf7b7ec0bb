"""Helpers shared by the backup and recovery tests: a realistic OpenCode tree, and
a ServerControl that runs the real OpenCode binary directly."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import signal
import sqlite3
import subprocess
import tarfile
import time
from pathlib import Path

import httpx
import zstandard

from nexus_ops.backup.archive import sha256_file
from nexus_ops.backup.models import ArchiveInfo, FileEntry, Manifest
from nexus_ops.backup.repository import BackupRepository
from nexus_ops.backup.sources import OpenCodeLocations
from nexus_ops.errors import OpenCodeUnavailable


def make_opencode_tree(root: Path, sessions: int = 3) -> OpenCodeLocations:
    """Config and data folders shaped like OpenCode's, with a WAL database."""
    locations = OpenCodeLocations(root / "config" / "opencode", root / "data" / "opencode")
    config, data = locations.config_dir, locations.data_dir
    (config / "node_modules" / "@opencode-ai" / "plugin").mkdir(parents=True)
    (config / "node_modules" / "@opencode-ai" / "plugin" / "index.js").write_text("x" * 1000)
    (config / "opencode.jsonc").write_text('{"$schema": "https://opencode.ai/config.json"}')
    (config / "package.json").write_text("{}")
    (data / "log").mkdir(parents=True)
    (data / "log" / "opencode.log").write_text("INFO started\n" * 50)
    (data / "snapshot" / "proj").mkdir(parents=True)
    (data / "snapshot" / "proj" / "HEAD").write_text("ref: refs/heads/main\n")
    (data / "auth.json").write_text("{}")
    (data / "auth.json").chmod(0o600)
    conn = sqlite3.connect(data / "opencode.db")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE session (id TEXT PRIMARY KEY, title TEXT)")
    conn.executemany(
        "INSERT INTO session VALUES (?, ?)",
        [(f"ses_{i:03d}", f"session {i}") for i in range(sessions)],
    )
    conn.commit()
    conn.close()
    return locations


def tree_digest(folder: Path, skip: tuple[str, ...] = ("node_modules",)) -> dict[str, str]:
    """relative path -> sha256 (or 'dir'/'link:target') of everything under ``folder``."""
    found: dict[str, str] = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if any(part in skip for part in path.relative_to(folder).parts):
            continue
        if path.is_symlink():
            found[rel] = f"link:{os.readlink(path)}"
        elif path.is_dir():
            found[rel] = "dir"
        else:
            found[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def open_tar(archive: Path) -> tarfile.TarFile:
    """A backup archive (tar.zst) opened for random access, as a test inspects it."""
    with archive.open("rb") as raw:
        data = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True).read()
    return tarfile.open(fileobj=io.BytesIO(data))


def evil_archive(path: Path) -> list[str]:
    """A tar.gz with every kind of unsafe member; returns their names."""
    names = []
    with tarfile.open(path, "w:gz") as tar:

        def add(info: tarfile.TarInfo, data: bytes = b"") -> None:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)
            names.append(info.name)

        add(tarfile.TarInfo("data/ok.txt"), b"fine")
        add(tarfile.TarInfo("data/../../escaped.txt"), b"evil")
        add(tarfile.TarInfo("/tmp/absolute-evil.txt"), b"evil")
        link = tarfile.TarInfo("data/link")
        link.type, link.linkname = tarfile.SYMTYPE, "../../../etc"
        add(link)
        through = tarfile.TarInfo("data/link/passwd")
        add(through, b"evil")
        device = tarfile.TarInfo("data/null")
        device.type, device.devmajor, device.devminor = tarfile.CHRTYPE, 1, 3
        add(device)
        hard = tarfile.TarInfo("data/hard")
        hard.type, hard.linkname = tarfile.LNKTYPE, "/etc/passwd"
        add(hard)
    return names


Member = tuple[tarfile.TarInfo, bytes]


def member(
    name: str, data: bytes = b"", *, kind: bytes = tarfile.REGTYPE, **fields: object
) -> Member:
    """A tar member (``kind`` REGTYPE, DIRTYPE or SYMTYPE with ``linkname=``) and its bytes."""
    info = tarfile.TarInfo(name)
    info.type, info.size, info.mtime = kind, len(data), 1_700_000_000
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    for key, value in fields.items():
        setattr(info, key, value)
    return info, data


def write_backup(repo: BackupRepository, backup_id: str, members: list[Member]) -> None:
    """Put a backup made of ``members`` in ``repo`` with a manifest that describes it exactly
    (sizes, checksums, link targets, the archive's own checksum): only a check of the
    members themselves can refuse it."""
    repo.folder.mkdir(parents=True, exist_ok=True)
    archive = repo.archive_path(backup_id)
    plain = io.BytesIO()
    with tarfile.open(fileobj=plain, mode="w") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    archive.write_bytes(zstandard.ZstdCompressor().compress(plain.getvalue()))  # as create does
    kinds = {tarfile.DIRTYPE: "dir", tarfile.SYMTYPE: "symlink"}
    files = [
        FileEntry(
            path=info.name,
            type=kinds.get(info.type, "file"),  # type: ignore[arg-type]
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest() if info.isreg() else "",
            mode=info.mode,
            mtime=info.mtime,
            target=info.linkname if info.issym() else None,
        )
        for info, data in members
    ]
    parts = {info.name.split("/", 1)[0] for info, _ in members}
    manifest = Manifest(
        id=backup_id,
        created=time.time(),
        host="crafted",
        sources={part: f"/crafted/{part}" for part in parts},
        files=files,
        archive=ArchiveInfo(
            name=archive.name, size=archive.stat().st_size, sha256=sha256_file(archive)
        ),
    )
    repo.manifest_path(backup_id).write_text(manifest.model_dump_json())


def chained_link_escape(outside: Path, ups: int = 20) -> list[Member]:
    """Members that each look safe alone but together write into ``outside`` (an absolute
    folder) and make it 0777: ``d/up`` is ``..`` (lexically inside ``data``), ``esc`` goes
    ``d/up`` then ``..`` ``ups`` times (lexically ``data`` again, really ``/``), and the
    members named ``data/./esc/<outside>`` go through ``esc`` without naming it."""
    hop = "/".join(["d", "up"] * ups)
    through = "data/./esc" + str(outside)
    return [
        member("data", kind=tarfile.DIRTYPE),
        member("data/d", kind=tarfile.DIRTYPE),
        member("data/d/up", kind=tarfile.SYMTYPE, linkname=".."),
        member("data/esc", kind=tarfile.SYMTYPE, linkname=hop + "/.." * ups),
        member(through, kind=tarfile.DIRTYPE, mode=0o777),
        member(through + "/pwned.txt", b"written outside the target"),
    ]


class DirectServer:
    """A ServerControl that runs ``opencode serve`` itself (for restore tests without an agent)."""

    def __init__(self, binary: Path, env: dict[str, str], port: int, password: str) -> None:
        self.binary, self.env, self.port, self.password = binary, env, port, password
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        env = {**self.env, "OPENCODE_SERVER_PASSWORD": self.password}
        log = Path(env["HOME"]) / "opencode-direct.log"
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [str(self.binary), "serve", "--hostname", "127.0.0.1", "--port", str(self.port)],
                env=env,
                cwd=env["HOME"],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.starts += 1

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise OpenCodeUnavailable("the server exited")
            with contextlib.suppress(httpx.HTTPError):
                response = self.get("/global/health")
                if response.status_code == 200 and response.json().get("healthy"):
                    return
            time.sleep(0.2)
        raise OpenCodeUnavailable(f"no healthy answer within {timeout:g} s")

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.url + path, auth=("opencode", self.password), timeout=2.0)

    def post(self, path: str, body: object) -> httpx.Response:
        return httpx.post(
            self.url + path, json=body, auth=("opencode", self.password), timeout=10.0
        )


def prepare_opencode_config(binary: Path, root: Path, timeout: float = 180.0) -> Path:
    """Run OpenCode once so that it installs its plugin; return its config folder.

    OpenCode installs ``@opencode-ai/plugin`` from npm into the config folder on its
    first session (64 MB). Tests copy the prepared folder instead of paying that.
    """
    from conftest import free_port, private_env

    env = private_env(root)
    server = DirectServer(binary, env, free_port(), "prepare")
    server.start()
    try:
        server.wait_healthy(60)
        server.post("/session", {}).raise_for_status()
        plugin = Path(env["XDG_CONFIG_HOME"]) / "opencode" / "node_modules" / "@opencode-ai"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not (plugin / "plugin" / "package.json").exists():
            time.sleep(0.5)
        time.sleep(1.0)  # let npm finish writing its lock files
    finally:
        server.stop()
    return Path(env["XDG_CONFIG_HOME"]) / "opencode"


def install_config(template: Path, env: dict[str, str]) -> None:
    """Give a private environment the prepared OpenCode config.

    The plugin cache is hard-linked (instant; npm replaces files rather than
    rewriting them), everything else copied, so a test never changes the template.
    """
    import shutil

    def link_or_copy(src: str, dst: str) -> object:
        if "node_modules" in Path(src).parts:
            return os.link(src, dst)
        return shutil.copy2(src, dst)

    target = Path(env["XDG_CONFIG_HOME"]) / "opencode"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(template, target, symlinks=True, copy_function=link_or_copy)
