"""The Devices panel: pair a phone or laptop (a QR code and a code), list and revoke devices.

The code is shown once, when an operator presses "Pair a device"; the agent keeps only
its hash.

>>> # panel = DevicesPanel(PanelContext(client=AgentClient.from_settings(settings)))
>>> # panel.pair(); panel.refresh(); panel.widget
"""

from __future__ import annotations

import time
from typing import Protocol, cast

import ipywidgets as widgets

from nexus_ops.entry.pairing import PairingCode
from nexus_ops.store.devices import Device
from nexus_ops.ui.base import Panel, PanelContext, table_html
from nexus_ops.ui.server import qr_svg
from nexus_ops.ui.style import esc


class DevicesAgent(Protocol):
    """What the panel asks of the agent (:class:`nexus_ops.client.AgentClient` has it)."""

    def devices(self) -> list[Device]: ...

    def create_pairing(self, name: str | None = None) -> PairingCode: ...

    def revoke_device(self, device_id: str) -> Device: ...


def _when(stamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(stamp)) if stamp else "never"


def pairing_html(made: PairingCode) -> str:
    """The QR code of the link, the code to type, and until when it works."""
    return (
        f"<div class='nx-pair-qr'>{qr_svg(made.link, scale=5)}</div>"
        "<div>Code: <code class='nx-pair-code' style='font-size:1.6em;letter-spacing:.12em'>"
        f"{esc(made.code)}</code></div>"
        f"<div class='nx-muted'>Scan it with the device, or open <code>{esc(made.link)}</code>"
        f". It works once, until {esc(_when(made.expires_at))}.</div>"
    )


def devices_html(devices: list[Device]) -> str:
    if not devices:
        return "<p class='nx-muted'>No paired devices.</p>"
    rows = [
        [esc(d.id), esc(d.name), esc(d.address or "-"), esc(_when(d.created)),
         esc(_when(d.last_used)), esc(_when(d.expires))]
        for d in devices
    ]  # fmt: skip
    labels = ["id", "name", "address", "created", "last use", "expires"]
    return table_html(labels, rows, "nx-devices-table")


class DevicesPanel(Panel[list[Device]]):
    """Paired devices, and the button that pairs another one."""

    title = "Devices"
    interval = 5.0
    css = "nx-devices"

    def __init__(self, ctx: PanelContext) -> None:
        self.devices: list[Device] = []
        super().__init__(ctx)

    @property
    def agent(self) -> DevicesAgent:
        return cast(DevicesAgent, self.ctx.client)

    def build(self) -> widgets.Widget:
        self.pair_button = widgets.Button(description="Pair a device", icon="qrcode")
        self.pair_button.add_class("nx-pair")
        self.pair_button.on_click(self.guarded(self.pair))
        self.pairing = widgets.HTML()
        self.pairing.add_class("nx-pairing")
        self.table = widgets.HTML(devices_html([]))
        self.table.add_class("nx-devices-view")
        self.choice = widgets.Dropdown(options=[], description="Device", layout={"width": "320px"})
        self.choice.add_class("nx-device-choice")
        self.revoke_button = widgets.Button(
            description="Revoke", icon="ban", button_style="danger", disabled=True
        )
        self.revoke_button.add_class("nx-revoke")
        self.revoke_button.on_click(self.guarded(self.revoke))
        revoke = widgets.HBox([self.choice, self.revoke_button])
        heading = widgets.HTML("<div class='nx-section'>Paired devices</div>")
        return widgets.VBox([self.pair_button, self.pairing, heading, self.table, revoke])

    def fetch(self) -> list[Device]:
        return self.agent.devices()

    def show(self, data: list[Device]) -> None:
        self.devices = data
        html = devices_html(data)
        if html != self.table.value:
            self.table.value = html
        options = [(f"{d.name} ({d.id})", d.id) for d in data]
        if options != list(self.choice.options):
            chosen = self.choice.value
            self.choice.options = options
            ids = [device_id for _, device_id in options]
            self.choice.value = chosen if chosen in ids else (ids[0] if ids else None)
        self.revoke_button.disabled = not options

    def pair(self) -> None:
        """Make a one-time code and show it with its QR code."""
        made = self.agent.create_pairing()
        self.pairing.value = pairing_html(made)

    def revoke(self) -> None:
        """End the chosen device's session at once."""
        device_id = self.choice.value
        if device_id:
            ended = self.agent.revoke_device(device_id)
            self.refresh()  # a refresh clears the banner: the note comes after it
            self.banner.note(f"Revoked {ended.name} ({ended.id}).", "ok", ttl=20.0)
