"""The ``nexus-ops pair`` and ``nexus-ops devices`` commands: remote devices, through the agent.

``pair`` prints a one-time code, its link and a QR code of the link (scan it with the
phone's camera); ``devices`` lists the paired devices and revokes them.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from collections.abc import Callable
from typing import TypeAlias

import segno

from nexus_ops.client import AgentClient
from nexus_ops.store.devices import Device

Groups: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
Connect = Callable[[], AgentClient]


def _when(stamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(stamp)) if stamp else "never"


def terminal_qr(text: str) -> str:
    """A QR code of ``text`` drawn with block characters, for a terminal."""
    out = io.StringIO()
    segno.make(text, error="m").terminal(out=out, compact=True, border=2)
    return out.getvalue()


def remote_commands(connect: Connect) -> Callable[[Groups], None]:
    """The command groups, their handlers talking to the agent of ``connect()``."""

    def register(groups: Groups) -> None:
        pair = groups.add_parser(
            "pair", help="a one-time code (and its QR code) that pairs a phone or laptop"
        )
        pair.add_argument("--name", help="name of the device to pair (else the browser's)")
        pair.add_argument("--json", action="store_true", help="print JSON (no QR code)")
        pair.set_defaults(handler=lambda args: pair_device(connect, args))
        devices = groups.add_parser("devices", help="the paired devices; revoke them")
        devices.add_argument("--json", action="store_true", help="print JSON")
        devices.set_defaults(handler=lambda args: list_devices(connect, args))
        sub = devices.add_subparsers(title="actions", metavar="ACTION")
        revoke = sub.add_parser("revoke", help="end a device's session (or every one) at once")
        which = revoke.add_mutually_exclusive_group(required=True)
        which.add_argument("id", nargs="?", help="device id (`nexus-ops devices`)")
        which.add_argument("--all", action="store_true", help="every paired device")
        revoke.set_defaults(handler=lambda args: revoke_devices(connect, args))

    return register


def pair_device(connect: Connect, args: argparse.Namespace) -> int:
    with connect() as client:
        made = client.create_pairing(args.name)
    if args.json:
        print(json.dumps(made.model_dump(), indent=2, sort_keys=True))
        return 0
    print(terminal_qr(made.link), end="")
    print(f"link:    {made.link}")
    print(f"code:    {made.code}")
    print(f"expires: {_when(made.expires_at)} (works once)")
    print("Scan the QR code with the device, or open the entry's /_nexus/pair and type the code.")
    return 0


def list_devices(connect: Connect, args: argparse.Namespace) -> int:
    with connect() as client:
        found = client.devices()
    if args.json:
        print(json.dumps([d.model_dump() for d in found], indent=2, sort_keys=True))
        return 0
    if not found:
        print("no paired devices (pair one with `nexus-ops pair`)")
        return 0
    print(f"{'id':<12}  {'name':<24}  {'address':<16}  {'created':<16}  {'last use':<16}  expires")
    for device in found:
        print(describe_device(device))
    return 0


def describe_device(device: Device) -> str:
    return (
        f"{device.id:<12}  {device.name[:24]:<24}  {device.address or '-':<16}  "
        f"{_when(device.created):<16}  {_when(device.last_used):<16}  {_when(device.expires)}"
    )


def revoke_devices(connect: Connect, args: argparse.Namespace) -> int:
    with connect() as client:
        if args.all:
            ended = client.revoke_all_devices()
            print(f"revoked {len(ended)} device(s){': ' + ', '.join(ended) if ended else ''}")
            return 0
        device = client.revoke_device(args.id)
    print(f"revoked {device.id} ({device.name}): its next request through the entry fails")
    return 0
