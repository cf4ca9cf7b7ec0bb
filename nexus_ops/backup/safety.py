"""Refusing archive members that could write outside the restore target.

Every member is checked before anything is written: absolute names, ``..``
components, members that pass through a link, links whose target leaves their
part of the tree, hard links (nexus-ops never writes them), devices, pipes and
anything but files, folders and symbolic links. Tar archives from elsewhere are
therefore refused as a whole rather than half extracted.

>>> import tarfile
>>> evil = tarfile.TarInfo("../etc/passwd")
>>> unsafe_members([evil])
['../etc/passwd: leaves the target (a .. component)']
"""

from __future__ import annotations

import posixpath
import tarfile
from collections.abc import Iterable

from nexus_ops.backup.models import PARTS
from nexus_ops.errors import UnsafeArchive

MANIFEST_MEMBER = "MANIFEST.json"
_ALLOWED_TOP = {*PARTS, MANIFEST_MEMBER}


def unsafe_members(members: Iterable[tarfile.TarInfo]) -> list[str]:
    """A line per unsafe member: its name and why; empty when all are safe."""
    checker = MemberChecker()
    return [problem for member in members if (problem := checker.check(member))]


class MemberChecker:
    """Checks members one by one, in archive order (it remembers the links seen)."""

    def __init__(self) -> None:
        self._links: dict[str, str] = {}

    def check(self, member: tarfile.TarInfo) -> str | None:
        """``'name: why'`` when ``member`` is unsafe, else None."""
        reason = _problem(member, self._links)
        if member.issym():
            self._links[member.name.rstrip("/")] = member.linkname
        return f"{member.name}: {reason}" if reason else None


def _problem(member: tarfile.TarInfo, links: dict[str, str]) -> str | None:
    name = member.name
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return "is an absolute path"
    parts = name.rstrip("/").split("/")
    if ".." in parts:
        return "leaves the target (a .. component)"
    if "" in parts or "." in parts or "\x00" in name:
        return "has an empty or invalid path component"
    if parts[0] not in _ALLOWED_TOP:
        return f"is outside the known parts ({', '.join(sorted(_ALLOWED_TOP))})"
    for depth in range(1, len(parts) + 1):
        if (link := "/".join(parts[:depth])) in links:
            return f"passes through the link {link}"
    if member.islnk():
        return "is a hard link (never written by nexus-ops)"
    if member.issym():
        return _link_problem(name, member.linkname, links)
    if not (member.isreg() or member.isdir()):
        return "is a device, pipe or other special file"
    return None


def _link_problem(name: str, target: str, links: dict[str, str]) -> str | None:
    if target.startswith("/"):
        return f"links to the absolute path {target}"
    part = name.split("/", 1)[0]
    resolved = _resolve(posixpath.dirname(name).split("/") + target.split("/"), links)
    if resolved is None or resolved[:1] != [part]:
        return f"links to {target}, outside its part {part}/"
    return None


def _resolve(parts: list[str], links: dict[str, str], hops: int = 0) -> list[str] | None:
    """The components ``parts`` lead to, following the links seen so far; None when they
    leave the archive's root (or loop)."""
    done: list[str] = []
    for index, component in enumerate(parts):
        if component in ("", "."):
            continue
        if component == "..":
            if not done:
                return None
            done.pop()
            continue
        done.append(component)
        target = links.get("/".join(done))
        if target is not None:
            if target.startswith("/") or hops > 40:
                return None
            rest = done[:-1] + target.split("/") + parts[index + 1 :]
            return _resolve(rest, links, hops + 1)
    return done


def check_archive(members: Iterable[tarfile.TarInfo], source: str) -> None:
    """Raise UnsafeArchive naming every unsafe member of ``source``."""
    problems = unsafe_members(members)
    if problems:
        shown = "\n".join(f"  - {p}" for p in problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise UnsafeArchive(
            f"{source} holds {len(problems)} unsafe member(s); nothing was written:\n{shown}{more}",
            hint="restore only archives written by `nexus-ops backup create`",
        )
